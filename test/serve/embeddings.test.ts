// POST /v1/embeddings against a real server on a small random GPT (saved with savePretrained and
// loaded back, as `megalith serve` does), driven by the official openai client where it can be:
// shapes, base64 vs float, token-id inputs, vectors independent of the batch they come in, the
// vector against the model's own forward, error bodies, and an embeddings-only server. Then BERT:
// the embedder against a padded, masked batch, and `megalith serve` on a BERT directory.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { GPT, BertForPreTraining, saveBERT, loadTokenizer, tensor, noGrad, withScope, type Tokenizer } from "../../src/index.js";
import { Engine, bertEmbedder, embedTexts, gptEmbedder, type Embedder } from "../../src/inference/index.js";
import { createServer, type ServerOptions } from "../../src/serve/index.js";

const tokenizer = loadTokenizer("gpt2");
const CTX = 64;
let root = "";
let modelDir = "";
let model: GPT;

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-embeddings-"));
  modelDir = join(root, "tiny");
  await new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: CTX, vocabSize: 50304 }, { seed: 7 }).savePretrained(modelDir);
  model = await GPT.fromPretrained(modelDir);
});
after(() => rmSync(root, { recursive: true, force: true }));

/** A server on the model: with an engine and an embedder unless `serverOpts` says otherwise. */
async function start(serverOpts: Partial<ServerOptions> = {}) {
  const engine = new Engine(model, tokenizer, { modelName: "tiny", kvCacheBytes: 4 * 2 ** 20 });
  const embedder = gptEmbedder(model, tokenizer);
  const app = createServer({ engine, embedder, ...serverOpts });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
  const post = (body: unknown) => fetch(`${base}/v1/embeddings`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return { engine, embedder, app, base, client, post, close: async () => { await app.close(); await engine.shutdown(); } };
}

/** OpenAI's base64 embedding: little-endian float32 bytes. */
function decodeBase64(s: string): Float32Array {
  const b = Buffer.from(s, "base64");
  const out = new Float32Array(b.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = b.readFloatLE(i * 4);
  return out;
}

/** The raw embeddings of `input` as float32 arrays, through base64 (no float JSON in between). */
async function embedRaw(post: (b: unknown) => Promise<Response>, input: unknown): Promise<Float32Array[]> {
  const r = await post({ model: "tiny", input, encoding_format: "base64" });
  assert.equal(r.status, 200, await r.clone().text());
  const j = (await r.json()) as { data: Array<{ index: number; embedding: string }> };
  j.data.forEach((d, i) => assert.equal(d.index, i));
  return j.data.map((d) => decodeBase64(d.embedding));
}

const bits = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));

test("`client.embeddings.create()` returns one unit vector of the model's width per input, in input order", async () => {
  const s = await start();
  try {
    const texts = ["The jury said", "a", "Once upon a time, in a land far away"];
    const r = await s.client.embeddings.create({ model: "tiny", input: texts });
    assert.equal(r.object, "list");
    assert.equal(r.model, "tiny");
    assert.equal(r.data.length, 3);
    r.data.forEach((d, i) => {
      assert.equal(d.object, "embedding");
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, 32);
      assert.ok(Math.abs(norm(d.embedding) - 1) < 1e-5, `input ${i}: norm ${norm(d.embedding)}`);
    });
    const tokens = texts.reduce((n, t) => n + tokenizer.encode(t).length, 0);
    assert.deepEqual(r.usage, { prompt_tokens: tokens, total_tokens: tokens });
    // Different inputs give different vectors; each one is the one sent alone.
    assert.notDeepEqual(r.data[0]!.embedding, r.data[2]!.embedding);
    for (const [i, t] of texts.entries()) {
      const one = await s.client.embeddings.create({ model: "tiny", input: t });
      assert.deepEqual(one.data[0]!.embedding, r.data[i]!.embedding, `input ${i} alone`);
    }
  } finally {
    await s.close();
  }
});

test("base64 (the openai client's default) decodes to the same float32 values as encoding_format float", async () => {
  const s = await start();
  try {
    const input = ["Hello world", "Ünïcödé and emoji 👋"];
    const asFloat = await s.client.embeddings.create({ model: "tiny", input, encoding_format: "float" });
    const byClient = await s.client.embeddings.create({ model: "tiny", input });  // asks for base64, decodes
    const raw = await embedRaw(s.post, input);
    for (let i = 0; i < input.length; i++) {
      const f = asFloat.data[i]!.embedding;
      assert.ok(f.every((x) => Math.fround(x) === x), "float JSON values are float32 values");
      assert.equal(bits(Float32Array.from(f)), bits(raw[i]!), `input ${i}: float vs base64`);
      assert.deepEqual(byClient.data[i]!.embedding, f, `input ${i}: the client's base64 decoding`);
    }
    const j = (await (await s.post({ input: "x", encoding_format: "base64" })).json()) as { data: Array<{ embedding: unknown }> };
    assert.equal(typeof j.data[0]!.embedding, "string");
    assert.equal(Buffer.from(j.data[0]!.embedding as string, "base64").length, 32 * 4);
  } finally {
    await s.close();
  }
});

test("token-id inputs (number[] and number[][]) embed exactly like the texts they encode", async () => {
  const s = await start();
  try {
    const texts = ["the cat sat", "SELECT * FROM t"];
    const ids = texts.map((t) => tokenizer.encode(t));
    const fromText = await embedRaw(s.post, texts);
    const fromIds = await embedRaw(s.post, ids);
    const fromOne = await embedRaw(s.post, ids[1]);
    assert.equal(bits(fromIds[0]!), bits(fromText[0]!));
    assert.equal(bits(fromIds[1]!), bits(fromText[1]!));
    assert.equal(bits(fromOne[0]!), bits(fromText[1]!));
    const r = await s.client.embeddings.create({ model: "tiny", input: ids });
    assert.equal(r.usage.prompt_tokens, ids[0]!.length + ids[1]!.length);
  } finally {
    await s.close();
  }
});

test("identical inputs give bit-identical vectors alone or in batches of any composition and order, beside a running completion", async () => {
  const s = await start();
  try {
    const A = "To be, or not to be", B = "x", C = "It was the best of times, it was the worst of times", D = "1, 2, 3, 4, 5, 6, 7";
    // A completion in flight, so embedding shares the process with engine steps.
    const gen = s.client.completions.create({ model: "tiny", prompt: "Once", max_tokens: 40, temperature: 0 });
    const alone = new Map<string, string>();
    for (const t of [A, B, C, D]) alone.set(t, bits((await embedRaw(s.post, t))[0]!));
    const batches = [[A, B, C, D], [D, C, B, A], [B, A, A], [C, D], [A, C, A, B, D, D]];
    const results = await Promise.all(batches.map((batch) => embedRaw(s.post, batch)));
    batches.forEach((batch, k) => batch.forEach((t, i) => {
      assert.equal(bits(results[k]![i]!), alone.get(t), `batch ${k} ${JSON.stringify(batch)} item ${i}`);
    }));
    assert.equal(new Set(alone.values()).size, 4);
    assert.equal((await gen).choices[0]!.finish_reason, "length");
  } finally {
    await s.close();
  }
});

test("a vector is the mean over tokens of the model's ln_f hidden states (its forward's, before the LM head), within 1e-6", async () => {
  const s = await start();
  try {
    const text = "In the beginning of the";
    const ids = tokenizer.encode(text);
    const T = ids.length, C = 32;
    // The hidden states, taken independently here; the LM head on them gives forward's logits,
    // so they are the states the model's own forward reads its logits from.
    const { hidden, sameLogits } = noGrad(() => withScope(() => {
      const idx = tensor(Int32Array.from(ids), { shape: [1, T], dtype: "int32" });  // (1, T)
      const h = model.ln_f.forward(model.runBlocks(model.embed(idx)));              // (1, T, C)
      const viaHead = model.lmHead(h).data() as Float32Array;                        // (1, T, V)
      const logits = model.forward(idx).logits.data() as Float32Array;               // (1, T, V)
      let maxDiff = 0;
      for (let i = 0; i < logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(logits[i]! - viaHead[i]!));
      return { hidden: h.data() as Float32Array, sameLogits: maxDiff };
    }));
    assert.ok(sameLogits <= 1e-6, `lm_head(hidden) differs from forward's logits by ${sameLogits}`);
    const mean = new Float64Array(C);
    for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) mean[c] += hidden[t * C + c]! / T;
    const n = norm(mean);
    assert.ok(n > 0.1, `the mean hidden state is near zero (norm ${n}): a weak check`);
    const served = (await s.client.embeddings.create({ model: "tiny", input: text, encoding_format: "float" })).data[0]!.embedding;
    for (let c = 0; c < C; c++) assert.ok(Math.abs(served[c]! - mean[c]! / n) <= 1e-6, `dim ${c}: served ${served[c]} vs ${mean[c]! / n}`);
    // Unnormalised: the plain mean.
    const raw = (await embedTexts(s.embedder, [text], { normalize: false })).vectors[0]!;
    for (let c = 0; c < C; c++) assert.ok(Math.abs(raw[c]! - mean[c]!) <= 1e-6, `dim ${c}: raw ${raw[c]} vs ${mean[c]}`);
  } finally {
    await s.close();
  }
});

test("bad bodies answer 400 with an OpenAI error naming the field; an unknown model is 404 model_not_found", async () => {
  const s = await start({ maxEmbeddingInputs: 8 });
  try {
    const long = "word ".repeat(CTX + 5);
    const cases: Array<[unknown, string | null, RegExp, string?]> = [
      [{ model: "tiny" }, "input", /input is required/],
      [{ input: "" }, "input", /input is an empty string/],
      [{ input: [] }, "input", /input is an empty array/],
      [{ input: ["a", ""] }, "input", /input\[1\] is an empty string/],
      [{ input: [[5], []] }, "input", /input\[1\] is an empty array of token ids/],
      [{ input: 5 }, "input", /input must be a string, an array of strings.*got a number/],
      [{ input: [null] }, "input", /input\[0\] is null/],
      [{ input: ["a", 1] }, "input", /input\[1\] is a number but must be a string/],
      [{ input: [[1], "a"] }, "input", /input\[1\] is a string but must be an array of token ids/],
      [{ input: [1, -2] }, "input", /input\[1\] is -2; an array of token ids holds integers >= 0/],
      [{ input: [[1, 2.5]] }, "input", /input\[0\]\[1\] is 2.5/],
      [{ input: Array.from({ length: 9 }, () => "a") }, "input", /input has 9 items; at most 8/],
      [{ input: [50257] }, "input", /input\[0\]\[0\] is 50257, not a token id of this model: ids must be integers from 0 to 50256/, "invalid_token_id"],
      [{ input: ["ok", long] }, "input", new RegExp(`input\\[1\\] has ${tokenizer.encode(long).length} tokens, but the model's maximum context length is ${CTX} tokens`), "context_length_exceeded"],
      [{ input: "a", encoding_format: "hex" }, "encoding_format", /encoding_format/],
      [{ input: "a", dimensions: 16 }, "dimensions", /dimensions 16 is not supported: this model's embeddings have 32 dimensions/],
      [{ input: "a", dimensions: 0 }, "dimensions", /dimensions/],
      [{ input: "a", temperature: 1 }, "temperature", /Unrecognized request argument supplied: temperature/],
    ];
    for (const [body, param, message, code] of cases) {
      const r = await s.post(body);
      const j = (await r.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
      assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(j)}`);
      assert.equal(j.error.type, "invalid_request_error");
      assert.equal(j.error.param, param, JSON.stringify(j));
      assert.match(j.error.message, message);
      if (code) assert.equal(j.error.code, code);
    }
    // The same width as the model is fine.
    assert.equal((await s.post({ input: "a", dimensions: 32 })).status, 200);
    await assert.rejects(s.client.embeddings.create({ model: "nope", input: "hi" }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError, String(e));
      assert.equal((e as InstanceType<typeof OpenAI.NotFoundError>).code, "model_not_found");
      assert.match((e as Error).message, /The model `nope` does not exist. This server serves: tiny/);
      return true;
    });
    await assert.rejects(s.client.embeddings.create({ model: "tiny", input: "hi", dimensions: 8 }), OpenAI.BadRequestError);
    const metrics = await (await fetch(`${s.base}/metrics`)).text();
    assert.match(metrics, /^megalith_embedding_requests_total 1$/m);
    assert.match(metrics, /^megalith_embedding_inputs_total 1$/m);
    assert.match(metrics, /^megalith_embedding_request_latency_seconds_count 1$/m);
    assert.match(metrics, /megalith_http_refused_total\{status="400"\} 19/);
  } finally {
    await s.close();
  }
});

test("a server with an embedder and no engine serves /v1/embeddings, /v1/models, /ready; completions and chat answer 400", async () => {
  const embedder: Embedder = gptEmbedder(model, tokenizer, { maxTokens: 32 });
  const app = createServer({ embedder, servedModelNames: ["emb"] });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  try {
    const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
    const r = await client.embeddings.create({ model: "emb", input: ["a b c"] });
    assert.equal(r.data[0]!.embedding.length, 32);
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => [m.id, (m as unknown as { max_model_len: number }).max_model_len]), [["emb", 32]]);
    assert.equal((await fetch(`${base}/ready`)).status, 200);
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /megalith_embedding_requests_total 1/);
    assert.doesNotMatch(metrics, /megalith_engine_steps_total/);
    for (const call of [
      () => client.completions.create({ model: "emb", prompt: "hi" }),
      () => client.chat.completions.create({ model: "emb", messages: [{ role: "user", content: "hi" }] }),
    ]) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(e instanceof OpenAI.BadRequestError, String(e));
        assert.match((e as Error).message, /emb is served for embeddings only; it serves \/v1\/embeddings only/);
        return true;
      });
    }
  } finally {
    await app.close();
  }
});

test("`megalith serve --model DIR` (a GPT directory) serves /v1/embeddings: the vectors of the in-process embedder", async () => {
  const port = await new Promise<number>((resolve, reject) => {
    const srv = netServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => { const p = (srv.address() as { port: number }).port; srv.close(() => resolve(p)); });
  });
  const bin = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
  const proc: ChildProcess = spawn(process.execPath, [bin, "serve", "--model", modelDir, "--port", String(port)], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => { stderr += d.toString(); });
  try {
    const base = `http://127.0.0.1:${port}`;
    for (const deadline = Date.now() + 60_000; ;) {
      if (proc.exitCode !== null) assert.fail(`megalith serve exited with ${proc.exitCode}:\n${stderr}`);
      if (await fetch(`${base}/health`).then(() => true, () => false)) break;
      if (Date.now() > deadline) assert.fail(`megalith serve did not start within 60 s:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
    const input = ["the cat", "Dear Sir,"];
    const served = await client.embeddings.create({ model: "tiny", input });
    const local = (await embedTexts(gptEmbedder(model, tokenizer), input)).vectors;
    input.forEach((_, i) => assert.equal(bits(Float32Array.from(served.data[i]!.embedding)), bits(local[i]!), `input ${i}`));
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.once("exit", r)));
  }
});

/** BERT's uncased WordPiece vocabulary, or why it cannot be had (then the BERT tests skip). */
function bertTokenizer(): Tokenizer | string {
  try {
    const tok = loadTokenizer("bert-base-uncased");
    return tok.tokenToId("[CLS]") === undefined ? "loadTokenizer(\"bert-base-uncased\") has no [CLS] token" : tok;
  } catch (e) {
    return `no WordPiece tokenizer: loadTokenizer("bert-base-uncased") throws ${(e as Error).message}`;
  }
}

test("`bertEmbedder()` is the mean over [CLS] ids [SEP] of BERT's last hidden state, as a padded, masked batch computes it, within 1e-6", async (t) => {
  const tok = bertTokenizer();
  if (typeof tok === "string") return t.skip(tok);
  const bert = new BertForPreTraining({ nLayer: 2, nHead: 2, nEmbd: 32, maxPositions: 40, vocabSize: tok.vocabSize }, { seed: 9 });
  const e = bertEmbedder(bert, tok);
  assert.equal(e.kind, "bert");
  const texts = ["A café in Zürich.", "the quick brown fox jumps over the lazy dog"];
  const ids = texts.map((x) => tok.encode(x));
  const cls = tok.tokenToId("[CLS]")!, sep = tok.tokenToId("[SEP]")!, pad = tok.tokenToId("[PAD]")!;
  // Both inputs in one batch, the short one padded and masked: sentence-transformers' layout.
  const rows = ids.map((x) => [cls, ...x, sep]);
  const T = Math.max(...rows.map((r) => r.length));
  const flat = new Int32Array(2 * T).fill(pad), mask = new Int32Array(2 * T);
  rows.forEach((r, b) => r.forEach((id, j) => { flat[b * T + j] = id; mask[b * T + j] = 1; }));
  const h = noGrad(() => withScope(() => bert.encode(tensor(flat, { shape: [2, T], dtype: "int32" }), { attentionMask: tensor(mask, { shape: [2, T], dtype: "int32" }) }).data() as Float32Array)); // (2, T, C)
  const raw = ids.map((x) => e.embed(x));
  rows.forEach((r, b) => {
    for (let c = 0; c < 32; c++) {
      let m = 0;
      for (let j = 0; j < r.length; j++) m += h[(b * T + j) * 32 + c]! / r.length;
      assert.ok(Math.abs(raw[b]![c]! - m) <= 1e-6, `input ${b} dim ${c}: ${raw[b]![c]} vs ${m}`);
    }
  });
  assert.equal(e.tokenCount(ids[0]!), ids[0]!.length + 2, "[CLS] and [SEP] are counted");
  // A blank text has no WordPiece tokens: refused, not embedded as [CLS] [SEP] alone.
  await assert.rejects(embedTexts(e, ["ok", "   "]), /input\[1\] has no tokens \(an empty or blank text\)/);
});

test("`megalith serve --model DIR` on a BERT directory serves /v1/embeddings (the in-process vectors); completions and chat answer 400", async (t) => {
  const tok = bertTokenizer();
  if (typeof tok === "string") return t.skip(tok);
  const dir = join(root, "bert-tiny");
  const bert = new BertForPreTraining({ nLayer: 2, nHead: 2, nEmbd: 32, maxPositions: 24, vocabSize: tok.vocabSize }, { seed: 4 });
  await saveBERT(bert, dir);
  tok.save(join(dir, "tokenizer.json"));
  const port = await new Promise<number>((resolve, reject) => {
    const srv = netServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => { const p = (srv.address() as { port: number }).port; srv.close(() => resolve(p)); });
  });
  const bin = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
  const proc: ChildProcess = spawn(process.execPath, [bin, "serve", "--model", dir, "--port", String(port)], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => { stderr += d.toString(); });
  try {
    const base = `http://127.0.0.1:${port}`;
    for (const deadline = Date.now() + 60_000; ;) {
      if (proc.exitCode !== null) assert.fail(`megalith serve exited with ${proc.exitCode}:\n${stderr}`);
      if (await fetch(`${base}/health`).then(() => true, () => false)) break;
      if (Date.now() > deadline) assert.fail(`megalith serve did not start within 60 s:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(stderr, /BERT encoder: \/v1\/embeddings only, 32 dimensions, at most 24 tokens per input/);
    const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
    const input = ["Hello, world!", "naïve café", "Hello, world!"];
    const served = await client.embeddings.create({ model: "bert-tiny", input });
    const local = (await embedTexts(bertEmbedder(bert, tok), input)).vectors;
    input.forEach((_, i) => assert.equal(bits(Float32Array.from(served.data[i]!.embedding)), bits(local[i]!), `input ${i}`));
    const tokens = input.reduce((n, x) => n + tok.encode(x).length + 2, 0);
    assert.equal(served.usage.prompt_tokens, tokens, "usage counts [CLS] and [SEP]");
    const tooLong = await fetch(`${base}/v1/embeddings`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input: "word ".repeat(23) }) });
    assert.equal(tooLong.status, 400);
    assert.match(((await tooLong.json()) as { error: { message: string } }).error.message, /input\[0\] has 25 tokens \(23 \+ 2 special\), but the model's maximum context length is 24 tokens/);
    for (const call of [
      () => client.completions.create({ model: "bert-tiny", prompt: "hi" }),
      () => client.chat.completions.create({ model: "bert-tiny", messages: [{ role: "user", content: "hi" }] }),
    ]) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(e instanceof OpenAI.BadRequestError, String(e));
        assert.match((e as Error).message, /bert-tiny is an encoder \(BERT\); it serves \/v1\/embeddings only/);
        return true;
      });
    }
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ["bert-tiny"]);
    assert.equal((await fetch(`${base}/ready`)).status, 200);
    assert.match(await (await fetch(`${base}/metrics`)).text(), /megalith_embedding_requests_total 1/);
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.once("exit", r)));
  }
});

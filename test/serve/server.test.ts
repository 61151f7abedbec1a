// The HTTP layer against a scripted engine: OpenAI-shaped responses and errors, SSE framing,
// auth, body limits, queue-full rejections, and client disconnects reaching the engine.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { createServer } from "../../src/serve/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type EngineStats, type GenerationRequest } from "../../src/inference/engine/types.js";

class FakeEngine implements EngineLike {
  readonly modelName = "fake-gpt";
  readonly contextLength = 64;
  readonly eotToken = 0;
  queueFull = false;
  /** The next request fails inside the engine after one token (a step failure). */
  failNext = false;
  aborted: string[] = [];
  lastRequest: GenerationRequest | null = null;
  encode(text: string): number[] {
    return [...text].map((c) => c.charCodeAt(0) % 100 + 1);
  }
  async *submitImpl(req: GenerationRequest, signal?: AbortSignal): AsyncGenerator<EngineEvent> {
    if (this.failNext) {
      this.failNext = false;
      yield { type: "delta", index: 0, text: "hello", tokenIds: [1], logprobs: [] };
      yield { type: "finish", index: 0, reason: "error", error: "the step failed: out of memory" };
      yield { type: "done", usage: { promptTokens: req.promptTokens.length, completionTokens: 1 } };
      return;
    }
    const words = ["hello", " there", " friend"];
    let produced = 0;
    const count = req.maxTokens > 30 ? 40 : Math.min(req.maxTokens, 3);  // long requests stream slowly
    for (let i = 0; i < count; i++) {
      if (signal?.aborted) {
        this.aborted.push(req.requestId);
        for (let c = 0; c < req.n; c++) yield { type: "finish", index: c, reason: "abort" };
        return;
      }
      await new Promise((r) => setTimeout(r, req.maxTokens > 30 ? 50 : 1));
      const w = words[i % 3]!;
      for (let c = 0; c < req.n; c++) yield { type: "delta", index: c, text: w, tokenIds: [i + 1], logprobs: [{ token: w, tokenId: i + 1, logprob: -0.5, top: [] }] };
      produced++;
    }
    for (let c = 0; c < req.n; c++) yield { type: "finish", index: c, reason: req.maxTokens <= 3 ? "length" : "stop" };
    yield { type: "done", usage: { promptTokens: req.promptTokens.length, completionTokens: produced * req.n } };
  }
  submit(req: GenerationRequest, signal?: AbortSignal): AsyncIterable<EngineEvent> {
    if (this.queueFull) throw new EngineRejection("queue_full", "the waiting queue is full (2 requests)", 2);
    this.lastRequest = req;
    return this.submitImpl(req, signal);
  }
  ready() { return true; }
  stats(): EngineStats {
    return { running: 1, waiting: 2, kvUsage: 0.25, prefixCacheHitRate: 0.5, preemptions: 3, rejections: { queue_full: 1 }, ttft: [0.1, 0.2], itl: [0.01], e2e: [0.5], queueTime: [0.01], promptTokens: 10, generationTokens: 20, steps: 5, lastStepAt: Date.now() };
  }
  async shutdown() {}
}

async function start(opts: { apiKey?: string; maxBodyBytes?: number } = {}) {
  const engine = new FakeEngine();
  const app = createServer({ engine, ...opts });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const addr = app.server.address() as { port: number };
  return { engine, app, base: `http://127.0.0.1:${addr.port}` };
}

test("completions, chat and models answer in OpenAI's shape (official openai client)", async () => {
  const { app, base } = await start({ apiKey: "sk-test" });
  try {
    const client = new OpenAI({ apiKey: "sk-test", baseURL: `${base}/v1` });
    const models = await client.models.list();
    assert.equal(models.data[0]!.id, "fake-gpt");
    const c = await client.completions.create({ model: "fake-gpt", prompt: "Hi", max_tokens: 3 });
    assert.equal(c.choices[0]!.text, "hello there friend");
    assert.equal(c.choices[0]!.finish_reason, "length");
    assert.equal(c.usage!.completion_tokens, 3);
    const chat = await client.chat.completions.create({ model: "fake-gpt", messages: [{ role: "user", content: "Hi" }], max_tokens: 10 });
    assert.equal(chat.choices[0]!.message.content, "hello there friend");
    const stream = await client.chat.completions.create({ model: "fake-gpt", messages: [{ role: "user", content: "Hi" }], max_tokens: 10, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let usage = 0;
    for await (const ch of stream) {
      text += ch.choices[0]?.delta?.content ?? "";
      if (ch.usage) usage = ch.usage.total_tokens;
    }
    assert.equal(text, "hello there friend");
    assert.ok(usage > 0);
  } finally {
    await app.close();
  }
});

test("streamed completions end with data: [DONE]", async () => {
  const { app, base } = await start();
  try {
    const r = await fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", max_tokens: 3, stream: true }) });
    assert.equal(r.headers.get("content-type"), "text/event-stream");
    const body = await r.text();
    const events = body.trim().split("\n\n");
    assert.equal(events[events.length - 1], "data: [DONE]");
    const texts = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)).choices[0].text).join("");
    assert.equal(texts, "hello there friend");
  } finally {
    await app.close();
  }
});

test("bad requests get 4xx with OpenAI error bodies, never a crash", async () => {
  const { app, base, engine } = await start({ apiKey: "sk-test", maxBodyBytes: 2000 });
  const post = (path: string, body: string, key = "sk-test") =>
    fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${key}` }, body });
  try {
    const cases: Array<[string, Response, number, RegExp]> = [
      ["malformed JSON", await post("/v1/completions", "{not json"), 400, /JSON/],
      ["unknown parameter", await post("/v1/completions", JSON.stringify({ prompt: "x", bogus: 1 })), 400, /bogus/],
      ["out of range", await post("/v1/completions", JSON.stringify({ prompt: "x", temperature: 7 })), 400, /temperature/],
      ["prompt too long", await post("/v1/completions", JSON.stringify({ prompt: "x".repeat(100) })), 400, /100 tokens.*64/],
      ["wrong key", await post("/v1/completions", JSON.stringify({ prompt: "x" }), "nope"), 401, /API key/],
      ["oversized body", await post("/v1/completions", JSON.stringify({ prompt: "x".repeat(5000) })), 413, /larger than/],
      ["missing messages", await post("/v1/chat/completions", JSON.stringify({})), 400, /messages/],
    ];
    for (const [what, r, status, msg] of cases) {
      assert.equal(r.status, status, what);
      const j = (await r.json()) as { error: { message: string; type: string; param: unknown; code: unknown } };
      assert.match(j.error.message, msg, what);
      assert.ok(typeof j.error.type === "string" && "param" in j.error && "code" in j.error, `${what}: OpenAI error shape`);
    }
    engine.queueFull = true;
    const r = await post("/v1/completions", JSON.stringify({ prompt: "x" }));
    assert.equal(r.status, 429);
    assert.equal(r.headers.get("retry-after"), "2");
    engine.queueFull = false;
    const health = await fetch(`${base}/health`);
    assert.equal(health.status, 200, "health needs no key");
    const metrics = await fetch(`${base}/metrics`, { headers: { authorization: "Bearer sk-test" } });
    const text = await metrics.text();
    assert.match(text, /megalith_time_to_first_token_seconds\{quantile="0.5"\} 0.1/);
    assert.match(text, /megalith_request_rejections_total\{reason="queue_full"\} 1/);
  } finally {
    await app.close();
  }
});

test("a client that disconnects mid-stream aborts its request in the engine", async () => {
  const { app, base, engine } = await start();
  try {
    const ctrl = new AbortController();
    const r = await fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", max_tokens: 500, stream: true }), signal: ctrl.signal });
    const reader = r.body!.getReader();
    await reader.read();
    ctrl.abort();
    for (let i = 0; i < 100 && engine.aborted.length === 0; i++) await new Promise((res) => setTimeout(res, 20));
    assert.equal(engine.aborted.length, 1);
  } finally {
    await app.close();
  }
});

test("a failure inside the engine: a stream gets an error event then data: [DONE], a plain request a 500 body, and the server keeps serving", async () => {
  const { app, base, engine } = await start();
  const post = (body: unknown) => fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  try {
    engine.failNext = true;
    const r = await post({ prompt: "x", max_tokens: 3, stream: true });
    assert.equal(r.status, 200);
    const events = (await r.text()).trim().split("\n\n");
    assert.equal(events[events.length - 1], "data: [DONE]");
    const parsed = events.slice(0, -1).map((e) => JSON.parse(e.slice("data: ".length)));
    const errorAt = parsed.findIndex((e) => e.error);
    assert.ok(errorAt > 0, `an error event after the first token: ${JSON.stringify(parsed)}`);
    assert.match(parsed[errorAt].error.message, /out of memory/);
    assert.equal(parsed[errorAt].error.type, "server_error");
    engine.failNext = true;
    const plain = await post({ prompt: "x", max_tokens: 3 });
    assert.equal(plain.status, 500);
    const body = (await plain.json()) as { error: { message: string; type: string; code: string } };
    assert.match(body.error.message, /out of memory/);
    assert.equal(body.error.code, "engine_error");
    const ok = await post({ prompt: "x", max_tokens: 3 });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { choices: Array<{ text: string }> }).choices[0]!.text, "hello there friend");
  } finally {
    await app.close();
  }
});

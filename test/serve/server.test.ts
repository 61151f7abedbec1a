// The HTTP layer against a scripted engine: OpenAI-shaped responses and errors, SSE framing,
// auth, body limits, queue-full rejections, and client disconnects reaching the engine.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import OpenAI from "openai";
import { createServer, type ServerOptions } from "../../src/serve/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type EngineStats, type GenerationRequest } from "../../src/inference/engine/types.js";

class FakeEngine implements EngineLike {
  readonly modelName = "fake-gpt";
  readonly contextLength = 64;
  readonly eotToken = 0;
  readonly vocabSize = 101;
  /** encode() below gives one token per character (ASCII here): one byte per token. */
  readonly maxTokenBytes = 1;
  encoded = 0;
  queueFull = false;
  /** The next request fails inside the engine after one token (a step failure). */
  failNext = false;
  aborted: string[] = [];
  lastRequest: GenerationRequest | null = null;
  encode(text: string): number[] {
    this.encoded++;
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
    const count = req.maxTokens >= 30 ? 40 : Math.min(req.maxTokens, 3);  // long requests stream slowly
    for (let i = 0; i < count; i++) {
      if (signal?.aborted) {
        this.aborted.push(req.requestId);
        for (let c = 0; c < req.n; c++) yield { type: "finish", index: c, reason: "abort" };
        return;
      }
      await new Promise((r) => setTimeout(r, req.maxTokens >= 30 ? 50 : 1));
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

async function start(opts: Omit<ServerOptions, "engine"> = {}) {
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
    assert.match(text, /# TYPE megalith_time_to_first_token_seconds histogram/);
    assert.match(text, /megalith_request_rejections_total\{reason="queue_full"\} 1/);
    assert.match(text, /megalith_request_queue_time_seconds\{quantile="0.5"\} 0.01/);
    assert.match(text, /megalith_engine_steps_total 5/);
  } finally {
    await app.close();
  }
});

test("a client that disconnects mid-stream aborts its request in the engine", async () => {
  const { app, base, engine } = await start();
  try {
    const ctrl = new AbortController();
    const r = await fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", max_tokens: 50, stream: true }), signal: ctrl.signal });
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

test("an unknown model is a 404 model_not_found; every --served-model-name is listed and accepted (official openai client)", async () => {
  const { app, base } = await start({ servedModelNames: ["fake-gpt", "alias"] });
  try {
    const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ["fake-gpt", "alias"]);
    const c = await client.completions.create({ model: "alias", prompt: "Hi", max_tokens: 3 });
    assert.equal(c.model, "alias");
    await assert.rejects(client.completions.create({ model: "gpt-4o", prompt: "Hi", max_tokens: 3 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError, String(e));
      const err = (e as InstanceType<typeof OpenAI.NotFoundError>).error as { message: string; type: string; param: string; code: string };
      assert.deepEqual({ type: err.type, param: err.param, code: err.code }, { type: "invalid_request_error", param: "model", code: "model_not_found" });
      assert.match(err.message, /gpt-4o.*fake-gpt, alias/);
      return true;
    });
    await assert.rejects(client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "Hi" }] }), OpenAI.NotFoundError);
  } finally {
    await app.close();
  }
});

test("prompt + max_tokens beyond the max model length is a 400 stating both token counts (official openai client)", async () => {
  const { app, base } = await start();
  try {
    const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
    await assert.rejects(client.completions.create({ model: "fake-gpt", prompt: "x".repeat(20), max_tokens: 50 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError, String(e));
      const err = (e as InstanceType<typeof OpenAI.BadRequestError>).error as { message: string; code: string; param: string };
      assert.match(err.message, /maximum context length is 64 tokens.*requested 70 tokens \(20 in the prompt, 50 in the completion\)/);
      assert.equal(err.code, "context_length_exceeded");
      assert.equal(err.param, "max_tokens");
      return true;
    });
    // Exactly the context is fine; without max_tokens the default is clipped to the room left.
    assert.equal((await client.completions.create({ model: "fake-gpt", prompt: "x".repeat(20), max_tokens: 44 })).choices.length, 1);
  } finally {
    await app.close();
  }
});

test("a prompt whose bytes cannot fit the context is refused before tokenizing; response_format other than text is a 400", async () => {
  const { app, base, engine } = await start({ maxBodyBytes: 4 << 20 });
  const post = (path: string, body: unknown) => fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  try {
    const before = engine.encoded;
    const r = await post("/v1/completions", { prompt: "x".repeat(1 << 20) });
    assert.equal(r.status, 400);
    const j = (await r.json()) as { error: { message: string; code: string } };
    assert.match(j.error.message, /1048576 bytes.*64 tokens/);
    assert.equal(j.error.code, "context_length_exceeded");
    const chat = await post("/v1/chat/completions", { messages: [{ role: "user", content: "y".repeat(1 << 20) }] });
    assert.equal(chat.status, 400);
    assert.equal(engine.encoded, before, "the megabyte prompts were tokenized");

    assert.equal((await post("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 3, response_format: { type: "text" } })).status, 200);
    const json = await post("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], response_format: { type: "json_object" } });
    assert.equal(json.status, 400);
    const body = (await json.json()) as { error: { message: string; param: string } };
    assert.match(body.error.message, /"json_object" is not supported.*text/);
    assert.equal(body.error.param, "response_format");
  } finally {
    await app.close();
  }
});

test("logit_bias reaches the sampling params as [id, bias] pairs; bad keys and out-of-range biases are 400s", async () => {
  const { app, base, engine } = await start();
  const post = (logit_bias: unknown) => fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x", max_tokens: 3, logit_bias }) });
  try {
    assert.equal((await post({ "5": -100, "17": 100, "0": 2.5 })).status, 200);
    assert.deepEqual(engine.lastRequest!.sampling.logitBias, [[0, 2.5], [5, -100], [17, 100]]);
    assert.equal((await post({})).status, 200);
    assert.equal(engine.lastRequest!.sampling.logitBias, undefined);
    for (const [bias, msg] of [[{ "101": 1 }, /"101" is not a token id.*0 to 100/], [{ abc: 1 }, /"abc" is not a token id/], [{ "-1": 1 }, /"-1"/], [{ "1.5": 1 }, /"1.5"/], [{ "3": 101 }, /logit_bias\["3"\] is 101.*\[-100, 100\]/], [{ "3": "high" }, /logit_bias/]] as const) {
      const r = await post(bias);
      assert.equal(r.status, 400, JSON.stringify(bias));
      const j = (await r.json()) as { error: { message: string; param: string } };
      assert.match(j.error.message, msg, JSON.stringify(bias));
      assert.match(j.error.param, /^logit_bias/);
    }
  } finally {
    await app.close();
  }
});

test("a wrong method on a known route is a 405 with Allow; a body with __proto__ is a 400 that says so", async () => {
  const { app, base } = await start();
  try {
    const get = await fetch(`${base}/v1/completions`);
    assert.equal(get.status, 405);
    assert.equal(get.headers.get("allow"), "POST");
    const j = (await get.json()) as { error: { message: string; type: string; code: string } };
    assert.equal(j.error.type, "invalid_request_error");
    assert.equal(j.error.code, "method_not_allowed");
    assert.match(j.error.message, /GET is not allowed on \/v1\/completions; use POST/);
    const post = await fetch(`${base}/v1/models`, { method: "POST" });
    assert.equal(post.status, 405);
    assert.match(post.headers.get("allow") ?? "", /GET/);
    assert.equal((await fetch(`${base}/v1/nothing`)).status, 404);

    for (const [body, msg] of [['{"prompt": "x", "__proto__": {"admin": true}}', /"__proto__" key.*prototype pollution/], ['{"prompt": "x", "stop": {"constructor": {"prototype": {}}}}', /"constructor" key holding "prototype"/], ['{"prompt": ', /malformed JSON body/]] as const) {
      const r = await fetch(`${base}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body });
      assert.equal(r.status, 400, body);
      const e = (await r.json()) as { error: { message: string } };
      assert.match(e.error.message, msg, body);
      assert.doesNotMatch(e.error.message, /not valid JSON/);
    }
  } finally {
    await app.close();
  }
});

/** Opens `n` raw TCP connections that never send a byte; `closed` counts those the server has closed. */
async function idleSockets(port: number, n: number): Promise<{ sockets: Socket[]; closed: () => number }> {
  let closed = 0;
  const sockets = await Promise.all(Array.from({ length: n }, () => new Promise<Socket>((resolve, reject) => {
    const s = connect(port, "127.0.0.1", () => resolve(s));
    s.once("error", reject);
    s.on("error", () => {});  // an evicted socket may be reset: expected
    s.once("close", () => closed++);
    s.resume();  // read, so the server's FIN is seen
  })));
  return { sockets, closed: () => closed };
}

test("hundreds of idle half-open connections do not starve /health; beyond --max-connections the longest idle are evicted", async () => {
  const { app, base } = await start({ maxConnections: 100, headersTimeoutMs: 2000 });
  const port = Number(new URL(base).port);
  const sockets: Socket[] = [];
  try {
    const idle = await idleSockets(port, 300);
    sockets.push(...idle.sockets);
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      const r = await fetch(`${base}/health`);
      assert.equal(r.status, 200);
      await r.text();
      times.push(performance.now() - t0);
    }
    assert.ok(Math.max(...times) < 500, `/health took ${times.map((t) => t.toFixed(0)).join(", ")} ms beside 300 idle connections`);
    // The cap held: at most 100 connections were left open, the rest evicted (reset).
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(idle.closed() >= 200, `only ${idle.closed()} of 300 idle connections were closed with a cap of 100`);
    // The header timeout reaps the ones left.
    for (let i = 0; i < 50 && idle.closed() < 300; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(idle.closed(), 300, "idle connections outlived the 2 s header timeout");
  } finally {
    for (const s of sockets) s.destroy();
    await app.close();
  }
});

// The engine end to end over HTTP: greedy output batched with 15 other concurrent requests
// equals generate() alone; streamed equals non-streamed; a seed gives the same text at any
// batch composition; an aborted stream frees its KV blocks.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { GPT, generate, loadTokenizer, noGrad } from "../../src/index.js";
import { Engine } from "../../src/inference/index.js";
import { createServer } from "../../src/serve/index.js";

const tok = loadTokenizer("gpt2");

async function setup(opts: { maxNumBatchedTokens?: number } = {}) {
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 96, vocabSize: 50304 }, { seed: 3 });
  const engine = new Engine(model, tok, { modelName: "tiny", kvCacheBytes: 8 * 2 ** 20, blockSize: 16, maxNumBatchedTokens: opts.maxNumBatchedTokens ?? 64 });
  const app = createServer({ engine });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1`;
  return { model, engine, app, client: new OpenAI({ apiKey: "none", baseURL: base }), base };
}

const PROMPTS = Array.from({ length: 16 }, (_, i) => `Request number ${i}: the ${["jury", "city", "river", "house"][i % 4]} was${" very".repeat(i % 5)}`);

test("greedy output under continuous batching equals generate() alone, streamed and not", async () => {
  const { model, engine, app, client } = await setup();
  try {
    const alone = PROMPTS.map((p) => tok.decode([...generate(model, tok.encode(p), { maxNewTokens: 12, temperature: 0, stopTokens: [tok.eotToken] })].filter((t) => t !== tok.eotToken)));
    const batched = await Promise.all(PROMPTS.map((p) => client.completions.create({ model: "tiny", prompt: p, max_tokens: 12, temperature: 0 })));
    batched.forEach((r, i) => assert.equal(r.choices[0]!.text, alone[i], `request ${i}`));
    const streamed = await Promise.all(PROMPTS.slice(0, 4).map(async (p) => {
      let s = "";
      for await (const ch of await client.completions.create({ model: "tiny", prompt: p, max_tokens: 12, temperature: 0, stream: true })) s += ch.choices[0]?.text ?? "";
      return s;
    }));
    streamed.forEach((s, i) => assert.equal(s, alone[i]));
    assert.ok(engine.stats().steps > 0);
  } finally {
    await app.close();
    await engine.shutdown();
  }
});

test("a seeded request gives the same text alone and in a crowd", async () => {
  const { engine, app, client } = await setup();
  try {
    // top_k is a vLLM-style extension the openai types do not list.
    const ask = () => client.completions.create({ model: "tiny", prompt: "Once upon a time", max_tokens: 10, temperature: 1, top_k: 50, seed: 1234 } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    const alone = (await ask()).choices[0]!.text;
    const others = PROMPTS.map((p) => client.completions.create({ model: "tiny", prompt: p, max_tokens: 10, temperature: 1, seed: 7 }));
    const [first, last] = await Promise.all([ask(), ask(), ...others]);
    assert.equal(first!.choices[0]!.text, alone);
    assert.equal(last!.choices[0]!.text, alone);
  } finally {
    await app.close();
    await engine.shutdown();
  }
});

test("a client that aborts mid-stream gets its KV blocks freed", async () => {
  const { engine, app, base } = await setup({ maxNumBatchedTokens: 16 });
  try {
    const before = engine.blocks.usage().used;
    const ctrl = new AbortController();
    const r = await fetch(`${base}/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "a long story about ".repeat(4), max_tokens: 60, temperature: 0, stream: true }), signal: ctrl.signal });
    const reader = r.body!.getReader();
    await reader.read();
    await reader.read();
    assert.ok(engine.blocks.usage().used > before, "the request holds blocks while streaming");
    ctrl.abort();
    for (let i = 0; i < 100 && engine.blocks.usage().used !== before; i++) await new Promise((res) => setTimeout(res, 10));
    assert.equal(engine.blocks.usage().used, before);
    engine.blocks.checkInvariants();
  } finally {
    await app.close();
    await engine.shutdown();
  }
});

test("n-gram speculative decoding gives the same greedy text and accepts drafts on repetitive text", async () => {
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 128, vocabSize: 50304 }, { seed: 3 });
  const plain = new Engine(model, tok, { kvCacheBytes: 8 * 2 ** 20 });
  const spec = new Engine(model, tok, { kvCacheBytes: 8 * 2 ** 20, speculative: { numTokens: 4, ngramMax: 3 } });
  const sampling = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: 0 };
  const run = async (e: Engine, prompt: string) => {
    let text = "";
    for await (const ev of e.submit({ requestId: `r${Math.random()}`, promptTokens: tok.encode(prompt), sampling, maxTokens: 40, stop: [], stopTokenIds: [], n: 1 })) if (ev.type === "delta") text += ev.text;
    return text;
  };
  for (const p of ["one two three one two three one two", "The cat sat on the mat. The cat sat on the", "abc"]) {
    assert.equal(await run(spec, p), await run(plain, p), `prompt ${JSON.stringify(p)}`);
  }
  const st = spec.stats();
  assert.ok((st.speculativeProposed ?? 0) > 0 && (st.speculativeAccepted ?? 0) > 0, `proposed ${st.speculativeProposed}, accepted ${st.speculativeAccepted}`);
  assert.ok(spec.stats().steps < plain.stats().steps, `fewer steps with speculation (${spec.stats().steps} vs ${plain.stats().steps})`);
  spec.blocks.checkInvariants();
  await plain.shutdown();
  await spec.shutdown();
});

test("n: 2 over HTTP returns two choices that equal separate requests seeded s and s+1, usage counting the prompt once", async () => {
  const { engine, app, client } = await setup();
  try {
    const seed = Math.floor(Math.random() * 1e6);
    const ask = (n: number, s: number) => client.completions.create({ model: "tiny", prompt: "The river was very", max_tokens: 8, temperature: 1, seed: s, n });
    const two = await ask(2, seed);
    assert.equal(two.choices.length, 2);
    const [a, b] = await Promise.all([ask(1, seed), ask(1, seed + 1)]);
    assert.equal(two.choices[0]!.text, a.choices[0]!.text);
    assert.equal(two.choices[1]!.text, b.choices[0]!.text);
    assert.equal(two.usage!.prompt_tokens, a.usage!.prompt_tokens);
    assert.equal(two.usage!.completion_tokens, a.usage!.completion_tokens + b.usage!.completion_tokens);
    assert.equal(engine.blocks.usage().used, 0);
  } finally {
    await app.close();
    await engine.shutdown();
  }
});

test("ids past the tokenizer's vocabulary (a padded embedding table) are never sampled, by the engine or by generate()", async () => {
  // Every decodable id gets the logit 0 (their embedding rows are zero); the 47 padded rows
  // keep random weights, so unmasked they would win every argmax and most draws.
  const model = new GPT({ nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 50304 }, { seed: 4 });
  noGrad(() => {
    const rows = model.wte.weight.narrow(0, 0, tok.vocabSize);
    rows.zero_();
    rows.dispose();
  });
  const engine = new Engine(model, tok, { kvCacheBytes: 4 * 2 ** 20 });
  try {
    const run = async (temperature: number, seed: number) => {
      const ids: number[] = [];
      let reason = "";
      const sampling = { temperature, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed, logprobs: 2 };
      for await (const ev of engine.submit({ requestId: `pad-${temperature}-${seed}`, promptTokens: tok.encode("Hello there"), sampling, maxTokens: 12, stop: [], stopTokenIds: [], n: 1 })) {
        if (ev.type === "delta") ids.push(...ev.tokenIds);
        if (ev.type === "finish") reason = ev.reason;
      }
      return { ids, reason };
    };
    const greedy = await run(0, 0);
    assert.equal(greedy.reason, "length");
    assert.deepEqual(greedy.ids, new Array(12).fill(0), "greedy: the first of the tied decodable ids");
    for (const seed of [1, 2, 3]) {
      const r = await run(1, seed);
      assert.equal(r.reason, "length");
      assert.ok(r.ids.length === 12 && r.ids.every((t) => t < tok.vocabSize), `seed ${seed}: ${r.ids}`);
    }
    // generate() with vocabSize agrees; without it the padded rows win (what the option prevents).
    assert.deepEqual([...generate(model, tok.encode("Hello there"), { maxNewTokens: 12, temperature: 0, vocabSize: tok.vocabSize })], greedy.ids);
    assert.ok([...generate(model, tok.encode("Hello there"), { maxNewTokens: 3, temperature: 0 })].every((t) => t >= tok.vocabSize));
    assert.throws(() => [...generate(model, [1], { maxNewTokens: 1, vocabSize: 60000 })], /vocabSize must be an integer in 1\.\.50304.*60000/);
  } finally {
    await engine.shutdown();
  }
});

test("a failure while detokenizing ends that request with an error event; the engine keeps serving", async () => {
  const model = new GPT({ nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 50304 }, { seed: 6 });
  let failing = true;
  const flaky = Object.create(tok) as typeof tok;
  flaky.decode = (ids: readonly number[]) => {
    if (failing && ids.length > 0) throw new Error("decode failed on purpose");
    return tok.decode(ids);
  };
  const engine = new Engine(model, flaky, { kvCacheBytes: 4 * 2 ** 20 });
  try {
    const sampling = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: 0 };
    const run = async (id: string) => {
      const events = [];
      for await (const ev of engine.submit({ requestId: id, promptTokens: tok.encode("Once upon"), sampling, maxTokens: 5, stop: [], stopTokenIds: [], n: 1 })) events.push(ev);
      return events;
    };
    const bad = await run("bad");
    const finish = bad.find((e) => e.type === "finish");
    assert.ok(finish && finish.type === "finish" && finish.reason === "error" && /decode failed on purpose/.test(finish.error ?? ""), JSON.stringify(bad));
    assert.equal(bad[bad.length - 1]!.type, "done");
    assert.equal(engine.blocks.usage().used, 0, "the failed request's blocks are freed");
    failing = false;
    const good = await run("good");
    assert.equal(good.filter((e) => e.type === "delta").map((e) => (e.type === "delta" ? e.text : "")).join(""), tok.decode([...generate(model, tok.encode("Once upon"), { maxNewTokens: 5, temperature: 0, vocabSize: tok.vocabSize })]));
  } finally {
    await engine.shutdown();
  }
});

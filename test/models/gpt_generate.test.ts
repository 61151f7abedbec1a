// Incremental decoding: the KV cache reproduces full forwards, greedy `generate` is argmax of
// full forwards step by step, and seeded sampling is reproducible and keyed per step.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, generate, sampleToken } from "../../src/models/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { tensor, withScope, rand } from "../../src/tensor/index.js";
import { ValueError } from "../../src/core/errors.js";
import { argmax, ids, lastLogits, maxAbsDiff, tinyGPT } from "./_helpers.js";

/** Feeds `chunk` through the cache; returns every position's logits of the chunk, (T, V) rows. */
function cachedStep(model: GPT, kv: ReturnType<GPT["newKVCache"]>, chunk: readonly number[]): Float32Array[] {
  return noGrad(() => withScope(() => {
    const x = tensor(Int32Array.from(chunk), { shape: [1, chunk.length], dtype: "int32" });
    const logits = model.forward(x, null, kv).logits;                           // (1, T, V)
    return chunk.map((_, t) => Float32Array.from(logits.select(1, t).data() as Float32Array));
  }));
}

test("`GPT.forward` with a KV cache gives the full forward's last-position logits, token by token", () => {
  const model = tinyGPT();
  const seq = ids(20);
  const kv = model.newKVCache();
  try {
    let rows = cachedStep(model, kv, seq.slice(0, 5));
    assert.equal(kv.length, 5);
    assert.ok(maxAbsDiff(rows[4]!, lastLogits(model, seq.slice(0, 5))) < 1e-5);
    for (let t = 5; t < seq.length; t++) {
      rows = cachedStep(model, kv, [seq[t]!]);
      assert.equal(kv.length, t + 1);
      const d = maxAbsDiff(rows[0]!, lastLogits(model, seq.slice(0, t + 1)));
      assert.ok(d < 1e-5, `position ${t}: max |diff| ${d}`);
    }
  } finally {
    GPT.disposeKVCache(kv);
  }
});

test("`GPT.forward` with a KV cache handles multi-token chunks after a prefix (bottom-right causal mask)", () => {
  const model = tinyGPT();
  const seq = ids(16, 64, 9);
  const kv = model.newKVCache();
  try {
    cachedStep(model, kv, seq.slice(0, 6));
    const rows = cachedStep(model, kv, seq.slice(6, 11));                         // 5 new tokens, 6 cached
    for (let i = 0; i < 5; i++) {
      const d = maxAbsDiff(rows[i]!, lastLogits(model, seq.slice(0, 7 + i)));
      assert.ok(d < 1e-5, `chunk position ${i}: max |diff| ${d}`);
    }
  } finally {
    GPT.disposeKVCache(kv);
  }
});

test("`GPT.forward` with a KV cache refuses to run past block_size", () => {
  const model = tinyGPT({ blockSize: 8 });
  const kv = model.newKVCache();
  try {
    cachedStep(model, kv, ids(6));
    assert.throws(() => cachedStep(model, kv, ids(3)), (e: unknown) => e instanceof ValueError && /sequence length 9 exceeds block_size 8/.test(e.message));
  } finally {
    GPT.disposeKVCache(kv);
  }
});

test("greedy `generate` equals argmax of full forwards, step by step", () => {
  const model = tinyGPT();
  const prompt = ids(4, 64, 5);
  const got = [...generate(model, prompt, { maxNewTokens: 12, temperature: 0 })];
  assert.equal(got.length, 12);
  const seq = [...prompt];
  for (let i = 0; i < got.length; i++) {
    const want = argmax(lastLogits(model, seq));
    assert.equal(got[i], want, `token ${i}`);
    seq.push(want);
  }
  // Not a degenerate repeat of one token (the check above would be weak otherwise).
  assert.ok(new Set(got).size > 1, `generated ${got}`);
});

test("`generate` with topK 1 is greedy at any temperature", () => {
  const model = tinyGPT();
  const prompt = ids(3, 64, 11);
  const greedy = [...generate(model, prompt, { maxNewTokens: 8, temperature: 0 })];
  assert.deepEqual([...generate(model, prompt, { maxNewTokens: 8, temperature: 5, topK: 1, seed: 42 })], greedy);
});

test("`generate` with the same seed samples the same tokens; another seed differs", () => {
  const model = tinyGPT({}, 5);
  // Flatten the distribution so sampling really is random.
  const prompt = ids(3, 64, 2);
  const opts = { maxNewTokens: 20, temperature: 30, topP: 0.95 };
  const a = [...generate(model, prompt, { ...opts, seed: 7 })];
  const b = [...generate(model, prompt, { ...opts, seed: 7 })];
  const c = [...generate(model, prompt, { ...opts, seed: 8 })];
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

test("`generate` draws step i's uniform from (seed, offset i): it equals a full-forward reference sampler", () => {
  const model = tinyGPT();
  const prompt = ids(3, 64, 4);
  const opts = { temperature: 20, topK: 10, topP: 0.9 };
  const seed = 123;
  const got = [...generate(model, prompt, { ...opts, maxNewTokens: 10, seed })];
  const seq = [...prompt];
  for (let i = 0; i < 10; i++) {
    const u = withScope(() => rand([1], { seed, offset: i }).item());
    const next = sampleToken(lastLogits(model, seq), opts, u);
    assert.equal(got[i], next, `token ${i}`);
    seq.push(next);
  }
});

test("`generate` stops after a stop token, at maxNewTokens, and when the context is full", () => {
  const model = tinyGPT();
  const prompt = ids(3, 64, 5);
  const greedy = [...generate(model, prompt, { maxNewTokens: 10, temperature: 0 })];
  const stop = greedy[4]!;
  const firstStop = greedy.indexOf(stop);
  assert.deepEqual([...generate(model, prompt, { maxNewTokens: 10, temperature: 0, stopTokens: [stop] })], greedy.slice(0, firstStop + 1));
  assert.deepEqual([...generate(model, prompt, { maxNewTokens: 0, temperature: 0 })], []);
  // blockSize 32, prompt 30: tokens are produced from contexts of 30, 31 and 32 positions.
  assert.equal([...generate(model, ids(30), { maxNewTokens: 10, temperature: 0 })].length, 3);
});

test("`generate` restores the model's training mode and validates its arguments", () => {
  const model = tinyGPT();
  model.train();
  [...generate(model, [1, 2], { maxNewTokens: 2, temperature: 0 })];
  assert.equal(model.training, true);
  model.eval();
  assert.throws(() => [...generate(model, [], { maxNewTokens: 2 })], /prompt must contain at least one token/);
  assert.throws(() => [...generate(model, ids(33), { maxNewTokens: 2 })], /prompt has 33 tokens, more than the model's context of 32/);
  assert.throws(() => [...generate(model, [1], { maxNewTokens: -1 })], /maxNewTokens must be a non-negative integer, got -1/);
  assert.throws(() => [...generate(model, [1], { maxNewTokens: 2, temperature: -1 })], /temperature must be >= 0, got -1/);
});

test("`sampleToken` applies temperature, top-k and top-p as documented", () => {
  // The draw is the inverse CDF over the candidates in id order. Probabilities at temperature 1:
  // 0.032, 0.644, 0.087, 0.237, so u in [0, 0.032) picks id 0, [0.032, 0.676) id 1, and so on.
  const logits = Float32Array.from([0, 3, 1, 2]);
  assert.equal(sampleToken(logits, { temperature: 0 }, 0.999), 1);
  assert.equal(sampleToken(logits, { temperature: 1 }, 0), 0, "u = 0 picks the first id");
  assert.equal(sampleToken(logits, { temperature: 1 }, 0.5), 1);
  assert.equal(sampleToken(logits, { temperature: 1 }, 0.7), 2);
  assert.equal(sampleToken(logits, { temperature: 1 }, 0.999999), 3, "u near 1 picks the last id");
  assert.equal(sampleToken(logits, { temperature: 1, topK: 2 }, 0), 1, "top-k 2 keeps ids 1 and 3");
  assert.equal(sampleToken(logits, { temperature: 1, topK: 2 }, 0.999999), 3, "top-k 2 keeps ids 1 and 3");
  assert.equal(sampleToken(logits, { temperature: 1, topP: 0.5 }, 0), 1, "top-p 0.5 keeps only the top token (p = 0.64)");
  assert.equal(sampleToken(logits, { temperature: 1, topP: 0.5 }, 0.999999), 1, "top-p 0.5 keeps only the top token (p = 0.64)");
  // Uniform logits: u in [j/4, (j+1)/4) picks the j-th id (ties broken by id).
  const flat = new Float32Array(4);
  for (let j = 0; j < 4; j++) assert.equal(sampleToken(flat, {}, j / 4 + 0.1), j);
  assert.throws(() => sampleToken(logits, { topK: 1.5 }, 0.5), /topK must be a non-negative integer/);
  assert.throws(() => sampleToken(logits, { topP: 0 }, 0.5), /topP must be in \(0, 1\]/);
  assert.throws(() => sampleToken(logits, { temperature: Number.NaN }, 0.5), /temperature must be >= 0/);
});

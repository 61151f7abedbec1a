// logit_bias (OpenAI semantics) in the one sampler: the bias is added to the raw logits before
// the penalties, so -100 bans a token and +100 forces it, greedy or sampled, with or without
// top-k / top-p; in the engine, every generated token obeys it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, loadTokenizer } from "../../src/index.js";
import { Engine } from "../../src/inference/index.js";
import { DEFAULT_SAMPLING, drawToken, tokenDistribution, validateSampling, type SamplingParams } from "../../src/inference/sample/index.js";

/** Logits like a model's: a few units apart (a seeded LCG, so failures reproduce). */
function logitsRow(V: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Float32Array.from({ length: V }, () => 8 * (r() - 0.5));
}

const argmax = (x: Float32Array) => x.reduce((b, v, i) => (v > x[b]! ? i : b), 0);

test("tokenDistribution(): -100 bans a token and +100 forces it, greedy and sampled, with truncation too", () => {
  const V = 500;
  for (let seed = 1; seed <= 5; seed++) {
    const logits = logitsRow(V, seed);
    const top = argmax(logits);
    const target = (top + 17) % V;
    for (const extra of [{}, { topK: 40 }, { topP: 0.9 }, { minP: 0.05 }, { repetitionPenalty: 1.3 }] as Array<Partial<SamplingParams>>) {
      for (const temperature of [0, 0.7, 1.5]) {
        const p = (logitBias: Array<[number, number]>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...extra, temperature, logitBias });
        const banned = tokenDistribution(logits, p([[top, -100]]), [top], []);
        const forced = tokenDistribution(logits, p([[target, 100]]), [], []);
        for (let k = 0; k < 200; k++) {
          const u = (k + 0.5) / 200;
          assert.notEqual(drawToken(banned, u), top, `seed ${seed}, T ${temperature}, ${JSON.stringify(extra)}, u ${u}: banned token drawn`);
          assert.equal(drawToken(forced, u), target, `seed ${seed}, T ${temperature}, ${JSON.stringify(extra)}, u ${u}: forced token not drawn`);
        }
      }
    }
    // No bias, or an empty one, is the unbiased distribution.
    assert.deepEqual(tokenDistribution(logits, { ...DEFAULT_SAMPLING, logitBias: [] }, [], []), tokenDistribution(logits, DEFAULT_SAMPLING, [], []));
  }
});

test("validateSampling() names a logit_bias entry out of range", () => {
  assert.throws(() => validateSampling({ ...DEFAULT_SAMPLING, logitBias: [[3, 100.5]] }), /logit_bias\[3\] must be in \[-100, 100\], got 100.5/);
  assert.throws(() => validateSampling({ ...DEFAULT_SAMPLING, logitBias: [[-1, 1]] }), /logit_bias token id must be a non-negative integer, got -1/);
  validateSampling({ ...DEFAULT_SAMPLING, logitBias: [[3, -100], [4, 100]] });
});

test("Engine: no generated token is a banned one, and a forced one is every token (greedy and seeded sampling)", async () => {
  const model = new GPT({ nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 50304 }, { seed: 3 });
  const engine = new Engine(model, loadTokenizer("gpt2"), { kvCacheBytes: 8 * 2 ** 20, maxNumSeqs: 4 });
  const run = async (sampling: SamplingParams) => {
    const ids: number[] = [];
    for await (const ev of engine.submit({ requestId: `r${Math.random()}`, promptTokens: [464, 3290, 3332], sampling, maxTokens: 24, stop: [], stopTokenIds: [], n: 1 })) {
      if (ev.type === "delta") ids.push(...ev.tokenIds);
    }
    return ids;
  };
  try {
    for (const temperature of [0, 1]) {
      const base: SamplingParams = { ...DEFAULT_SAMPLING, temperature, seed: 7 };
      const plain = await run(base);
      assert.equal(plain.length, 24);
      const ban = [...new Set(plain)].map((t) => [t, -100] as [number, number]);
      const banned = await run({ ...base, logitBias: ban });
      assert.equal(banned.length, 24);
      assert.deepEqual(banned.filter((t) => plain.includes(t)), [], `T ${temperature}: banned tokens ${JSON.stringify(ban.map((b) => b[0]))} were generated: ${JSON.stringify(banned)}`);
      assert.deepEqual(await run({ ...base, logitBias: [[262, 100]] }), Array(24).fill(262), `T ${temperature}: +100 on " the" did not force it`);
    }
    assert.throws(() => engine.submit({ requestId: "bad", promptTokens: [1], sampling: { ...DEFAULT_SAMPLING, logitBias: [[50300, 1]] }, maxTokens: 1, stop: [], stopTokenIds: [], n: 1 }), /logit_bias token 50300 is outside the vocabulary \(0..50256\)/);
  } finally {
    await engine.shutdown();
  }
});

// The one sampler: plain temperature draws walk the candidates in descending-probability order
// like a full sort (without doing one), `sampleToken` is that sampler, and a seeded request
// samples the same tokens in the serving engine as in `generate()` (`megalith sample`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, generate, sampleToken, loadTokenizer } from "../../src/index.js";
import { Engine } from "../../src/inference/index.js";
import { DEFAULT_SAMPLING, drawToken, tokenDistribution, uniformAt, type SamplingParams } from "../../src/inference/sample/index.js";

/** The reference: sort every id by logit (descending, ties by id), walk the CDF one by one. */
function sortedDraw(logits: Float32Array, temperature: number, u: number): number {
  const ids = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  const m = logits[ids[0]!]!;
  const p = ids.map((i) => Math.exp((logits[i]! - m) / temperature));
  let r = u * p.reduce((s, x) => s + x, 0);
  for (let j = 0; j < ids.length; j++) {
    r -= p[j]!;
    if (r < 0) return ids[j]!;
  }
  return ids[ids.length - 1]!;
}

test("`drawToken()` on a plain temperature distribution equals the full-sort walk", () => {
  const seed = Date.now() % 100000;
  // Spread logits with many exact ties (rounded to 0.25) so the id tie-break is exercised, and
  // nearly flat ones (a 0.01-wide range) so one weight bucket holds thousands of ids.
  const spread = (i: number) => Math.round(4 * 3 * Math.sin(i * 12.9898 + seed)) / 4;
  const flat = (i: number) => Math.round(1e4 * 0.01 * Math.sin(i * 12.9898 + seed)) / 1e4;
  for (const [V, f] of [[5, spread], [64, spread], [65, spread], [1000, spread], [4099, spread], [3000, flat], [20011, flat]] as const) {
    const logits = Float32Array.from({ length: V }, (_, i) => f(i));
    const params: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.7 };
    const d = tokenDistribution(logits, params, [], []);
    assert.equal(d.ids, null, "the plain path keeps no sorted candidate list");
    for (let k = 0; k < 200; k++) {
      const u = uniformAt(seed, V * 1000 + k);
      assert.equal(drawToken(d, u), sortedDraw(logits, 0.7, u), `V ${V}, u ${u} (seed ${seed})`);
    }
    for (const u of [0, 1e-9, 0.5, 0.999999]) assert.equal(drawToken(d, u), sortedDraw(logits, 0.7, u), `V ${V}, u ${u}`);
  }
});

test("`sampleToken()` is the inference sampler's tokenDistribution + drawToken", () => {
  const logits = Float32Array.from({ length: 300 }, (_, i) => Math.cos(i * 0.37) * 5);
  for (const opts of [{ temperature: 0 }, { temperature: 1 }, { temperature: 2, topK: 20 }, { temperature: 0.5, topP: 0.8 }]) {
    const p: SamplingParams = { ...DEFAULT_SAMPLING, ...opts };
    for (let k = 0; k < 50; k++) {
      const u = uniformAt(9, k);
      assert.equal(sampleToken(logits, opts, u), drawToken(tokenDistribution(logits, p, [], []), u), JSON.stringify(opts));
    }
  }
});

test("a seeded request samples the same tokens in the engine as `generate()`", async () => {
  const tok = loadTokenizer("gpt2");
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 50304 }, { seed: 11 });
  const engine = new Engine(model, tok, { modelName: "tiny", kvCacheBytes: 4 * 2 ** 20, blockSize: 16 });
  try {
    const prompt = tok.encode("The one sampler draws");
    for (const [i, opts] of [{ temperature: 1 }, { temperature: 0.8, topK: 40 }, { temperature: 1.2, topP: 0.9 }, { temperature: 0 }].entries()) {
      const seed = 100 + i;
      const want = [...generate(model, prompt, { ...opts, maxNewTokens: 12, seed, vocabSize: tok.vocabSize })];
      const got: number[] = [];
      const sampling: SamplingParams = { ...DEFAULT_SAMPLING, ...opts, seed };
      for await (const ev of engine.submit({ requestId: `r${i}`, promptTokens: prompt, sampling, maxTokens: 12, stop: [], stopTokenIds: [], n: 1 })) {
        if (ev.type === "delta") got.push(...ev.tokenIds);
      }
      // generate() does not stop at end-of-text here; the engine always does.
      const eot = want.indexOf(tok.eotToken);
      assert.deepEqual(got, eot < 0 ? want : want.slice(0, eot + 1), `${JSON.stringify(opts)} seed ${seed}`);
      if (opts.temperature > 0) assert.notDeepEqual(want, [...generate(model, prompt, { ...opts, maxNewTokens: 12, seed: seed + 50, vocabSize: tok.vocabSize })]);
    }
  } finally {
    await engine.shutdown();
  }
});

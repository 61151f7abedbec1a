// The one sampler: every draw is the inverse CDF over the candidates in id order (plain
// temperature: every id; top-k/top-p/min-p: the ids they keep, chosen by descending logit with
// ties by id), so last-bit differences in the logits between batch shapes do not change the
// drawn token; `sampleToken` is that sampler, and a seeded request samples the same tokens in
// the serving engine as in `generate()` (`megalith sample`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, generate, sampleToken, loadTokenizer } from "../../src/index.js";
import { Engine } from "../../src/inference/index.js";
import { DEFAULT_SAMPLING, drawToken, sampleFromProbs, tokenDistribution, uniformAt, type SamplingParams } from "../../src/inference/sample/index.js";

/** A seeded [0, 1) generator (mulberry32), so a failure names the seed that reproduces it. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const gaussian = (r: () => number) => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());

/** float32 bit tricks: bf16 rounding (truncation) and a 1-ulp step away from or towards zero. */
const F32 = new Float32Array(1);
const I32 = new Int32Array(F32.buffer);
const bf16 = (x: number) => ((F32[0] = x), (I32[0] = I32[0]! & ~0xffff), F32[0]!);
const ulpStep = (x: number, away: boolean) => (x === 0 ? (away ? 1e-45 : -1e-45) : ((F32[0] = x), (I32[0] = I32[0]! + (away ? 1 : -1)), F32[0]!));

/**
 * The reference: float64 weights exp((l - max) / T) of the `kept` ids (every id when null),
 * prefix sums over ids 0..V-1, and a binary search for the first prefix above u x total.
 */
function idOrderDraw(logits: Float32Array, temperature: number, u: number, kept: ReadonlySet<number> | null = null): number {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if ((!kept || kept.has(i)) && logits[i]! > m) m = logits[i]!;
  const prefix = new Float64Array(logits.length);
  let acc = 0;
  for (let i = 0; i < logits.length; i++) prefix[i] = acc += !kept || kept.has(i) ? Math.exp((logits[i]! - m) / temperature) : 0;
  const r = u * acc;
  let lo = 0, hi = logits.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (r < prefix[mid]!) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The ids top-k, then top-p, then min-p keep, from the logits sorted by descending value, ties by id. */
function keptIds(logits: Float32Array, p: SamplingParams): Set<number> {
  let ids = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (p.topK > 0) ids = ids.slice(0, p.topK);
  const w = ids.map((i) => Math.exp((logits[i]! - logits[ids[0]!]!) / p.temperature));
  const total = w.reduce((s, x) => s + x, 0);
  let n = ids.length;
  if (p.topP < 1) {
    let acc = 0;
    for (n = 0; n < ids.length && acc < p.topP; n++) acc += w[n]! / total;
  }
  if (p.minP > 0) {
    const cut = w.findIndex((x, j) => j < n && x < p.minP * w[0]!);
    if (cut > 0) n = cut;
  }
  return new Set(ids.slice(0, n));
}

test("`drawToken()` on a plain temperature distribution is the inverse CDF over ids in id order (float64 reference)", () => {
  const seed = Date.now() % 1_000_000;
  const r = rng(seed);
  // Fresh random logits: spread, nearly flat (a tiny random model's), bf16-rounded (many exact
  // ties), and a padded vocabulary whose last 47 ids are masked to -Infinity.
  const spread = () => 3 * gaussian(r);
  const flat = () => 0.1 * gaussian(r);
  const tied = () => bf16(0.1 * gaussian(r));
  const cases: Array<[number, () => number, number]> = [[5, spread, 1], [64, spread, 0.7], [1000, tied, 1.3], [4099, flat, 1], [50304, flat, 1], [50304, tied, 0.7], [50304, spread, 1]];
  for (const [ci, [V, f, T]] of cases.entries()) {
    const logits = Float32Array.from({ length: V }, f);
    if (ci === 4) logits.fill(-Infinity, V - 47);
    const d = tokenDistribution(logits, { ...DEFAULT_SAMPLING, temperature: T }, [], []);
    assert.equal(d.ids, null, "the plain path keeps no candidate list");
    const us = [0, 1e-9, 0.5, 1 - 2 ** -24, ...Array.from({ length: 300 }, (_, k) => uniformAt(seed, ci * 1000 + k))];
    for (const u of us) {
      const t = drawToken(d, u);
      assert.equal(t, idOrderDraw(logits, T, u), `case ${ci} (V ${V}, T ${T}), u ${u} (seed ${seed})`);
      assert.ok(d.weights[t]! > 0, `a zero-weight id is never drawn (case ${ci}, u ${u}, seed ${seed})`);
    }
  }
  // Weights given as a dense vector draw the same way (the speculative residual).
  const w = Float64Array.from({ length: 300 }, (_, i) => (i % 7 === 3 ? 0 : r()));
  const prefix: number[] = [];
  w.reduce((acc, x, i) => (prefix[i] = acc + x), 0);
  for (let k = 0; k < 200; k++) {
    const u = uniformAt(seed, 99_000 + k);
    assert.equal(sampleFromProbs(w, u), prefix.findIndex((c) => u * prefix[prefix.length - 1]! < c), `sampleFromProbs, u ${u} (seed ${seed})`);
  }
});

test("top-k / top-p / min-p keep the most likely ids (ties by id) and draw among them in id order", () => {
  const seed = Date.now() % 1_000_000;
  const r = rng(seed);
  for (const [ci, opts] of [{ topK: 40 }, { topP: 0.9 }, { topK: 200, topP: 0.5 }, { minP: 0.3 }, { topK: 1000, minP: 0.05 }].entries()) {
    const p: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0.8, ...opts };
    const logits = Float32Array.from({ length: 5000 }, () => (ci % 2 ? bf16(gaussian(r)) : 2 * gaussian(r)));
    const d = tokenDistribution(logits, p, [], []);
    const kept = keptIds(logits, p);
    assert.deepEqual([...d.ids!], [...kept].sort((a, b) => a - b), `${JSON.stringify(opts)}: the kept ids, ascending (seed ${seed})`);
    for (let k = 0; k < 200; k++) {
      const u = uniformAt(seed, ci * 1000 + k);
      assert.equal(drawToken(d, u), idOrderDraw(logits, p.temperature, u, kept), `${JSON.stringify(opts)}, u ${u} (seed ${seed})`);
    }
  }
  // Exact ties at the cut: the lower ids stay, whatever their place in the vocabulary.
  const flat = new Float32Array(10).fill(0.5);
  flat[7] = 2;
  const d = tokenDistribution(flat, { ...DEFAULT_SAMPLING, topK: 3 }, [], []);
  assert.deepEqual([...d.ids!], [0, 1, 7]);
  assert.deepEqual([0, 1.5 / (2 + Math.exp(1.5)), 0.999].map((u) => drawToken(d, u)), [0, 1, 7]);
});

test("a 1-ulp change of every logit (a batched vs unbatched forward) changes a negligible number of 1000 draws", () => {
  const seed = Date.now() % 1_000_000;
  const r = rng(seed);
  const V = 50304;
  /** The old order, for contrast: every id by descending logit (ties by id), walked one by one. */
  const descendingDraws = (logits: Float32Array, us: number[]) => {
    let m = -Infinity;
    for (const v of logits) if (v > m) m = v;
    const ids = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
    const prefix = new Float64Array(V);
    let acc = 0;
    for (let j = 0; j < V; j++) prefix[j] = acc += Math.exp(logits[ids[j]!]! - m);
    return us.map((u) => ids[prefix.findIndex((c) => u * acc < c)]!);
  };
  for (const [name, f] of [["near-flat", () => 0.1 * gaussian(r)], ["near-flat bf16-rounded", () => bf16(0.1 * gaussian(r))]] as const) {
    let flips = 0, descendingFlips = 0;
    for (let row = 0; row < 4; row++) {
      const a = Float32Array.from({ length: V }, f);
      const b = Float32Array.from(a, (x) => ulpStep(x, r() < 0.5));
      const da = tokenDistribution(a, DEFAULT_SAMPLING, [], []);
      const db = tokenDistribution(b, DEFAULT_SAMPLING, [], []);
      const us = Array.from({ length: 250 }, (_, k) => uniformAt(seed + row, k));
      for (const u of us) if (drawToken(da, u) !== drawToken(db, u)) flips++;
      if (name === "near-flat bf16-rounded" && row === 0) {
        const [x, y] = [descendingDraws(a, us), descendingDraws(b, us)];
        descendingFlips = x.filter((t, k) => t !== y[k]).length;
      }
    }
    assert.ok(flips <= 1, `${name}: ${flips} of 1000 draws changed (seed ${seed})`);
    // The descending-probability walk this replaced: tied tokens trade places, and most draws change.
    if (name === "near-flat bf16-rounded") assert.ok(descendingFlips > 100, `descending order changed only ${descendingFlips} of 250 draws (seed ${seed})`);
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

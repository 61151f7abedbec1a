// scaledDotProductAttention beyond the fused kernel's basic cases (test/tensor/attention.test.ts):
// causal with T != S (top-left alignment), no batch dims, a custom scale, strided q/k/v taken
// from head-split views, 1 and 2 threads, and the composed path (additive and boolean masks,
// Dv != D, a mask that requires grad), all against the float64 reference with q/k/v gradients.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, type Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { accumTol, checkOp, configs, gradTol, randArr, seedFor, toTensor, withConfig, assertClose } from "../_util/check.js";

interface Case {
  label: string;
  batch: number[];
  T: number;
  S: number;
  D: number;
  causal: boolean;
  scale?: number;
}

const FUSED: Case[] = [
  { label: "causal T > S (65 queries, 33 keys)", batch: [1, 2], T: 65, S: 33, D: 8, causal: true },
  { label: "causal T < S (33 queries, 65 keys)", batch: [2], T: 33, S: 65, D: 8, causal: true },
  { label: "no batch dims, T = 129", batch: [], T: 129, S: 129, D: 4, causal: true },
  { label: "custom scale 0.3, non-causal", batch: [2, 1], T: 17, S: 3, D: 5, causal: false, scale: 0.3 },
  { label: "T = S = 1, D = 1", batch: [3], T: 1, S: 1, D: 1, causal: false },
  { label: "T = 64 exactly (one full block) + causal", batch: [1], T: 64, S: 64, D: 2, causal: true },
];

function runCase(c: Case, tag: string): void {
  const seed = seedFor(`attention ${c.label}`);
  const opts = { isCausal: c.causal, scale: c.scale };
  checkOp({
    what: `scaledDotProductAttention ${c.label} [${tag}]`, seed,
    inputs: [randArr([...c.batch, c.T, c.D], seed), randArr([...c.batch, c.S, c.D], seed + 1), randArr([...c.batch, c.S, c.D], seed + 2)],
    megalith: (q, k, v) => F.scaledDotProductAttention(q, k, v, opts),
    reference: (q, k, v) => R.attention(q, k, v, opts),
    referenceGrad: (gy, q, k, v) => { const g = R.attentionBackward(q, k, v, gy, opts); return [g.gq, g.gk, g.gv]; },
    tol: accumTol(Math.max(c.S, c.D), 3),
    gradTol: gradTol(Math.max(c.S, c.T, c.D), 3),
  });
}

test("fused attention matches the reference for causal T != S, no batch dims, custom scale and single-element heads (kernel sets, 1 or 2 threads)", () => {
  for (const cfg of configs()) withConfig(cfg, () => FUSED.forEach((c) => runCase(c, cfg.label)));
});

test("fused attention accepts strided q/k/v from head-split views and routes gradients to the unsplit tensors", () => {
  const [B, T, H, D] = [2, 19, 3, 4];
  const seed = seedFor("attention head split");
  const split = (t: Tensor) => t.reshape([B, T, H, D]).transpose(1, 2);  // [B, H, T, D], non-contiguous
  const rsplit = (a: R.Arr) => R.transpose(R.reshape(a, [B, T, H, D]), 1, 2);
  for (const cfg of configs([2])) {
    withConfig(cfg, () => {
      checkOp({
        what: `attention on head-split views [${cfg.label}]`, seed,
        inputs: [randArr([B, T, H * D], seed), randArr([B, T, H * D], seed + 1), randArr([B, T, H * D], seed + 2)],
        megalith: (q, k, v) => F.scaledDotProductAttention(split(q), split(k), split(v), { isCausal: true }),
        reference: (q, k, v) => R.attention(rsplit(q), rsplit(k), rsplit(v), { isCausal: true }),
        referenceGrad: (gy, q, k, v) => {
          const g = R.attentionBackward(rsplit(q), rsplit(k), rsplit(v), gy, { isCausal: true });
          const back = (a: R.Arr) => R.reshape(R.transpose(a, 1, 2), [B, T, H * D]);
          return [back(g.gq), back(g.gk), back(g.gv)];
        },
        tol: accumTol(T, 3),
        gradTol: gradTol(T, 3),
      });
    });
  }
});

test("composed attention with an additive float mask matches the reference, including a mask broadcast over heads", () => {
  const seed = seedFor("attention additive mask");
  const [B, H, T, S, D] = [2, 2, 7, 9, 4];
  const mask = randArr([T, S], seed + 3, { scale: 2 });
  const mt = toTensor(mask);
  const opts = { mask };
  checkOp({
    what: "attention + additive mask [T, S]", seed,
    inputs: [randArr([B, H, T, D], seed), randArr([B, H, S, D], seed + 1), randArr([B, H, S, D], seed + 2)],
    megalith: (q, k, v) => F.scaledDotProductAttention(q, k, v, { attnMask: mt }),
    reference: (q, k, v) => R.attention(q, k, v, opts),
    referenceGrad: (gy, q, k, v) => { const g = R.attentionBackward(q, k, v, gy, opts); return [g.gq, g.gk, g.gv]; },
    tol: accumTol(S, 3), gradTol: gradTol(S, 3),
  });
});

test("composed attention with a boolean uint8 mask [B, 1, T, S] matches the reference (masked keys get zero weight and zero gradient)", () => {
  const seed = seedFor("attention bool mask");
  const [B, H, T, S, D] = [2, 3, 5, 6, 4];
  const keep = R.map(randArr([B, 1, T, S], seed + 3, { dist: "uniform" }), (u) => (u < 0.6 ? 1 : 0));
  for (let i = 0; i < B * T; i++) keep.data[i * S] = 1;  // every query keeps key 0: no empty rows
  const mt = M.tensor(Array.from(keep.data), { shape: keep.shape, dtype: "uint8" });
  const opts = { boolMask: keep };
  checkOp({
    what: "attention + bool mask", seed,
    inputs: [randArr([B, H, T, D], seed), randArr([B, H, S, D], seed + 1), randArr([B, H, S, D], seed + 2)],
    megalith: (q, k, v) => F.scaledDotProductAttention(q, k, v, { attnMask: mt }),
    reference: (q, k, v) => R.attention(q, k, v, opts),
    referenceGrad: (gy, q, k, v) => { const g = R.attentionBackward(q, k, v, gy, opts); return [g.gq, g.gk, g.gv]; },
    tol: accumTol(S, 3), gradTol: gradTol(S, 3),
  });
});

test("composed attention with a value head dim different from the query's (Dv != D), causal", () => {
  const seed = seedFor("attention dv");
  const [T, S, D, Dv] = [6, 6, 4, 7];
  checkOp({
    what: "attention Dv != D", seed,
    inputs: [randArr([2, T, D], seed), randArr([2, S, D], seed + 1), randArr([2, S, Dv], seed + 2)],
    megalith: (q, k, v) => F.scaledDotProductAttention(q, k, v, { isCausal: true }),
    reference: (q, k, v) => R.attention(q, k, v, { isCausal: true }),
    tol: accumTol(S, 3), gradTol: gradTol(S, 3),
  });
});

test("an additive attention mask that requires grad receives the score gradient", () => {
  const seed = seedFor("attention mask grad");
  const [T, S, D] = [3, 4, 2];
  const q = randArr([2, T, D], seed), k = randArr([2, S, D], seed + 1), v = randArr([2, S, D], seed + 2);
  checkOp({
    what: "gradient of an additive mask", seed,
    inputs: [randArr([T, S], seed + 3)],
    megalith: (m) => F.scaledDotProductAttention(toTensor(q), toTensor(k), toTensor(v), { attnMask: m }),
    reference: (m) => R.attention(q, k, v, { mask: m }),
  });
});

test("attention dropout (dropoutP > 0) is reproducible under manualSeed and keeps gradients finite", () => {
  const seed = seedFor("attention dropout");
  const q = toTensor(randArr([2, 6, 4], seed), { requiresGrad: true });
  const k = toTensor(randArr([2, 6, 4], seed + 1)), v = toTensor(randArr([2, 6, 4], seed + 2));
  M.manualSeed(seed);
  const a = F.scaledDotProductAttention(q, k, v, { dropoutP: 0.5 });
  M.manualSeed(seed);
  const b = F.scaledDotProductAttention(q, k, v, { dropoutP: 0.5 });
  assertClose(a, b, { what: "same seed, same dropout", rtol: 0, atol: 0, seed });
  const plain = F.scaledDotProductAttention(q, k, v);
  assert.notDeepEqual(Array.from(a.data()), Array.from(plain.data()), "dropout changed the output");
  a.sum().backward();
  assert.ok(Array.from(q.grad!.data()).every(Number.isFinite));
});

// The reference is only worth what it gets right: its hand-derived gradients agree with finite
// differences, its special functions with known values, its Philox with the published answer.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as R from "./reference.js";
import { philox } from "./philox.js";
import { assertClose, randArr, seedFor } from "./check.js";

test("reference `erf()` matches tabulated values to 1e-14", () => {
  const table: Array<[number, number]> = [
    [0, 0], [0.1, 0.1124629160182849], [0.5, 0.5204998778130465], [1, 0.8427007929497149],
    [2, 0.9953222650189527], [2.9, 0.9999589021219005], [3, 0.9999779095030014], [3.5, 0.9999992569016276],
    [5, 0.9999999999984626], [-1.5, -0.9661051464753108],
  ];
  for (const [x, v] of table) assert.ok(Math.abs(R.erf(x) - v) < 1e-14, `erf(${x}) = ${R.erf(x)}, expected ${v}`);
});

test("reference `matmulBackward()` agrees with finite differences on broadcast batches and 1-D operands", () => {
  const seed = seedFor("ref matmul grad");
  const cases: Array<[number[], number[]]> = [[[2, 3, 4], [4, 5]], [[3, 1, 2, 4], [2, 4, 3]], [[4], [2, 4, 3]], [[2, 3, 4], [4]]];
  cases.forEach(([sa, sb], i) => {
    const a = randArr(sa, seed + 3 * i), b = randArr(sb, seed + 3 * i + 1);
    const y = R.matmul(a, b);
    const gy = randArr(y.shape, seed + 3 * i + 2);
    const [na, nb] = R.numGrad(R.matmul, [a, b], gy);
    const { ga, gb } = R.matmulBackward(a, b, gy);
    assertClose(ga, na!, { what: `matmulBackward ga ${sa} @ ${sb}`, rtol: 1e-7, atol: 1e-8 });
    assertClose(gb, nb!, { what: `matmulBackward gb ${sa} @ ${sb}`, rtol: 1e-7, atol: 1e-8 });
  });
});

test("reference `attentionBackward()` agrees with finite differences (causal, masked, T != S)", () => {
  const seed = seedFor("ref attention grad");
  const T = 3, S = 4, D = 2;
  const q = randArr([2, T, D], seed), k = randArr([2, S, D], seed + 1), v = randArr([2, S, D], seed + 2);
  const mask = randArr([T, S], seed + 3);
  for (const opts of [{}, { isCausal: true }, { mask }, { scale: 0.7 }] as R.AttentionRefOptions[]) {
    const gy = randArr([2, T, D], seed + 4);
    const f = (a: R.Arr, b: R.Arr, c: R.Arr) => R.attention(a, b, c, opts);
    const [nq, nk, nv] = R.numGrad(f, [q, k, v], gy);
    const { gq, gk, gv } = R.attentionBackward(q, k, v, gy, opts);
    const what = `attentionBackward ${JSON.stringify(Object.keys(opts))}`;
    assertClose(gq, nq!, { what: `${what} gq`, rtol: 1e-7, atol: 1e-8 });
    assertClose(gk, nk!, { what: `${what} gk`, rtol: 1e-7, atol: 1e-8 });
    assertClose(gv, nv!, { what: `${what} gv`, rtol: 1e-7, atol: 1e-8 });
  }
});

test("reference `crossEntropyBackward()` agrees with finite differences (ignored rows, smoothing, every reduction)", () => {
  const seed = seedFor("ref ce grad");
  const x = randArr([5, 4], seed);
  const t = [1, -100, 3, 0, 3];
  for (const reduction of ["mean", "sum", "none"] as const) {
    for (const labelSmoothing of [0, 0.2]) {
      const opts = { reduction, labelSmoothing };
      const y = R.crossEntropy(x, t, opts);
      const gy = randArr(y.shape, seed + 1);
      const [num] = R.numGrad((a) => R.crossEntropy(a, t, opts), [x], gy);
      assertClose(R.crossEntropyBackward(x, t, gy, opts), num!, { what: `crossEntropyBackward ${JSON.stringify(opts)}`, rtol: 1e-7, atol: 1e-8 });
    }
  }
});

test("reference `philox()` reproduces the Random123 known-answer vector", () => {
  // philox4x32_10(ctr = {0,0,0,0}, key = {0,0}) from Random123's kat_vectors
  assert.deepEqual(philox(0, 0).map((w) => w.toString(16).padStart(8, "0")), ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]);
});

test("reference `bf16Round()` and `f16Round()` round to nearest even at exact ties", () => {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
  assert.equal(R.bf16Round(1 + 2 ** -8), 1);
  assert.equal(R.bf16Round(1 + 3 * 2 ** -8), 1 + 2 * 2 ** -7);
  assert.equal(R.bf16Round(1 + 2 ** -8 + 2 ** -20), 1 + 2 ** -7);
  assert.equal(R.f16Round(1 + 2 ** -11), 1);
  assert.equal(R.f16Round(1 + 3 * 2 ** -11), 1 + 2 * 2 ** -10);
  assert.equal(R.f16Round(65504), 65504);
  assert.equal(R.f16Round(65520), Infinity);
  assert.equal(R.f16Round(2 ** -25), 0);  // tie between 0 and the smallest subnormal: even is 0
  assert.equal(R.f16Round(3 * 2 ** -25), 2 ** -23);
});

// Fused NN kernels against the float64 reference: softmax / log-softmax, layer norm, RMS norm,
// embedding and cross-entropy, forward and backward, on odd sizes and strided inputs, under every
// kernel build and, for kernels with per-thread partial sums, with 1 and 2 threads.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, type Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { KERNEL_SETS, accumTol, assertClose, checkOp, configs, gradTol, randArr, seedFor, toTensor, withConfig, withKernelSet, Rng } from "../_util/check.js";

// ---- softmax / logSoftmax --------------------------------------------------------------------------

const SOFTMAX_CASES: Array<{ label: string; base: number[]; dim: number; view?: (t: Tensor) => Tensor; ref?: (a: R.Arr) => R.Arr; scale?: number }> = [
  { label: "[3, 17, 5] dim -1", base: [3, 17, 5], dim: -1 },
  { label: "[3, 17, 5] dim 1", base: [3, 17, 5], dim: 1 },
  { label: "[3, 17, 5] dim 0", base: [3, 17, 5], dim: 0 },
  { label: "[2, 129] dim -1", base: [2, 129], dim: -1 },
  { label: "[1] dim 0", base: [1], dim: 0 },
  { label: "[4, 1] dim -1 (one column)", base: [4, 1], dim: -1 },
  { label: "0-d", base: [], dim: 0 },
  { label: "large logits (scale 30)", base: [3, 65], dim: -1, scale: 30 },
  { label: "transposed [17, 3]^T dim -1", base: [17, 3], dim: -1, view: (t) => t.t(), ref: (a) => R.transpose(a, 0, 1) },
  { label: "slice step 2 dim 0", base: [9, 4], dim: 0, view: (t) => t.slice(0, 0, 9, 2), ref: (a) => R.slice(a, 0, 0, 9, 2) },
];

for (const log of [false, true]) {
  const name = log ? "logSoftmax" : "softmax";
  test(`\`${name}()\` matches the float64 reference forward and backward on every dim, odd sizes and strided inputs`, () => {
    for (const ks of KERNEL_SETS) {
      withKernelSet(ks, () => {
        for (const c of SOFTMAX_CASES) {
          const seed = seedFor(`${name} ${c.label}`);
          const view = c.view ?? ((t: Tensor) => t), ref = c.ref ?? ((a: R.Arr) => a);
          const n = c.base.length ? ref(R.arr(c.base)).shape.at(c.dim)! : 1;
          // three spellings of the same op take turns
          const mg = [
            (t: Tensor) => (log ? t.logSoftmax(c.dim) : t.softmax(c.dim)),
            (t: Tensor) => (log ? F.logSoftmax(t, c.dim) : F.softmax(t, c.dim)),
            (t: Tensor) => (log ? M.logSoftmax(t, c.dim) : M.softmax(t, c.dim)),
          ][seed % 3]!;
          checkOp({
            what: `${name} ${c.label} [${ks}]`, seed,
            inputs: [randArr(c.base, seed, { scale: c.scale ?? 2 })],
            megalith: (x) => mg(view(x)),
            reference: (x) => (log ? R.logSoftmax(ref(x), c.dim) : R.softmax(ref(x), c.dim)),
            tol: accumTol(n, log ? (c.scale ?? 2) * 3 : 1),
            gradTol: gradTol(n, c.scale ?? 2),
          });
        }
      });
    }
  });
}

test("`softmax()` and `F.softmax()` default to the last dim; partially -Infinity rows get zero probability there", () => {
  const seed = seedFor("softmax default");
  const x = randArr([3, 6], seed);
  for (const i of [1, 4, 7, 8, 15]) x.data[i] = -Infinity;
  assertClose(F.softmax(toTensor(x)), R.softmax(x, -1), { what: "F.softmax default dim", seed, ...accumTol(6) });
  assertClose(toTensor(x).softmax(), R.softmax(x, -1), { what: "softmax() default dim", seed, ...accumTol(6) });
  assertClose(toTensor(x).logSoftmax(), R.logSoftmax(x, -1), { what: "logSoftmax() default dim with -inf", seed, ...accumTol(6, 3) });
});

// ---- layer norm / RMS norm ---------------------------------------------------------------------------

interface NormCase {
  label: string;
  x: number[];
  ns: number[];
  weight: boolean;
  bias: boolean;
  eps?: number;
  view?: (t: Tensor) => Tensor;
  ref?: (a: R.Arr) => R.Arr;
}

const NORM_CASES: NormCase[] = [
  { label: "[4, 65] w+b", x: [4, 65], ns: [65], weight: true, bias: true },
  { label: "[129, 3] w+b (many rows: per-thread partials)", x: [129, 3], ns: [3], weight: true, bias: true },
  { label: "[2, 3, 17] weight only", x: [2, 3, 17], ns: [17], weight: true, bias: false },
  { label: "[3, 5] bias only", x: [3, 5], ns: [5], weight: false, bias: true },
  { label: "[2, 3, 5] normalizedShape [3, 5]", x: [2, 3, 5], ns: [3, 5], weight: true, bias: true },
  { label: "[5, 7] no affine, eps 1e-2", x: [5, 7], ns: [7], weight: false, bias: false, eps: 1e-2 },
  { label: "[1, 1] single element", x: [1, 1], ns: [1], weight: true, bias: true },
  { label: "[17] one row", x: [17], ns: [17], weight: true, bias: true },
  { label: "transposed [9, 6]^T", x: [9, 6], ns: [9], weight: true, bias: true, view: (t) => t.t(), ref: (a) => R.transpose(a, 0, 1) },
];

test("`F.layerNorm()` matches the float64 reference for x, weight and bias gradients, every kernel set and 1 or 2 threads", () => {
  for (const cfg of configs()) {
    withConfig(cfg, () => {
      for (const c of NORM_CASES) {
        const seed = seedFor(`layerNorm ${c.label}`);
        const view = c.view ?? ((t: Tensor) => t), ref = c.ref ?? ((a: R.Arr) => a);
        const inputs = [randArr(c.x, seed, { scale: 2 }), randArr(c.ns, seed + 1), randArr(c.ns, seed + 2)];
        inputs[0] = R.map(inputs[0]!, (v, i) => Math.fround(v + (i % 3) * 0.5));  // rows with nonzero mean
        const cols = R.numel(c.ns), rows = R.numel(c.x) / cols;
        checkOp({
          what: `layerNorm ${c.label} [${cfg.label}]`, seed, inputs,
          requiresGrad: [true, c.weight, c.bias],
          megalith: (x, w, b) => F.layerNorm(view(x), c.ns, c.weight ? w : null, c.bias ? b : undefined, c.eps),
          reference: (x, w, b) => R.layerNorm(ref(x), c.ns, c.weight ? w : null, c.bias ? b : null, c.eps ?? 1e-5),
          tol: accumTol(cols, 3),
          gradTol: gradTol(Math.max(rows, cols), 3),
        });
      }
    });
  }
});

test("`F.rmsNorm()` matches the float64 reference for x and weight gradients, every kernel set and 1 or 2 threads", () => {
  for (const cfg of configs()) {
    withConfig(cfg, () => {
      for (const c of NORM_CASES) {
        const seed = seedFor(`rmsNorm ${c.label}`);
        const view = c.view ?? ((t: Tensor) => t), ref = c.ref ?? ((a: R.Arr) => a);
        const cols = R.numel(c.ns), rows = R.numel(c.x) / cols;
        checkOp({
          what: `rmsNorm ${c.label} [${cfg.label}]`, seed,
          inputs: [randArr(c.x, seed, { scale: 2 }), randArr(c.ns, seed + 1)],
          requiresGrad: [true, c.weight],
          megalith: (x, w) => (c.eps === undefined ? F.rmsNorm(view(x), c.ns, c.weight ? w : null) : F.rmsNorm(view(x), c.ns, c.weight ? w : null, c.eps)),
          reference: (x, w) => R.rmsNorm(ref(x), c.ns, c.weight ? w : null, c.eps ?? 1e-6),
          tol: accumTol(cols, 3),
          gradTol: gradTol(Math.max(rows, cols), 3),
        });
      }
    });
  }
});

test("`nn.LayerNorm` and `nn.RMSNorm` start as identity affine maps and match the functional form", () => {
  const seed = seedFor("norm modules");
  const x = randArr([3, 8], seed);
  const ln = new M.LayerNorm(8), rms = new M.RMSNorm(8, 1e-5);
  assertClose(ln.forward(toTensor(x)), R.layerNorm(x, [8]), { what: "LayerNorm module", seed, ...accumTol(8, 3) });
  assertClose(rms.forward(toTensor(x)), R.rmsNorm(x, [8], null, 1e-5), { what: "RMSNorm module", seed, ...accumTol(8, 3) });
  assert.deepEqual(ln.parameters().map((p) => p.shape), [[8], [8]]);
  assert.equal(new M.LayerNorm(8, 1e-5, { bias: false }).bias, null);
});

// ---- embedding -----------------------------------------------------------------------------------------

function randIndices(shape: number[], V: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  const idx = new Int32Array(R.numel(shape));
  for (let i = 0; i < idx.length; i++) idx[i] = rng.int(0, V);
  if (idx.length > 2) idx[idx.length - 1] = idx[0]!;  // at least one repeated row
  return idx;
}

test("`F.embedding()` gathers the reference rows and scatter-adds repeated indices in backward (kernel sets, 1 or 2 threads)", () => {
  const shapes: Array<{ idx: number[]; V: number; C: number }> = [
    { idx: [3, 7], V: 17, C: 65 },
    { idx: [129], V: 5, C: 3 },
    { idx: [2, 2], V: 1, C: 1 },
    { idx: [], V: 4, C: 17 },
    { idx: [4, 33], V: 9, C: 130 },
  ];
  for (const cfg of configs()) {
    withConfig(cfg, () => {
      for (const s of shapes) {
        const seed = seedFor(`embedding ${s.idx} ${s.V} ${s.C}`);
        const idx = randIndices(s.idx, s.V, seed);
        const it = M.tensor(idx, { shape: s.idx, dtype: "int32" });
        checkOp({
          what: `embedding idx [${s.idx}] into [${s.V}, ${s.C}] [${cfg.label}]`, seed,
          inputs: [randArr([s.V, s.C], seed + 1)],
          megalith: (w) => F.embedding(it, w),
          reference: (w) => R.embedding(idx, s.idx, w),
          referenceGrad: (gy) => [R.embeddingBackward(idx, gy, s.V)],
          tol: { rtol: 0, atol: 0 },
          gradTol: accumTol(R.numel(s.idx), 3),
        });
      }
    });
  }
});

test("`nn.Embedding` looks up its own weight and `F.embedding` accepts a transposed table", () => {
  const emb = new M.Embedding(10, 4, { seed: seedFor("Embedding module") });
  const idx = M.tensor([3, 3, 9], { dtype: "int32" });
  const y = emb.forward(idx);
  const w = R.arr(emb.weight.shape, emb.weight.data());
  assertClose(y, R.embedding([3, 3, 9], [3], w), { what: "Embedding module", rtol: 0, atol: 0 });
  const seed = seedFor("embedding transposed");
  checkOp({
    what: "embedding of a transposed table", seed,
    inputs: [randArr([4, 6], seed)],
    megalith: (wt) => F.embedding(M.tensor([5, 0, 2], { dtype: "int32" }), wt.t()),
    reference: (wt) => R.embedding([5, 0, 2], [3], R.transpose(wt, 0, 1)),
  });
});

// ---- cross-entropy ---------------------------------------------------------------------------------------

function targetsFor(n: number, C: number, seed: number, ignore: number, nIgnored: number): Int32Array {
  const t = randIndices([n], C, seed);
  for (let i = 0; i < nIgnored; i++) t[(i * 5 + 1) % n] = ignore;
  return t;
}

test("`F.crossEntropy()` matches the reference for every reduction, ignored rows, custom ignoreIndex and label smoothing", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      for (const [N, C] of [[17, 129], [5, 3], [1, 1], [64, 10]] as Array<[number, number]>) {
        for (const ignoreIndex of [undefined, 2]) {
          for (const labelSmoothing of [0, 0.1]) {
            for (const reduction of ["mean", "sum", "none"] as const) {
              const ign = ignoreIndex ?? -100;
              const seed = seedFor(`ce ${N} ${C} ${ignoreIndex} ${labelSmoothing} ${reduction}`);
              const t = targetsFor(N, C, seed, ign, N > 2 ? Math.min(3, N - 1) : 0);
              const tt = M.tensor(t, { dtype: "int32" });
              const opts = { ignoreIndex, reduction, labelSmoothing };
              const refOpts = { ignoreIndex: ign, reduction, labelSmoothing };
              checkOp({
                what: `crossEntropy [${N}, ${C}] ${JSON.stringify(opts)} [${ks}]`, seed,
                inputs: [randArr([N, C], seed + 1, { scale: 3 })],
                megalith: (x) => F.crossEntropy(x, tt, opts),
                reference: (x) => R.crossEntropy(x, t, refOpts),
                referenceGrad: (gy, x) => [R.crossEntropyBackward(x, t, gy, refOpts)],
                tol: accumTol(C, 10),
                gradTol: gradTol(C, 1),
              });
            }
          }
        }
      }
    });
  }
});

test("`F.crossEntropy()` handles 1-D logits with a 0-d target, [N, C, d...] logits, and transposed logits", () => {
  const seed = seedFor("ce shapes");
  checkOp({
    what: "crossEntropy [7] with 0-d target", seed,
    inputs: [randArr([7], seed)],
    megalith: (x) => F.crossEntropy(x, M.tensor(4, { dtype: "int32" })),
    reference: (x) => R.crossEntropy(x, [4]),
  });
  for (const shape of [[2, 5, 3], [2, 4, 3, 2]]) {
    const tShape = [shape[0]!, ...shape.slice(2)];
    const t = targetsFor(R.numel(tShape), shape[1]!, seed, -100, 1);
    for (const reduction of ["mean", "none"] as const) {
      checkOp({
        what: `crossEntropy [${shape}] reduction ${reduction}`, seed,
        inputs: [randArr(shape, seed + 1)],
        megalith: (x) => F.crossEntropy(x, M.tensor(t, { shape: tShape, dtype: "int32" }), { reduction, labelSmoothing: 0.05 }),
        reference: (x) => R.crossEntropy(x, t, { reduction, labelSmoothing: 0.05 }),
      });
    }
  }
  const t = targetsFor(6, 4, seed, -100, 1);
  checkOp({
    what: "crossEntropy of transposed logits [4, 6]^T", seed,
    inputs: [randArr([4, 6], seed + 2)],
    megalith: (x) => F.crossEntropy(x.t(), M.tensor(t, { dtype: "int32" })),
    reference: (x) => R.crossEntropy(R.transpose(x, 0, 1), t),
  });
});

test("`F.crossEntropy()` with every target ignored gives NaN for mean (like torch) and 0 for sum", () => {
  const x = M.randn([3, 4], { seed: 1 }).requiresGrad_();
  const t = M.tensor([-100, -100, -100], { dtype: "int32" });
  assert.ok(Number.isNaN(F.crossEntropy(x, t).item()));
  const s = F.crossEntropy(x, t, { reduction: "sum" });
  assert.equal(s.item(), 0);
  s.backward();
  assert.deepEqual(Array.from(x.grad!.data()), new Array(12).fill(0));
});

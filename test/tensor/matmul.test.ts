// matmul (and F.linear) against the float64 reference: 1-D promotion, batches, broadcast batches,
// transposed/strided/expanded operands (each BLAS layout path and each copy fallback), the
// threaded panel and batch splits, with hand-derived reference gradients.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, type Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { accumTol, checkOp, gradTol, randArr, seedFor, withThreads, assertClose, toTensor } from "../_util/check.js";

interface MatCase {
  what: string;
  a: number[];
  b: number[];
  va?: (t: Tensor) => Tensor;
  ra?: (x: R.Arr) => R.Arr;
  vb?: (t: Tensor) => Tensor;
  rb?: (x: R.Arr) => R.Arr;
}

const tr = { v: (t: Tensor) => t.transpose(-1, -2), r: (x: R.Arr) => R.transpose(x, -1, -2) };

function run(c: MatCase, threads: number): void {
  const seed = seedFor(`matmul ${c.what}`);
  const va = c.va ?? ((t: Tensor) => t), ra = c.ra ?? ((x: R.Arr) => x);
  const vb = c.vb ?? ((t: Tensor) => t), rb = c.rb ?? ((x: R.Arr) => x);
  const a = randArr(c.a, seed), b = randArr(c.b, seed + 1);
  const K = ra(a).shape.at(-1)!;
  // The gradient of a view's base is the view's gradient mapped back, which is what numGrad would
  // give; here the views are applied to the reference gradient by differentiating through them.
  checkOp({
    what: `matmul ${c.what} (${threads} thread${threads > 1 ? "s" : ""})`,
    seed,
    inputs: [a, b],
    megalith: (x, y) => M.matmul(va(x), vb(y)),
    reference: (x, y) => R.matmul(ra(x), rb(y)),
    referenceGrad: c.va || c.vb ? undefined : (gy, x, y) => { const g = R.matmulBackward(x, y, gy); return [g.ga, g.gb]; },
    tol: accumTol(K, 3),
    gradTol: gradTol(Math.max(K, 64), 3),
  });
}

const BASIC: MatCase[] = [
  { what: "[1, 1] @ [1, 1]", a: [1, 1], b: [1, 1] },
  { what: "[3, 17] @ [17, 5]", a: [3, 17], b: [17, 5] },
  { what: "[65, 33] @ [33, 129]", a: [65, 33], b: [33, 129] },
  { what: "1-D @ 1-D (dot)", a: [17], b: [17] },
  { what: "1-D @ 2-D", a: [5], b: [5, 3] },
  { what: "2-D @ 1-D", a: [4, 5], b: [5] },
  { what: "1-D @ 3-D", a: [5], b: [2, 5, 3] },
  { what: "3-D @ 1-D", a: [2, 4, 5], b: [5] },
  { what: "batched [4, 3, 5] @ [4, 5, 2]", a: [4, 3, 5], b: [4, 5, 2] },
  { what: "shared weight [2, 3, 7] @ [7, 4] (batch folded into M)", a: [2, 3, 7], b: [7, 4] },
  { what: "[3, 7] @ [2, 7, 4] (a broadcast over the batch)", a: [3, 7], b: [2, 7, 4] },
  { what: "[2, 1, 3, 5] @ [5, 2]", a: [2, 1, 3, 5], b: [5, 2] },
  { what: "size-1 batch [1, 3, 5] @ [4, 5, 2]", a: [1, 3, 5], b: [4, 5, 2] },
];

const STRIDED: MatCase[] = [
  { what: "a transposed ([5, 3]^T @ [5, 4])", a: [5, 3], b: [5, 4], va: tr.v, ra: tr.r },
  { what: "b transposed ([3, 5] @ [4, 5]^T)", a: [3, 5], b: [4, 5], vb: tr.v, rb: tr.r },
  { what: "both transposed, batched", a: [2, 5, 3], b: [2, 4, 5], va: tr.v, ra: tr.r, vb: tr.v, rb: tr.r },
  { what: "a column slice (row stride > K)", a: [3, 9], b: [5, 4], va: (t) => t.slice(1, 2, 7), ra: (x) => R.slice(x, 1, 2, 7) },
  { what: "a with step-2 columns (needs a copy)", a: [3, 10], b: [5, 4], va: (t) => t.slice(1, 0, 10, 2), ra: (x) => R.slice(x, 1, 0, 10, 2) },
  { what: "b expanded from [5, 1] (stride 0)", a: [3, 5], b: [5, 1], vb: (t) => t.expand([5, 4]), rb: (x) => R.expand(x, [5, 4]) },
  { what: "batch dims permuted (a [3, 2, 4, 5] -> [2, 3, 4, 5])", a: [3, 2, 4, 5], b: [2, 3, 5, 2], va: (t) => t.permute([1, 0, 2, 3]), ra: (x) => R.permute(x, [1, 0, 2, 3]) },
  { what: "a batch expanded from [1, 3, 5]", a: [1, 3, 5], b: [4, 5, 2], va: (t) => t.expand([4, 3, 5]), ra: (x) => R.expand(x, [4, 3, 5]) },
  { what: "head split view (attention-style [B, T, H, D] -> [B, H, T, D])", a: [2, 5, 3, 4], b: [2, 3, 4, 5], va: (t) => t.transpose(1, 2), ra: (x) => R.transpose(x, 1, 2) },
];

for (const threads of [1, 2]) {
  test(`\`matmul()\` matches the float64 reference on 2-D, 1-D and batched operands (${threads} thread${threads > 1 ? "s" : ""})`, () => {
    withThreads(threads, () => BASIC.forEach((c) => run(c, threads)));
  });
  test(`\`matmul()\` matches the float64 reference on transposed, strided, expanded and permuted operands (${threads} thread${threads > 1 ? "s" : ""})`, () => {
    withThreads(threads, () => STRIDED.forEach((c) => run(c, threads)));
  });
}

test("`matmul()` matches the float64 reference on broadcast batches that do not collapse to one stride", () => {
  // a's batch [3] broadcast against b's [2, 3]; [2, 1] against [1, 3]: the broadcast operand's
  // batch strides are (0, s) patterns that no single stride describes.
  run({ what: "[3, 4, 5] @ [2, 3, 5, 2]", a: [3, 4, 5], b: [2, 3, 5, 2] }, 2);
  run({ what: "[2, 1, 3, 5] @ [1, 4, 5, 2]", a: [2, 1, 3, 5], b: [1, 4, 5, 2] }, 2);
  run({ what: "[2, 3, 4, 5] @ [3, 5, 2]", a: [2, 3, 4, 5], b: [3, 5, 2] }, 2);
});

test("`matmul()` uses the threaded panel split and batch split correctly (large M, N and many batches)", () => {
  // 2 * 130 * 96 * 129 ~ 3.2 MFLOP: above the 2 MFLOP threshold where gemm splits over threads.
  withThreads(2, () => {
    const seed = seedFor("matmul big");
    for (const [sa, sb] of [[[130, 96], [96, 129]], [[3, 96], [96, 5000]], [[8, 40, 33], [8, 33, 50]], [[3, 40, 64], [3, 64, 300]]] as Array<[number[], number[]]>) {
      const a = randArr(sa, seed), b = randArr(sb, seed + 1);
      const got = M.matmul(toTensor(a), toTensor(b));
      assertClose(got, R.matmul(a, b), { what: `matmul [${sa}] @ [${sb}] threaded`, seed, ...accumTol(sa.at(-1)!, 3) });
    }
  });
});

test("`matmul()` with an empty inner dimension gives zeros, and empty outer dims give empty results", () => {
  assert.deepEqual(M.matmul(M.ones([2, 0]), M.ones([0, 3])).toArray(), [[0, 0, 0], [0, 0, 0]]);
  assert.deepEqual(M.matmul(M.ones([0, 4]), M.ones([4, 3])).shape, [0, 3]);
});

test("`F.linear()` matches x @ w^T + b for 3-D, 2-D and 1-D inputs, with and without bias", () => {
  const seed = seedFor("linear");
  for (const xs of [[2, 5, 7], [3, 7], [7]]) {
    checkOp({
      what: `F.linear x [${xs}] with bias`, seed,
      inputs: [randArr(xs, seed), randArr([4, 7], seed + 1), randArr([4], seed + 2)],
      megalith: (x, w, b) => F.linear(x, w, b),
      reference: (x, w, b) => R.linear(x, w, b),
      tol: accumTol(7, 3), gradTol: gradTol(64, 3),
    });
    checkOp({
      what: `F.linear x [${xs}] without bias`, seed,
      inputs: [randArr(xs, seed + 3), randArr([4, 7], seed + 4)],
      megalith: (x, w) => F.linear(x, w),
      reference: (x, w) => R.linear(x, w),
      tol: accumTol(7, 3), gradTol: gradTol(64, 3),
    });
  }
});

test("`nn.Linear` forward equals F.linear with its own parameters and trains both", () => {
  const lin = new M.Linear(7, 3, { seed: seedFor("nn.Linear") });
  const x = randArr([4, 7], seedFor("nn.Linear x"));
  const y = lin.forward(toTensor(x));
  const w = R.arr(lin.weight.shape, lin.weight.data()), b = R.arr(lin.bias!.shape, lin.bias!.data());
  assertClose(y, R.linear(x, w, b), { what: "Linear forward", ...accumTol(7, 1) });
  y.sum().backward();
  assert.ok(lin.weight.grad && lin.bias!.grad);
  assertClose(lin.bias!.grad, R.full([3], 4), { what: "Linear bias grad", ...accumTol(4) });
});

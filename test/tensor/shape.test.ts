// Shape ops: views (reshape/view, permute, transpose, t, expand, slice, narrow, select, squeeze,
// unsqueeze, flatten, split, chunk) and copies (contiguous, clone, cat, stack), checked for values
// against the reference, for storage sharing where they are views, and for gradients.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import type { Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { TOL, accumTol, assertClose, checkOp, randArr, seedFor, toTensor, fromTensor } from "../_util/check.js";

const exact = TOL.float32.exact;

interface ViewCase {
  what: string;
  base: number[];
  mg: (t: Tensor) => Tensor;
  ref: (a: R.Arr) => R.Arr;
  /** Whether the result must share storage with its input. */
  view: boolean;
  /** Gradient terms summed per input element (expand): the gradient is then an accumulation. */
  accum?: number;
}

const CASES: ViewCase[] = [
  { what: "reshape([6, 4]) of [2, 3, 4]", base: [2, 3, 4], mg: (t) => t.reshape([6, 4]), ref: (a) => R.reshape(a, [6, 4]), view: true },
  { what: "reshape([-1]) of [3, 5]", base: [3, 5], mg: (t) => t.reshape([-1]), ref: (a) => R.reshape(a, [-1]), view: true },
  { what: "view([4, -1, 2]) of [2, 3, 4]", base: [2, 3, 4], mg: (t) => t.view([4, -1, 2]), ref: (a) => R.reshape(a, [4, 3, 2]), view: true },
  { what: "reshape of a transposed view (needs a copy)", base: [3, 4], mg: (t) => t.t().reshape([12]), ref: (a) => R.reshape(R.transpose(a, 0, 1), [12]), view: false },
  { what: "reshape splitting a dim of a transposed view (still a view)", base: [6, 5], mg: (t) => t.t().reshape([5, 2, 3]), ref: (a) => R.reshape(R.transpose(a, 0, 1), [5, 2, 3]), view: true },
  { what: "reshape to 0-d of [1, 1]", base: [1, 1], mg: (t) => t.reshape([]), ref: (a) => R.reshape(a, []), view: true },
  { what: "permute([2, 0, 1]) of [2, 3, 5]", base: [2, 3, 5], mg: (t) => t.permute([2, 0, 1]), ref: (a) => R.permute(a, [2, 0, 1]), view: true },
  { what: "permute([-1, 0, 1])", base: [2, 3, 5], mg: (t) => t.permute([-1, 0, 1]), ref: (a) => R.permute(a, [2, 0, 1]), view: true },
  { what: "transpose(0, 2)", base: [2, 3, 5], mg: (t) => t.transpose(0, 2), ref: (a) => R.transpose(a, 0, 2), view: true },
  { what: "transpose(-1, -2)", base: [2, 3, 5], mg: (t) => t.transpose(-1, -2), ref: (a) => R.transpose(a, 1, 2), view: true },
  { what: "t() of [3, 17]", base: [3, 17], mg: (t) => t.t(), ref: (a) => R.transpose(a, 0, 1), view: true },
  { what: "expand([4, 3, 5]) of [3, 1]", base: [3, 1], mg: (t) => t.expand([4, 3, 5]), ref: (a) => R.expand(a, [4, 3, 5]), view: true, accum: 20 },
  { what: "expand([-1, 6]) of [2, 1]", base: [2, 1], mg: (t) => t.expand([-1, 6]), ref: (a) => R.expand(a, [2, 6]), view: true, accum: 6 },
  { what: "expand of a 0-d tensor", base: [], mg: (t) => t.expand([2, 3]), ref: (a) => R.expand(a, [2, 3]), view: true, accum: 6 },
  { what: "slice(1, 2, 9, 3)", base: [3, 11], mg: (t) => t.slice(1, 2, 9, 3), ref: (a) => R.slice(a, 1, 2, 9, 3), view: true },
  { what: "slice(0, -3) negative start", base: [7, 2], mg: (t) => t.slice(0, -3), ref: (a) => R.slice(a, 0, -3), view: true },
  { what: "slice past the end clamps", base: [5], mg: (t) => t.slice(0, 2, 100), ref: (a) => R.slice(a, 0, 2, 100), view: true },
  { what: "slice(-1, 0, 65, 2) of [2, 65]", base: [2, 65], mg: (t) => t.slice(-1, 0, 65, 2), ref: (a) => R.slice(a, 1, 0, 65, 2), view: true },
  { what: "slice of a slice with steps", base: [17], mg: (t) => t.slice(0, 1, 17, 2).slice(0, 1, 8, 3), ref: (a) => R.slice(R.slice(a, 0, 1, 17, 2), 0, 1, 8, 3), view: true },
  { what: "narrow(1, 2, 3)", base: [2, 6], mg: (t) => t.narrow(1, 2, 3), ref: (a) => R.slice(a, 1, 2, 5), view: true },
  { what: "select(1, -1)", base: [3, 4, 2], mg: (t) => t.select(1, -1), ref: (a) => R.select(a, 1, -1), view: true },
  { what: "select(0, 2)", base: [3, 4], mg: (t) => t.select(0, 2), ref: (a) => R.select(a, 0, 2), view: true },
  { what: "squeeze() of [1, 3, 1, 2]", base: [1, 3, 1, 2], mg: (t) => t.squeeze(), ref: (a) => R.reshape(a, [3, 2]), view: true },
  { what: "squeeze(2) of [1, 3, 1, 2]", base: [1, 3, 1, 2], mg: (t) => t.squeeze(2), ref: (a) => R.reshape(a, [1, 3, 2]), view: true },
  { what: "squeeze(1) of a non-1 dim is a no-op", base: [2, 3], mg: (t) => t.squeeze(1), ref: (a) => a, view: true },
  { what: "unsqueeze(0)", base: [3, 2], mg: (t) => t.unsqueeze(0), ref: (a) => R.reshape(a, [1, 3, 2]), view: true },
  { what: "unsqueeze(-1)", base: [3, 2], mg: (t) => t.unsqueeze(-1), ref: (a) => R.reshape(a, [3, 2, 1]), view: true },
  { what: "unsqueeze of a transposed view", base: [3, 2], mg: (t) => t.t().unsqueeze(1), ref: (a) => R.reshape(R.transpose(a, 0, 1), [2, 1, 3]), view: true },
  { what: "flatten()", base: [2, 3, 4], mg: (t) => t.flatten(), ref: (a) => R.reshape(a, [24]), view: true },
  { what: "flatten(1)", base: [2, 3, 4], mg: (t) => t.flatten(1), ref: (a) => R.reshape(a, [2, 12]), view: true },
  { what: "flatten(0, 1)", base: [2, 3, 4], mg: (t) => t.flatten(0, 1), ref: (a) => R.reshape(a, [6, 4]), view: true },
  { what: "contiguous() of a transposed view", base: [4, 3], mg: (t) => t.t().contiguous(), ref: (a) => R.transpose(a, 0, 1), view: false },
  { what: "clone()", base: [4, 3], mg: (t) => t.clone(), ref: (a) => a, view: false },
  { what: "clone() of a strided view", base: [4, 6], mg: (t) => t.slice(1, 0, 6, 2).clone(), ref: (a) => R.slice(a, 1, 0, 6, 2), view: false },
];

for (const c of CASES) {
  test(`\`${c.what}\` matches the reference and its gradient${c.view ? ", sharing storage" : ", as a fresh copy"}`, () => {
    const seed = seedFor(c.what);
    checkOp({ what: c.what, seed, inputs: [randArr(c.base, seed)], megalith: c.mg, reference: c.ref, tol: exact, gradTol: c.accum ? accumTol(c.accum, 3) : exact });
    const x = toTensor(randArr(c.base, seed));
    const y = c.mg(x);
    assert.equal(y.storage === x.storage, c.view, `${c.what}: ${c.view ? "must be a view" : "must copy"}`);
    if (!c.view) assert.ok(y.isContiguous, `${c.what}: a copy is contiguous`);
  });
}

test("views alias their input: writing through the base shows in a transposed, sliced and expanded view", () => {
  const x = M.zeros([3, 4]);
  const t = x.t(), s = x.slice(1, 1, 4, 2), e = x.select(0, 1).expand([2, 4]);
  M.noGrad(() => x.copy_(M.arange(12).reshape([3, 4])));
  assert.deepEqual(t.toArray(), [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]);
  assert.deepEqual(s.toArray(), [[1, 3], [5, 7], [9, 11]]);
  assert.deepEqual(e.toArray(), [[4, 5, 6, 7], [4, 5, 6, 7]]);
  assert.equal(t.isContiguous, false);
  assert.deepEqual(t.strides, [1, 4]);
  assert.deepEqual(s.strides, [4, 2]);
  assert.deepEqual(e.strides, [0, 1]);
});

test("`split()` by size and by sections, and `chunk()`, give views whose gradients reassemble the input", () => {
  const seed = seedFor("split");
  const x = randArr([3, 10], seed);
  const cases: Array<[string, (t: Tensor) => Tensor[], number[]]> = [
    ["split(4, 1)", (t) => t.split(4, 1), [4, 4, 2]],
    ["split([2, 5, 3], -1)", (t) => t.split([2, 5, 3], -1), [2, 5, 3]],
    ["M.split(t, 3, 1)", (t) => M.split(t, 3, 1), [3, 3, 3, 1]],
    ["chunk(3, 1)", (t) => t.chunk(3, 1), [4, 4, 2]],
    ["chunk(5, 1)", (t) => t.chunk(5, 1), [2, 2, 2, 2, 2]],
  ];
  for (const [what, f, sizes] of cases) {
    const parts = f(toTensor(x));
    assert.deepEqual(parts.map((p) => p.shape[1]), sizes, `${what}: sizes`);
    let start = 0;
    parts.forEach((p, i) => {
      assertClose(p, R.slice(x, 1, start, start + sizes[i]!), { what: `${what} part ${i}`, ...exact });
      start += sizes[i]!;
    });
    // each part weighted differently: the gradient must land in each part's own columns
    checkOp({
      what: `${what} gradient`, seed, inputs: [x], tol: exact, gradTol: exact,
      megalith: (t) => M.cat(f(t).map((p, i) => p.mul(i + 1)), 1),
      reference: (a) => {
        let s = 0;
        return R.cat(sizes.map((n, i) => { const part = R.map(R.slice(a, 1, s, s + n), (v) => v * (i + 1)); s += n; return part; }), 1);
      },
    });
  }
  assert.deepEqual(toTensor(randArr([3], seed)).chunk(2).map((p) => p.shape), [[2], [1]]);
});

test("`cat()` and `stack()` match the reference along every dim, with strided inputs, and split the gradient back", () => {
  const seed = seedFor("cat");
  for (const dim of [0, 1, -1]) {
    const shapes = dim === 0 ? [[2, 3], [1, 3], [4, 3]] : [[2, 1], [2, 3], [2, 5]];
    checkOp({
      what: `cat(dim=${dim})`, seed, tol: exact, gradTol: exact,
      inputs: shapes.map((s, i) => randArr(s, seed + i)),
      megalith: (...ts) => M.cat(ts, dim),
      reference: (...as) => R.cat(as, dim),
    });
  }
  checkOp({
    what: "cat of transposed and sliced views", seed, tol: exact, gradTol: exact,
    inputs: [randArr([3, 2], seed + 5), randArr([2, 6], seed + 6)],
    megalith: (a, b) => M.cat([a.t(), b.slice(1, 0, 6, 2)], 0),
    reference: (a, b) => R.cat([R.transpose(a, 0, 1), R.slice(b, 1, 0, 6, 2)], 0),
  });
  checkOp({
    what: "cat of one tensor used twice", seed, tol: exact, gradTol: exact,
    inputs: [randArr([2, 3], seed + 7)],
    megalith: (a) => M.cat([a, a.mul(2)], 1),
    reference: (a) => R.cat([a, R.map(a, (v) => 2 * v)], 1),
  });
  for (const dim of [0, 1, 2, -1]) {
    checkOp({
      what: `stack(dim=${dim})`, seed, tol: exact, gradTol: exact,
      inputs: [0, 1, 2].map((i) => randArr([2, 3], seed + 10 + i)),
      megalith: (...ts) => M.stack(ts, dim),
      reference: (...as) => R.stack(as, dim),
    });
  }
});

test("`cat()` keeps the dtype of int32 inputs", () => {
  const a = M.tensor([1, 2], { dtype: "int32" }), b = M.tensor([3], { dtype: "int32" });
  const c = M.cat([a, b]);
  assert.equal(c.dtype, "int32");
  assert.deepEqual(c.toArray(), [1, 2, 3]);
});

test("`contiguous()` of an already contiguous tensor stays in the autograd graph", () => {
  const x = toTensor(randArr([2, 3], seedFor("contig")), { requiresGrad: true });
  const y = x.contiguous();
  assert.ok(y.requiresGrad, "contiguous() of a contiguous leaf that requires grad must require grad");
  y.mul(3).sum().backward();
  assertClose(x.grad!, R.full([2, 3], 3), { what: "gradient through contiguous()", ...exact });
});

test("`clone()` is a copy: writing into the clone leaves the source unchanged", () => {
  const x = M.arange(6).reshape([2, 3]);
  const c = x.clone();
  c.fill_(7);
  assert.deepEqual(fromTensor(x).data, Float64Array.from([0, 1, 2, 3, 4, 5]));
});

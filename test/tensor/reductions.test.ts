// Reductions and scans (sum, mean, var, max/min, argmax/argmin, cumsum, topk) against the
// float64 reference, forward and backward, over single, multiple and negative dims, keepdim,
// non-contiguous inputs and odd sizes, on every kernel build.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import type { Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { KERNEL_SETS, accumTol, assertClose, checkOp, randArr, seedFor, toTensor, withKernelSet, TOL, gradTol } from "../_util/check.js";

interface Input {
  label: string;
  base: number[];
  view: (t: Tensor) => Tensor;
  ref: (a: R.Arr) => R.Arr;
}
const id = <T>(t: T): T => t;
const INPUTS: Input[] = [
  { label: "[3, 17, 5]", base: [3, 17, 5], view: id, ref: id },
  { label: "[2, 1, 129]", base: [2, 1, 129], view: id, ref: id },
  { label: "[65]", base: [65], view: id, ref: id },
  { label: "transposed [5, 3, 4] -> [4, 3, 5]", base: [5, 3, 4], view: (t) => t.permute([2, 1, 0]), ref: (a) => R.permute(a, [2, 1, 0]) },
  { label: "slice step 3 of [4, 9, 2]", base: [4, 9, 2], view: (t) => t.slice(1, 1, 9, 3), ref: (a) => R.slice(a, 1, 1, 9, 3) },
];

/** Reduction dims valid for a given rank. */
function dimsFor(ndim: number): Array<number | number[] | undefined> {
  const out: Array<number | number[] | undefined> = [undefined, 0, -1];
  if (ndim >= 2) out.push(1);
  if (ndim >= 3) out.push([0, 2], [1, 2], [-1, 0]);
  return out;
}

const reducedSize = (shape: number[], dims: number | number[] | undefined): number =>
  dims === undefined ? R.numel(shape) : R.numel((Array.isArray(dims) ? dims : [dims]).map((d) => shape[d < 0 ? d + shape.length : d]!));

for (const kind of ["sum", "mean"] as const) {
  test(`\`${kind}()\` matches the float64 reference over every dim combination, keepdim, and strided inputs`, () => {
    for (const ks of KERNEL_SETS) {
      withKernelSet(ks, () => {
        for (const I of INPUTS) {
          const shape = I.ref(R.arr(I.base)).shape;
          for (const dims of dimsFor(shape.length)) {
            for (const keepdim of [false, true]) {
              const seed = seedFor(`${kind} ${I.label} ${JSON.stringify(dims)} ${keepdim}`);
              const n = reducedSize(shape, dims);
              checkOp({
                what: `${kind}(${JSON.stringify(dims)}, keepdim=${keepdim}) on ${I.label} [${ks}]`,
                seed,
                inputs: [randArr(I.base, seed)],
                megalith: (x) => (kind === "sum" ? I.view(x).sum(dims ?? null, keepdim) : I.view(x).mean(dims ?? null, keepdim)),
                reference: (x) => (kind === "sum" ? R.sum(I.ref(x), dims, keepdim) : R.mean(I.ref(x), dims, keepdim)),
                tol: accumTol(n, kind === "sum" ? 3 : 3 / n),
              });
            }
          }
        }
      });
    }
  });
}

test("`sum()` and `mean()` of a 0-d tensor and the module-level `sum()` agree with the reference", () => {
  const seed = seedFor("sum 0-d");
  checkOp({ what: "sum() of 0-d", seed, inputs: [randArr([], seed)], megalith: (x) => x.sum(), reference: (x) => R.sum(x) });
  checkOp({ what: "mean() of 0-d", seed, inputs: [randArr([], seed + 1)], megalith: (x) => x.mean(), reference: (x) => R.mean(x) });
  checkOp({ what: "M.sum(x, 1)", seed, inputs: [randArr([3, 4], seed + 2)], megalith: (x) => M.sum(x, 1), reference: (x) => R.sum(x, 1) });
  checkOp({ what: "M.mean(x, [0, 1], true)", seed, inputs: [randArr([3, 4], seed + 3)], megalith: (x) => M.mean(x, [0, 1], true), reference: (x) => R.mean(x, [0, 1], true) });
});

test("`var()` matches torch.var for correction 0, 1 and 2, several dims and keepdim", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      for (const I of INPUTS) {
        const shape = I.ref(R.arr(I.base)).shape;
        for (const dims of dimsFor(shape.length)) {
          // every correction on the first input; Bessel's (the default) on the rest
          for (const correction of I === INPUTS[0] ? [0, 1, 2] : [1]) {
            const keepdim = correction === 1;
            const n = reducedSize(shape, dims);
            if (n - correction <= 0) continue;
            const seed = seedFor(`var ${I.label} ${JSON.stringify(dims)} ${correction}`);
            checkOp({
              what: `var(${JSON.stringify(dims)}, {correction: ${correction}, keepdim: ${keepdim}}) on ${I.label} [${ks}]`,
              seed,
              inputs: [randArr(I.base, seed)],
              megalith: (x) => (correction === 1 ? I.view(x).var(dims ?? null, { keepdim }) : I.view(x).var(dims ?? null, { correction, keepdim })),
              reference: (x) => R.variance(I.ref(x), dims, correction, keepdim),
              tol: accumTol(n, 3),
              gradTol: gradTol(n, 3),
            });
          }
        }
      }
    });
  }
});

// ---- max / min / argmax / argmin -----------------------------------------------------------------------

const CONTIGUOUS = INPUTS.filter((I) => I.view === id);

function checkMaxDim(I: Input, dim: number, keepdim: boolean, kind: "max" | "min", ks: string): void {
  const seed = seedFor(`${kind} ${I.label} ${dim} ${keepdim}`);
  const x = randArr(I.base, seed, { distinct: true });
  const what = `${kind}(${dim}, keepdim=${keepdim}) on ${I.label} [${ks}]`;
  checkOp({
    what, seed, inputs: [x],
    megalith: (t) => (kind === "max" ? I.view(t).max(dim, keepdim).values : I.view(t).min(dim, keepdim).values),
    reference: (a) => R.maxDim(I.ref(a), dim, keepdim, kind).values,
    tol: TOL.float32.exact,
  });
  const t = toTensor(x);
  const r = kind === "max" ? I.view(t).max(dim, keepdim) : I.view(t).min(dim, keepdim);
  assert.equal(r.indices.dtype, "int32", `${what}: indices dtype`);
  assertClose(r.indices, R.maxDim(I.ref(x), dim, keepdim, kind).indices, { what: `${what}: indices`, seed, rtol: 0, atol: 0 });
}

for (const kind of ["max", "min"] as const) {
  test(`\`${kind}(dim, keepdim)\` returns the reference values and first indices, and routes the gradient to them (contiguous inputs)`, () => {
    for (const ks of KERNEL_SETS) {
      withKernelSet(ks, () => {
        for (const I of CONTIGUOUS) {
          for (let d = -1; d < I.base.length; d++) for (const keepdim of [false, true]) checkMaxDim(I, d, keepdim, kind, ks);
        }
      });
    }
  });

  test(`\`${kind}(dim)\` on non-contiguous inputs (permuted, strided) gives the reference values, indices and gradient`, () => {
    for (const I of INPUTS.filter((J) => J.view !== id)) {
      const nd = I.ref(R.arr(I.base)).shape.length;
      for (let d = 0; d < nd; d++) checkMaxDim(I, d, false, kind, "default");
    }
  });

  test(`\`${kind}()\` over all elements returns the extreme value and a one-hot gradient`, () => {
    for (const I of INPUTS) {
      const seed = seedFor(`${kind} all ${I.label}`);
      checkOp({
        what: `${kind}() on ${I.label}`, seed,
        inputs: [randArr(I.base, seed, { distinct: true })],
        megalith: (t) => (kind === "max" ? I.view(t).max() : I.view(t).min()),
        reference: (a) => R.maxDim(R.reshape(I.ref(a), [-1]), 0, false, kind).values,
        tol: TOL.float32.exact,
      });
    }
  });
}

test("`argmax()` and `argmin()` match the reference for every dim, flattened, and keepdim, including ties (first index wins)", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      for (const I of INPUTS) {
        const seed = seedFor(`arg ${I.label}`);
        // integers in a small range: plenty of ties
        const x = R.map(randArr(I.base, seed, { dist: "uniform", lo: 0, hi: 4 }), Math.floor);
        const v = I.ref(x);
        const t = I.view(toTensor(x));
        for (const kind of ["argmax", "argmin"] as const) {
          const k = kind === "argmax" ? "max" : "min";
          const flat = kind === "argmax" ? t.argmax() : t.argmin();
          assert.equal(flat.dtype, "int32");
          assertClose(flat, R.maxDim(R.reshape(v, [-1]), 0, false, k).indices, { what: `${kind}() flat on ${I.label} [${ks}]`, seed, rtol: 0, atol: 0 });
          for (let d = -1; d < v.shape.length; d++) {
            for (const keepdim of [false, true]) {
              const got = kind === "argmax" ? t.argmax(d, keepdim) : t.argmin(d, keepdim);
              assertClose(got, R.maxDim(v, d, keepdim, k).indices, { what: `${kind}(${d}, ${keepdim}) on ${I.label} [${ks}]`, seed, rtol: 0, atol: 0 });
            }
          }
        }
      }
    });
  }
});

// ---- cumsum -----------------------------------------------------------------------------------------------

test("`cumsum(dim)` matches the reference forward and backward on every dim and strided inputs", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      for (const I of INPUTS) {
        const shape = I.ref(R.arr(I.base)).shape;
        for (let d = -1; d < shape.length; d++) {
          const seed = seedFor(`cumsum ${I.label} ${d}`);
          const n = shape[d < 0 ? d + shape.length : d]!;
          checkOp({
            what: `cumsum(${d}) on ${I.label} [${ks}]`, seed,
            inputs: [randArr(I.base, seed)],
            megalith: (x) => I.view(x).cumsum(d),
            reference: (x) => R.cumsum(I.ref(x), d),
            tol: accumTol(n, 3),
            gradTol: gradTol(n, 3),
          });
        }
      }
    });
  }
});

// ---- topk ---------------------------------------------------------------------------------------------------

test("`topk(k, dim, largest)` returns the reference values and indices, sorted, and scatters the gradient back", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      for (const I of INPUTS) {
        const shape = I.ref(R.arr(I.base)).shape;
        for (const d of [-1, 0]) {
          const n = shape[d < 0 ? d + shape.length : d]!;
          // k = 1 and k = n on the first input only; k = min(3, n) everywhere
          const ks_ = I === INPUTS[0] ? [1, Math.min(3, n), n] : [Math.min(3, n)];
          for (const k of [...new Set(ks_)]) {
            for (const largest of [true, false]) {
              const seed = seedFor(`topk ${I.label} ${d} ${k} ${largest}`);
              const x = randArr(I.base, seed, { distinct: true });
              const what = `topk(${k}, ${d}, ${largest}) on ${I.label} [${ks}]`;
              checkOp({
                what, seed, inputs: [x],
                megalith: (t) => I.view(t).topk(k, d, largest).values,
                reference: (a) => R.topk(I.ref(a), k, d, largest).values,
                tol: TOL.float32.exact,
              });
              const r = I.view(toTensor(x)).topk(k, d, largest);
              assert.equal(r.indices.dtype, "int32");
              assertClose(r.indices, R.topk(I.ref(x), k, d, largest).indices, { what: `${what}: indices`, seed, rtol: 0, atol: 0 });
            }
          }
        }
      }
    });
  }
});

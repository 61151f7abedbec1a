// Elementwise ops (unary, binary with broadcasting, scalar operands, comparisons, where) against
// the float64 reference, forward and backward, on contiguous and strided/expanded inputs, under
// every kernel build.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, type Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { type RandOptions, KERNEL_SETS, TOL, checkOp, randArr, seedFor, toTensor, withKernelSet, assertClose } from "../_util/check.js";

// ---- layouts: how a leaf is viewed before the op ---------------------------------------------------

interface Layout {
  label: string;
  base: number[];
  view: (t: Tensor) => Tensor;
  ref: (a: R.Arr) => R.Arr;
}

const id = <T>(t: T): T => t;
const LAYOUTS: Layout[] = [
  { label: "0-d", base: [], view: id, ref: id },
  { label: "[1]", base: [1], view: id, ref: id },
  { label: "[17]", base: [17], view: id, ref: id },
  { label: "[2, 1, 65]", base: [2, 1, 65], view: id, ref: id },
  { label: "[129]", base: [129], view: id, ref: id },
  { label: "transposed [17, 3]^T", base: [17, 3], view: (t) => t.t(), ref: (a) => R.transpose(a, 0, 1) },
  { label: "slice step 2 of [3, 34]", base: [3, 34], view: (t) => t.slice(1, 1, 34, 2), ref: (a) => R.slice(a, 1, 1, 34, 2) },
  { label: "expand [1, 5] -> [3, 5]", base: [1, 5], view: (t) => t.expand([3, 5]), ref: (a) => R.expand(a, [3, 5]) },
];

// ---- unary ops ---------------------------------------------------------------------------------------

interface UnaryCase {
  name: string;
  mg: (t: Tensor) => Tensor;
  ref: (x: number) => number;
  rand?: RandOptions;
}

const positive: RandOptions = { dist: "uniform", lo: 0.3, hi: 3 };
const UNARY: UnaryCase[] = [
  { name: "neg()", mg: (t) => t.neg(), ref: (x) => -x },
  { name: "exp()", mg: (t) => t.exp(), ref: Math.exp, rand: { scale: 2 } },
  { name: "log()", mg: (t) => t.log(), ref: Math.log, rand: positive },
  { name: "sqrt()", mg: (t) => t.sqrt(), ref: Math.sqrt, rand: positive },
  { name: "rsqrt()", mg: (t) => t.rsqrt(), ref: (x) => 1 / Math.sqrt(x), rand: positive },
  { name: "tanh()", mg: (t) => t.tanh(), ref: Math.tanh, rand: { scale: 2 } },
  { name: "relu()", mg: (t) => t.relu(), ref: R.relu, rand: { awayFrom: [0] } },
  { name: "F.relu()", mg: (t) => F.relu(t), ref: R.relu, rand: { awayFrom: [0] } },
  { name: "sigmoid()", mg: (t) => t.sigmoid(), ref: R.sigmoid, rand: { scale: 3 } },
  { name: "silu()", mg: (t) => t.silu(), ref: R.silu, rand: { scale: 3 } },
  { name: "F.silu()", mg: (t) => F.silu(t), ref: R.silu, rand: { scale: 3 } },
  { name: "gelu() (exact erf)", mg: (t) => t.gelu(), ref: R.geluErf, rand: { scale: 3 } },
  { name: "gelu(\"tanh\")", mg: (t) => t.gelu("tanh"), ref: R.geluTanh, rand: { scale: 3 } },
  { name: "F.gelu() default (erf)", mg: (t) => F.gelu(t), ref: R.geluErf, rand: { scale: 3 } },
  { name: "F.gelu({approximate: \"tanh\"})", mg: (t) => F.gelu(t, { approximate: "tanh" }), ref: R.geluTanh, rand: { scale: 3 } },
  { name: "F.gelu({approximate: \"none\"})", mg: (t) => F.gelu(t, { approximate: "none" }), ref: R.geluErf, rand: { scale: 3 } },
  { name: "abs()", mg: (t) => t.abs(), ref: Math.abs, rand: { awayFrom: [0] } },
  { name: "square()", mg: (t) => t.square(), ref: (x) => x * x },
  { name: "reciprocal()", mg: (t) => t.reciprocal(), ref: (x) => 1 / x, rand: { awayFrom: [0], gap: 0.3 } },
  { name: "clamp(-0.5, 0.7)", mg: (t) => t.clamp(-0.5, 0.7), ref: (x) => R.clamp(x, -0.5, 0.7), rand: { awayFrom: [-0.5, 0.7] } },
  { name: "clamp(min only)", mg: (t) => t.clamp(0.2), ref: (x) => Math.max(x, 0.2), rand: { awayFrom: [0.2] } },
  { name: "clamp(null, max)", mg: (t) => t.clamp(null, -0.1), ref: (x) => Math.min(x, -0.1), rand: { awayFrom: [-0.1] } },
  { name: "erf()", mg: (t) => M.erf(t), ref: R.erf, rand: { scale: 2 } },
  { name: "sin()", mg: (t) => M.sin(t), ref: Math.sin, rand: { scale: 3 } },
  { name: "cos()", mg: (t) => M.cos(t), ref: Math.cos, rand: { scale: 3 } },
  { name: "exp() (module function)", mg: (t) => M.exp(t), ref: Math.exp },
  { name: "add(number)", mg: (t) => t.add(2.5), ref: (x) => x + Math.fround(2.5) },
  { name: "sub(number)", mg: (t) => t.sub(-1.25), ref: (x) => x + 1.25 },
  { name: "mul(number)", mg: (t) => t.mul(-3), ref: (x) => -3 * x },
  { name: "div(number)", mg: (t) => t.div(4), ref: (x) => x / 4 },
  { name: "pow(2)", mg: (t) => t.pow(2), ref: (x) => x ** 2 },
  { name: "pow(3)", mg: (t) => t.pow(3), ref: (x) => x ** 3 },
  { name: "pow(0.5)", mg: (t) => t.pow(0.5), ref: Math.sqrt, rand: positive },
  { name: "pow(-1.5)", mg: (t) => t.pow(-1.5), ref: (x) => x ** -1.5, rand: positive },
  { name: "pow(2.7)", mg: (t) => M.pow(t, 2.7), ref: (x) => x ** Math.fround(2.7), rand: positive },
];

for (const u of UNARY) {
  test(`\`${u.name}\` matches the float64 reference, forward and backward, on every layout and kernel set`, () => {
    for (const ks of KERNEL_SETS) {
      withKernelSet(ks, () => {
        for (const L of LAYOUTS) {
          const seed = seedFor(`${u.name} ${L.label}`);
          checkOp({
            what: `${u.name} on ${L.label} [${ks}]`,
            seed,
            inputs: [randArr(L.base, seed, u.rand)],
            megalith: (x) => u.mg(L.view(x)),
            reference: (x) => R.map(L.ref(x), (v) => u.ref(v)),
          });
        }
      });
    }
  });
}

// ---- binary ops ---------------------------------------------------------------------------------------

interface BinaryCase {
  name: string;
  mg: (a: Tensor, b: Tensor) => Tensor;
  ref: (x: number, y: number) => number;
  randA?: RandOptions;
  randB?: RandOptions;
  /** a and b drawn together with no ties (maximum/minimum). */
  distinct?: boolean;
}

const BINARY: BinaryCase[] = [
  { name: "add()", mg: (a, b) => a.add(b), ref: (x, y) => x + y },
  { name: "add() (module function)", mg: (a, b) => M.add(a, b), ref: (x, y) => x + y },
  { name: "sub()", mg: (a, b) => a.sub(b), ref: (x, y) => x - y },
  { name: "mul()", mg: (a, b) => a.mul(b), ref: (x, y) => x * y },
  { name: "div()", mg: (a, b) => a.div(b), ref: (x, y) => x / y, randB: { awayFrom: [0], gap: 0.4 } },
  { name: "pow()", mg: (a, b) => a.pow(b), ref: (x, y) => x ** y, randA: positive },
  { name: "maximum()", mg: (a, b) => a.maximum(b), ref: Math.max, distinct: true },
  { name: "minimum()", mg: (a, b) => M.minimum(a, b), ref: Math.min, distinct: true },
];

interface PairLayout {
  label: string;
  a: Layout;
  b: Layout;
}
const plain = (shape: number[]): Layout => ({ label: `[${shape.join(", ")}]`, base: shape, view: id, ref: id });
const PAIRS: PairLayout[] = [
  { label: "same shape [17]", a: plain([17]), b: plain([17]) },
  { label: "[3, 4] with [4]", a: plain([3, 4]), b: plain([4]) },
  { label: "[3, 1, 5] with [4, 5]", a: plain([3, 1, 5]), b: plain([4, 5]) },
  { label: "0-d with [2, 3]", a: plain([]), b: plain([2, 3]) },
  { label: "[2, 3] with 0-d", a: plain([2, 3]), b: plain([]) },
  { label: "[1] with [65]", a: plain([1]), b: plain([65]) },
  { label: "[129] with [1]", a: plain([129]), b: plain([1]) },
  { label: "transposed [5, 3]^T with [5]", a: LAYOUTS[5]!.base.length ? { label: "t", base: [5, 3], view: (t) => t.t(), ref: (x) => R.transpose(x, 0, 1) } : plain([3, 5]), b: plain([5]) },
  { label: "strided slice with transposed", a: { label: "s", base: [4, 6], view: (t) => t.slice(1, 0, 6, 2), ref: (x) => R.slice(x, 1, 0, 6, 2) }, b: { label: "t", base: [3, 4], view: (t) => t.t(), ref: (x) => R.transpose(x, 0, 1) } },
  { label: "expanded [1, 3] -> [4, 3] with [4, 1]", a: { label: "e", base: [1, 3], view: (t) => t.expand([4, 3]), ref: (x) => R.expand(x, [4, 3]) }, b: plain([4, 1]) },
];

for (const bc of BINARY) {
  test(`\`${bc.name}\` matches the float64 reference with broadcasting and strided operands, on every kernel set`, () => {
    for (const ks of KERNEL_SETS) {
      withKernelSet(ks, () => {
        for (const P of PAIRS) {
          const seed = seedFor(`${bc.name} ${P.label}`);
          let a: R.Arr, b: R.Arr;
          if (bc.distinct) {
            const na = R.numel(P.a.base), nb = R.numel(P.b.base);
            const all = randArr([na + nb], seed, { distinct: true, gap: 0.01 });
            a = R.arr(P.a.base, all.data.subarray(0, na));
            b = R.arr(P.b.base, all.data.subarray(na));
          } else {
            a = randArr(P.a.base, seed, bc.randA);
            b = randArr(P.b.base, seed + 1, bc.randB);
          }
          checkOp({
            what: `${bc.name} on ${P.label} [${ks}]`,
            seed,
            inputs: [a, b],
            megalith: (x, y) => bc.mg(P.a.view(x), P.b.view(y)),
            reference: (x, y) => R.zip(P.a.ref(x), P.b.ref(y), bc.ref),
          });
        }
      });
    }
  });
}

test("binary ops differentiate only the operands that require grad", () => {
  const seed = seedFor("binary partial grad");
  checkOp({
    what: "mul() with b constant",
    seed,
    inputs: [randArr([3, 4], seed), randArr([4], seed + 1)],
    requiresGrad: [true, false],
    megalith: (a, b) => a.mul(b),
    reference: R.mul,
  });
  checkOp({
    what: "div() with a constant",
    seed,
    inputs: [randArr([3, 4], seed + 2), randArr([3, 1], seed + 3, { awayFrom: [0], gap: 0.4 })],
    requiresGrad: [false, true],
    megalith: (a, b) => a.div(b),
    reference: R.div,
  });
});

test("a tensor used as both operands gets the sum of both gradients (`mul(x, x)`, `sub(x, x)`)", () => {
  const seed = seedFor("self binary");
  checkOp({ what: "x * x", seed, inputs: [randArr([2, 17], seed)], megalith: (x) => x.mul(x), reference: (x) => R.mul(x, x) });
  checkOp({ what: "x - x", seed, inputs: [randArr([5], seed + 1)], megalith: (x) => x.sub(x), reference: (x) => R.sub(x, x) });
  checkOp({ what: "x / x^T", seed, inputs: [randArr([3, 3], seed + 2, { awayFrom: [0], gap: 0.4 })], megalith: (x) => x.div(x.t()), reference: (x) => R.div(x, R.transpose(x, 0, 1)) });
});

// ---- comparisons ------------------------------------------------------------------------------------------

const CMP: Array<[string, (a: Tensor, b: Tensor | number) => Tensor, (x: number, y: number) => boolean]> = [
  ["eq", (a, b) => a.eq(b), (x, y) => x === y],
  ["ne", (a, b) => a.ne(b), (x, y) => x !== y],
  ["lt", (a, b) => a.lt(b), (x, y) => x < y],
  ["le", (a, b) => a.le(b), (x, y) => x <= y],
  ["gt", (a, b) => a.gt(b), (x, y) => x > y],
  ["ge", (a, b) => a.ge(b), (x, y) => x >= y],
];

test("comparisons `eq ne lt le gt ge` give float 0/1 with exact ties, broadcasting and number operands, and no gradient", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      const seed = seedFor("compare");
      const a = randArr([4, 6], seed);
      // b shares every other element with a's first row, so ties are exercised
      const b = randArr([6], seed + 1);
      for (let i = 0; i < 6; i += 2) b.data[i] = a.data[i]!;
      const ta = toTensor(a, { requiresGrad: true }), tb = toTensor(b);
      for (const [name, mg, ref] of CMP) {
        const y = mg(ta, tb);
        assert.equal(y.dtype, "float32", `${name}: dtype`);
        assert.equal(y.requiresGrad, false, `${name}: comparisons must not record a gradient`);
        assertClose(y, R.zip(a, b, (x, z) => (ref(x, z) ? 1 : 0)), { what: `${name} [${ks}]`, seed, ...TOL.float32.exact });
        const s = Math.fround(a.data[3]!);
        assertClose(mg(ta, s), R.map(a, (x) => (ref(x, s) ? 1 : 0)), { what: `${name}(number) [${ks}]`, seed, ...TOL.float32.exact });
        const yt = mg(ta.t(), tb.slice(0, 0, 4));
        assertClose(yt, R.zip(R.transpose(a, 0, 1), R.slice(b, 0, 0, 4), (x, z) => (ref(x, z) ? 1 : 0)), { what: `${name} on a transposed view [${ks}]`, seed, ...TOL.float32.exact });
      }
    });
  }
});

test("comparisons accept int32 operands", () => {
  const a = M.tensor([1, 5, -3, 7], { dtype: "int32" });
  const b = M.tensor([1, 2, -3, 9], { dtype: "int32" });
  assert.deepEqual(a.eq(b).toArray(), [1, 0, 1, 0]);
  assert.deepEqual(a.lt(b).toArray(), [0, 0, 0, 1]);
  assert.deepEqual(a.ge(2).toArray(), [0, 1, 0, 1]);
});

// ---- where / maskedFill -------------------------------------------------------------------------------------

test("`where()` matches the reference with broadcast condition, tensor and number branches, and routes gradients", () => {
  for (const ks of KERNEL_SETS) {
    withKernelSet(ks, () => {
      const seed = seedFor("where");
      const rng = randArr([3, 1], seed, { dist: "uniform" });
      const cond = R.map(rng, (v) => (v < 0.5 ? 1 : 0));
      cond.data[0] = 1;
      cond.data[1] = 0;
      const c = toTensor(cond);
      checkOp({
        what: `where(cond [3,1], a [1,4], b [3,4]) [${ks}]`, seed,
        inputs: [randArr([1, 4], seed + 1), randArr([3, 4], seed + 2)],
        megalith: (a, b) => M.where(c, a, b),
        reference: (a, b) => R.where(cond, a, b),
      });
      checkOp({
        what: `where(cond, a, number) [${ks}]`, seed,
        inputs: [randArr([3, 5], seed + 3)],
        megalith: (a) => M.where(c, a, -2),
        reference: (a) => R.where(cond, a, R.scalar(-2)),
      });
      checkOp({
        what: `where(cond, number, b^T) [${ks}]`, seed,
        inputs: [randArr([5, 3], seed + 4)],
        megalith: (b) => M.where(c, 0.5, b.t()),
        reference: (b) => R.where(cond, R.scalar(0.5), R.transpose(b, 0, 1)),
      });
      const cu8 = M.tensor(Array.from(cond.data), { shape: [3, 1], dtype: "uint8" });
      checkOp({
        what: `where(uint8 cond, a, b) [${ks}]`, seed,
        inputs: [randArr([3, 2], seed + 5), randArr([2], seed + 6)],
        megalith: (a, b) => M.where(cu8, a, b),
        reference: (a, b) => R.where(cond, a, b),
      });
    });
  }
});

test("`maskedFill()` replaces masked elements (float and uint8 masks, -Infinity) and passes gradient only elsewhere", () => {
  const seed = seedFor("maskedFill");
  const maskArr = R.arr([5], [1, 0, 0, 1, 0]);
  for (const mask of [toTensor(maskArr), M.tensor([1, 0, 0, 1, 0], { dtype: "uint8" })]) {
    for (const value of [-1e9, -Infinity, 3]) {
      checkOp({
        what: `maskedFill(${mask.dtype} mask, ${value})`, seed,
        inputs: [randArr([4, 5], seed)],
        megalith: (x) => x.maskedFill(mask, value),
        reference: (x) => R.where(maskArr, R.scalar(value), x),
      });
    }
  }
});

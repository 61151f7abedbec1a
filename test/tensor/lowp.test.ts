// Every op in bfloat16 and float16, forward and gradient, against a float64 reference on fresh
// random inputs, in every kernel set this CPU runs.
//
// Inputs are drawn, rounded to the dtype, and the reference computes in float64 on exactly those
// values, so the only differences are Megalith's own roundings. The kernels accumulate in float32
// and round each result once into the 16-bit dtype: a result is within a few half-ulps of the
// float64 value, relative to the size of the values around it (cancellations in a sum cannot be
// more exact than the output's own precision). Tolerances are stated per dtype below.
import { test } from "node:test";
import assert from "node:assert/strict";
import { F, tensor, where, withScope, noGrad, type Tensor, type DType, AdamW, withAutocast } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { type Arr, bf16Round, f16Round } from "../_util/reference.js";
import { KERNEL_SETS, assertClose, randArr, seedFor, withKernelSet } from "../_util/check.js";

type Low = "bfloat16" | "float16";
const DTYPES: Low[] = ["bfloat16", "float16"];
const ROUND: Record<Low, (x: number) => number> = { bfloat16: bf16Round, float16: f16Round };
/** Relative spacing of the format: bfloat16 keeps 8 significant bits, float16 11. */
const EPS: Record<Low, number> = { bfloat16: 2 ** -7, float16: 2 ** -10 };

/** rtol = k ulps; atol = k ulps of the output's RMS (what a once-rounded, float32-accumulated result can promise). */
function tolFor(dt: Low, expected: Arr, k = 2): { rtol: number; atol: number } {
  let ss = 0;
  for (const v of expected.data) ss += v * v;
  const rms = Math.sqrt(ss / Math.max(1, expected.data.length));
  return { rtol: k * EPS[dt], atol: k * EPS[dt] * Math.max(rms, 1e-3) };
}

function roundArr(a: Arr, dt: Low): Arr {
  return R.map(a, (x) => ROUND[dt](x));
}

/** A leaf tensor of dtype `dt` holding `a` (already representable in dt). */
function leaf(a: Arr, dt: DType, requiresGrad: boolean): Tensor {
  const t = noGrad(() => tensor(Float32Array.from(a.data), { shape: a.shape }).to(dt)).keep();
  if (requiresGrad) t.requiresGrad_();
  return t;
}

interface LowCase {
  what: string;
  inputs: Arr[];
  /** Dtype of each input (default: the case dtype); e.g. float32 master weights of a norm. */
  dtypes?: Array<DType | null>;
  requiresGrad?: boolean[];
  megalith: (...xs: Tensor[]) => Tensor;
  reference: (...xs: Arr[]) => Arr;
  referenceGrad?: (gy: Arr, ...xs: Arr[]) => Array<Arr | null>;
  /** Ulps allowed (forward, gradient). */
  ulps?: [number, number];
  forwardOnly?: boolean;
  /** The output dtype expected (default: the case dtype). */
  outDtype?: DType;
}

function checkLow(dt: Low, c: LowCase, seed: number): void {
  const inputs = c.inputs.map((a, i) => ((c.dtypes?.[i] ?? dt) === "float32" ? a : roundArr(a, dt)));
  const needs = inputs.map((_, i) => !c.forwardOnly && (c.requiresGrad?.[i] ?? true));
  const leaves: Tensor[] = [];
  const [uf, ug] = c.ulps ?? [2, 4];
  try {
    withScope(() => {
      inputs.forEach((a, i) => leaves.push(leaf(a, c.dtypes?.[i] ?? dt, needs[i]!)));
      const y = c.megalith(...leaves);
      assert.equal(y.dtype, c.outDtype ?? dt, `${c.what}: output dtype`);
      const expected = c.reference(...inputs);
      assertClose(y, expected, { ...tolFor(dt, expected, uf), what: `${c.what} [${dt}]: forward`, seed });
      if (!needs.some(Boolean)) return;
      const gy = roundArr(randArr(expected.shape, seed ^ 0x5bd1e995), dt);
      y.backward(leaf(gy, y.dtype, false));
      const wrt = needs.map((n, i) => (n ? i : -1)).filter((i) => i >= 0);
      const ref = c.referenceGrad ? c.referenceGrad(gy, ...inputs) : (() => {
        const g = R.numGrad(c.reference, inputs, gy, wrt);
        return inputs.map((_, i) => (needs[i] ? g[wrt.indexOf(i)]! : null));
      })();
      for (const i of wrt) {
        const g = leaves[i]!.grad;
        assert.ok(g, `${c.what} [${dt}]: input ${i} got no gradient`);
        assert.equal(g.dtype, leaves[i]!.dtype, `${c.what} [${dt}]: gradient of input ${i} must be in its dtype`);
        assertClose(g, ref[i]!, { ...tolFor(dt, ref[i]!, ug), what: `${c.what} [${dt}]: gradient of input ${i}`, seed });
      }
    });
  } finally {
    for (const l of leaves) {
      l.grad?.dispose();
      l.dispose();
    }
  }
}

const N = (shape: number[], seed: number, scale = 1) => randArr(shape, seed, { scale });

function cases(seed: number): LowCase[] {
  const s = (k: number) => seed * 31 + k;
  return [
    { what: "add broadcast [3,5]+[5]", inputs: [N([3, 5], s(1)), N([5], s(2))], megalith: (a, b) => a.add(b), reference: R.add },
    { what: "mul [4,6]*[4,6] transposed view", inputs: [N([6, 4], s(3)), N([4, 6], s(4))], megalith: (a, b) => a.t().mul(b), reference: (a, b) => R.mul(R.transpose(a, 0, 1), b) },
    { what: "div [8]/[8]", inputs: [N([8], s(5)), R.map(N([8], s(6)), (x) => 1.5 + Math.abs(x))], megalith: (a, b) => a.div(b), reference: R.div },
    { what: "exp [17]", inputs: [N([17], s(7))], megalith: (a) => a.exp(), reference: (a) => R.map(a, Math.exp) },
    { what: "gelu(tanh) [33]", inputs: [N([33], s(8))], megalith: (a) => F.gelu(a, { approximate: "tanh" }), reference: (a) => R.map(a, R.geluTanh) },
    { what: "tanh [9]", inputs: [N([9], s(9))], megalith: (a) => a.tanh(), reference: (a) => R.map(a, Math.tanh) },
    { what: "sum dim 1 [4,50]", inputs: [N([4, 50], s(10))], megalith: (a) => a.sum(1), reference: (a) => R.sum(a, 1) },
    { what: "mean all [6,7]", inputs: [N([6, 7], s(11))], megalith: (a) => a.mean(), reference: (a) => R.mean(a) },
    { what: "softmax [5,40]", inputs: [N([5, 40], s(12), 2)], megalith: (a) => F.softmax(a, -1), reference: (a) => R.softmax(a, -1) },
    { what: "logSoftmax [3,31]", inputs: [N([3, 31], s(13), 2)], megalith: (a) => F.logSoftmax(a, -1), reference: (a) => R.logSoftmax(a, -1) },
    {
      what: "layerNorm x low, weight/bias float32 [6,48]", inputs: [N([6, 48], s(14)), N([48], s(15)), N([48], s(16))], dtypes: [null, "float32", "float32"],
      megalith: (x, w, b) => F.layerNorm(x, [48], w, b), reference: (x, w, b) => R.layerNorm(x, [48], w, b),
    },
    {
      what: "layerNorm all low [4,32]", inputs: [N([4, 32], s(17)), N([32], s(18)), N([32], s(19))],
      megalith: (x, w, b) => F.layerNorm(x, [32], w, b), reference: (x, w, b) => R.layerNorm(x, [32], w, b),
    },
    { what: "rmsNorm [5,24]", inputs: [N([5, 24], s(20)), N([24], s(21))], megalith: (x, w) => F.rmsNorm(x, [24], w), reference: (x, w) => R.rmsNorm(x, [24], w) },
    { what: "matmul [7,33]@[33,9]", inputs: [N([7, 33], s(22)), N([33, 9], s(23))], megalith: (a, b) => a.matmul(b), reference: R.matmul, ulps: [3, 4] },
    { what: "matmul batched, transposed B [2,5,16]@[2,8,16]^T", inputs: [N([2, 5, 16], s(24)), N([2, 8, 16], s(25))], megalith: (a, b) => a.matmul(b.transpose(1, 2)), reference: (a, b) => R.matmul(a, R.transpose(b, 1, 2)), ulps: [3, 4] },
    {
      what: "linear x low @ weight low + bias", inputs: [N([6, 20], s(26)), N([12, 20], s(27)), N([12], s(28))],
      megalith: (x, w, b) => F.linear(x, w, b), reference: (x, w, b) => R.linear(x, w, b), ulps: [3, 4],
    },
    {
      what: "scaledDotProductAttention causal [2,3,12,8]", inputs: [N([2, 3, 12, 8], s(29)), N([2, 3, 12, 8], s(30)), N([2, 3, 12, 8], s(31))],
      megalith: (q, k, v) => F.scaledDotProductAttention(q, k, v, { isCausal: true }),
      reference: (q, k, v) => R.attention(q, k, v, { isCausal: true }),
      referenceGrad: (gy, q, k, v) => { const g = R.attentionBackward(q, k, v, gy, { isCausal: true }); return [g.gq, g.gk, g.gv]; },
      ulps: [3, 6],
    },
    {
      what: "where(mask, a, b)", inputs: [R.map(N([10], s(32)), (x) => (x > 0 ? 1 : 0)), N([10], s(33)), N([10], s(34))], dtypes: ["float32", null, null], requiresGrad: [false, true, true],
      megalith: (c, a, b) => where(c, a, b), reference: (c, a, b) => R.where(c, a, b),
    },
  ];
}

for (const ks of KERNEL_SETS) {
  for (const dt of DTYPES) {
    test(`every op in ${dt} matches the float64 reference within the dtype's rounding, forward and gradient (${ks} kernels)`, () => {
      const seed = seedFor(`lowp ${dt} ${ks}`);
      withKernelSet(ks, () => {
        for (const c of cases(seed)) checkLow(dt, c, seed);
      });
    });

    test(`crossEntropy on ${dt} logits gives a float32 loss and ${dt} logit gradients matching float64 (${ks} kernels)`, () => {
      const seed = seedFor(`lowp ce ${dt} ${ks}`);
      const V = 37, rows = 9;
      const logits = roundArr(randArr([rows, V], seed, { scale: 2 }), dt);
      const targets = Array.from({ length: rows }, (_, i) => (i === 3 ? -100 : (seed + i * 7) % V));
      withKernelSet(ks, () => withScope(() => {
        const x = leaf(logits, dt, true);
        const t = tensor(Int32Array.from(targets), { dtype: "int32" });
        const loss = F.crossEntropy(x, t);
        assert.equal(loss.dtype, "float32");
        const ref = R.crossEntropy(logits, targets);
        assertClose(loss, ref, { rtol: 1e-5, atol: 1e-5, what: `crossEntropy [${dt}] loss`, seed });
        loss.backward();
        const g = R.crossEntropyBackward(logits, targets, R.arr([], [1]));
        assertClose(x.grad!, g, { ...tolFor(dt, g, 2), what: `crossEntropy [${dt}] gradient`, seed });
        x.grad!.dispose();
      }));
    });

    test(`embedding of a ${dt} table and dropout in ${dt} keep the dtype and the same values and masks as float32 (${ks} kernels)`, () => {
      const seed = seedFor(`lowp emb ${dt} ${ks}`);
      withKernelSet(ks, () => withScope(() => {
        const w = roundArr(randArr([11, 6], seed), dt);
        const idx = [3, 0, 10, 3, 7];
        const wt = leaf(w, dt, true);
        const out = F.embedding(tensor(Int32Array.from(idx), { dtype: "int32" }), wt);
        assert.equal(out.dtype, dt);
        assertClose(out, R.embedding(idx, [5], w), { rtol: 0, atol: 0, what: `embedding [${dt}]`, seed });
        const gy = roundArr(randArr([5, 6], seed + 1), dt);
        out.backward(leaf(gy, dt, false));
        assertClose(wt.grad!, R.embeddingBackward(idx, gy, 11), { ...tolFor(dt, gy, 2), what: `embedding [${dt}] gradient`, seed });
        wt.grad!.dispose();
        // Dropout: the mask depends only on (seed, offset, position), so the 16-bit result is the
        // float32 result rounded.
        const x = roundArr(randArr([64], seed + 2), dt);
        const y32 = F.dropout(leaf(x, "float32", false), 0.3, true, { seed: 5, offset: 100 });
        const y16 = F.dropout(leaf(x, dt, false), 0.3, true, { seed: 5, offset: 100 });
        assert.equal(y16.dtype, dt);
        assertClose(y16, R.map(R.arr([64], y32.data()), (v) => ROUND[dt](v)), { rtol: 0, atol: 0, what: `dropout [${dt}] vs float32 mask`, seed });
      }));
    });
  }
}

test("`.to()` between float32 and 16-bit floats rounds to nearest even and its gradient casts back", () => {
  const seed = seedFor("lowp cast");
  for (const dt of DTYPES) {
    withScope(() => {
      const a = randArr([40], seed, { scale: 3 });
      const x = leaf(a, "float32", true);
      const y = x.to(dt);
      assert.equal(y.dtype, dt);
      assertClose(y, roundArr(a, dt), { rtol: 0, atol: 0, what: `to(${dt})`, seed });
      const gy = roundArr(randArr([40], seed + 1), dt);
      y.backward(leaf(gy, dt, false));
      assert.equal(x.grad!.dtype, "float32");
      assertClose(x.grad!, gy, { rtol: 0, atol: 0, what: `to(${dt}) gradient`, seed });
      x.grad!.dispose();
    });
  }
});

test("mixed dtypes promote like PyTorch: bfloat16 with float32 computes in float32 and each gradient keeps its operand's dtype", () => {
  withScope(() => {
    const a = leaf(R.arr([3], [1.5, -2, 0.25]), "bfloat16", true);
    const b = leaf(R.arr([3], [0.1, 0.2, 0.3]), "float32", true);
    const y = a.mul(b);
    assert.equal(y.dtype, "float32");
    y.sum().backward();
    assert.equal(a.grad!.dtype, "bfloat16");
    assert.equal(b.grad!.dtype, "float32");
    assertClose(b.grad!, [1.5, -2, 0.25], { rtol: 0, atol: 0, what: "grad b" });
    a.grad!.dispose();
    b.grad!.dispose();
  });
});

test("`withAutocast()` runs matmuls and embeddings in bfloat16 with float32 parameters receiving float32 gradients", () => {
  const seed = seedFor("autocast");
  withScope(() => {
    const w = leaf(randArr([8, 16], seed), "float32", true);
    const table = leaf(randArr([10, 16], seed + 1), "float32", true);
    const idx = tensor(Int32Array.from([1, 4, 4, 9]), { dtype: "int32" });
    const { y, e } = withAutocast("bfloat16", () => {
      const e = F.embedding(idx, table);
      return { e, y: F.linear(e, w) };
    });
    assert.equal(e.dtype, "bfloat16");
    assert.equal(y.dtype, "bfloat16");
    // Against the same computation done by hand in float64 on bf16-rounded operands.
    const er = roundArr(R.embedding([1, 4, 4, 9], [4], R.arr(table.shape, table.data())), "bfloat16");
    const wr = roundArr(R.arr(w.shape, w.data()), "bfloat16");
    const yr = R.linear(er, wr);
    assertClose(y, yr, { ...tolFor("bfloat16", yr, 3), what: "autocast linear", seed });
    y.to("float32").sum().backward();
    assert.equal(w.grad!.dtype, "float32");
    assert.equal(table.grad!.dtype, "float32");
    w.grad!.dispose();
    table.grad!.dispose();
  });
});

test("AdamW updates float32 master weights from bfloat16 gradients like from their float32 values", () => {
  const seed = seedFor("adamw lowp");
  withScope(() => {
    const p0 = randArr([50], seed);
    const g = roundArr(randArr([50], seed + 1), "bfloat16");
    const pa = leaf(p0, "float32", true), pb = leaf(p0, "float32", true);
    pa.grad = leaf(g, "float32", false);
    pb.grad = leaf(g, "bfloat16", false);
    for (const p of [pa, pb]) {
      const opt = new AdamW([p], { lr: 1e-2, weightDecay: 0.1 });
      opt.step();
    }
    assertClose(pb, pa.data(), { rtol: 1e-6, atol: 1e-7, what: "AdamW bf16 grads vs f32 grads", seed });
  });
});

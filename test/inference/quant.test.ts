// Int8 weight-only quantization: the rowwise quantizer's round-trip error, the native int8
// matmul (both kernel builds) against a float64 reference, and a tiny GPT's logits with its
// projections swapped for Int8Linear against float32 (perplexity: test/inference/perplexity.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, tensor, randn, noGrad } from "../../src/index.js";
import { backend } from "../../src/backend/index.js";
import { Linear, Int8Linear } from "../../src/nn/index.js";
import { quantizeLinear, quantizeModelInt8, dequantizeModel, isQuantizedInt8 } from "../../src/inference/quant/index.js";

const seed = Date.now() % 100000;

function randomLinear(inF: number, outF: number, bias = true): Linear {
  const lin = new Linear(inF, outF, { bias, seed: seed + inF * 7 + outF });
  if (bias) backend.write(lin.bias!, Float32Array.from({ length: outF }, () => Math.random() - 0.5));
  return lin;
}

test("`quantizeLinear()` round-trips every weight within scale/2 of its row", () => {
  const lin = randomLinear(129, 37);
  // A zero row and a row with one large outlier exercise the edge cases.
  const w = lin.weight.data() as Float32Array;
  w.fill(0, 5 * 129, 6 * 129);
  w[7 * 129 + 3] = 9.5;
  backend.write(lin.weight, w);
  const ql = quantizeLinear(lin);
  const q = ql.q.data() as Int8Array, s = ql.scales.data() as Float32Array;
  const deq = ql.dequantize().data() as Float32Array;
  for (let n = 0; n < 37; n++) {
    let amax = 0;
    for (let k = 0; k < 129; k++) amax = Math.max(amax, Math.abs(w[n * 129 + k]!));
    assert.ok(Math.abs(s[n]! - amax / 127) <= 1e-6 * amax, `row ${n}: scale ${s[n]} vs max|w|/127 = ${amax / 127}`);
    for (let k = 0; k < 129; k++) {
      const i = n * 129 + k;
      assert.ok(q[i]! >= -127 && q[i]! <= 127, `q[${n}, ${k}] = ${q[i]} outside [-127, 127]`);
      const err = Math.abs(w[i]! - s[n]! * q[i]!);
      assert.ok(err <= s[n]! / 2 * (1 + 1e-5) + 1e-12, `w[${n}, ${k}] = ${w[i]}: error ${err} > scale/2 = ${s[n]! / 2} (seed ${seed})`);
      assert.ok(Math.abs(deq[i]! - s[n]! * q[i]!) <= 1e-6 * Math.abs(deq[i]!) + 1e-12);
    }
  }
  assert.equal(s[5], 0);
  assert.equal(q[7 * 129 + 3], 127);
  ql.dispose();
});

// float64 reference of x @ (scales * q)^T + bias.
function reference(x: Float32Array, q: Int8Array, s: Float32Array, b: Float32Array | null, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k]! * s[n]! * q[n * K + k]!;
      y[m * N + n] = acc + (b ? b[n]! : 0);
    }
  }
  return y;
}

for (const kernels of ["avx512", "avx2", "generic"] as const) {
  test(`\`matmul_int8\` (${kernels} kernels) matches a float64 reference for M = 1, 3, 17, 130 and odd K`, (t) => {
    if (!backend.info().kernelSets.includes(kernels)) {
      t.skip(`CPU cannot run the ${kernels} kernels`);
      return;
    }
    const prev = backend.info().kernels;
    backend.setKernelSet(kernels);
    try {
      for (const [K, N, bias] of [[129, 67, true], [75, 200, false]] as const) {
        const ql = quantizeLinear(randomLinear(K, N, bias));
        const q = ql.q.data() as Int8Array, s = ql.scales.data() as Float32Array;
        const b = ql.bias ? (ql.bias.data() as Float32Array) : null;
        for (const M of [1, 3, 17, 130]) {
          const x = randn([M, K]);
          const got = ql.forward(x).data() as Float32Array;
          const ref = reference(x.data() as Float32Array, q, s, b, M, N, K);
          let maxErr = 0, maxRef = 0;
          for (let i = 0; i < ref.length; i++) {
            maxErr = Math.max(maxErr, Math.abs(got[i]! - ref[i]!));
            maxRef = Math.max(maxRef, Math.abs(ref[i]!));
          }
          // float32 accumulation over K terms: relative error well under 1e-5 of the output scale.
          assert.ok(maxErr <= 1e-5 * maxRef, `M=${M} N=${N} K=${K} bias=${bias}: max error ${maxErr} vs max |y| ${maxRef} (seed ${seed})`);
        }
        ql.dispose();
      }
    } finally {
      backend.setKernelSet(prev);
    }
  });
}

test("`Int8Linear.forward()` keeps leading dims and reads strided inputs", () => {
  const ql = quantizeLinear(randomLinear(33, 20));
  const x = randn([2, 33, 5]).transpose(1, 2);                                  // (2, 5, 33) strided
  const y = ql.forward(x);
  assert.deepEqual(y.shape, [2, 5, 20]);
  const ref = noGrad(() => x.contiguous().matmul(ql.dequantize().t()).add(ql.bias!));
  const a = y.data() as Float32Array, r = ref.data() as Float32Array;
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - r[i]!) <= 1e-5, `element ${i}: ${a[i]} vs ${r[i]}`);
  assert.throws(() => ql.forward(randn([4, 32])), /Int8Linear.forward: x must be floating \(\.\.\., 33\)/);
  ql.dispose();
});

function maxRel(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

test("`quantizeModelInt8()` swaps Int8Linear in for the projections: int8 logits are close to float32", () => {
  const model = new GPT({ nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 32, vocabSize: 101 }, { seed });
  model.eval();
  const tokens = Array.from({ length: 32 }, (_, i) => (i % 7 === 3 ? (i * 31) % 101 : (i * 13) % 17));
  const idx = tensor(Int32Array.from(tokens), { shape: [1, 32], dtype: "int32" });
  const logits = () => noGrad(() => model.forward(idx).logits.data() as Float32Array);
  const ref = logits();
  const names = model.namedParameters().map(([n]) => n);
  assert.equal(isQuantizedInt8(model), false);

  const summary = quantizeModelInt8(model);
  assert.equal(summary.linears, 8);
  // 1 byte per weight + a 4-byte scale per row of 64 (C = 64 here; 768 in GPT-2: ~3.98x).
  assert.ok(summary.bytesInt8 < summary.bytesFloat32 / 3.5, `int8 bytes ${summary.bytesInt8} vs fp32 ${summary.bytesFloat32}`);
  assert.ok(isQuantizedInt8(model));
  assert.ok("c_proj" in model.h[1]!.mlp && model.h[1]!.mlp.c_proj instanceof Int8Linear);
  assert.ok(model.getSubmodule("h.0.attn.c_attn") === model.h[0]!.attn.c_attn, "the field and the module tree agree");
  // The state dict keeps its names, less the four float weights per block (the biases are shared).
  const after = model.namedParameters().map(([n]) => n);
  assert.deepEqual(after, names.filter((n) => !/^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/.test(n)));
  assert.throws(() => model.forward(idx), /int8 layers are forward-only/);

  const int8 = logits();
  const e = maxRel(int8, ref);
  assert.ok(e < 5e-2, `int8 logits relative error ${e} (seed ${seed})`);
  assert.ok(e > 0, "int8 path must actually differ from float32");

  // The LM head too: one more int8 matrix, the tied wte read as [V, C].
  assert.equal(model.lm_head, null);
  const withHead = quantizeModelInt8(model, { lmHead: true });
  assert.ok(withHead.lmHead && withHead.linears === 8);
  assert.equal(withHead.bytesFloat32, summary.bytesFloat32 + 4 * 101 * 64);
  assert.equal(withHead.bytesInt8, summary.bytesInt8 + 101 * 64 + 4 * 101);
  const head = model.lm_head!;
  assert.ok(head instanceof Int8Linear);
  const deqHead = head.dequantize().data() as Float32Array, wte = model.wte.weight.data() as Float32Array;
  for (let i = 0; i < wte.length; i++) assert.ok(Math.abs(deqHead[i]! - wte[i]!) <= (head.scales.data() as Float32Array)[Math.floor(i / 64)]! / 2 + 1e-7);
  const int8Head = logits();
  const eh = maxRel(int8Head, ref);
  assert.ok(eh < 5e-2 && maxRel(int8Head, int8) > 0, `int8 logits with an int8 head: relative error ${eh} (seed ${seed})`);

  // dequantizeModel puts the float Linears and the tied head back: float32 logits again, exactly.
  dequantizeModel(model);
  assert.equal(model.lm_head, null);
  assert.ok(model.h[0]!.attn.c_attn instanceof Linear && !isQuantizedInt8(model));
  assert.deepEqual(model.namedParameters().map(([n]) => n), names);
  assert.deepEqual(logits(), ref);
  const x = randn([3, 64]);
  assert.ok(noGrad(() => model.h[0]!.attn.c_attn.forward(x)).shape.join() === "3,192");
});

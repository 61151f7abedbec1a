// The fused attention kernel (forward and backward) against a plain float64 reference, on
// fresh random inputs: causal and not, T and S not multiples of the 64-row block, several
// batch shapes, both kernel builds; and the composed mask path against the fused one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { F, randn, tensor, backend, type Tensor } from "../../src/index.js";

const seed = Date.now() % 1_000_000;

/** softmax(q k^T * scale, causal) v for one head, float64; returns out and the grads for gy. */
function refHead(q: Float64Array, k: Float64Array, v: Float64Array, gy: Float64Array, T: number, S: number, D: number, scale: number, causal: boolean) {
  const P = new Float64Array(T * S);
  for (let i = 0; i < T; i++) {
    let m = -Infinity;
    for (let j = 0; j < S; j++) {
      if (causal && j > i) continue;
      let s = 0;
      for (let d = 0; d < D; d++) s += q[i * D + d]! * k[j * D + d]!;
      P[i * S + j] = s * scale;
      m = Math.max(m, s * scale);
    }
    let z = 0;
    for (let j = 0; j < S; j++) {
      if (causal && j > i) { P[i * S + j] = 0; continue; }
      P[i * S + j] = Math.exp(P[i * S + j]! - m);
      z += P[i * S + j]!;
    }
    for (let j = 0; j < S; j++) P[i * S + j] = P[i * S + j]! / z;
  }
  const out = new Float64Array(T * D), gq = new Float64Array(T * D), gk = new Float64Array(S * D), gv = new Float64Array(S * D);
  for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) for (let d = 0; d < D; d++) out[i * D + d] += P[i * S + j]! * v[j * D + d]!;
  for (let i = 0; i < T; i++) {
    const dP = new Float64Array(S);
    let dot = 0;
    for (let j = 0; j < S; j++) {
      for (let d = 0; d < D; d++) { dP[j] += gy[i * D + d]! * v[j * D + d]!; gv[j * D + d] += P[i * S + j]! * gy[i * D + d]!; }
      dot += P[i * S + j]! * dP[j]!;
    }
    for (let j = 0; j < S; j++) {
      const dS = P[i * S + j]! * (dP[j]! - dot) * scale;
      for (let d = 0; d < D; d++) { gq[i * D + d] += dS * k[j * D + d]!; gk[j * D + d] += dS * q[i * D + d]!; }
    }
  }
  return { out, gq, gk, gv };
}

function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) { num = Math.max(num, Math.abs(a[i]! - b[i]!)); den = Math.max(den, Math.abs(b[i]!)); }
  return num / Math.max(den, 1e-2);  // all-zero references (dq when S = 1) compare absolutely
}

const CASES: Array<{ batch: number[]; T: number; S: number; D: number; causal: boolean }> = [
  { batch: [2, 3], T: 17, S: 17, D: 8, causal: true },
  { batch: [1, 2], T: 130, S: 130, D: 16, causal: true },
  { batch: [3], T: 65, S: 65, D: 4, causal: false },
  { batch: [2], T: 5, S: 70, D: 8, causal: false },
  { batch: [1, 1], T: 1, S: 1, D: 3, causal: true },
];

for (const kernels of ["avx512", "avx2", "generic"] as const) {
  test(`scaledDotProductAttention() fused kernel matches the float64 reference, forward and gradients (${kernels})`, { skip: !backend.info().kernelSets.includes(kernels) ? `no ${kernels}` : false }, () => {
    const prev = backend.info().kernels;
    backend.setKernelSet(kernels);
    try {
      CASES.forEach((c, ci) => {
        const q = randn([...c.batch, c.T, c.D], { seed: seed + 10 * ci }).requiresGrad_();
        const k = randn([...c.batch, c.S, c.D], { seed: seed + 10 * ci + 1 }).requiresGrad_();
        const v = randn([...c.batch, c.S, c.D], { seed: seed + 10 * ci + 2 }).requiresGrad_();
        const gy = randn([...c.batch, c.T, c.D], { seed: seed + 10 * ci + 3 });
        const y = F.scaledDotProductAttention(q, k, v, { isCausal: c.causal });
        y.backward(gy);
        const BH = c.batch.reduce((a, b) => a * b, 1);
        const scale = 1 / Math.sqrt(c.D);
        const [qd, kd, vd, gd, yd] = [q, k, v, gy, y].map((t) => Float64Array.from(t.data()));
        const [gqd, gkd, gvd] = [q, k, v].map((t) => t.grad!.data());
        for (let b = 0; b < BH; b++) {
          const sl = (a: Float64Array | ArrayLike<number>, L: number) => Float64Array.from(Array.prototype.slice.call(a, b * L * c.D, (b + 1) * L * c.D));
          const r = refHead(sl(qd!, c.T), sl(kd!, c.S), sl(vd!, c.S), sl(gd!, c.T), c.T, c.S, c.D, scale, c.causal);
          const what = `case ${ci} head ${b} (seed ${seed})`;
          assert.ok(maxErr(sl(yd!, c.T), r.out) < 2e-5, `forward ${what}`);
          assert.ok(maxErr(sl(gqd!, c.T), r.gq) < 1e-4, `dq ${what}`);
          assert.ok(maxErr(sl(gkd!, c.S), r.gk) < 1e-4, `dk ${what}`);
          assert.ok(maxErr(sl(gvd!, c.S), r.gv) < 1e-4, `dv ${what}`);
        }
      });
    } finally {
      backend.setKernelSet(prev);
    }
  });
}

test("the composed path (boolean and additive masks) agrees with the fused kernel", () => {
  const [B, H, T, D] = [2, 2, 9, 4];
  const q = randn([B, H, T, D], { seed: seed + 100 }), k = randn([B, H, T, D], { seed: seed + 101 }), v = randn([B, H, T, D], { seed: seed + 102 });
  const fused = F.scaledDotProductAttention(q, k, v, { isCausal: true }).data();
  const m = new Uint8Array(T * T);
  for (let i = 0; i < T; i++) for (let j = 0; j <= i; j++) m[i * T + j] = 1;
  const boolMask = tensor(m, { shape: [T, T], dtype: "uint8" });
  const add = new Float32Array(T * T).map((_, idx) => (idx % T <= Math.floor(idx / T) ? 0 : -Infinity));
  const addMask = tensor(add, { shape: [T, T] });
  const viaBool = F.scaledDotProductAttention(q, k, v, { attnMask: boolMask }).data();
  const viaAdd = F.scaledDotProductAttention(q, k, v, { attnMask: addMask }).data();
  assert.ok(maxErr(viaBool, fused) < 1e-5);
  assert.ok(maxErr(viaAdd, fused) < 1e-5);
  const bad = (): Tensor => F.scaledDotProductAttention(q, randn([B, H, T, D + 1]), v);
  assert.throws(bad, /query and key head dims differ/);
});

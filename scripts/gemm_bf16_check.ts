/**
 * bf16 GEMM check and timing: bfloat16 gemm (oneDNN, or the fallback) against float32 sgemm on
 * transformer shapes, within bf16 tolerance, with GFLOP/s of each.
 *
 *   node --import tsx scripts/gemm_bf16_check.ts [--threads N] [--reps R]
 *   ONEDNN_VERBOSE=1 node --import tsx scripts/gemm_bf16_check.ts   # shows oneDNN's kernel ("brg:avx512_core_bf16")
 *
 * The error is ||C_bf16 - C_fp32|| / ||C_fp32|| with C_fp32 computed from the same float32
 * inputs; it is dominated by rounding A and B to bfloat16 (~2^-9 per element), so ~3e-3 is
 * expected and 1e-2 is the bound.
 */
import { DTypeCode, native } from "../src/backend/native_addon.js";

interface Shape { name: string; M: number; N: number; K: number; batch: number; ta: boolean; tb: boolean }

const SHAPES: Shape[] = [
  { name: "mlp up 512x768x3072", M: 512, K: 768, N: 3072, batch: 1, ta: false, tb: false },
  { name: "mlp down 512x3072x768", M: 512, K: 3072, N: 768, batch: 1, ta: false, tb: false },
  { name: "lm head 512x768x50304 (B^T)", M: 512, K: 768, N: 50304, batch: 1, ta: false, tb: true },
  { name: "lm head 128x768x50304 (B^T)", M: 128, K: 768, N: 50304, batch: 1, ta: false, tb: true },
  { name: "attn QK^T 12x(256x64x256)", M: 256, K: 64, N: 256, batch: 12, ta: false, tb: true },
  { name: "attn PV 12x(256x256x64)", M: 256, K: 256, N: 64, batch: 12, ta: false, tb: false },
  { name: "weight grad 768x512x3072 (A^T)", M: 768, K: 512, N: 3072, batch: 1, ta: true, tb: false },
];

const arg = (flag: string, dflt: number) => {
  const i = process.argv.indexOf(flag);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const threads = arg("--threads", 2);
const reps = arg("--reps", 5);
native.setNumThreads(threads);

function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 2 - 1;  // never all zeros
  }
  return out;
}

function buffer(host: Float32Array): number {
  const p = native.alloc(host.byteLength, 0);
  native.write(p, host);
  return p;
}

function timeIt(fn: () => void): number {
  fn();  // warm up (and creates the oneDNN primitive)
  const t: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)]!;
}

console.log(`cpuInfo: ${JSON.stringify(native.cpuInfo())}, threads ${native.numThreads()}`);
let worst = 0;
const rows: string[] = [];
for (const s of SHAPES) {
  const { M, N, K, batch, ta, tb } = s;
  const na = M * K, nb = K * N, nc = M * N;
  const a32 = buffer(randomF32(na * batch, 1)), b32 = buffer(randomF32(nb * batch, 2));
  const a16 = native.alloc(na * batch * 2, 0), b16 = native.alloc(nb * batch * 2, 0);
  native.cast(DTypeCode.float32, a32, DTypeCode.bfloat16, a16, na * batch);
  native.cast(DTypeCode.float32, b32, DTypeCode.bfloat16, b16, nb * batch);
  const cRef = native.alloc(nc * batch * 4, 0), cOut = native.alloc(nc * batch * 4, 0), cOut16 = native.alloc(nc * batch * 2, 0);
  const lda = ta ? M : K, ldb = tb ? K : N;
  const fp32 = () => native.gemm(ta, tb, M, N, K, 1, a32, lda, na, b32, ldb, nb, 0, cRef, N, nc, batch, "float32", "float32");
  const bf16 = () => native.gemm(ta, tb, M, N, K, 1, a16, lda, na, b16, ldb, nb, 0, cOut, N, nc, batch, "bfloat16", "float32");
  const bf16o = () => native.gemm(ta, tb, M, N, K, 1, a16, lda, na, b16, ldb, nb, 0, cOut16, N, nc, batch, "bfloat16", "bfloat16");
  const t32 = timeIt(fp32), t16 = timeIt(bf16), t16o = timeIt(bf16o);
  const ref = new Float32Array(native.read(cRef, nc * batch * 4));
  const got = new Float32Array(native.read(cOut, nc * batch * 4));
  const got16 = new Float32Array(nc * batch);
  native.cast(DTypeCode.bfloat16, cOut16, DTypeCode.float32, cOut, nc * batch);
  got16.set(new Float32Array(native.read(cOut, nc * batch * 4)));
  let num = 0, num16 = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (got[i]! - ref[i]!) ** 2;
    num16 += (got16[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  const err = Math.sqrt(num / den), err16 = Math.sqrt(num16 / den);
  worst = Math.max(worst, err, err16);
  const gf = (t: number) => (2 * M * N * K * batch) / t / 1e9;
  rows.push(
    `${s.name.padEnd(32)} fp32 ${gf(t32).toFixed(0).padStart(5)} GFLOP/s | bf16->f32 ${gf(t16).toFixed(0).padStart(5)} (${(t32 / t16).toFixed(2)}x, err ${err.toExponential(1)})` +
      ` | bf16->bf16 ${gf(t16o).toFixed(0).padStart(5)} (${(t32 / t16o).toFixed(2)}x, err ${err16.toExponential(1)})`,
  );
  for (const p of [a32, b32, a16, b16, cRef, cOut, cOut16]) native.free(p, 0);
}
console.log(rows.join("\n"));
console.log(`worst relative error ${worst.toExponential(2)} (bound 1e-2)`);
if (!(worst < 1e-2)) {
  console.error("gemm_bf16_check: bf16 GEMM is outside bf16 tolerance");
  process.exit(1);
}

/**
 * `npm run bench -- ops`: kernel throughput next to the hardware's own limits, in one run.
 *  - GEMM GFLOP/s at transformer shapes through Megalith's matmul, beside the same OpenBLAS
 *    calls made directly from C (bench/c/ops_ref.c, OpenBLAS's own threads). Target >= 0.95.
 *  - GB/s of elementwise, layer_norm, softmax and AdamW kernels beside copy bandwidth (our
 *    native copy and C memcpy) measured in the same run. Target >= 0.7 of copy.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { randn, zeros, F, withScope, noGrad, backend, type Tensor } from "../src/index.js";
import { UnaryOp } from "../src/backend/index.js";
import type { BenchResult } from "./main.js";

const here = dirname(fileURLToPath(import.meta.url));

/** Best-of-`reps` seconds of fn (after one warm-up call). */
function timeit(fn: () => void, reps: number): number {
  fn();
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

function cReference(threads: number): { threads: number; gemm: Array<{ batch: number; M: number; N: number; K: number; gflops: number }>; memcpy_gbs: number } {
  const dir = mkdtempSync(join(tmpdir(), "megalith-bench-"));
  const exe = join(dir, "ops_ref");
  execFileSync("cc", ["-O3", "-o", exe, join(here, "c", "ops_ref.c"), "-I/usr/include/x86_64-linux-gnu/openblas-pthread", "-lopenblas"]);
  return JSON.parse(execFileSync(exe, [String(threads)], { encoding: "utf8" }));
}

export async function run(args: string[]): Promise<BenchResult> {
  const threads = backend.numThreads();
  const quick = args.includes("--quick");
  console.error(`ops bench: ${threads} threads, kernels=${backend.info().kernels}; compiling and running the C reference...`);
  const ref = cReference(threads);
  const rows: BenchResult["rows"] = [];

  // ---- GEMM ---------------------------------------------------------------------------------
  for (const g of ref.gemm) {
    if (quick && g.N > 10000) continue;
    console.error(`gemm ${g.batch}x${g.M}x${g.N}x${g.K} ...`);
    const secs = noGrad(() => {
      const a = randn(g.batch > 1 ? [g.batch, g.M, g.K] : [g.M, g.K], { seed: 1 });
      const b = randn(g.batch > 1 ? [g.batch, g.K, g.N] : [g.K, g.N], { seed: 2 });
      const flops = 2 * g.batch * g.M * g.N * g.K;
      const s = timeit(() => withScope(() => { a.matmul(b); }), flops > 5e10 ? 2 : 5);
      a.dispose();
      b.dispose();
      return s;
    });
    const gflops = (2 * g.batch * g.M * g.N * g.K) / secs / 1e9;
    rows.push({ name: `matmul ${g.batch > 1 ? `${g.batch}x` : ""}${g.M}x${g.K}x${g.N}`, megalith: +gflops.toFixed(1), reference: g.gflops, unit: "GFLOP/s", ratio: +(gflops / g.gflops).toFixed(3), target: 0.95 });
  }

  // ---- bandwidth-bound kernels ---------------------------------------------------------------
  const n = 3 << 23; // 25M floats = 96 MiB per array: far beyond cache; divisible by 768 and 1024
  const bw = (name: string, bytes: number, fn: () => void, copyGbs: number) => {
    const s = timeit(() => withScope(fn), 5);
    const gbs = bytes / s / 1e9;
    rows.push({ name, megalith: +gbs.toFixed(1), reference: +copyGbs.toFixed(1), unit: "GB/s", ratio: +(gbs / copyGbs).toFixed(3), target: 0.7 });
  };
  noGrad(() => {
    const x = randn([n], { seed: 3 });
    const y = randn([n], { seed: 4 });
    const out = zeros([n]);
    // Copy bandwidth through our own kernel (read n + write n floats).
    const copySecs = timeit(() => backend.copyStrided(4, x, [1], out, [1], [n]), 5);
    const copyGbs = (2 * n * 4) / copySecs / 1e9;
    rows.push({ name: "copy (native)", megalith: +copyGbs.toFixed(1), reference: ref.memcpy_gbs, unit: "GB/s", ratio: +(copyGbs / ref.memcpy_gbs).toFixed(3), target: 0.9 });
    bw("add (x + y)", 3 * n * 4, () => { x.add(y); }, copyGbs);
    bw("mul by scalar", 2 * n * 4, () => { x.mul(0.5); }, copyGbs);
    bw("gelu tanh", 2 * n * 4, () => { F.gelu(x, { approximate: "tanh" }); }, copyGbs);
    bw("gelu tanh backward", 3 * n * 4, () => { backend.unaryBackward(UnaryOp.geluTanh, x, x, y, out, n, 0, 0, "float32"); }, copyGbs);
    const C = 768;
    const xr = x.view([n / C, C]);
    const w = randn([C], { seed: 5 }), b = randn([C], { seed: 6 });
    bw("layer_norm 768", 2 * n * 4, () => { F.layerNorm(xr, [C], w, b); }, copyGbs);
    const xs = x.view([n / 1024, 1024]);
    bw("softmax 1024", 2 * n * 4, () => { F.softmax(xs, -1); }, copyGbs);
    const m = zeros([n]), v = zeros([n]);
    // AdamW reads p, g, m, v and writes p, m, v: 7 arrays.
    bw("adamw", 7 * n * 4, () => backend.adamw(out, y, m, v, n, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.1, 0.01, 1, "float32", "float32"), copyGbs);
    for (const t of [x, y, out, xr, w, b, xs, m, v] as Tensor[]) t.dispose();
  });
  return {
    suite: "ops",
    env: { threads, kernels: backend.info().kernels, cpu: cpus()[0]?.model, cReferenceThreads: ref.threads, memcpyGBs: ref.memcpy_gbs },
    rows,
  };
}

/**
 * `megalith plan --calibrate`: measures this machine for the `cpu-this` profile, in-process.
 *
 *  - GEMM FLOP/s at transformer shapes (GPT-2 small's attention projection, MLP up and down at
 *    1k tokens) in float32 and bfloat16: the best of repeated products per shape (best, not mean:
 *    the question is what the kernel can do), and the best shape's rate kept per dtype.
 *  - Memory bandwidth: the best time of copying a 128 MiB tensor (bytes read + written / s).
 *
 * Not done yet: collective bandwidth and latency (all-reduce, all-gather, send/recv) through
 * `megalith launch`. Until then `cpu-this` derives its collective bandwidth from the copy
 * bandwidth and marks it assumed (`hardware.ts`). The record says `collectives: null`.
 */
import { cpus, totalmem } from "node:os";
import { backend } from "../backend/index.js";
import { randn, empty, withScope, type DType } from "../tensor/index.js";
import type { CalibrationRecord } from "./hardware.js";

/** Options of `calibrate()`. */
export interface CalibrateOptions {
  /** Milliseconds spent per GEMM shape. Default 250. */
  budgetMs?: number;
  /** GEMM shapes (M, K, N). Default GPT-2 small at 1,024 tokens: qkv, MLP up, MLP down. */
  shapes?: Array<[number, number, number]>;
  /** dtypes measured. Default float32 and bfloat16. */
  dtypes?: DType[];
  /** Bytes of the copy that measures memory bandwidth. Default 128 MiB. */
  copyBytes?: number;
}

/** Best-of GEMM FLOP/s for one shape and dtype within a time budget. */
function gemmFlops([M, K, N]: [number, number, number], dtype: DType, budgetMs: number): number {
  return withScope(() => {
    const a = randn([M, K], { seed: 1 }).to(dtype), b = randn([K, N], { seed: 2 }).to(dtype);
    withScope(() => { a.matmul(b); });  // warm-up
    let best = Infinity;
    const end = performance.now() + budgetMs;
    for (let i = 0; i < 3 || (performance.now() < end && i < 1000); i++) {
      const t0 = performance.now();
      withScope(() => { a.matmul(b); });
      best = Math.min(best, performance.now() - t0);
    }
    return (2 * M * K * N) / (best / 1000);
  });
}

/** Copy bandwidth, bytes read + written per second, best of a few copies. */
function copyBandwidth(bytes: number): number {
  return withScope(() => {
    const n = Math.floor(bytes / 4);
    const src = empty([n], { dtype: "float32" });
    withScope(() => { src.clone(); });  // warm-up: first touch
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      withScope(() => { src.clone(); });
      best = Math.min(best, performance.now() - t0);
    }
    return (2 * n * 4) / (best / 1000);
  });
}

/**
 * Measures this machine. Takes about (shapes x dtypes x budget) + a second.
 * @example writeCalibration(calibrate())
 */
export function calibrate(opts: CalibrateOptions = {}): CalibrationRecord {
  const budget = opts.budgetMs ?? 250;
  const shapes = opts.shapes ?? [[1024, 768, 2304], [1024, 768, 3072], [1024, 3072, 768]];
  const dtypes = opts.dtypes ?? ["float32", "bfloat16"];
  const gemm_shapes: CalibrationRecord["gemm_shapes"] = [];
  const gemm_flops: Record<string, number> = {};
  for (const dtype of dtypes) {
    for (const mkn of shapes) {
      const flops = gemmFlops(mkn, dtype, budget);
      gemm_shapes.push({ dtype, mkn, flops });
      gemm_flops[dtype] = Math.max(gemm_flops[dtype] ?? 0, flops);
    }
  }
  return {
    version: 1, measured_at: new Date().toISOString(), cpu: cpus()[0]?.model.trim() || "unknown-cpu",
    threads: backend.numThreads(), memory_bytes: totalmem(), gemm_flops, gemm_shapes,
    memory_bandwidth: copyBandwidth(opts.copyBytes ?? 128 * 2 ** 20), collectives: null,
  };
}

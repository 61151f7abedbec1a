/**
 * `megalith plan --calibrate`: measures this machine for the `cpu-this` profile, in-process.
 *
 *  - GEMM FLOP/s at transformer shapes (GPT-2 small's attention projection, MLP up and down at
 *    1k tokens) in float32 and bfloat16: the best of repeated products per shape (best, not mean:
 *    the question is what the kernel can do), and the best shape's rate kept per dtype.
 *  - Memory bandwidth: the best time of copying a 128 MiB tensor (bytes read + written / s).
 *
 *  - Collectives (`calibrateCollectives()`, run on every rank of an mpirun job, e.g. by
 *    `npm run bench -- plan`): all-reduce, reduce-scatter, all-gather and send/recv time at a
 *    small and a large buffer; latency is the small call's time, bandwidth the large one's
 *    ring bytes (`ringBytes`) over its time less that latency (the alpha-beta model the
 *    planner predicts with). Without it the record says `collectives: null` and `cpu-this`
 *    derives collective bandwidth from the copy bandwidth, marked assumed (`hardware.ts`).
 */
import { cpus, totalmem } from "node:os";
import { backend } from "../backend/index.js";
import { randn, empty, zeros, tensor, withScope, type DType } from "../tensor/index.js";
import { allGather, allReduce, barrier, recv, reduceScatter, send, type ProcessGroup } from "../parallel/index.js";
import type { CalibrationRecord, CollectiveCalibration, CollectiveKind } from "./hardware.js";
import { ringBytes } from "./formulas.js";

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

/**
 * Seconds per call of `fn`, the best of 5 repetitions of `iters` calls (after a warm-up), the
 * slowest rank's time (a collective is done when its last rank is).
 */
function timeCall(g: ProcessGroup, iters: number, fn: () => void): number {
  let best = Infinity;
  for (let r = 0; r < 6; r++) {
    barrier(g);
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) fn();
    const dt = withScope(() => {
      const t = tensor([(performance.now() - t0) / 1000 / iters]);
      allReduce(t, g, "max");
      return t.item();
    });
    if (r > 0) best = Math.min(best, dt);
  }
  return best;
}

/**
 * Latency and bandwidth of each collective kind on `g` (every rank calls this; the ranks of
 * one machine talk through shared memory). Two float32 buffers per kind: `smallBytes` (its time
 * is the latency) and `largeBytes` (bandwidth = ring bytes per rank / (time - latency)).
 * send/recv runs between ranks 0 and 1 (a ping: 0 sends, 1 receives, then back; half a round trip).
 * @example const c = calibrateCollectives(worldGroup()); // under mpirun -np 2
 */
export function calibrateCollectives(g: ProcessGroup, smallBytes = 4096, largeBytes = 8 * 2 ** 20): CollectiveCalibration {
  const n = g.size;
  const measure = (bytes: number): Record<CollectiveKind, number> => withScope(() => {
    const elems = Math.floor(bytes / 4 / n) * n;
    const a = zeros([elems]), part = zeros([elems / n]), full = zeros([elems]);
    const iters = Math.max(2, Math.min(200, Math.floor((32 * 2 ** 20) / bytes)));
    const ping = () => {
      if (g.rank === 0) { send(a, g, 1); recv(a, g, 1); } else if (g.rank === 1) { recv(a, g, 0); send(a, g, 0); }
    };
    return {
      all_reduce: timeCall(g, iters, () => allReduce(a, g)),
      reduce_scatter: timeCall(g, iters, () => reduceScatter(a, part, g)),
      all_gather: timeCall(g, iters, () => allGather(part, full, g)),
      send_recv: timeCall(g, iters, ping) / 2,
    };
  });
  const small = measure(smallBytes), large = measure(largeBytes);
  const out = {} as CollectiveCalibration["kinds"];
  for (const kind of Object.keys(small) as CollectiveKind[]) {
    const wire = ringBytes(kind, largeBytes, n);
    out[kind] = { latency_s: small[kind], bandwidth: wire / Math.max(large[kind] - small[kind], 1e-9) };
  }
  return { ranks: n, small_bytes: smallBytes, large_bytes: largeBytes, kinds: out };
}

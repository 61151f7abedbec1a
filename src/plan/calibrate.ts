/**
 * `megalith plan --calibrate`: measures this machine for the `cpu-this` profile, in-process.
 *
 *  - GEMM FLOP/s at transformer shapes (GPT-2 small's attention projection, MLP up and down at
 *    1k tokens) in float32 and bfloat16: the best of repeated products per shape (best, not mean:
 *    the question is what the kernel can do), and the best shape's rate kept per dtype.
 *  - Memory bandwidth: the best time of copying a 128 MiB tensor (bytes read + written / s).
 *  - The step-time tables (`gemm_table`, `non_gemm`, `op_overhead_s`): GEMM rates at GPT-2
 *    small's shapes and, given `config`, at that model's own shapes (M = b·s, tp 1 and 2), each
 *    with all threads and with one; the non-GEMM rate, from a one-block GPT at the model's shape
 *    (forward + backward, best of a few) less its GEMMs at the table's rates and its ops at the
 *    per-op cost, in bytes/s of the planner's own traffic count; the per-op cost from a tiny
 *    product recorded for autograd. This calibrates the planner's accounting against this
 *    runtime, not against an abstract machine: what it predicts is this code's step.
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
import { randn, empty, zeros, tensor, withScope, withAutocast, type DType } from "../tensor/index.js";
import { GPT } from "../models/index.js";
import { allGather, allReduce, barrier, recv, reduceScatter, send, type ProcessGroup } from "../parallel/index.js";
import type { CalibrationRecord, CollectiveCalibration, CollectiveKind } from "./hardware.js";
import { iterationFlops, ringBytes } from "./formulas.js";
import { trafficParts, forwardBackwardOps, modelGemmShapes, type Layout, type PlanConfig } from "./planner.js";

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
  /**
   * The model the step-time tables are measured at (its GEMM shapes, its one-block step). Default
   * null: a 4-head 256-wide block at 2 x 128 tokens, vocabulary 4,096, and GPT-2 small's GEMMs only.
   */
  config?: PlanConfig | null;
  /** Thread counts the tables are measured at. Default this process's threads and 1. */
  threads?: number[];
  /** Milliseconds per table entry (GEMM shape, or one-block step). Default 120. */
  tableBudgetMs?: number;
  /** Skip the tables (gemm_table, non_gemm, op_overhead_s): GEMM peak and copy bandwidth only. Default false. */
  skipTables?: boolean;
}

/** The model `calibrate()` measures its non-GEMM rate at when given no config. */
const DEFAULT_TABLE_MODEL: PlanConfig = {
  model: { n_layer: 4, n_embd: 256, n_head: 4, block_size: 128, vocab_size: 4096, bias: true },
  train: { micro_batch_size: 2, grad_accum_steps: 1, precision: "fp32" },
  parallel: { dp: 1, bucket_mb: 25, reduce_dtype: "fp32", offload: "none", offload_chunk_mb: 32 },
};

/**
 * Milliseconds since (t0, c0): wall time, or with one backend thread the smaller of it and the
 * process's CPU time, which the other jobs on shared cores do not inflate (a 1-thread run's
 * CPU time is its time on an idle core). With more threads wall time (CPU time / threads would
 * credit perfect parallelism).
 */
function _busyMs(t0: number, c0: NodeJS.CpuUsage): number {
  const wall = performance.now() - t0;
  if (backend.numThreads() !== 1) return wall;
  const c = process.cpuUsage(c0);
  return Math.min(wall, (c.user + c.system) / 1000);
}

/** Best-of GEMM FLOP/s for one shape and dtype within a time budget. */
function gemmFlops([M, K, N]: [number, number, number], dtype: DType, budgetMs: number): number {
  return withScope(() => {
    const a = randn([M, K], { seed: 1 }).to(dtype), b = randn([K, N], { seed: 2 }).to(dtype);
    withScope(() => { a.matmul(b); });  // warm-up
    let best = Infinity;
    const end = performance.now() + budgetMs;
    for (let i = 0; i < 3 || (performance.now() < end && i < 1000); i++) {
      const t0 = performance.now(), c0 = process.cpuUsage();
      withScope(() => { a.matmul(b); });
      best = Math.min(best, _busyMs(t0, c0));
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
  const rec: CalibrationRecord = {
    version: 1, measured_at: new Date().toISOString(), cpu: cpus()[0]?.model.trim() || "unknown-cpu",
    threads: backend.numThreads(), memory_bytes: totalmem(), gemm_flops, gemm_shapes,
    memory_bandwidth: copyBandwidth(opts.copyBytes ?? 128 * 2 ** 20), collectives: null,
  };
  if (!opts.skipTables) Object.assign(rec, stepTables(gemm_shapes, dtypes, opts));
  return rec;
}

/**
 * The step-time tables of `calibrate()`: GEMM rates per (dtype, threads, shape), the non-GEMM
 * rate per (dtype, threads) and the per-op cost (see the file header).
 */
function stepTables(big: CalibrationRecord["gemm_shapes"], dtypes: DType[], opts: CalibrateOptions): Pick<CalibrationRecord, "gemm_table" | "non_gemm" | "op_overhead_s"> {
  const budget = opts.tableBudgetMs ?? 80;
  const model = opts.config ?? DEFAULT_TABLE_MODEL;
  const before = backend.numThreads();
  const threadCounts = [...new Set(opts.threads ?? [before, 1])];
  // The model's products at tp 1 and (when its widths split) tp 2, beside the big shapes.
  const b = model.train.micro_batch_size;
  const tps = [1, 2].filter((t) => model.model.n_head % t === 0);
  const key = (x: number[]) => x.join("x");
  const shapes = [...new Map(tps.flatMap((tp) => modelGemmShapes(model, { tp, microBatchSize: b })).map((x) => [key(x), x])).values()];
  // The big shapes, measured above with this process's threads, join the table as they are.
  const gemm_table: NonNullable<CalibrationRecord["gemm_table"]> = big.map((r) => ({ ...r, threads: before }));
  const non_gemm: NonNullable<CalibrationRecord["non_gemm"]> = [];
  let op_overhead_s = Infinity;
  try {
    for (const threads of threadCounts) {
      backend.setNumThreads(threads);
      op_overhead_s = Math.min(op_overhead_s, opOverhead());
      for (const dtype of dtypes) {
        const mine = shapes.map((mkn) => ({ dtype, threads, mkn, flops: gemmFlops(mkn, dtype, budget) }));
        gemm_table.push(...mine.filter((r) => !gemm_table.some((x) => x.dtype === dtype && x.threads === threads && key(x.mkn) === key(r.mkn))));
        const rate = (mkn: [number, number, number]) => mine.find((r) => key(r.mkn) === key(mkn))!.flops;
        non_gemm.push({ dtype, threads, ...nonGemmRate(model, dtype, rate, op_overhead_s, budget) });
      }
    }
  } finally {
    backend.setNumThreads(before);
  }
  return { gemm_table, non_gemm, op_overhead_s };
}

/** Seconds per tensor op recorded for autograd: a product of two 8-element tensors, best of 5 x 400. */
function opOverhead(): number {
  return withScope(() => {
    const x = randn([8], { seed: 3 }).requiresGrad_(), y = randn([8], { seed: 4 });
    let best = Infinity;
    for (let r = 0; r < 6; r++) {
      const t0 = performance.now(), c0 = process.cpuUsage();
      withScope(() => { for (let i = 0; i < 400; i++) x.mul(y); });
      if (r > 0) best = Math.min(best, _busyMs(t0, c0) / 1000 / 400);
    }
    return best;
  });
}

type NonGemm = Omit<NonNullable<CalibrationRecord["non_gemm"]>[number], "dtype" | "threads">;

/**
 * The non-GEMM rates at `c`'s shape, from two GPTs' forward + backward (one micro-batch of b x s
 * tokens, under autocast for 16-bit dtypes; best of a few each): one block, and
 * min(max(n_layer, 2), 4) blocks. Each step less its GEMMs at `rate` and its ops at `perOp` is
 * the non-GEMM time; the difference per added block is a block's, the rest the embedding's,
 * head's and loss's: bytes/s of the planner's traffic count for each (`trafficParts`). Two
 * points, because the head's kernels (softmax and cross-entropy over the vocabulary) and a
 * block's run at different rates, and one point would charge the head's rate to every block.
 * Each part keeps at least a tenth of its time, so a GEMM table measured high cannot make a
 * rate infinite.
 */
function nonGemmRate(c: PlanConfig, dtype: DType, rate: (mkn: [number, number, number]) => number, perOp: number, budgetMs: number): NonGemm {
  const { n_embd: h, n_head: a, block_size: s, vocab_size: V, bias } = c.model;
  const b = c.train.micro_batch_size;
  const precision = dtype === "float32" ? "fp32" : dtype === "bfloat16" ? "bf16" : "fp16";
  const layout: Layout = { dp: 1, tp: 1, pp: 1, sp: false, zero: 0, recompute: "none", schedule: "1f1b", virtualStages: 1, microBatchSize: b, microBatches: 1 };
  const ids = () => tensor(Int32Array.from({ length: b * s }, (_, i) => (i * 7919 + 13) % V), { shape: [b, s], dtype: "int32" });
  const L2 = Math.min(Math.max(c.model.n_layer, 2), 4);
  /** Best seconds of one forward + backward of an L-block GPT, and its non-GEMM, non-op seconds. */
  const measure = (L: number): { step: number; rest: number; at: PlanConfig } => {
    const at: PlanConfig = { ...c, model: { ...c.model, n_layer: L }, train: { ...c.train, precision } };
    const model = new GPT({ nLayer: L, nHead: a, nEmbd: h, blockSize: s, vocabSize: V, bias }, { seed: 5 });
    model.train();
    const step = () => withScope(() => {
      const run = () => model.forward(ids(), ids()).loss!;
      const loss = dtype === "float32" ? run() : withAutocast(dtype, run);
      loss.backward();
    });
    let best = Infinity;
    try {
      step();  // warm-up: first touch, primitive creation
      const end = performance.now() + budgetMs;
      for (let i = 0; i < 5 || (performance.now() < end && i < 50); i++) {
        const t0 = performance.now(), c0 = process.cpuUsage();
        step();
        best = Math.min(best, _busyMs(t0, c0) / 1000);
      }
    } finally {
      for (const p of model.parameters()) {
        p.grad?.dispose();
        p.dispose();
      }
    }
    // The GEMM time as the planner counts it (`gemmSeconds`): the executed FLOPs (attention's
    // included) at the FLOP-weighted harmonic mean of the blocks' and the head's product rates.
    const shapes = modelGemmShapes(at, layout);
    const w = shapes.map((mkn, i) => 2 * mkn[0] * mkn[1] * mkn[2] * (i === shapes.length - 1 ? 1 : L));
    const meanRate = w.reduce((x, y) => x + y, 0) / w.reduce((t, wi, i) => t + wi / rate(shapes[i]!), 0);
    const gemm = iterationFlops({ B: b, s, l: L, h, V }, "none") / meanRate;
    return { step: best, rest: best - gemm - forwardBackwardOps(at, layout) * perOp, at };
  };
  const one = measure(1), many = measure(L2);
  // Floors keep both positive when noise makes the longer model's step look no slower.
  const perBlock = Math.max((many.rest - one.rest) / (L2 - 1), many.step / L2 / 10);
  const head = Math.max(one.rest - perBlock, one.step / 10);
  const t1 = trafficParts(one.at, layout);
  return {
    bandwidth: t1.layers / perBlock, head_bandwidth: t1.head / head, step_s: one.step, steps_s: [one.step, many.step],
    model: { n_embd: h, n_head: a, block_size: s, vocab_size: V, micro_batch_size: b, n_layer: [1, L2] },
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

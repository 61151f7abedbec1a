/**
 * Hardware profiles the planner predicts against: peak and achievable FLOP/s, memory per rank,
 * and the bandwidths of the links a collective crosses (inside a node, between nodes).
 *
 * Built in: `a100-80g` and `h100-80g` from the vendors' data sheets (numbers cited beside each),
 * and `cpu-this`, this machine as `megalith plan --calibrate` measured it, read from a JSON file.
 *
 * Candid about what is assumed rather than published: the achievable fraction of peak a GEMM
 * reaches on a GPU (0.8: large cuBLAS GEMMs at transformer shapes) and the per-collective
 * latencies are planning assumptions, marked `assumed` in the profile.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { ValueError, FormatError } from "../core/errors.js";

/** One machine kind, per rank (one GPU, or one process on a CPU). */
export interface HardwareProfile {
  /** The name `--hardware` takes. */
  name: string;
  /** One line: what it is and where the numbers come from. */
  description: string;
  /** Vendor peak FLOP/s per rank in the training dtype (dense bf16 for GPUs). */
  peakFlops: number;
  /** FLOP/s a training step's GEMMs reach per rank: what step-time predictions use. */
  achievableFlops: number;
  /** Bytes of memory per rank. */
  memoryBytes: number;
  /** Memory bandwidth per rank, bytes/s (informational; a step is predicted compute-bound). */
  memoryBandwidth: number;
  /** Ranks that share the fast intra-node links. */
  ranksPerNode: number;
  /** Per-rank, per-direction bandwidth inside a node (NVLink), bytes/s. */
  intraNodeBandwidth: number;
  /** Per-rank, per-direction bandwidth between nodes (InfiniBand), bytes/s. */
  interNodeBandwidth: number;
  /** Seconds of latency per collective call inside a node / between nodes. */
  intraNodeLatency: number;
  interNodeLatency: number;
  /**
   * Measured per-kind latency and bandwidth (ring bytes per rank / s) inside a node, when the
   * profile was calibrated with collectives; it replaces intraNodeBandwidth/Latency for that kind.
   */
  collectives?: Record<CollectiveKind, { latency_s: number; bandwidth: number }>;
  /**
   * Calibrated profiles: FLOP/s per rank of GEMMs at the measured shapes (M, K, N), at this rank's
   * thread count and the training dtype (`gemmRate` looks a product up). Absent: achievableFlops.
   */
  gemmTable?: Array<{ mkn: [number, number, number]; flops: number }>;
  /**
   * Calibrated profiles: bytes/s per rank of the blocks' and AdamW's non-GEMM work as the planner
   * counts its traffic (`trafficParts`), measured through the runtime's own kernels. Absent: memoryBandwidth.
   */
  elementwiseBandwidth?: number;
  /** Calibrated profiles: the same for the embedding, head and loss (softmax over the vocabulary). Absent: elementwiseBandwidth. */
  headBandwidth?: number;
  /** Calibrated profiles: seconds of fixed cost per tensor op (dispatch, autograd, allocator). Absent: 0. */
  opOverhead?: number;
  /** Which fields are planning assumptions rather than data-sheet or measured values. */
  assumed: string[];
}

const GB = 1e9;

/**
 * NVIDIA A100 80GB SXM (NVIDIA A100 Tensor Core GPU data sheet, 2021; DGX A100 system data sheet):
 * 312 TFLOP/s dense BF16, 80 GB HBM2e at 2,039 GB/s, third-generation NVLink 600 GB/s total
 * (300 GB/s each way), DGX A100: eight GPUs per node and one 200 Gb/s HDR InfiniBand port per GPU
 * (25 GB/s each way).
 */
const A100_80G: HardwareProfile = {
  name: "a100-80g",
  description: "NVIDIA A100 80GB SXM, DGX A100 node (8 GPUs, NVLink3, 8x HDR 200 Gb/s InfiniBand)",
  peakFlops: 312e12,
  achievableFlops: 0.8 * 312e12,
  memoryBytes: 80 * GB,
  memoryBandwidth: 2039 * GB,
  ranksPerNode: 8,
  intraNodeBandwidth: 300 * GB,
  interNodeBandwidth: 25 * GB,
  intraNodeLatency: 10e-6,
  interNodeLatency: 20e-6,
  assumed: ["achievableFlops (0.8 x peak)", "intraNodeLatency", "interNodeLatency"],
};

/**
 * NVIDIA H100 80GB SXM (NVIDIA H100 Tensor Core GPU data sheet; DGX H100 data sheet):
 * 989 TFLOP/s dense BF16 (1,979 with sparsity), 80 GB HBM3 at 3.35 TB/s, fourth-generation NVLink
 * 900 GB/s total (450 GB/s each way), DGX H100: eight GPUs and one 400 Gb/s NDR InfiniBand
 * (ConnectX-7) per GPU (50 GB/s each way).
 */
const H100_80G: HardwareProfile = {
  name: "h100-80g",
  description: "NVIDIA H100 80GB SXM, DGX H100 node (8 GPUs, NVLink4, 8x NDR 400 Gb/s InfiniBand)",
  peakFlops: 989e12,
  achievableFlops: 0.8 * 989e12,
  memoryBytes: 80 * GB,
  memoryBandwidth: 3350 * GB,
  ranksPerNode: 8,
  intraNodeBandwidth: 450 * GB,
  interNodeBandwidth: 50 * GB,
  intraNodeLatency: 10e-6,
  interNodeLatency: 20e-6,
  assumed: ["achievableFlops (0.8 x peak)", "intraNodeLatency", "interNodeLatency"],
};

/** The built-in profiles by name. */
export const BUILTIN_PROFILES: Readonly<Record<string, HardwareProfile>> = { "a100-80g": A100_80G, "h100-80g": H100_80G };

/** The collective kinds the planner times. */
export type CollectiveKind = "all_reduce" | "reduce_scatter" | "all_gather" | "send_recv";

/** Collectives as `calibrateCollectives()` measured them on one machine's ranks. */
export interface CollectiveCalibration {
  /** Ranks of the measuring job. */
  ranks: number;
  /** Buffer sizes of the latency and the bandwidth measurement, bytes. */
  small_bytes: number;
  large_bytes: number;
  /** Per kind: seconds per call at small_bytes, and ring bytes per rank per second above it. */
  kinds: Record<CollectiveKind, { latency_s: number; bandwidth: number }>;
}

/** What `megalith plan --calibrate` writes: this machine's measurements. */
export interface CalibrationRecord {
  /** Format version of this file. */
  version: 1;
  measured_at: string;
  cpu: string;
  /** Backend threads per process during the measurement. */
  threads: number;
  /** Total RAM, bytes (the machine, shared by all ranks on it). */
  memory_bytes: number;
  /** Best GEMM FLOP/s per process, by dtype, over the transformer shapes measured. */
  gemm_flops: Record<string, number>;
  /** The shapes (M, K, N) measured and the FLOP/s of each, per dtype. */
  gemm_shapes: Array<{ dtype: string; mkn: [number, number, number]; flops: number }>;
  /** Copy bandwidth (bytes read + written per second) of one process. */
  memory_bandwidth: number;
  /** Collective latency/bandwidth measured under mpirun (`calibrateCollectives()`), or null. */
  collectives: CollectiveCalibration | null;
  /** Why `collectives` is null when `megalith plan --calibrate` tried to measure them (no mpirun, a failed job). */
  collectives_skipped?: string;
  /**
   * GEMM FLOP/s of one process per dtype, thread count and shape (M, K, N): GPT-2 small's
   * products and, when calibrated with --config, that model's own, with all threads and with
   * one (the thread count of each of 2 ranks sharing 2 cores). Older records lack it.
   */
  gemm_table?: Array<{ dtype: string; threads: number; mkn: [number, number, number]; flops: number }>;
  /**
   * The non-GEMM work's rates per dtype and thread count, in bytes/s of the planner's traffic
   * count (`trafficParts`): a block's (`bandwidth`, also AdamW's) and the embedding's, head's and
   * loss's (`head_bandwidth`), from GPTs of 1 and n_layer[1] blocks (forward + backward, less
   * their GEMMs at the table's rates and their ops at op_overhead_s). `model` is the shape
   * measured; `step_s` the one-block step's seconds, `steps_s` both.
   */
  non_gemm?: Array<{
    dtype: string; threads: number; bandwidth: number; head_bandwidth?: number; step_s: number; steps_s?: number[];
    model: { n_embd: number; n_head: number; block_size: number; vocab_size: number; micro_batch_size: number; n_layer?: number[] };
  }>;
  /** Seconds of fixed cost per tensor op with autograd recording (a tiny product, best of many). */
  op_overhead_s?: number;
}

/** The calibration file: $MEGALITH_PLAN_PROFILE, else $XDG_CACHE_HOME or ~/.cache, megalith/plan_profile.json. */
export function calibrationFile(): string {
  if (process.env.MEGALITH_PLAN_PROFILE) return process.env.MEGALITH_PLAN_PROFILE;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "megalith", "plan_profile.json");
}

/** Reads the calibration record, or null when there is none. */
export function readCalibration(file = calibrationFile()): CalibrationRecord | null {
  if (!existsSync(file)) return null;
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new FormatError(file, `not valid JSON (${(e as Error).message}); delete it and run megalith plan --calibrate`);
  }
  const r = v as Partial<CalibrationRecord>;
  if (r.version !== 1 || typeof r.gemm_flops !== "object" || typeof r.memory_bandwidth !== "number") {
    throw new FormatError(file, "is not a calibration record of version 1; delete it and run megalith plan --calibrate");
  }
  return r as CalibrationRecord;
}

/** Writes the record atomically (a temporary file renamed). */
export function writeCalibration(record: CalibrationRecord, file = calibrationFile()): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record, null, 2) + "\n");
  renameSync(tmp, file);
}

/**
 * `cpu-this` from a calibration record. Ranks are processes on this one machine: they share its
 * RAM (memoryBytes is per rank = total / ranks, so fits() compares like with like) and its cores
 * (achievable FLOP/s per rank = the measured single-process GEMM rate / ranks, since the measurement
 * used every thread). Collectives: measured per kind when the record has them (a job of
 * `rec.collectives.ranks` processes on this machine: close to the truth for that many ranks,
 * an extrapolation for more), else the copy bandwidth / 2 stands in (marked assumed).
 * Step time: a record with GEMM and non-GEMM tables gives each rank the rates measured at its
 * own thread count (threads / ranks), so the planner need not assume that two 1-thread ranks
 * together reach one 2-thread process's rate (on small products they reach more).
 */
export function cpuProfile(rec: CalibrationRecord, dtype: string, ranks: number): HardwareProfile {
  const flops = rec.gemm_flops[dtype] ?? rec.gemm_flops.float32;
  if (flops === undefined) throw new ValueError(`the calibration record has no GEMM rate for ${dtype}; run megalith plan --calibrate again`);
  const perRank = flops / ranks;
  // Measured tables, when the record has them: each rank runs with threads / ranks threads (at
  // least 1; `megalith launch` gives 1 per rank on 2 cores), and shares the cores when there are
  // more ranks than threads (`share` < 1), which slows its GEMMs, kernels and dispatch alike.
  const tpr = Math.max(1, Math.floor(rec.threads / ranks));
  const share = Math.min(1, rec.threads / (ranks * tpr));
  const pick = <T extends { dtype: string; threads: number }>(rows: T[] | undefined): T[] => {
    const at = (d: string) => (rows ?? []).filter((r) => r.dtype === d && r.threads === tpr);
    return at(dtype).length ? at(dtype) : at("float32");
  };
  const table = pick(rec.gemm_table).map((r) => ({ mkn: r.mkn, flops: r.flops * share }));
  const nonGemm = pick(rec.non_gemm)[0];
  const measured = {
    ...(table.length ? { gemmTable: table } : {}),
    ...(nonGemm ? { elementwiseBandwidth: nonGemm.bandwidth * share } : {}),
    ...(nonGemm?.head_bandwidth ? { headBandwidth: nonGemm.head_bandwidth * share } : {}),
    ...(rec.op_overhead_s !== undefined ? { opOverhead: rec.op_overhead_s / share } : {}),
  };
  const coll = rec.collectives?.kinds;
  const bw = coll ? coll.all_reduce.bandwidth : rec.memory_bandwidth / 2 / ranks;
  const lat = coll ? coll.all_reduce.latency_s : 20e-6;
  return {
    name: "cpu-this",
    description: `this machine (${rec.cpu}, ${rec.threads} threads), calibrated ${rec.measured_at.slice(0, 10)}; ${ranks} process${ranks === 1 ? "" : "es"} sharing it`,
    peakFlops: perRank,
    achievableFlops: perRank,
    memoryBytes: rec.memory_bytes / ranks,
    memoryBandwidth: rec.memory_bandwidth / ranks,
    ranksPerNode: ranks,
    intraNodeBandwidth: bw,
    interNodeBandwidth: bw,
    intraNodeLatency: lat,
    interNodeLatency: lat,
    ...(coll ? { collectives: coll } : {}),
    ...measured,
    assumed: coll
      ? [`collectives measured with ${rec.collectives!.ranks} ranks`]
      : ["intraNodeBandwidth (copy bandwidth / 2: collectives not calibrated)", "intraNodeLatency"],
  };
}

/**
 * The profile `--hardware NAME` names: a built-in one, or `cpu-this` (needs a calibration).
 * `dtype` is the training compute dtype (cpu-this has a rate per dtype), `ranks` the world size.
 */
export function resolveHardware(name: string, dtype: string, ranks: number): HardwareProfile {
  const builtin = BUILTIN_PROFILES[name];
  if (builtin) return builtin;
  if (name === "cpu-this") {
    const rec = readCalibration();
    if (!rec) throw new ValueError(`--hardware cpu-this needs a calibration: run megalith plan --calibrate first (it writes ${calibrationFile()})`);
    return cpuProfile(rec, dtype, ranks);
  }
  throw new ValueError(`unknown --hardware ${JSON.stringify(name)}; known: ${[...Object.keys(BUILTIN_PROFILES), "cpu-this"].join(", ")}`);
}

/** The default: cpu-this when this machine is calibrated, else a100-80g. */
export function defaultHardwareName(): string {
  return readCalibration() ? "cpu-this" : "a100-80g";
}

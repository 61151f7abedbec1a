/**
 * The peak FLOP/s that MFU is reported against, when `train.peak_flops` is null (the default):
 * measured on this machine rather than a constant that fits one CPU.
 *
 * Where the number comes from, first match wins:
 *   1. `train.peak_flops` in the config (explicit always wins);
 *   2. the planner's calibrated profile (`plannerPeakFlops`: `megalith plan --calibrate`'s best
 *      GEMM rate for this CPU, thread count and dtype, when its record has one);
 *   3. the cache `~/.cache/megalith/peak_flops.json` ($XDG_CACHE_HOME respected), keyed by CPU
 *      model, thread count and dtype;
 *   4. a measurement: the best of a few GEMMs at a transformer MLP shape for ~300 ms, written to
 *      the cache.
 *
 * "Peak" here is the GEMM rate this build reaches, the ceiling a training step could approach
 * (nearly all of its FLOPs are GEMMs), not the vendor's paper number; so MFU reads "fraction of
 * what our fastest kernel does here". The trade-off of caching: a measurement taken while the
 * machine was busy would stay low, so each entry records the load average it was taken under
 * and a busy one is retaken (keeping the best) once the machine is quieter; deleting the file
 * forces a fresh measurement.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { cpus, homedir, loadavg } from "node:os";
import { dirname, join } from "node:path";
import { backend } from "../backend/index.js";
import { randn, withScope, type DType } from "../tensor/index.js";
import { calibrationFile, readCalibration, type CalibrationRecord } from "../plan/index.js";

/** Where a peak figure came from. */
export type PeakFlopsSource = "config" | "profile" | "cache" | "measured";

/** A resolved peak: FLOP/s for the whole job (per-process figure x processes). */
export interface PeakFlops {
  flops: number;
  source: PeakFlopsSource;
  /** One line for the training log, e.g. "peak 190 GFLOP/s measured (float32 GEMM, 2 threads)". */
  describe: string;
}

/** Options of `measurePeakFlops()`. */
export interface MeasureOptions {
  /** GEMM dtype: the training step's compute dtype. Default "float32". */
  dtype?: DType;
  /** Time spent measuring after one warm-up product, ms. Default 300. */
  budgetMs?: number;
  /** (M, K, N) of the product. Default 1024 x 768 x 3072: GPT-2 small's MLP at 1k tokens. */
  shape?: [number, number, number];
}

/**
 * FLOP/s of this process's GEMM: the best of repeated (M x K) @ (K x N) products within the
 * budget (best, not mean: the question is what the kernel can do, not what the OS allowed).
 * @example measurePeakFlops({ dtype: "float32" }) // ~2e11 on 2 Zen 4 cores
 */
export function measurePeakFlops(opts: MeasureOptions = {}): number {
  const [M, K, N] = opts.shape ?? [1024, 768, 3072];
  const budget = opts.budgetMs ?? 300;
  const dtype = opts.dtype ?? "float32";
  return withScope(() => {
    const a = randn([M, K], { seed: 1 }).to(dtype), b = randn([K, N], { seed: 2 }).to(dtype);
    withScope(() => { a.matmul(b); });  // warm-up: first-touch pages, oneDNN primitive creation
    let best = Infinity;
    const end = performance.now() + budget;
    for (let i = 0; i < 3 || performance.now() < end; i++) {
      const t0 = performance.now();
      withScope(() => { a.matmul(b); });
      best = Math.min(best, performance.now() - t0);
      if (i > 1000) break;
    }
    return (2 * M * K * N) / (best / 1000);
  });
}

/**
 * The planner's calibrated peak for this machine and dtype: the best GEMM rate that
 * `megalith plan --calibrate` measured (its record at `calibrationFile()`) for the same CPU
 * model, thread count and dtype; null when there is no record, it is another CPU's, it has no
 * rate at this key, or it cannot be read (the cache or a measurement then decides).
 * @example plannerPeakFlops(peakFlopsKey("float32")) // 9.2e10 after megalith plan --calibrate
 */
export function plannerPeakFlops(key: PeakFlopsKey, file = calibrationFile()): number | null {
  let rec: CalibrationRecord | null;
  try {
    rec = readCalibration(file);
  } catch {
    return null;  // a damaged profile is the planner's to report; MFU falls back to measuring
  }
  if (!rec || rec.cpu !== key.cpu) return null;
  const rates = (rec.gemm_table ?? []).filter((r) => r.dtype === key.dtype && r.threads === key.threads).map((r) => r.flops);
  if (rec.threads === key.threads && rec.gemm_flops[key.dtype] !== undefined) rates.push(rec.gemm_flops[key.dtype]!);
  return rates.length ? Math.max(...rates) : null;
}

/** What a cached measurement is valid for. */
export interface PeakFlopsKey {
  cpu: string;
  threads: number;
  dtype: DType;
}

/** This process's key: CPU model string, backend threads, dtype. */
export function peakFlopsKey(dtype: DType): PeakFlopsKey {
  return { cpu: cpus()[0]?.model.trim() || "unknown-cpu", threads: backend.numThreads(), dtype };
}

/** The cache file: $XDG_CACHE_HOME/megalith/peak_flops.json, else ~/.cache/megalith/peak_flops.json. */
export function peakFlopsCacheFile(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "megalith", "peak_flops.json");
}

interface CacheEntry { flops: number; measured_at: string; shape: number[]; budget_ms: number; load?: number }

/** A measurement taken with more runnable processes than half the cores may have shared them. */
const busy = (load: number): boolean => load > cpus().length / 2;

const keyString = (k: PeakFlopsKey): string => `${k.cpu} | ${k.threads} threads | ${k.dtype}`;

function readCache(file: string): Record<string, CacheEntry> {
  try {
    const v = JSON.parse(readFileSync(file, "utf8")) as unknown;
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, CacheEntry>) : {};
  } catch {
    return {};
  }
}

/** Options of `resolvePeakFlops()`. */
export interface ResolveOptions {
  /** `train.peak_flops`: a number wins outright; null = profile, cache or measurement. */
  explicit: number | null;
  /** The step's GEMM dtype (the precision policy's compute dtype). */
  dtype: DType;
  /** Processes in the job (dp x tp x pp): each measures its own share of the machine. Default 1. */
  processes?: number;
  /** Cache file (default peakFlopsCacheFile()); null = no cache. */
  cacheFile?: string | null;
  /** Passed to measurePeakFlops. */
  measure?: Omit<MeasureOptions, "dtype">;
  /** The planner's calibration record (default calibrationFile()); null = do not consult it. */
  profileFile?: string | null;
}

/**
 * The peak FLOP/s for MFU: the config's value, the planner's profile, the cache, or a fresh
 * measurement (cached). Under MPI every rank measures at the same time with its own threads,
 * so a rank's figure is its share of a fully loaded machine; the job's peak is that x processes.
 * A cache that cannot be written (read-only home) is not an error: the figure is still used.
 * @example resolvePeakFlops({ explicit: c.train.peak_flops, dtype: "float32" }).flops
 */
export function resolvePeakFlops(opts: ResolveOptions): PeakFlops {
  const processes = opts.processes ?? 1;
  const fmt = (f: number): string => `${(f / 1e9).toFixed(0)} GFLOP/s`;
  if (opts.explicit !== null) return { flops: opts.explicit, source: "config", describe: `peak ${fmt(opts.explicit)} (train.peak_flops)` };
  const key = peakFlopsKey(opts.dtype);
  const where = `${key.dtype} GEMM, ${key.threads} thread${key.threads === 1 ? "" : "s"}${processes > 1 ? ` x ${processes} processes` : ""}`;
  const profileFile = opts.profileFile === undefined ? calibrationFile() : opts.profileFile;
  const profiled = profileFile ? plannerPeakFlops(key, profileFile) : null;
  if (profiled !== null) return { flops: profiled * processes, source: "profile", describe: `peak ${fmt(profiled * processes)} from the planner's profile (${where})` };
  const file = opts.cacheFile === undefined ? peakFlopsCacheFile() : opts.cacheFile;
  const cache = file ? readCache(file) : {};
  const hit = cache[keyString(key)];
  // A measurement taken on a busy machine is retaken when the machine is quieter now; the cache
  // keeps the best figure seen (the peak is what the kernel can do, not what it got that day).
  const retake = hit !== undefined && busy(hit.load ?? 0) && loadavg()[0]! < (hit.load ?? 0);
  if (hit && Number.isFinite(hit.flops) && hit.flops > 0 && !retake) {
    return { flops: hit.flops * processes, source: "cache", describe: `peak ${fmt(hit.flops * processes)} measured ${hit.measured_at.slice(0, 10)} (${where}; cached in ${file}, delete it to re-measure)` };
  }
  const budget = opts.measure?.budgetMs ?? 300;
  const shape = opts.measure?.shape ?? [1024, 768, 3072];
  const load = loadavg()[0]!;
  const flops = Math.max(measurePeakFlops({ ...opts.measure, dtype: opts.dtype }), retake ? hit!.flops : 0);
  if (file) {
    try {
      // Re-read and merge: another process may have cached another key meanwhile.
      const merged = { ...readCache(file), [keyString(key)]: { flops, measured_at: new Date().toISOString(), shape, budget_ms: budget, load } };
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, JSON.stringify(merged, null, 2) + "\n");
      renameSync(tmp, file);  // atomic: concurrent ranks never see half a file
    } catch {
      // An unwritable cache only costs a re-measurement next time.
    }
  }
  return { flops: flops * processes, source: "measured", describe: `peak ${fmt(flops * processes)} measured now (${where}; train.peak_flops overrides)` };
}

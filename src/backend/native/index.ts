/**
 * The typed surface of the native addon (native/): the only file that touches it.
 *
 * Buffers are raw addresses (numbers) from the native caching allocator; every kernel takes
 * addresses plus sizes. Shapes, dtypes and bounds are validated by the callers in src/tensor/
 * before anything reaches this layer. Op codes mirror the enums in native/src/megalith.h.
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export type Ptr = number;

export interface NativeMemoryStats {
  live: number[];
  peak: number[];
  liveTotal: number;
  peakTotal: number;
  cached: number;
  allocs: number;
  cacheHits: number;
}

export interface NativeAddon {
  alloc(nbytes: number, category: number): Ptr;
  free(ptr: Ptr, nbytes: number): void;
  setCategory(ptr: Ptr, category: number): void;
  memoryStats(): NativeMemoryStats;
  resetPeak(): void;
  emptyCache(): void;
  write(dst: Ptr, src: ArrayBufferView): void;
  read(src: Ptr, nbytes: number): ArrayBuffer;
  setNumThreads(n: number): void;
  numThreads(): number;
  cpuInfo(): { avx512: boolean; avx512bf16: boolean; kernels: "avx512" | "generic" };
  setKernelSet(set: "avx512" | "generic"): void;
  fill(dst: Ptr, n: number, value: number, dtype: number): void;
  copyStrided(esize: number, src: Ptr, srcStrides: number[], dst: Ptr, dstStrides: number[], shape: number[]): void;
  cast(srcDtype: number, src: Ptr, dstDtype: number, dst: Ptr, n: number): void;
  binary(op: number, a: Ptr, aStrides: number[], b: Ptr, bStrides: number[], out: Ptr, shape: number[]): void;
  unary(op: number, x: Ptr, y: Ptr, n: number, a: number, b: number): void;
  unaryBackward(op: number, x: Ptr, y: Ptr, gy: Ptr, gx: Ptr, n: number, a: number, b: number): void;
  where(c: Ptr, cStrides: number[], a: Ptr, aStrides: number[], b: Ptr, bStrides: number[], out: Ptr, shape: number[]): void;
  reduce(op: number, x: Ptr, out: Ptr, A: number, R: number, B: number, scale: number): void;
  argReduce(op: number, x: Ptr, vals: Ptr | null, idx: Ptr, A: number, R: number, B: number): void;
  cumsum(x: Ptr, y: Ptr, A: number, R: number, B: number, reverse: boolean): void;
  topk(x: Ptr, vals: Ptr, idx: Ptr, rows: number, cols: number, k: number, largest: boolean): void;
  softmaxForward(x: Ptr, y: Ptr, rows: number, cols: number, log: boolean): void;
  softmaxBackward(y: Ptr, gy: Ptr, gx: Ptr, rows: number, cols: number, log: boolean): void;
  layerNormForward(x: Ptr, w: Ptr | null, b: Ptr | null, y: Ptr, mean: Ptr, rstd: Ptr, rows: number, cols: number, eps: number): void;
  layerNormBackward(x: Ptr, w: Ptr | null, mean: Ptr, rstd: Ptr, gy: Ptr, gx: Ptr | null, gw: Ptr | null, gb: Ptr | null, rows: number, cols: number): void;
  rmsNormForward(x: Ptr, w: Ptr | null, y: Ptr, rstd: Ptr, rows: number, cols: number, eps: number): void;
  rmsNormBackward(x: Ptr, w: Ptr | null, rstd: Ptr, gy: Ptr, gx: Ptr | null, gw: Ptr | null, rows: number, cols: number): void;
  /** Returns the position of the first out-of-range index, or -1. */
  embeddingForward(w: Ptr, idx: Ptr, out: Ptr, n: number, dim: number, vocab: number): number;
  embeddingBackward(gout: Ptr, idx: Ptr, gw: Ptr, n: number, dim: number): void;
  /** Returns the first row whose target is out of range (and not ignored), or -1. */
  crossEntropyForward(logits: Ptr, targets: Ptr, loss: Ptr, lse: Ptr, rows: number, vocab: number, ignoreIndex: number, smoothing: number): number;
  crossEntropyBackward(logits: Ptr, targets: Ptr, lse: Ptr, gradRows: Ptr | null, gradScale: number, glogits: Ptr, rows: number, vocab: number, ignoreIndex: number, smoothing: number): void;
  adamw(p: Ptr, g: Ptr, m: Ptr, v: Ptr, n: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number, gradScale: number): void;
  attentionForward(q: Ptr, k: Ptr, v: Ptr, o: Ptr, lse: Ptr, BH: number, T: number, S: number, D: number, scale: number, causal: boolean): void;
  attentionBackward(q: Ptr, k: Ptr, v: Ptr, o: Ptr, go: Ptr, lse: Ptr, gq: Ptr, gk: Ptr, gv: Ptr, BH: number, T: number, S: number, D: number, scale: number, causal: boolean): void;
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: Ptr, lda: number, strideA: number, B: Ptr, ldb: number, strideB: number, beta: number, C: Ptr, ldc: number, strideC: number, batch: number): void;
  /** k_cache[slots[t]] = k[t] (and v), rows of `row` floats. */
  kvCacheWrite(kCache: Ptr, vCache: Ptr, k: Ptr, v: Ptr, slots: Ptr, n: number, row: number): void;
  /** Ragged causal attention over a paged KV cache; see native/src/kernels_paged.cc. */
  pagedAttention(q: Ptr, kCache: Ptr, vCache: Ptr, blockTables: Ptr, maxBlocks: number, blockSize: number, seq: Ptr, pos: Ptr, out: Ptr, n: number, H: number, D: number, scale: number): void;
  /** Per-row int8 absmax quantization of w [rows, cols] into q (int8) and scales [rows]; see native/src/kernels_quant.cc. */
  quantInt8Rowwise(w: Ptr, q: Ptr, scales: Ptr, rows: number, cols: number): void;
  /** y [M, N] = (x [M, K] @ q[N, K]^T) * scales[N] + bias[N] (bias may be null). */
  matmulInt8(x: Ptr, q: Ptr, scales: Ptr, bias: Ptr | null, y: Ptr, M: number, N: number, K: number): void;
  random(kind: number, seed: number, offset: number, out: Ptr, n: number, a: number, b: number): void;
  dropout(seed: number, offset: number, p: number, x: Ptr, y: Ptr, n: number): void;
}

/** Op codes, in the order of the enums in native/src/megalith.h. */
export const BinaryOp = { add: 0, sub: 1, mul: 2, div: 3, pow: 4, max: 5, min: 6, eq: 7, ne: 8, lt: 9, le: 10, gt: 11, ge: 12 } as const;
export const UnaryOp = {
  neg: 0, exp: 1, log: 2, sqrt: 3, rsqrt: 4, tanh: 5, relu: 6, geluTanh: 7, geluErf: 8, silu: 9, sigmoid: 10, abs: 11,
  addScalar: 12, mulScalar: 13, powScalar: 14, rsubScalar: 15, rdivScalar: 16, clamp: 17, square: 18, sign: 19, erf: 20,
  reciprocal: 21, sin: 22, cos: 23,
} as const;
export const ReduceOp = { sum: 0, max: 1, min: 2, sumSq: 3 } as const;
export const ArgReduceOp = { argmax: 0, argmin: 1 } as const;
export const RandomKind = { uniform: 0, normal: 1 } as const;
/** dtype codes understood by fill/cast. */
export const DTypeCode = { float32: 0, bfloat16: 1, int32: 2, int8: 3, uint8: 4, float16: 5 } as const;

function locateAddon(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/backend/native -> repo root; dist/src/backend/native -> repo root
  for (const up of ["../../..", "../../../.."]) {
    const p = join(here, up, "native", "build", "Release", "megalith_native.node");
    if (existsSync(p)) return p;
  }
  throw new Error(
    "megalith: the native addon is not built (native/build/Release/megalith_native.node missing). " +
      "Run `bash scripts/setup.sh` (or `npm run build:native`).",
  );
}

/**
 * OpenBLAS 0.3.21 (Debian 12) picks its kernels from the CPU model number; on CPUs it does not
 * know (new models, many VMs) it falls back to "Prescott" SSE3 kernels, about 5x slower here
 * (measured: 42 vs 220 GFLOP/s sgemm on 2 cores). Before the library loads, name the core type
 * from the CPU's feature flags instead, unless the user chose one. OpenBLAS reads the variable
 * in its load-time constructor, so it must be set before the addon (which links it) loads.
 */
export function chooseOpenBlasCore(env: NodeJS.ProcessEnv = process.env, cpuinfo?: string): string | null {
  if (env.OPENBLAS_CORETYPE) return env.OPENBLAS_CORETYPE;
  env.MEGALITH_STOCK_OPENBLAS_CORETYPE = "";  // records that the user had not chosen one
  let flags: Set<string>;
  try {
    const text = cpuinfo ?? readFileSync("/proc/cpuinfo", "utf8");
    const line = text.split("\n").find((l) => l.startsWith("flags"));
    flags = new Set((line ?? "").split(":")[1]?.trim().split(/\s+/) ?? []);
  } catch {
    return null;
  }
  const has = (...f: string[]) => f.every((x) => flags.has(x));
  const core = has("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd") ? "SkylakeX" : has("avx2", "fma") ? "Haswell" : null;
  if (core) env.OPENBLAS_CORETYPE = core;
  return core;
}

chooseOpenBlasCore();

/** The loaded addon (loaded once, on first import). */
export const native: NativeAddon = createRequire(import.meta.url)(locateAddon()) as NativeAddon;

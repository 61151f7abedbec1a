/**
 * The Backend: the one seam between tensors and the memory and kernels that compute them.
 *
 * A backend owns every buffer, byte offset and kernel call. Tensors hold an opaque
 * `DeviceBuffer` plus an element offset and a dtype (together a `BufferView`) and never see
 * an address. The kernels are exactly the table in kernels.ts (`KernelFns<BufferView>`), so a
 * backend's typings cannot drift from the table. The native addon (native/) is the one
 * implementation today (native_backend.ts); a GPU backend implements this same interface.
 */
import type { KernelDType, KernelFns } from "./kernels.js";

export type DType = KernelDType;

/** A buffer owned by a backend. Opaque outside src/backend/. */
export interface DeviceBuffer {
  readonly nbytes: number;
}

/** Where a kernel reads or writes: a buffer, an element offset into it, and the element type. */
export interface BufferView {
  readonly buffer: DeviceBuffer;
  /** Offset in elements of `dtype` (not bytes). */
  readonly offset: number;
  readonly dtype: DType;
}

/** Allocator counters per memory category (index = category code). */
export interface BackendMemoryStats {
  live: number[];
  peak: number[];
  liveTotal: number;
  peakTotal: number;
  cached: number;
  allocs: number;
  cacheHits: number;
}

/** What the backend runs on and which kernels it chose. */
export interface BackendInfo {
  /** Backend name ("native-cpu"). */
  backend: string;
  /** Kernel set in use ("avx512", "avx2", "generic", ...). */
  kernels: string;
  /** Kernel sets this machine can run, best first. */
  kernelSets: string[];
  /** CPU features the choice was made from. */
  features: Record<string, boolean>;
  /** The bf16 GEMM implementation ("onednn" or "fallback"). */
  gemmBf16: string;
  threads: number;
}

/** A compute backend: memory, copies and the kernel table. */
export interface Backend extends KernelFns<BufferView> {
  readonly name: string;
  /** A new buffer of `nbytes`, counted under memory `category` (see tensor/storage.ts). */
  alloc(nbytes: number, category: number): DeviceBuffer;
  free(buf: DeviceBuffer): void;
  /** Moves a live buffer to another memory category. */
  setCategory(buf: DeviceBuffer, category: number): void;
  /** Copies host bytes into the view (as many bytes as `src` holds). */
  write(dst: BufferView, src: ArrayBufferView): void;
  /** Copies `numel` elements of the view's dtype out to the host. */
  read(src: BufferView, numel: number): ArrayBuffer;
  memoryStats(): BackendMemoryStats;
  resetPeak(): void;
  emptyCache(): void;
  setNumThreads(n: number): void;
  numThreads(): number;
  info(): BackendInfo;
  /** Forces a kernel set (tests compare sets); throws for a set this machine cannot run. */
  setKernelSet(name: string): void;
  /** Whether `view` points into `buf` (no address is exposed). */
  sameBuffer(a: BufferView, b: BufferView): boolean;
}

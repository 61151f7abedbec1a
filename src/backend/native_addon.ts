/**
 * The typed surface of the native addon (native/): the only file that touches it.
 *
 * Buffers are raw addresses (numbers) from the native caching allocator; every kernel takes
 * addresses plus sizes. Shapes, dtypes and bounds are validated by the callers in src/tensor/
 * before anything reaches this layer. The kernels' typings and op codes come from the kernel
 * table (../kernels.ts), from which the addon's registration is generated too.
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { OP_CODES, type ArgKind, type KERNELS, type KernelDType, type KernelFns, type KernelName, type KernelReturn } from "./kernels.js";
import type { BackendMemoryStats } from "./backend.js";

export type Ptr = number;

/** The allocator's counters, as the Backend interface reports them. */
export type NativeMemoryStats = BackendMemoryStats;

/** cpuInfo(): what this CPU offers and what the addon chose. */
export interface NativeCpuInfo {
  avx512: boolean;
  avx512bf16: boolean;
  avx2: boolean;
  /** The kernel set in use (MEGALITH_KERNELS or setKernelSet() override the CPU's best). */
  kernels: NativeKernelSet;
  /** Where bfloat16 GEMM runs: oneDNN's matmul, or float32 panels + sgemm. */
  gemmBf16: "onednn" | "fallback";
  /** Instruction-set features present, e.g. ["avx2", "fma", "f16c", "avx512f", ...]. */
  isa: string[];
}

export type NativeKernelSet = "avx512" | "avx2" | "generic";

/** The hand-written utilities of the addon (memory, copies, threads, CPU info). */
export interface NativeUtilities {
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
  cpuInfo(): NativeCpuInfo;
  /** Throws when this CPU (or build) cannot run the set. */
  setKernelSet(set: NativeKernelSet): void;
}

/** Names of the utilities (a test checks the addon exports exactly these plus the kernels). */
export const NATIVE_UTILITIES = [
  "alloc", "free", "setCategory", "memoryStats", "resetPeak", "emptyCache", "write", "read",
  "setNumThreads", "numThreads", "cpuInfo", "setKernelSet",
] as const satisfies ReadonlyArray<keyof NativeUtilities>;

// ---- kernel typings, derived from the table -------------------------------------------------
// The addon accepts a little more than KernelFns<Ptr> (the strict form, see nativeKernels):
// a dtype argument may be its name or its DTypeCode number, and trailing dtype arguments may be
// left out (float32) - the form today's callers use until they pass dtypes.
type AddonArg<K extends ArgKind> =
  K extends "view" ? Ptr :
  K extends "view?" ? Ptr | null :
  K extends "dims" ? readonly number[] :
  K extends "bool" ? boolean :
  K extends "dtype" ? KernelDType | number :
  number;
type DtypeArg = readonly [string, "dtype"];
type Leading<A> = A extends readonly [...infer H, DtypeArg] ? Leading<H> : A;
type Trailing<A> = A extends readonly [...infer H, infer L extends DtypeArg] ? [...Trailing<H>, L] : [];
type Mapped<A> = { -readonly [I in keyof A]: A[I] extends readonly [string, infer K extends ArgKind] ? AddonArg<K> : never };
type AsArray<T> = T extends readonly unknown[] ? T : never;
type AddonArgs<A> = [...AsArray<Mapped<Leading<A>>>, ...AsArray<Partial<Mapped<Trailing<A>>>>];
type AddonKernelFns = {
  [N in KernelName]: (...args: AddonArgs<(typeof KERNELS)[N]["args"]>) => KernelReturn<N>;
};

/**
 * The addon: the utilities plus every kernel of the table (src/backend/kernels.ts), whose
 * registration is generated from the same table. At this level a view is a raw address.
 */
export type NativeAddon = NativeUtilities & AddonKernelFns;

/** Op codes of "op" arguments (from the kernel table's OP_CODES, shared with the C++ enums). */
export const BinaryOp = OP_CODES.BinaryOp;
export const UnaryOp = OP_CODES.UnaryOp;
export const ReduceOp = OP_CODES.ReduceOp;
export const ArgReduceOp = OP_CODES.ArgReduceOp;
export const RandomKind = OP_CODES.RandomKind;
/** dtype codes (fill/cast and every dtype argument). */
export const DTypeCode = OP_CODES.DType;

function locateAddon(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/backend -> repo root; dist/src/backend -> repo root
  for (const up of ["../..", "../../.."]) {
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

// bf16 GEMM runs on oneDNN, whose Debian build threads with OpenMP. Idle OpenMP threads spin by
// default and would compete with our own pool's workers between GEMMs; PASSIVE makes them
// sleep. libgomp reads this when it loads (with the addon), so it is set before; a user's
// choice wins.
process.env.OMP_WAIT_POLICY ??= "PASSIVE";

/** The loaded addon (loaded once, on first import). */
export const native: NativeAddon = createRequire(import.meta.url)(locateAddon()) as NativeAddon;

/** The same kernels under the table's strict typing (every dtype argument, by name). */
export const nativeKernels: KernelFns<Ptr> = native;

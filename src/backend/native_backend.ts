/**
 * The native CPU backend: the N-API addon (native/) behind the Backend interface.
 *
 * Buffers are `NativeBuffer`s holding the allocator's address; views resolve to
 * `address + offset * elementSize` here and nowhere else. Each kernel of the table is wrapped
 * once, from its declaration: view arguments become addresses, dtype names become the native
 * codes, and a dtype the kernel does not list is refused with a clear error before the call.
 */
import { ValueError } from "../core/errors.js";
import { native } from "./native_addon.js";
import { KERNELS, OP_CODES, type KernelName, type KernelDType } from "./kernels.js";
import type { Backend, BackendInfo, BackendMemoryStats, BufferView, DeviceBuffer, DType } from "./backend.js";

const ELEMENT_BYTES: Record<DType, number> = { float32: 4, bfloat16: 2, float16: 2, int32: 4, int8: 1, uint8: 1 };

/** A native allocation: its address stays private to src/backend/. */
class NativeBuffer implements DeviceBuffer {
  constructor(readonly nbytes: number, public address: number) {}
}

/** Address of a view's first element (backend-internal: the MPI binding needs it too). */
export function addressOf(v: BufferView): number {
  const b = v.buffer as NativeBuffer;
  if (b.address === 0) throw new ValueError(`internal: a kernel was given a freed buffer of ${b.nbytes} bytes`);
  return b.address + v.offset * ELEMENT_BYTES[v.dtype];
}

type AnyFn = (...args: unknown[]) => unknown;

/** Wraps one addon kernel from its table entry. */
function wrapKernel(name: KernelName): AnyFn {
  const spec = KERNELS[name];
  const addon = native as unknown as Record<string, AnyFn>;
  if (typeof addon[name] !== "function") throw new Error(`megalith: the native addon has no kernel '${name}' (rebuild it: npm run build:native)`);
  const kinds = spec.args.map((a) => a[1] as string);
  const names = spec.args.map((a) => a[0] as string);
  const allowed = new Set<string>(spec.dtypes);
  const n = kinds.length;
  return (...args: unknown[]) => {
    if (args.length !== n) throw new ValueError(`backend.${name}: expected ${n} arguments (${names.join(", ")}), got ${args.length}`);
    const out = new Array<unknown>(n);
    for (let i = 0; i < n; i++) {
      const k = kinds[i]!;
      const a = args[i];
      if (k === "view") out[i] = addressOf(a as BufferView);
      else if (k === "view?") out[i] = a == null ? null : addressOf(a as BufferView);
      else if (k === "dtype") {
        if (!allowed.has(a as string)) {
          throw new ValueError(`backend.${name}: ${names[i]} ${JSON.stringify(a)} is not supported; this kernel computes in ${[...allowed].join(", ")}`);
        }
        out[i] = OP_CODES.DType[a as KernelDType];
      } else out[i] = a;
    }
    // Looked up per call, so the profiler (backend/profile.ts) can wrap addon functions.
    return addon[name]!(...out);
  };
}

interface CpuInfoRaw {
  avx512?: boolean;
  avx512bf16?: boolean;
  avx2?: boolean;
  kernels: string;
  gemmBf16?: string;
  [k: string]: unknown;
}

function createNativeBackend(): Backend {
  const kernels = {} as Record<KernelName, AnyFn>;
  for (const name of Object.keys(KERNELS) as KernelName[]) kernels[name] = wrapKernel(name);
  const b: Omit<Backend, KernelName> = {
    name: "native-cpu",
    alloc(nbytes: number, category: number): DeviceBuffer {
      return new NativeBuffer(nbytes, native.alloc(nbytes, category));
    },
    free(buf: DeviceBuffer): void {
      const nb = buf as NativeBuffer;
      if (nb.address === 0) return;
      native.free(nb.address, nb.nbytes);
      nb.address = 0;
    },
    setCategory(buf: DeviceBuffer, category: number): void {
      const nb = buf as NativeBuffer;
      if (nb.address !== 0) native.setCategory(nb.address, category);
    },
    write(dst: BufferView, src: ArrayBufferView): void {
      native.write(addressOf(dst), src);
    },
    read(src: BufferView, numel: number): ArrayBuffer {
      return native.read(addressOf(src), numel * ELEMENT_BYTES[src.dtype]);
    },
    memoryStats: (): BackendMemoryStats => native.memoryStats(),
    resetPeak: () => native.resetPeak(),
    emptyCache: () => native.emptyCache(),
    setNumThreads: (n: number) => native.setNumThreads(n),
    numThreads: () => native.numThreads(),
    info(): BackendInfo {
      const c = native.cpuInfo() as unknown as CpuInfoRaw;
      const features: Record<string, boolean> = {};
      for (const [k, v] of Object.entries(c)) if (typeof v === "boolean") features[k] = v;
      const sets = Array.isArray(c.kernelSets) ? (c.kernelSets as string[])
        : [...(c.avx512 ? ["avx512"] : []), ...(c.avx2 ? ["avx2"] : []), "generic"];
      return { backend: "native-cpu", kernels: c.kernels, kernelSets: sets, features, gemmBf16: c.gemmBf16 ?? "fallback", threads: native.numThreads() };
    },
    setKernelSet(name: string): void {
      (native.setKernelSet as (s: string) => void)(name);
    },
    sameBuffer: (x: BufferView, y: BufferView) => x.buffer === y.buffer,
  };
  return Object.assign(b, kernels) as Backend;
}

/** The native CPU backend (created on first import of src/backend/). */
export const nativeBackend: Backend = createNativeBackend();

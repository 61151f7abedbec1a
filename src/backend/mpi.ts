/**
 * The typed surface of the MPI addon (native/src/mpi*.cc, target megalith_mpi): the only file
 * that touches it. It is loaded lazily, and only when the process runs under mpirun; a plain
 * process never loads MPI. Like the kernels, calls take buffer views (buffer + element offset
 * + dtype); addresses are resolved here, inside the backend.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { MegalithError } from "../core/errors.js";
import { OP_CODES } from "./kernels.js";
import { addressOf } from "./native_backend.js";
import type { BufferView, DType } from "./backend.js";

/** A communication failure: an MPI error, a send/recv shape or dtype mismatch. */
export class CommError extends MegalithError {
  constructor(message: string) {
    super(message, "comm_error");
    this.name = "CommError";
  }
}

/** What a call does (the addon's `kinds` table gives each its code). */
/** "fence" calls no MPI: it returns once the calls issued before it on the communicator are done. */
export type CallKind = "allReduce" | "broadcast" | "allGather" | "reduceScatter" | "allToAll" | "barrier" | "send" | "recv" | "fence";

/**
 * The arguments of mpi.call / mpi.callAsync, positional (they run for every collective, so no
 * argument object):
 *   comm      communicator handle (0 = world)
 *   send      input buffer; the buffer itself for in-place calls (allReduce, broadcast, send, recv)
 *   recv      output buffer (allGather, reduceScatter, allToAll), else 0
 *   count     elements: of the buffer (allReduce, broadcast, send, recv) or per rank
 *             (allGather: input, reduceScatter: output, allToAll: one rank's chunk)
 *   dtype     dtype of the elements
 *   arg       reduction (sum 0, max 1, min 2, avg 3), broadcast root, or send/recv peer
 *   tag       send/recv tag (0..tagLimit)
 *   shape     send/recv: the tensor's shape, checked by the receiver against the sender's
 *   timeoutS  seconds before the watchdog reports the call and aborts the job; 0 = never
 * The addon takes them through its shared `args` array (one N-API argument per call).
 */
interface Addon {
  init(): { rank: number; size: number; tagLimit: number; library: string };
  split(comm: number, color: number, key: number, name: string): { handle: number; rank: number; size: number; worldRanks: number[] } | null;
  /** Runs call `kind` with the arguments in `args`. */
  call(kind: number): void;
  /** Resolves with the seconds the call took on the communication thread. */
  callAsync(kind: number): Promise<number>;
  /** comm, send, recv, count, dtype, arg, tag, timeoutS, ndim, dims... (native/src/mpi.cc ArgSlot). */
  args: Float64Array;
  kinds: Record<CallKind, number>;
  abort(code: number): never;
  finalize(): boolean;
  setNice(comm: number, nice: number): void;
}

/** True when this process was started by mpirun (Open MPI or a PMI launcher). */
export function underMpi(): boolean {
  return Number(process.env.OMPI_COMM_WORLD_SIZE ?? process.env.PMI_SIZE ?? 0) > 0;
}

let addon: Addon | null = null;

function load(): Addon {
  if (addon) return addon;
  return (addon = locate());
}

function locate(): Addon {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/backend -> repo root; dist/src/backend -> repo root
  for (const up of ["../..", "../../.."]) {
    const p = join(here, up, "native", "build", "Release", "megalith_mpi.node");
    if (existsSync(p)) return createRequire(import.meta.url)(p) as Addon;
  }
  throw new Error("megalith: the MPI addon is not built (native/build/Release/megalith_mpi.node); run `npm run build:native` (needs libopenmpi-dev)");
}

/** Writes a call's arguments into the addon's shared array (read by the very next call). */
function put(args: Float64Array, comm: number, send: BufferView | null, recv: BufferView | null, count: number, dtype: DType, arg: number, tag: number, shape: readonly number[], timeoutS: number): void {
  const maxDims = args.length - 9;  // the slots after ndim
  if (shape.length > maxDims) throw new CommError(`send/recv: a tensor may have at most ${maxDims} dimensions, got ${shape.length}`);
  args[0] = comm;
  args[1] = send ? addressOf(send) : 0;
  args[2] = recv ? addressOf(recv) : 0;
  args[3] = count;
  args[4] = OP_CODES.DType[dtype];
  args[5] = arg;
  args[6] = tag;
  args[7] = timeoutS;
  args[8] = shape.length;
  for (let i = 0; i < shape.length; i++) args[9 + i] = shape[i]!;
}

function commError(e: unknown): unknown {
  return e instanceof Error && (e as { code?: string }).code === "ERR_MEGALITH_MPI" ? new CommError(e.message) : e;
}

/** The addon's calls, typed. Errors from MPI come back as CommError. */
export const mpi = {
  /** MPI_Init_thread(MPI_THREAD_MULTIPLE) once (libmpi re-opened RTLD_GLOBAL first), the watchdog thread. */
  init: () => load().init(),
  /** MPI_Comm_split; null when color < 0 (this rank joins no group). */
  split: (comm: number, color: number, key: number, name: string) => load().split(comm, color, key, name),
  /** A blocking call. */
  call(kind: CallKind, comm: number, send: BufferView | null, recv: BufferView | null, count: number, dtype: DType, arg: number, tag: number, shape: readonly number[], timeoutS: number): void {
    const m = load();
    put(m.args, comm, send, recv, count, dtype, arg, tag, shape, timeoutS);
    try {
      m.call(m.kinds[kind]);
    } catch (e) {
      throw commError(e);
    }
  },
  /** An asynchronous call: runs on the communicator's thread, in issue order; resolves when
   *  done with the seconds it took there. */
  callAsync(kind: CallKind, comm: number, send: BufferView | null, recv: BufferView | null, count: number, dtype: DType, arg: number, tag: number, shape: readonly number[], timeoutS: number): Promise<number> {
    const m = load();
    put(m.args, comm, send, recv, count, dtype, arg, tag, shape, timeoutS);
    let p: Promise<number>;
    try {
      p = m.callAsync(m.kinds[kind]);
    } catch (e) {
      throw commError(e);
    }
    return p.catch((e: unknown) => {
      throw commError(e);
    });
  },
  /** Niceness of a communicator's communication thread (-1: MEGALITH_COMM_NICE, else 10). */
  setNice: (comm: number, nice: number): void => load().setNice(comm, nice),
  /** MPI_Abort on the world: every rank of the job ends. */
  abort: (code: number): never => load().abort(code),
  /** Stops the communication threads and finalizes MPI; false when a call was still running. */
  finalize: (): boolean => load().finalize(),
};

/**
 * The typed surface of the MPI addon (native/src/mpi.cc): the only file that touches it.
 * It is loaded only when the process runs under mpirun; a plain process never loads MPI.
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

type P = number;
export interface MpiAddon {
  init(): { rank: number; size: number; threadMultiple: number };
  split(comm: number, color: number, key: number): { handle: number; rank: number; size: number };
  abort(code: number): void;
  finalize(): void;
  allReduce(comm: number, buf: P, out: 0, count: number, dtype: number, op: number): void;
  allReduceAsync(comm: number, buf: P, out: 0, count: number, dtype: number, op: number): Promise<void>;
  broadcast(comm: number, buf: P, out: 0, count: number, dtype: number, root: number): void;
  broadcastAsync(comm: number, buf: P, out: 0, count: number, dtype: number, root: number): Promise<void>;
  allGather(comm: number, send: P, recv: P, count: number, dtype: number): void;
  allGatherAsync(comm: number, send: P, recv: P, count: number, dtype: number): Promise<void>;
  reduceScatter(comm: number, send: P, recv: P, recvCount: number, dtype: number, op: number): void;
  reduceScatterAsync(comm: number, send: P, recv: P, recvCount: number, dtype: number, op: number): Promise<void>;
  barrier(comm: number): void;
  barrierAsync(comm: number): Promise<void>;
  send(comm: number, buf: P, out: 0, count: number, dtype: number, peer: number, tag: number): void;
  recv(comm: number, buf: P, out: 0, count: number, dtype: number, peer: number, tag: number): void;
  allToAll(comm: number, send: P, recv: P, count: number, dtype: number): void;
}

/** True when this process was started by mpirun (Open MPI or a PMI launcher). */
export function underMpi(): boolean {
  return Number(process.env.OMPI_COMM_WORLD_SIZE ?? process.env.PMI_SIZE ?? 0) > 0;
}

let addon: MpiAddon | null = null;

export function mpi(): MpiAddon {
  if (addon) return addon;
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ["../..", "../../.."]) {
    const p = join(here, up, "native", "build", "Release", "megalith_mpi.node");
    if (existsSync(p)) {
      addon = createRequire(import.meta.url)(p) as MpiAddon;
      return addon;
    }
  }
  throw new Error("megalith: the MPI addon is not built (native/build/Release/megalith_mpi.node); run `bash scripts/setup.sh`");
}

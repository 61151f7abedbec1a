/**
 * Collectives on tensors over process groups. The only place that talks to MPI; every
 * primitive is the identity at group size 1, so a single process runs the same code.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { DTypeCode } from "../backend/native/index.js";
import { Tensor, tensor, type DType } from "../tensor/index.js";
import { mpi, underMpi } from "./_mpi_native.js";

/** A set of ranks that communicate (MPI communicator). */
export interface ProcessGroup {
  readonly rank: number;
  readonly size: number;
  /** Communicator handle in the MPI addon (-1 for the trivial single-process group). */
  readonly handle: number;
}

export type ReduceOp = "sum" | "avg" | "max" | "min";
const OPS: Record<Exclude<ReduceOp, "avg">, number> = { sum: 0, max: 1, min: 2 };

let world: ProcessGroup | null = null;

/** The world group: MPI_COMM_WORLD under mpirun, else a group of one (MPI is never loaded). */
export function worldGroup(): ProcessGroup {
  if (world) return world;
  if (!underMpi()) return (world = { rank: 0, size: 1, handle: -1 });
  const info = mpi().init();
  // A clean exit finalizes MPI; a failing rank aborts the whole job, so the others stop
  // instead of waiting forever in a collective (mpirun then reports which rank failed).
  process.once("exit", (code) => {
    if (code === 0) mpi().finalize();
    else {
      process.stderr.write(`megalith: rank ${info.rank} of ${info.size} is exiting with code ${code}; aborting the job\n`);
      mpi().abort(code);
    }
  });
  return (world = { rank: info.rank, size: info.size, handle: 0 });
}

/** Splits a group: ranks with the same color form a new group, ordered by key. */
export function splitGroup(g: ProcessGroup, color: number, key: number): ProcessGroup {
  if (g.size === 1) return g;
  const r = mpi().split(g.handle, color, key);
  return { rank: r.rank, size: r.size, handle: r.handle };
}

function code(d: DType): number {
  return DTypeCode[d];
}

function contiguousOnly(op: string, t: Tensor): void {
  if (!t.isContiguous) throw new ValueError(`${op}: tensor of shape ${fmtShape(t.shape)} must be contiguous`);
}

/**
 * In-place all-reduce (sum, avg, max, min).
 * @example
 * allReduce(p.grad!, dpGroup, "avg");
 */
export function allReduce(t: Tensor, g: ProcessGroup, op: ReduceOp = "sum"): void {
  if (g.size === 1) return;
  contiguousOnly("allReduce", t);
  mpi().allReduce(g.handle, t.ptr, 0, t.numel, code(t.dtype), OPS[op === "avg" ? "sum" : op]);
  if (op === "avg") t.mul_(1 / g.size);
}

/** Starts an in-place all-reduce; the Promise settles when it is done (compute continues meanwhile). */
export async function allReduceAsync(t: Tensor, g: ProcessGroup, op: ReduceOp = "sum"): Promise<void> {
  if (g.size === 1) return;
  contiguousOnly("allReduceAsync", t);
  await mpi().allReduceAsync(g.handle, t.ptr, 0, t.numel, code(t.dtype), OPS[op === "avg" ? "sum" : op]);
  if (op === "avg") t.mul_(1 / g.size);
}

export function broadcast(t: Tensor, g: ProcessGroup, root = 0): void {
  if (g.size === 1) return;
  contiguousOnly("broadcast", t);
  mpi().broadcast(g.handle, t.ptr, 0, t.numel, code(t.dtype), root);
}

/** Gathers every rank's `t` into `out` (size * t.numel elements, rank-major). */
export function allGather(t: Tensor, out: Tensor, g: ProcessGroup): void {
  if (out.numel !== t.numel * g.size) throw new ValueError(`allGather: output has ${out.numel} elements, expected ${t.numel} x ${g.size}`);
  if (g.size === 1) {
    out.view([t.numel]).copy_(t.view([t.numel]));
    return;
  }
  mpi().allGather(g.handle, t.ptr, out.ptr, t.numel, code(t.dtype));
}

/** Reduces `t` (size * out.numel elements) and leaves this rank's slice in `out`. */
export function reduceScatter(t: Tensor, out: Tensor, g: ProcessGroup, op: ReduceOp = "sum"): void {
  if (t.numel !== out.numel * g.size) throw new ValueError(`reduceScatter: input has ${t.numel} elements, expected ${out.numel} x ${g.size}`);
  if (g.size === 1) {
    out.view([out.numel]).copy_(t.view([t.numel]));
    return;
  }
  mpi().reduceScatter(g.handle, t.ptr, out.ptr, out.numel, code(t.dtype), OPS[op === "avg" ? "sum" : op]);
  if (op === "avg") out.mul_(1 / g.size);
}

export function barrier(g: ProcessGroup): void {
  if (g.size > 1) mpi().barrier(g.handle);
}

/** Sends a tensor: a header (ndim, dtype, shape) first, so the receiver can check it. */
export function send(t: Tensor, g: ProcessGroup, peer: number, tag = 0): void {
  if (g.size === 1) throw new ValueError("send: there is no peer in a group of one");
  contiguousOnly("send", t);
  const h = new Int32Array(16);
  h[0] = t.ndim;
  h[1] = code(t.dtype);
  t.shape.forEach((s, i) => (h[2 + i] = s));
  const header = tensor(h, { dtype: "int32" });
  mpi().send(g.handle, header.ptr, 0, 16, code("int32"), peer, tag);
  header.dispose();
  mpi().send(g.handle, t.ptr, 0, t.numel, code(t.dtype), peer, tag);
}

/** Receives into `t`; errors if the sender's shape or dtype differ. */
export function recv(t: Tensor, g: ProcessGroup, peer: number, tag = 0): void {
  if (g.size === 1) throw new ValueError("recv: there is no peer in a group of one");
  contiguousOnly("recv", t);
  const header = Tensor.empty([16], "int32");
  mpi().recv(g.handle, header.ptr, 0, 16, code("int32"), peer, tag);
  const h = header.data() as Int32Array;
  header.dispose();
  const shape = Array.from(h.subarray(2, 2 + h[0]!));
  if (h[1] !== code(t.dtype) || shape.length !== t.ndim || shape.some((s, i) => s !== t.shape[i])) {
    throw new ValueError(`recv from rank ${peer} (tag ${tag}): sender sent shape ${fmtShape(shape)} with dtype code ${h[1]}, this rank expects ${fmtShape(t.shape)} ${t.dtype}`);
  }
  mpi().recv(g.handle, t.ptr, 0, t.numel, code(t.dtype), peer, tag);
}

/**
 * Collectives on tensors over process groups: the only place that talks to MPI (through
 * backend/mpi.ts). Every call is the identity at group size 1 (copies for the out-of-place
 * ones), and a single process never loads MPI, so one code path serves every layout.
 *
 * Each call comes blocking (`allReduce`) and asynchronous (`allReduceAsync`, returning a
 * `Work` whose `wait()` settles when the buffers are ready). Asynchronous calls run on the
 * group's communication thread, in issue order, while JavaScript keeps computing; a blocking
 * call issued after them waits its turn. Do not read or write a tensor that an unfinished
 * call uses. Like MPI, every member must issue a group's collectives in the same order.
 *
 * A call that waits longer than its timeout (option `timeoutS`, default the environment's
 * MEGALITH_COLLECTIVE_TIMEOUT_S, else 600 s) makes the watchdog print which ranks never
 * arrived and abort the job with exit code 124, instead of hanging.
 *
 * Every call that moves data (group size > 1) is counted in `commStats()`. While a trace is
 * recorded (core/trace.ts), blocking calls show as spans on the main thread and asynchronous
 * ones on the communication thread (tid 1), placed when JavaScript sees them complete.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { tracing, traceComplete, COMM_TID, type TraceCategory } from "../core/trace.js";
import { performance } from "node:perf_hooks";
import { dtypeSize, type Tensor, type DType } from "../tensor/index.js";
import { mpi, underMpi, type CallKind } from "../backend/mpi.js";
import type { BufferView } from "../backend/index.js";

/**
 * A set of ranks that communicate (an MPI communicator). Pass groups explicitly; get them from
 * `worldGroup()`, a `DeviceMesh`, or `splitGroup()`.
 */
export interface ProcessGroup {
  /** This process's rank within the group (0..size-1). */
  readonly rank: number;
  readonly size: number;
  /** Communicator handle in the MPI addon; -1 for a group of one without MPI. */
  readonly handle: number;
  /** Name used in messages ("world", "dp", "tp"...). */
  readonly name?: string;
  /** Each member's rank in the world, by group rank. */
  readonly worldRanks?: readonly number[];
}

export type ReduceOp = "sum" | "avg" | "max" | "min";
const REDUCE_CODES: Record<ReduceOp, number> = { sum: 0, max: 1, min: 2, avg: 3 };

/** Options every call takes. */
export interface CollectiveOptions {
  /** Seconds this call may wait before the watchdog reports it and aborts the job; 0 = never.
   *  Default: MEGALITH_COLLECTIVE_TIMEOUT_S, else 600. */
  timeoutS?: number;
}
export interface ReduceOptions extends CollectiveOptions {
  /** Default "sum". "avg" divides the sum by the group size (floating dtypes only). */
  op?: ReduceOp;
}
export interface BroadcastOptions extends CollectiveOptions {
  /** The rank whose tensor every rank receives. Default 0. */
  root?: number;
}
export interface P2POptions extends CollectiveOptions {
  /** Matches a send with its recv. Default 0. */
  tag?: number;
}

/** An asynchronous call in flight. */
export interface Work {
  /** Resolves once the call is done and its tensors may be used; rejects with a CommError. */
  wait(): Promise<void>;
  /** True once the call has finished (successfully or not) and JavaScript has seen it. */
  readonly completed: boolean;
  /** Once completed: seconds the call took on the communication thread (0 at group size 1). */
  readonly seconds: number;
}

const DONE: Work = { completed: true, seconds: 0, wait: () => Promise.resolve() };

/** What an asynchronous call records in the trace when it completes. */
interface TracedCall {
  name: string;
  cat: TraceCategory;
  args: Record<string, unknown>;
  /** performance.now() when the call was issued. */
  issuedMs: number;
}

class PendingWork implements Work {
  completed = false;
  seconds = 0;
  private readonly done: Promise<void>;
  private held: Array<ReturnType<Tensor["storage"]["retain"]>> | null;
  /** When a fence saw the call end: the Promise settles later (on the event loop), and the
   *  trace should place the call where it ended, not where JavaScript got round to it. */
  private fencedAtMs: number | null = null;

  /** Holds a reference to each storage until the call ends, so no buffer is freed under MPI. */
  constructor(call: Promise<number>, tensors: Tensor[], private readonly unfenced?: Set<PendingWork>, trace?: TracedCall) {
    this.held = tensors.map((t) => t.storage.retain());
    unfenced?.add(this);
    this.done = call.then((secs) => {
      this.seconds = secs;
      if (trace) {
        const endMs = this.fencedAtMs ?? performance.now();
        const startMs = Math.max(trace.issuedMs, endMs - secs * 1000);
        traceComplete(trace.name, trace.cat, startMs, endMs - startMs,
          { tid: COMM_TID, args: { ...trace.args, queued_ms: +(startMs - trace.issuedMs).toFixed(3) } });
      }
      this.finished();
    }, (e: unknown) => {
      this.finished();
      throw e;
    });
  }

  /** The call is over (its Promise settled, or a fence saw it end): let go of its buffers. */
  finished(): void {
    if (!this.completed) this.fencedAtMs = performance.now();
    this.completed = true;
    this.unfenced?.delete(this);
    const held = this.held;
    this.held = null;
    for (const s of held ?? []) s.release();
  }

  wait(): Promise<void> {
    return this.done;
  }
}

/** Per communicator: asynchronous calls a fence() would find finished (all but sends). */
const unfencedWork = new Map<number, Set<PendingWork>>();

// ---- groups ------------------------------------------------------------------------------------

let world: ProcessGroup | null = null;
let defaultTimeout: number | null = null;

/** The default timeout: MEGALITH_COLLECTIVE_TIMEOUT_S (seconds, 0 = never), else 600. */
export function collectiveTimeoutS(): number {
  if (defaultTimeout !== null) return defaultTimeout;
  const raw = process.env.MEGALITH_COLLECTIVE_TIMEOUT_S;
  const v = raw === undefined || raw === "" ? 600 : Number(raw);
  if (!Number.isFinite(v) || v < 0) {
    throw new ValueError(`MEGALITH_COLLECTIVE_TIMEOUT_S must be a number of seconds >= 0 (0 = no timeout), got ${JSON.stringify(raw)}`);
  }
  return (defaultTimeout = v);
}

/**
 * The world group: MPI_COMM_WORLD under mpirun (MPI initialised on first use), else a group
 * of one, and MPI is never loaded.
 * @example
 * const world = worldGroup();
 * if (world.rank === 0) console.log(`${world.size} ranks`);
 */
export function worldGroup(): ProcessGroup {
  if (world) return world;
  if (!underMpi()) return (world = { rank: 0, size: 1, handle: -1, name: "world", worldRanks: [0] });
  collectiveTimeoutS();  // a bad setting fails here, before MPI starts
  // What `megalith launch` passes to mpirun, for jobs started by plain mpirun: waiting ranks
  // yield the core (ranks often share cores with compute), and no cross-memory-attach copies
  // (containers usually forbid ptrace). Read by MPI_Init from the environment.
  process.env.OMPI_MCA_mpi_yield_when_idle ??= "1";
  process.env.OMPI_MCA_btl_vader_single_copy_mechanism ??= "none";
  const info = mpi.init();
  // A clean exit finalizes MPI. A failing rank aborts the whole job, so the other ranks stop
  // instead of waiting forever in their next collective; mpirun reports the abort.
  process.once("exit", (code) => {
    if (code === 0) {
      if (!mpi.finalize()) {
        process.stderr.write(`megalith: rank ${info.rank} of ${info.size} is exiting while a communication call is still running ` +
          "(an async call never waited for, or peers that never arrived); MPI is not finalized, so mpirun ends the job\n");
      }
    } else {
      process.stderr.write(`megalith: rank ${info.rank} of ${info.size} is exiting with code ${code}; aborting the job\n`);
      mpi.abort(code);
    }
  });
  return (world = { rank: info.rank, size: info.size, handle: 0, name: "world", worldRanks: Array.from({ length: info.size }, (_, i) => i) });
}

/**
 * Splits a group (MPI_Comm_split, a collective over `g`): ranks with the same `color` form a
 * new group, ordered by `key`. Every member of `g` must call it, in the same order relative to
 * its other collectives on `g`.
 * @example
 * const rows = splitGroup(world, Math.floor(world.rank / 2), world.rank % 2, "row");
 */
export function splitGroup(g: ProcessGroup, color: number, key: number, name = `${g.name ?? "group"}/${color}`): ProcessGroup {
  if (!Number.isInteger(color) || color < 0 || !Number.isInteger(key)) {
    throw new ValueError(`splitGroup: color must be an integer >= 0 and key an integer, got color ${color}, key ${key}`);
  }
  if (g.size === 1) return { rank: 0, size: 1, handle: g.handle, name, worldRanks: g.worldRanks ?? [0] };
  const r = mpi.split(g.handle, color, key, name);
  if (!r) throw new ValueError(`splitGroup: rank ${g.rank} got no group for color ${color}`);
  return { rank: r.rank, size: r.size, handle: r.handle, name, worldRanks: r.worldRanks };
}

/**
 * Sets the niceness of `g`'s communication thread (the thread that runs its asynchronous calls).
 * The default (MEGALITH_COMM_NICE, else 10) suits calls that only need to finish by the end of
 * a step, like gradient reductions: MPI busy-polls while it waits, and on cores shared with
 * compute a lower priority hands it only the idle time. Calls that the next computation waits
 * for soon (ZeRO-3's parameter prefetches) want 0: at 10 a peer's call starves behind its
 * compute, and every rank waits for it. -1 restores the default. A no-op for a group of one.
 * @example
 * setCommThreadNice(gatherGroup, 0);
 */
export function setCommThreadNice(g: ProcessGroup, nice: number): void {
  if (!Number.isInteger(nice) || nice < -1 || nice > 19) throw new ValueError(`setCommThreadNice: nice must be an integer in 0..19 (or -1 for the default), got ${nice}`);
  if (g.size === 1) return;
  mpi.setNice(g.handle, nice);
}

// ---- checks ------------------------------------------------------------------------------------

function contiguous(op: string, t: Tensor): void {
  if (!t.isContiguous) throw new ValueError(`${op}: the tensor of shape ${fmtShape(t.shape)} must be contiguous; call .contiguous() first`);
}

function sameDtype(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) throw new ValueError(`${op}: input is ${a.dtype} but output is ${b.dtype}; they must match`);
}

function distinct(op: string, a: Tensor, b: Tensor): void {
  if (a.storage === b.storage) throw new ValueError(`${op}: input and output share storage; use separate tensors`);
}

function reduceCode(op: string, r: ReduceOp, d: DType): number {
  const code = REDUCE_CODES[r];
  if (code === undefined) throw new ValueError(`${op}: unknown reduction ${JSON.stringify(r)}; expected sum, avg, max or min`);
  if (r === "avg" && d !== "float32" && d !== "bfloat16" && d !== "float16") throw new ValueError(`${op}: avg needs a floating dtype, got ${d}; use sum`);
  return code;
}

function timeoutOf(o: CollectiveOptions): number {
  if (o.timeoutS === undefined) return defaultTimeout ?? collectiveTimeoutS();
  const t = o.timeoutS;
  if (!Number.isFinite(t) || t < 0) throw new ValueError(`timeoutS must be a number of seconds >= 0 (0 = no timeout), got ${t}`);
  return t;
}

function rankIn(op: string, what: string, r: number, g: ProcessGroup): void {
  if (!Number.isInteger(r) || r < 0 || r >= g.size) throw new ValueError(`${op}: ${what} ${r} is not a rank of group "${g.name ?? "?"}" (size ${g.size})`);
}

/** The group-of-one result of an out-of-place call: output = input (both contiguous). */
function copyInto(out: Tensor, input: Tensor): void {
  const o = out.view([out.numel]), i = input.view([input.numel]);
  o.copy_(i);
  o.dispose();
  i.dispose();
}

const NO_SHAPE: readonly number[] = [];
const NO_TENSORS: Tensor[] = [];

// ---- counters and trace ------------------------------------------------------------------------

/** The calls `commStats()` counts (every call kind but fence, which moves nothing). */
export type CommKind = Exclude<CallKind, "fence">;
const COMM_KINDS: readonly CommKind[] = ["allReduce", "allGather", "reduceScatter", "broadcast", "allToAll", "barrier", "send", "recv"];
const TRACE_CATEGORY: Record<CommKind, TraceCategory> = {
  allReduce: "allreduce", allGather: "allgather", reduceScatter: "reducescatter", broadcast: "broadcast",
  allToAll: "alltoall", barrier: "barrier", send: "send", recv: "recv",
};

const newStats = (): Record<CommKind, { calls: number; bytes: number }> =>
  Object.fromEntries(COMM_KINDS.map((k) => [k, { calls: 0, bytes: 0 }])) as Record<CommKind, { calls: number; bytes: number }>;
// Process-wide like the MPI state itself: every group's calls leave through this one file, and
// a counter that had to be passed in could not see the calls that layers above make.
let stats = newStats();

/**
 * Bytes this rank contributes to `kind` on a group of `size`, from run()'s `count` (elements
 * per rank, as MPI takes it): all-gather counts its whole output, reduce-scatter and all-to-all
 * their whole input, the rest the one tensor.
 */
function bytesOf(kind: CommKind, count: number, dtype: DType, size: number): number {
  const perRank = count * dtypeSize(dtype);
  return kind === "allGather" || kind === "reduceScatter" || kind === "allToAll" ? perRank * size : perRank;
}

/**
 * Calls and bytes per kind since the start (or the last `resetCommStats()`), counting what this
 * rank contributes to each call on a group of two or more ranks (calls on a group of one move
 * nothing and are not counted): all-reduce, broadcast, send and recv the tensor's bytes,
 * all-gather its whole output, reduce-scatter and all-to-all their whole input, barrier 0.
 * Blocking and asynchronous calls count alike, when issued. Returns a copy.
 * @example
 * resetCommStats();
 * trainStep();
 * console.log(`all-reduced ${commStats().allReduce.bytes / 2 ** 20} MiB this step`);
 */
export function commStats(): Record<CommKind, { calls: number; bytes: number }> {
  return Object.fromEntries(COMM_KINDS.map((k) => [k, { ...stats[k] }])) as Record<CommKind, { calls: number; bytes: number }>;
}

/**
 * Zeroes the counters of `commStats()`.
 * @example
 * resetCommStats();  // count from here
 */
export function resetCommStats(): void {
  stats = newStats();
}

/** Issues one call on `g`: blocking (returns undefined) or asynchronous (returns its Work,
 *  which keeps `tensors` alive until the call ends). */
function run(kind: CommKind, async: boolean, g: ProcessGroup, o: CollectiveOptions, tensors: Tensor[],
  send: BufferView | null, recv: BufferView | null, count: number, dtype: DType, arg = 0, tag = 0, shape: readonly number[] = NO_SHAPE): Work | undefined {
  const timeout = timeoutOf(o);
  const bytes = bytesOf(kind, count, dtype, g.size);
  const counter = stats[kind];
  counter.calls++;
  counter.bytes += bytes;
  // Only built while tracing: this runs for every gradient bucket and parameter gather.
  let traced: TracedCall | undefined;
  if (tracing()) {
    const args: Record<string, unknown> = { group: g.name ?? "?", bytes, dtype };
    if (kind === "send" || kind === "recv") Object.assign(args, { peer: arg, tag });
    traced = { name: `${kind}${async ? "Async" : ""} ${g.name ?? "?"}`, cat: TRACE_CATEGORY[kind], args, issuedMs: performance.now() };
  }
  if (!async) {
    mpi.call(kind, g.handle, send, recv, count, dtype, arg, tag, shape, timeout);
    // Recorded after the call returns, so a call that throws (a timeout, a mismatched recv)
    // leaves no span; its error says what happened.
    if (traced) traceComplete(traced.name, traced.cat, traced.issuedMs, performance.now() - traced.issuedMs, { args: traced.args });
    return undefined;
  }
  let unfenced: Set<PendingWork> | undefined;
  if (kind !== "send") {
    unfenced = unfencedWork.get(g.handle);
    if (!unfenced) unfencedWork.set(g.handle, (unfenced = new Set()));
  }
  return new PendingWork(mpi.callAsync(kind, g.handle, send, recv, count, dtype, arg, tag, shape, timeout), tensors, unfenced, traced);
}

// ---- allReduce ---------------------------------------------------------------------------------

function allReduceImpl(t: Tensor, g: ProcessGroup, o: ReduceOp | ReduceOptions, async: boolean): Work | undefined {
  const opts = typeof o === "string" ? { op: o } : o;
  const name = async ? "allReduceAsync" : "allReduce";
  const code = reduceCode(name, opts.op ?? "sum", t.dtype);
  contiguous(name, t);
  if (g.size === 1) return async ? DONE : undefined;
  return run("allReduce", async, g, opts, async ? [t] : NO_TENSORS, t, null, t.numel, t.dtype, code);
}

/**
 * Reduces `t` over the group, in place (MPI_Allreduce with MPI_IN_PLACE).
 * @example
 * allReduce(grad, dp, { op: "avg" });
 */
export function allReduce(t: Tensor, g: ProcessGroup, opts: ReduceOp | ReduceOptions = {}): void {
  allReduceImpl(t, g, opts, false);
}

/**
 * Starts an in-place all-reduce; compute continues while it runs.
 * @example
 * const work = allReduceAsync(bucket, dp, { op: "avg" });
 * const y = x.matmul(w);  // overlaps with the reduction
 * await work.wait();
 */
export function allReduceAsync(t: Tensor, g: ProcessGroup, opts: ReduceOp | ReduceOptions = {}): Work {
  return allReduceImpl(t, g, opts, true)!;
}

// ---- reduceScatter -----------------------------------------------------------------------------

function reduceScatterImpl(input: Tensor, output: Tensor, g: ProcessGroup, o: ReduceOp | ReduceOptions, async: boolean): Work | undefined {
  const opts = typeof o === "string" ? { op: o } : o;
  const name = async ? "reduceScatterAsync" : "reduceScatter";
  const code = reduceCode(name, opts.op ?? "sum", input.dtype);
  sameDtype(name, input, output);
  if (input.numel !== output.numel * g.size) {
    throw new ValueError(`${name}: input has ${input.numel} elements, expected output's ${output.numel} x group size ${g.size} = ${output.numel * g.size}`);
  }
  contiguous(name, input);
  contiguous(name, output);
  distinct(name, input, output);
  if (g.size === 1) {
    copyInto(output, input);
    return async ? DONE : undefined;
  }
  return run("reduceScatter", async, g, opts, async ? [input, output] : NO_TENSORS, input, output, output.numel, input.dtype, code);
}

/**
 * Reduces `input` (group size x output.numel elements) over the group and leaves this rank's
 * slice (rank-major: elements [rank * n, (rank + 1) * n)) in `output`.
 * @example
 * reduceScatter(flatGrads, myShard, dp, { op: "avg" });
 */
export function reduceScatter(input: Tensor, output: Tensor, g: ProcessGroup, opts: ReduceOp | ReduceOptions = {}): void {
  reduceScatterImpl(input, output, g, opts, false);
}

/** The asynchronous reduceScatter. */
export function reduceScatterAsync(input: Tensor, output: Tensor, g: ProcessGroup, opts: ReduceOp | ReduceOptions = {}): Work {
  return reduceScatterImpl(input, output, g, opts, true)!;
}

// ---- allGather ---------------------------------------------------------------------------------

function allGatherImpl(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions, async: boolean): Work | undefined {
  const name = async ? "allGatherAsync" : "allGather";
  sameDtype(name, input, output);
  if (output.numel !== input.numel * g.size) {
    throw new ValueError(`${name}: output has ${output.numel} elements, expected input's ${input.numel} x group size ${g.size} = ${input.numel * g.size}`);
  }
  contiguous(name, input);
  contiguous(name, output);
  distinct(name, input, output);
  if (g.size === 1) {
    copyInto(output, input);
    return async ? DONE : undefined;
  }
  return run("allGather", async, g, opts, async ? [input, output] : NO_TENSORS, input, output, input.numel, input.dtype);
}

/**
 * Gathers every rank's `input` into `output` (group size x input.numel elements, rank-major).
 * @example
 * allGather(myShard, fullParams, dp);
 */
export function allGather(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions = {}): void {
  allGatherImpl(input, output, g, opts, false);
}

/** The asynchronous allGather. */
export function allGatherAsync(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions = {}): Work {
  return allGatherImpl(input, output, g, opts, true)!;
}

// ---- broadcast ---------------------------------------------------------------------------------

function broadcastImpl(t: Tensor, g: ProcessGroup, o: number | BroadcastOptions, async: boolean): Work | undefined {
  const opts = typeof o === "number" ? { root: o } : o;
  const name = async ? "broadcastAsync" : "broadcast";
  const root = opts.root ?? 0;
  rankIn(name, "root", root, g);
  contiguous(name, t);
  if (g.size === 1) return async ? DONE : undefined;
  return run("broadcast", async, g, opts, async ? [t] : NO_TENSORS, t, null, t.numel, t.dtype, root);
}

/**
 * Copies the root's `t` into every rank's `t`.
 * @example
 * for (const p of model.parameters()) broadcast(p, dp, { root: 0 });
 */
export function broadcast(t: Tensor, g: ProcessGroup, opts: number | BroadcastOptions = {}): void {
  broadcastImpl(t, g, opts, false);
}

/** The asynchronous broadcast. */
export function broadcastAsync(t: Tensor, g: ProcessGroup, opts: number | BroadcastOptions = {}): Work {
  return broadcastImpl(t, g, opts, true)!;
}

// ---- allToAll ----------------------------------------------------------------------------------

function allToAllImpl(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions, async: boolean): Work | undefined {
  const name = async ? "allToAllAsync" : "allToAll";
  sameDtype(name, input, output);
  if (input.numel !== output.numel || input.numel % g.size !== 0) {
    throw new ValueError(`${name}: input (${input.numel} elements) and output (${output.numel}) must have the same size, a multiple of the group size ${g.size}`);
  }
  contiguous(name, input);
  contiguous(name, output);
  distinct(name, input, output);
  if (g.size === 1) {
    copyInto(output, input);
    return async ? DONE : undefined;
  }
  return run("allToAll", async, g, opts, async ? [input, output] : NO_TENSORS, input, output, input.numel / g.size, input.dtype);
}

/**
 * Splits `input` into group-size chunks and sends chunk j to rank j; `output`'s chunk i is
 * what rank i sent to this rank (MoE token dispatch).
 * @example
 * allToAll(tokensByExpertRank, tokensForMyExperts, ep);
 */
export function allToAll(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions = {}): void {
  allToAllImpl(input, output, g, opts, false);
}

/** The asynchronous allToAll. */
export function allToAllAsync(input: Tensor, output: Tensor, g: ProcessGroup, opts: CollectiveOptions = {}): Work {
  return allToAllImpl(input, output, g, opts, true)!;
}

// ---- barrier -----------------------------------------------------------------------------------

/**
 * Waits until every rank of the group has reached the barrier.
 * @example
 * barrier(world);  // rank 0 has finished writing the checkpoint
 */
export function barrier(g: ProcessGroup, opts: CollectiveOptions = {}): void {
  if (g.size > 1) run("barrier", false, g, opts, NO_TENSORS, null, null, 0, "float32");
}

/** The asynchronous barrier. */
export function barrierAsync(g: ProcessGroup, opts: CollectiveOptions = {}): Work {
  if (g.size === 1) return DONE;
  return run("barrier", true, g, opts, NO_TENSORS, null, null, 0, "float32")!;
}

// ---- fence -------------------------------------------------------------------------------------

/**
 * Blocks until every call issued on `g` before it has finished, so synchronous code can use
 * the buffers of asynchronous calls it cannot await (ZeRO-3 prefetches the next block's
 * parameters this way, inside a module's forward). Their Works report `completed` and let go
 * of their tensors at once (without a fence that waits for the event loop). Local: it calls
 * no MPI and waits for no other rank beyond what those calls wait for. A call that failed
 * still reports through its Work. Asynchronous sends finish when their receivers arrive and
 * are not waited for.
 * @example
 * const work = allGatherAsync(shard, full, dp);
 * // ... compute ...
 * fence(dp);  // full is ready (await work.wait() where the caller can await)
 */
export function fence(g: ProcessGroup): void {
  if (g.size === 1) return;
  mpi.call("fence", g.handle, null, null, 0, "float32", 0, 0, NO_SHAPE, 0);
  const works = unfencedWork.get(g.handle);
  if (works) for (const w of [...works]) w.finished();
}

// ---- send / recv -------------------------------------------------------------------------------

function p2pImpl(kind: "send" | "recv", t: Tensor, g: ProcessGroup, peer: number, o: number | P2POptions, async: boolean): Work | undefined {
  const opts = typeof o === "number" ? { tag: o } : o;
  const name = async ? `${kind}Async` : kind;
  if (g.size === 1) throw new ValueError(`${name}: group "${g.name ?? "?"}" has one rank, so there is no peer to ${kind === "send" ? "send to" : "receive from"}`);
  rankIn(name, "peer", peer, g);
  if (peer === g.rank) throw new ValueError(`${name}: peer ${peer} is this rank; ${kind} to another rank`);
  const tag = opts.tag ?? 0;
  if (!Number.isInteger(tag) || tag < 0) throw new ValueError(`${name}: tag must be an integer >= 0, got ${tag}`);
  contiguous(name, t);
  return run(kind, async, g, opts, async ? [t] : NO_TENSORS, t, null, t.numel, t.dtype, peer, tag, t.shape);
}

/**
 * Sends `t` to rank `peer` of the group. Its shape and dtype travel first, and the receiver
 * checks them. Blocking: returns when `t` may be reused (standard MPI_Send semantics: two
 * ranks that both send first may deadlock on large tensors; use sendAsync for exchanges).
 * @example
 * if (pp.rank === 0) send(activations, pp, 1, { tag: microBatch });
 */
export function send(t: Tensor, g: ProcessGroup, peer: number, opts: number | P2POptions = {}): void {
  p2pImpl("send", t, g, peer, opts, false);
}

/** The asynchronous send (posted at once, so exchanges do not deadlock). */
export function sendAsync(t: Tensor, g: ProcessGroup, peer: number, opts: number | P2POptions = {}): Work {
  return p2pImpl("send", t, g, peer, opts, true)!;
}

/**
 * Receives into `t` from rank `peer`; throws a CommError naming both shapes/dtypes when the
 * sender's tensor differs from `t`.
 * @example
 * if (pp.rank === 1) recv(activations, pp, 0, { tag: microBatch });
 */
export function recv(t: Tensor, g: ProcessGroup, peer: number, opts: number | P2POptions = {}): void {
  p2pImpl("recv", t, g, peer, opts, false);
}

/** The asynchronous recv. */
export function recvAsync(t: Tensor, g: ProcessGroup, peer: number, opts: number | P2POptions = {}): Work {
  return p2pImpl("recv", t, g, peer, opts, true)!;
}

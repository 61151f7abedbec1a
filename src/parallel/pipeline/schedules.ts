/**
 * Pipeline-parallel schedules as plain data: which forward and backward each rank runs, in what
 * order, for GPipe, 1F1B (PipeDream-Flush) and Megatron's interleaved 1F1B. The runtime walks
 * these lists with MPI send/recv; this file never touches tensors or MPI, so every schedule can be
 * checked here with an event simulation of that same runtime (strict per-rank order, receives
 * wait for the producing rank, sends never block) before a single rank is launched.
 *
 * Vocabulary: p = stages (ranks in the pipeline), m = micro-batches per step, v = virtual stages
 * (model chunks per rank, 1 unless interleaved). The model is cut into p*v chunks; rank s holds
 * chunks s, s+p, s+2p, ... (Megatron's interleaving), so activations visit every rank v times.
 */
import { ValueError } from "../../core/errors.js";

/** The schedules a pipeline can run; see `pipelineActions()` for the order each one produces. */
export type PipelineScheduleName = "gpipe" | "1f1b" | "interleaved";

/** One unit of work on one rank. chunk = the LOCAL model-chunk index 0..v-1 (v = virtual stages; 1 unless interleaved). */
export interface PipelineAction {
  kind: "forward" | "backward";
  /** Which micro-batch, 0..m-1. */
  microBatch: number;
  /** The rank-local chunk, 0..v-1; `modelChunkOf()` turns it into the global one. */
  chunk: number;
}

/** The size of one pipeline step. */
export interface PipelineShape {
  /** p: ranks in the pipeline, >= 1. */
  stages: number;
  /** m: micro-batches per training step, >= 1. */
  microBatches: number;
  /** v: model chunks per rank. Default 1; must be >= 2 for "interleaved" and 1 otherwise. */
  virtualStages?: number;
}

/** Per-action costs for `simulatePipeline()`, in arbitrary time units. */
export interface SimulationOptions {
  /** Time of one chunk forward. Default 1. */
  forwardTime?: number;
  /** Time of one chunk backward. Default 2 (the usual 2x forward of a transformer layer). */
  backwardTime?: number;
  /** Delay between a remote producer finishing and its consumer being able to start. Default 0. */
  commTime?: number;
}

/** What one simulated step looked like. */
export interface SimulationResult {
  /** Time of the last action end over all ranks. */
  makespan: number;
  /** Per rank: total compute time. */
  busy: number[];
  /** Per rank: 1 - busy/makespan (0 when the makespan is 0). */
  idleFraction: number[];
  /** Per rank: max number of micro-batch forwards whose backward has not run yet (summed over its chunks); activation memory scales with it. */
  maxInFlight: number[];
  /** Per rank: every action with its start and end time, in execution order. */
  timeline: Array<Array<{ action: PipelineAction; start: number; end: number }>>;
}

function checkInt(name: string, value: number, min: number, hint: string): void {
  if (!Number.isInteger(value) || value < min) throw new ValueError(`${name} must be an integer >= ${min}, got ${value}; ${hint}`);
}

/** Validates a shape for a schedule and returns v with its default filled in. */
function checkShape(schedule: PipelineScheduleName, shape: PipelineShape): number {
  if (schedule !== "gpipe" && schedule !== "1f1b" && schedule !== "interleaved") {
    throw new ValueError(`pipeline schedule must be "gpipe", "1f1b" or "interleaved", got ${JSON.stringify(schedule)}`);
  }
  const { stages: p, microBatches: m } = shape;
  checkInt("stages", p, 1, "it is the number of pipeline ranks");
  checkInt("microBatches", m, 1, "a step needs at least one micro-batch");
  if (schedule !== "interleaved") {
    if (shape.virtualStages !== undefined && shape.virtualStages !== 1) {
      throw new ValueError(`virtualStages must be 1 for the "${schedule}" schedule, got ${shape.virtualStages}; use "interleaved" for more than one model chunk per rank`);
    }
    return 1;
  }
  const v = shape.virtualStages ?? 1;
  checkInt("virtualStages", v, 2, `the "interleaved" schedule needs at least two model chunks per rank (use "1f1b" for one)`);
  // Megatron's order walks micro-batches in groups of p per chunk; a ragged last group would
  // give some chunk fewer micro-batches than the others, so it refuses (and so do we).
  if (m % p !== 0) {
    throw new ValueError(`microBatches must be a multiple of stages for the "interleaved" schedule, got microBatches=${m}, stages=${p}; try microBatches=${Math.ceil(m / p) * p}`);
  }
  return v;
}

/**
 * The global model chunk (0..p*v-1) that local chunk `chunk` of rank `stage` is: chunk * p + stage
 * (Megatron's interleaving).
 *
 * @example modelChunkOf(1, 2, 4) // 9: rank 1's third chunk in a 4-rank pipeline
 */
export function modelChunkOf(stage: number, chunk: number, stages: number): number {
  checkInt("stages", stages, 1, "it is the number of pipeline ranks");
  checkInt("chunk", chunk, 0, "local chunks are numbered from 0");
  if (!Number.isInteger(stage) || stage < 0 || stage >= stages) throw new ValueError(`stage must be an integer in [0, ${stages - 1}], got ${stage}`);
  return chunk * stages + stage;
}

/**
 * Which rank and local chunk hold model chunk `k`; the inverse of `modelChunkOf()`.
 *
 * @example locateModelChunk(9, 4) // { stage: 1, chunk: 2 }
 */
export function locateModelChunk(k: number, stages: number): { stage: number; chunk: number } {
  checkInt("stages", stages, 1, "it is the number of pipeline ranks");
  checkInt("model chunk", k, 0, "model chunks are numbered from 0");
  return { stage: k % stages, chunk: Math.floor(k / stages) };
}

/**
 * The ordered list of actions rank `stage` executes in one training step.
 * - gpipe: all m forwards, then all m backwards in order 0..m-1 (the accumulation order).
 * - 1f1b: min(p-stage-1, m) warmup forwards, then forward/backward pairs, then the remaining
 *   backwards, so at most p-stage micro-batches hold activations at once (GPipe holds m).
 * - interleaved: Megatron's interleaved 1F1B over v chunks per rank; needs v >= 2 and m % p == 0.
 *
 * @example pipelineActions("1f1b", { stages: 2, microBatches: 4 }, 0).map(a => a.kind[0].toUpperCase() + a.microBatch)
 * // ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
 */
export function pipelineActions(schedule: PipelineScheduleName, shape: PipelineShape, stage: number): PipelineAction[] {
  const v = checkShape(schedule, shape);
  const { stages: p, microBatches: m } = shape;
  if (!Number.isInteger(stage) || stage < 0 || stage >= p) throw new ValueError(`stage must be an integer in [0, ${p - 1}] for stages=${p}, got ${stage}`);
  const F = (microBatch: number, chunk = 0): PipelineAction => ({ kind: "forward", microBatch, chunk });
  const B = (microBatch: number, chunk = 0): PipelineAction => ({ kind: "backward", microBatch, chunk });
  const out: PipelineAction[] = [];
  if (schedule === "gpipe") {
    for (let i = 0; i < m; i++) out.push(F(i));
    for (let i = 0; i < m; i++) out.push(B(i));
    return out;
  }
  if (schedule === "1f1b") {
    // Stage s must have p-s-1 forwards in flight before the first backward reaches it back.
    const warmup = Math.min(p - stage - 1, m);
    for (let i = 0; i < warmup; i++) out.push(F(i));
    for (let i = 0; i < m - warmup; i++) out.push(F(warmup + i), B(i));
    for (let i = m - warmup; i < m; i++) out.push(B(i));
    return out;
  }
  // Interleaved, transcribed from Megatron's forward_backward_pipelining_with_interleaving. The
  // k-th forward on a rank takes chunk (k mod pv) div p and micro-batch (k div pv)*p + k mod p:
  // p micro-batches go through chunk 0, then the same p through chunk 1, ... The k-th backward
  // walks the same way with the chunks reversed, since gradients enter at the last chunk.
  const total = m * v;
  const fwd = (k: number) => F(Math.floor(k / (p * v)) * p + (k % p), Math.floor((k % (p * v)) / p));
  const bwd = (k: number) => B(Math.floor(k / (p * v)) * p + (k % p), v - 1 - Math.floor((k % (p * v)) / p));
  // Warmup: (v-1)*p forwards fill this rank's first v-1 chunks for one group of p micro-batches,
  // and 2*(p-stage-1) more cover the round trip to the last rank and back. Megatron runs
  // everything as warmup when m == p (then there is no steady state to speak of), and caps the
  // count at m*v when m is small, so we keep both rules to produce its exact order.
  const warmup = m === p ? total : Math.min((p - stage - 1) * 2 + (v - 1) * p, total);
  for (let k = 0; k < warmup; k++) out.push(fwd(k));
  for (let k = 0; k < total - warmup; k++) out.push(fwd(warmup + k), bwd(k));
  for (let k = total - warmup; k < total; k++) out.push(bwd(k));
  return out;
}

/**
 * Runs every rank's action list with the real dependencies and the runtime's execution model;
 * throws a ValueError naming the stuck ranks/actions if the schedule would deadlock.
 * Dependencies: forward(i) of model chunk k needs forward(i) of chunk k-1; backward(i) of chunk k
 * needs forward(i) of chunk k and backward(i) of chunk k+1, except the last chunk, whose forward
 * computes the loss. An action starts when the rank's previous action ended and every dependency
 * has finished, plus commTime when it ran on another rank.
 *
 * @example simulatePipeline("1f1b", { stages: 4, microBatches: 8 }, { backwardTime: 1 }).makespan // 22 = 2*8 + 2*3
 */
export function simulatePipeline(schedule: PipelineScheduleName, shape: PipelineShape, opts: SimulationOptions = {}): SimulationResult {
  checkShape(schedule, shape);
  const lists = Array.from({ length: shape.stages }, (_, s) => pipelineActions(schedule, shape, s));
  return simulateActionLists(lists, shape, opts);
}

/**
 * `simulatePipeline()` for hand-made action lists (one per rank), so a custom or reordered
 * schedule can be checked for deadlocks and bubbles before the runtime runs it. Each list must
 * hold every (micro-batch, local chunk) forward and backward exactly once.
 *
 * @example simulateActionLists([[{ kind: "forward", microBatch: 0, chunk: 0 }, { kind: "backward", microBatch: 0, chunk: 0 }]], { stages: 1, microBatches: 1 })
 */
export function simulateActionLists(lists: PipelineAction[][], shape: PipelineShape, opts: SimulationOptions = {}): SimulationResult {
  const p = shape.stages, m = shape.microBatches, v = shape.virtualStages ?? 1;
  checkInt("stages", p, 1, "it is the number of pipeline ranks");
  checkInt("microBatches", m, 1, "a step needs at least one micro-batch");
  checkInt("virtualStages", v, 1, "it is the number of model chunks per rank");
  if (lists.length !== p) throw new ValueError(`expected one action list per stage (${p}), got ${lists.length}`);
  const tF = opts.forwardTime ?? 1, tB = opts.backwardTime ?? 2, tC = opts.commTime ?? 0;
  for (const [name, t] of [["forwardTime", tF], ["backwardTime", tB], ["commTime", tC]] as const) {
    if (!Number.isFinite(t) || t < 0) throw new ValueError(`${name} must be a finite number >= 0, got ${t}`);
  }
  const K = p * v;
  // end[kind][k * m + i]: when that action finished, NaN until it has run.
  const end = { forward: new Float64Array(K * m).fill(NaN), backward: new Float64Array(K * m).fill(NaN) };
  const name = (a: PipelineAction) => `${a.kind}(microBatch=${a.microBatch}, chunk=${a.chunk})`;
  for (let s = 0; s < p; s++) {
    const seen = new Set<string>();
    for (const a of lists[s]) {
      if (!Number.isInteger(a.microBatch) || a.microBatch < 0 || a.microBatch >= m || !Number.isInteger(a.chunk) || a.chunk < 0 || a.chunk >= v) {
        throw new ValueError(`stage ${s}: ${name(a)} is out of range for microBatches=${m}, virtualStages=${v}`);
      }
      if (seen.has(name(a))) throw new ValueError(`stage ${s}: ${name(a)} appears twice`);
      seen.add(name(a));
    }
    if (seen.size !== 2 * m * v) throw new ValueError(`stage ${s}: expected ${2 * m * v} actions (a forward and a backward per micro-batch and chunk), got ${seen.size}`);
  }
  // The dependencies of one action as (kind, model chunk) pairs for the same micro-batch.
  const deps = (a: PipelineAction, k: number): Array<["forward" | "backward", number]> =>
    a.kind === "forward" ? (k > 0 ? [["forward", k - 1]] : []) : k < K - 1 ? [["forward", k], ["backward", k + 1]] : [["forward", k]];

  const next = new Array<number>(p).fill(0);
  const clock = new Array<number>(p).fill(0);
  const timeline: SimulationResult["timeline"] = lists.map(() => []);
  // Start times depend only on the finished dependencies, never on the order ranks are visited,
  // so sweeping the ranks until nothing moves gives the same answer as an event queue.
  for (let moved = true; moved; ) {
    moved = false;
    for (let s = 0; s < p; s++) {
      for (; next[s] < lists[s].length; next[s]++) {
        const a = lists[s][next[s]];
        const k = modelChunkOf(s, a.chunk, p);
        let start = clock[s];
        let ready = true;
        for (const [kind, dk] of deps(a, k)) {
          const t = end[kind][dk * m + a.microBatch];
          if (Number.isNaN(t)) { ready = false; break; }
          start = Math.max(start, t + (locateModelChunk(dk, p).stage === s ? 0 : tC));
        }
        if (!ready) break;
        clock[s] = start + (a.kind === "forward" ? tF : tB);
        end[a.kind][k * m + a.microBatch] = clock[s];
        timeline[s].push({ action: a, start, end: clock[s] });
        moved = true;
      }
    }
  }
  const stuck = lists.flatMap((l, s) => (next[s] < l.length ? [`stage ${s} waits at ${name(l[next[s]])} (action ${next[s]} of ${l.length})`] : []));
  if (stuck.length > 0) throw new ValueError(`pipeline schedule deadlocks: ${stuck.join("; ")}`);

  const makespan = Math.max(...clock);
  const busy = timeline.map((t) => t.reduce((sum, e) => sum + e.end - e.start, 0));
  const maxInFlight = lists.map((l) => {
    let live = 0, most = 0;
    for (const a of l) most = Math.max(most, (live += a.kind === "forward" ? 1 : -1));
    return most;
  });
  return { makespan, busy, idleFraction: busy.map((b) => (makespan > 0 ? 1 - b / makespan : 0)), maxInFlight, timeline };
}

/**
 * The textbook bubble fraction (Narayanan et al. 2021): (p-1)/m for gpipe and 1f1b, and
 * (p-1)/(m*v) for interleaved, as a fraction of the ideal compute time per rank.
 *
 * @example bubbleFraction("interleaved", { stages: 4, microBatches: 8, virtualStages: 2 }) // 0.1875
 */
export function bubbleFraction(schedule: PipelineScheduleName, shape: PipelineShape): number {
  const v = checkShape(schedule, shape);
  return (shape.stages - 1) / (shape.microBatches * v);
}

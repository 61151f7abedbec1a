/**
 * A timeline of what each rank does during training, as a Chrome trace (the JSON Object
 * Format: `{traceEvents: [...]}`), which ui.perfetto.dev and chrome://tracing open.
 *
 * Each rank records into memory and writes `<path>.rank<r>.json` at `stopTrace()`; the rank is
 * the trace's pid, so `mergeTraces()` can lay the ranks of one job side by side, and
 * `analyzeTrace()` turns a trace into per-rank step time and idle fraction (pipeline bubbles,
 * waits in collectives). Two threads per rank: tid 0 is JavaScript (compute, blocking calls),
 * tid 1 is the communication thread (asynchronous collectives, recorded when they complete).
 *
 * Timestamps are microseconds of wall-clock time, `performance.timeOrigin + performance.now()`:
 * ranks started at different moments on one machine share that clock, so their timelines line
 * up without any synchronisation. Across machines they are only as aligned as the clocks (NTP).
 *
 * The recorder is per process, so it is module state: a profiler, like the one in Node itself,
 * serves the whole process, and call sites deep in the collectives cannot be handed a recorder
 * without threading it through every layer. Call sites check `tracing()` first, so off costs one
 * branch.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { performance } from "node:perf_hooks";
import { FormatError, ValueError } from "./errors.js";

/** What an event is, for colours in the viewer and for `analyzeTrace()` (forward + backward = compute). */
export type TraceCategory = "forward" | "backward" | "send" | "recv" | "allreduce" | "allgather" | "reducescatter" | "broadcast" | "alltoall"
  | "barrier" | "optimizer" | "idle" | "step" | "data" | "other";

/** One Chrome trace event (the fields Megalith writes; viewers ignore the rest). */
export interface TraceEvent {
  /** Shown on the slice, e.g. "forward", "allReduce dp". */
  name: string;
  /** A TraceCategory for Megalith's own events; "__metadata" for process/thread names. */
  cat: string;
  /** X: complete event (ts + dur); M: metadata (names); i: instant (step marks). */
  ph: "X" | "M" | "i";
  /** Start, in microseconds since the Unix epoch (0 for metadata). */
  ts: number;
  /** Duration in microseconds (X events only). */
  dur?: number;
  /** The rank. */
  pid: number;
  /** 0 main thread (JavaScript), 1 communication thread. */
  tid: number;
  /** Instant events: "p" draws the mark across every thread of the rank. */
  s?: "t" | "p" | "g";
  /** Shown when the slice is selected (bytes, group, step...). */
  args?: Record<string, unknown>;
}

/** Events kept per process; past it, events are dropped (with one warning) so a trace left on
 *  for a long run cannot eat the heap. 1e6 events is ~150 MB of JSON, about what viewers load. */
export const MAX_TRACE_EVENTS = 1_000_000;

/** The main thread's tid. */
export const MAIN_TID = 0;
/** The communication thread's tid (asynchronous collectives). */
export const COMM_TID = 1;

interface Recorder {
  path: string;
  rank: number;
  events: TraceEvent[];
  dropped: number;
}

let rec: Recorder | null = null;

/** Microseconds since the epoch for a `performance.now()` reading (ms since this process began). */
function toUs(nowMs: number): number {
  return (performance.timeOrigin + nowMs) * 1000;
}

function push(e: TraceEvent): void {
  const r = rec!;
  if (r.events.length >= MAX_TRACE_EVENTS) {
    if (r.dropped++ === 0) {
      process.stderr.write(`megalith: trace ${r.path} reached ${MAX_TRACE_EVENTS} events on rank ${r.rank}; later events are dropped ` +
        "(trace fewer steps)\n");
    }
    return;
  }
  r.events.push(e);
}

/**
 * Starts recording on this process; `rank` becomes the trace's pid. Calling it again with the
 * same path and rank does nothing, so every layer that may start a trace can call it.
 * @example
 * startTrace({ path: "runs/x/trace.json", rank: world.rank });
 * // ... train ...
 * stopTrace();  // writes runs/x/trace.json.rank0.json
 */
export function startTrace(opts: { path: string; rank: number }): void {
  const { path, rank } = opts;
  if (typeof path !== "string" || path === "") throw new ValueError(`startTrace: path must be a non-empty file path, got ${JSON.stringify(path)}`);
  if (!Number.isInteger(rank) || rank < 0) throw new ValueError(`startTrace: rank must be an integer >= 0, got ${rank}`);
  if (rec) {
    if (rec.path === path && rec.rank === rank) return;
    throw new ValueError(`startTrace: already recording ${rec.path} as rank ${rec.rank}; call stopTrace() before tracing ${path} as rank ${rank}`);
  }
  rec = { path, rank, events: [], dropped: 0 };
}

/**
 * Whether a trace is being recorded. Cheap: check it before building an event's args.
 * @example
 * if (tracing()) traceComplete("load", "data", t0, performance.now() - t0, { args: { bytes } });
 */
export function tracing(): boolean {
  return rec !== null;
}

/**
 * Records a complete event on the main thread around `fn` (also when `fn` throws) and returns
 * its result. Spans nest: a span opened inside another shows beneath it.
 * @example
 * const loss = traceSpan("forward", "forward", () => model.forward(x, y), { micro: i });
 */
export function traceSpan<T>(name: string, cat: TraceCategory, fn: () => T, args?: Record<string, unknown>): T {
  if (!rec) return fn();
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    traceComplete(name, cat, t0, performance.now() - t0, args ? { args } : undefined);
  }
}

/**
 * `traceSpan` for an async `fn`: the span lasts until its promise settles. Spans of async
 * functions that run concurrently overlap on tid 0 without nesting; viewers draw them, but
 * stacked as if one called the other.
 * @example
 * await traceSpanAsync("recv activations", "recv", () => work.wait());
 */
export async function traceSpanAsync<T>(name: string, cat: TraceCategory, fn: () => Promise<T>, args?: Record<string, unknown>): Promise<T> {
  if (!rec) return fn();
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    traceComplete(name, cat, t0, performance.now() - t0, args ? { args } : undefined);
  }
}

/**
 * Records an event that already happened: `startMs` is a `performance.now()` reading, `durMs`
 * its length in ms. `tid` 0 (default) is the main thread, 1 the communication thread.
 * @example
 * const t0 = performance.now();
 * await work.wait();
 * traceComplete("allReduce dp", "allreduce", t0, performance.now() - t0, { tid: COMM_TID });
 */
export function traceComplete(name: string, cat: TraceCategory, startMs: number, durMs: number, opts?: { tid?: number; args?: Record<string, unknown> }): void {
  if (!rec) return;
  const e: TraceEvent = { name, cat, ph: "X", ts: toUs(startMs), dur: Math.max(0, durMs) * 1000, pid: rec.rank, tid: opts?.tid ?? MAIN_TID };
  if (opts?.args) e.args = opts.args;
  push(e);
}

/**
 * Marks the start of step `step` (an instant event across the rank's threads). `analyzeTrace()`
 * measures a step from its mark to the next one.
 * @example
 * for (let step = 0; step < steps; step++) { traceStep(step); trainStep(); }
 */
export function traceStep(step: number): void {
  if (!rec) return;
  push({ name: `step ${step}`, cat: "step", ph: "i", s: "p", ts: toUs(performance.now()), pid: rec.rank, tid: MAIN_TID, args: { step } });
}

/** The metadata events that name a rank's process and threads in the viewer. */
function metadata(rank: number): TraceEvent[] {
  return [
    { name: "process_name", cat: "__metadata", ph: "M", ts: 0, pid: rank, tid: MAIN_TID, args: { name: `rank ${rank}` } },
    { name: "process_sort_index", cat: "__metadata", ph: "M", ts: 0, pid: rank, tid: MAIN_TID, args: { sort_index: rank } },
    { name: "thread_name", cat: "__metadata", ph: "M", ts: 0, pid: rank, tid: MAIN_TID, args: { name: "main" } },
    { name: "thread_name", cat: "__metadata", ph: "M", ts: 0, pid: rank, tid: COMM_TID, args: { name: "communication thread" } },
  ];
}

/** Writes a file whole or not at all: a crash mid-write must not leave a truncated trace that
 *  the merge (or a viewer) then chokes on. */
function writeAtomic(file: string, text: string): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

/** Chrome's JSON: one event a line, so a large trace stays greppable and diffs stay small. */
function traceJson(events: readonly TraceEvent[]): string {
  return `{"displayTimeUnit":"ms","traceEvents":[\n${events.map((e) => JSON.stringify(e)).join(",\n")}\n]}\n`;
}

/**
 * Stops recording and writes `<path>.rank<r>.json` (via a temporary file and a rename), events
 * in time order after the metadata that names the rank and its threads. Returns the file
 * written, or null when no trace was being recorded.
 * @example
 * const file = stopTrace();  // "runs/x/trace.json.rank1.json" on rank 1
 */
export function stopTrace(): string | null {
  if (!rec) return null;
  const r = rec;
  rec = null;
  // Sorted by start, the enclosing span first at equal starts: spans are pushed when they end,
  // so inner ones come first, and some viewers nest only what arrives outer-first.
  const events = r.events.sort((a, b) => a.ts - b.ts || (b.dur ?? 0) - (a.dur ?? 0));
  const meta = metadata(r.rank);
  if (r.dropped > 0) meta[0]!.args = { ...meta[0]!.args, dropped_events: r.dropped };
  const file = rankTracePath(r.path, r.rank);
  writeAtomic(file, traceJson([...meta, ...events]));
  return file;
}

/**
 * The file rank `rank` writes for a trace at `path`.
 * @example
 * rankTracePath("trace.json", 3);  // "trace.json.rank3.json"
 */
export function rankTracePath(path: string, rank: number): string {
  return `${path}.rank${rank}.json`;
}

/** Reads one trace file: the Object Format ({traceEvents}) or a bare array of events. */
function readTrace(file: string): TraceEvent[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") throw new ValueError(`mergeTraces: trace file ${file} not found`);
    throw new FormatError(file, `not a valid JSON trace (${err.message}); was the rank killed while writing it?`);
  }
  const events = Array.isArray(raw) ? raw : (raw as { traceEvents?: unknown } | null)?.traceEvents;
  if (!Array.isArray(events)) throw new FormatError(file, "expected a Chrome trace: {traceEvents: [...]} or an array of events");
  return events as TraceEvent[];
}

/**
 * Merges per-rank trace files into one trace at `outPath` (written atomically) and returns the
 * number of events in it. A file's rank comes from its name (`.rank<r>.json`), else from its
 * events' pid; each rank keeps its own pid, named "rank r". Timestamps stay as recorded, which
 * aligns ranks of one machine (they share a clock).
 * @example
 * const n = mergeTraces(["t.json.rank0.json", "t.json.rank1.json"], "t.json");
 */
export function mergeTraces(rankFiles: string[], outPath: string): number {
  const seen = new Map<number, string>();
  const out: TraceEvent[] = [];
  for (const [i, file] of rankFiles.entries()) {
    const events = readTrace(file);
    const fromName = /\.rank(\d+)\.json$/.exec(file);
    const rank = fromName ? Number(fromName[1]) : events.find((e) => typeof e?.pid === "number")?.pid ?? i;
    const other = seen.get(rank);
    if (other !== undefined) throw new ValueError(`mergeTraces: ${file} and ${other} are both rank ${rank}; pass one file per rank`);
    seen.set(rank, file);
    let named = false;
    for (const e of events) {
      if (e.ph === "M" && e.name === "process_name") {
        named = true;
        out.push({ ...e, pid: rank, args: { ...e.args, name: `rank ${rank}` } });
      } else {
        out.push({ ...e, pid: rank });
      }
    }
    // Files from other tools may lack the name; the merged view should still say "rank r".
    if (!named) out.push(metadata(rank)[0]!);
  }
  writeAtomic(outPath, traceJson(out));
  return out.length;
}

/** Per-rank summary from `analyzeTrace()`. */
export interface RankTraceSummary {
  rank: number;
  /** Steps measured (after `skipSteps`). */
  steps: number;
  /** Mean step time, ms. */
  stepMs: number;
  /** Mean compute time per step (forward + backward on the main thread, overlaps counted once), ms. */
  computeMs: number;
  /** 1 - compute / step time over the measured steps: time the rank spent not computing
   *  (pipeline bubbles, waiting in collectives, optimizer, data). */
  idleFraction: number;
}

/** Total length of the union of [start, end) intervals, each clipped to [lo, hi). */
function unionLength(intervals: Array<[number, number]>, lo: number, hi: number): number {
  const clipped = intervals.map(([a, b]) => [Math.max(a, lo), Math.min(b, hi)] as [number, number]).filter(([a, b]) => b > a);
  clipped.sort((x, y) => x[0] - y[0]);
  let total = 0, curA = -Infinity, curB = -Infinity;
  for (const [a, b] of clipped) {
    if (a > curB) {
      if (curB > curA) total += curB - curA;
      curA = a;
      curB = b;
    } else if (b > curB) {
      curB = b;
    }
  }
  if (curB > curA) total += curB - curA;
  return total;
}

/**
 * Per rank (pid): steps run from one `traceStep` mark to the next, the last ending at the
 * rank's last event (a final mark after it closes the last step instead); compute is forward + backward events on the main thread, overlaps merged;
 * idle fraction = 1 - compute / step time. `skipSteps` (default 0) leaves out the first steps
 * (warm-up). A rank without step marks reports 0 steps and zeros.
 * @example
 * const trace = JSON.parse(readFileSync("trace.json", "utf8"));
 * for (const r of analyzeTrace(trace.traceEvents, { skipSteps: 1 })) console.log(`rank ${r.rank}: ${(100 * r.idleFraction).toFixed(1)}% idle`);
 */
export function analyzeTrace(events: TraceEvent[], opts: { skipSteps?: number } = {}): RankTraceSummary[] {
  const skip = opts.skipSteps ?? 0;
  if (!Number.isInteger(skip) || skip < 0) throw new ValueError(`analyzeTrace: skipSteps must be an integer >= 0, got ${skip}`);
  const byRank = new Map<number, TraceEvent[]>();
  for (const e of events) {
    if (e.ph === "M") continue;
    let list = byRank.get(e.pid);
    if (!list) byRank.set(e.pid, (list = []));
    list.push(e);
  }
  const out: RankTraceSummary[] = [];
  for (const rank of [...byRank.keys()].sort((a, b) => a - b)) {
    const list = byRank.get(rank)!;
    const marks = list.filter((e) => e.ph === "i" && e.cat === "step").map((e) => e.ts).sort((a, b) => a - b);
    // A loop, not Math.max(...list): a spread of a million events overflows the stack.
    let end = -Infinity;
    for (const e of list) end = Math.max(end, e.ts + (e.dur ?? 0));
    const bounds = [...marks, end];
    const compute = list.filter((e) => e.ph === "X" && e.tid === MAIN_TID && (e.cat === "forward" || e.cat === "backward"))
      .map((e) => [e.ts, e.ts + (e.dur ?? 0)] as [number, number]);
    let steps = 0, stepUs = 0, computeUs = 0;
    for (let i = skip; i < marks.length; i++) {
      const lo = bounds[i]!, hi = bounds[i + 1]!;
      // A mark after every other event (traceStep at the end of the last step) closes that
      // step and opens none.
      if (hi <= lo) continue;
      steps++;
      stepUs += hi - lo;
      computeUs += unionLength(compute, lo, hi);
    }
    out.push({
      rank, steps,
      stepMs: steps ? stepUs / steps / 1000 : 0,
      computeMs: steps ? computeUs / steps / 1000 : 0,
      idleFraction: stepUs > 0 ? 1 - computeUs / stepUs : 0,
    });
  }
  return out;
}

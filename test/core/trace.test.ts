// The trace recorder (spans, async spans, instants, the atomic per-rank file), the merge of
// per-rank files, and the per-rank step / idle analysis on a synthetic timeline with exact numbers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, linkSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  startTrace, stopTrace, tracing, traceSpan, traceSpanAsync, traceComplete, traceStep, mergeTraces, analyzeTrace, rankTracePath,
  type TraceEvent,
} from "../../src/core/trace.js";

const dir = mkdtempSync(join(tmpdir(), "megalith-trace-"));
/** Blocks this thread for `ms` (a span with a known minimum length). */
const sleepMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const read = (file: string) => JSON.parse(readFileSync(file, "utf8")) as { displayTimeUnit: string; traceEvents: TraceEvent[] };
const spans = (events: TraceEvent[]) => events.filter((e) => e.ph === "X");

test("tracing() is off until startTrace(); spans then cost nothing and stopTrace() writes nothing", () => {
  assert.equal(tracing(), false);
  assert.equal(traceSpan("forward", "forward", () => 42), 42);
  traceComplete("x", "other", 0, 1);
  traceStep(0);
  assert.equal(stopTrace(), null);
});

test("startTrace() is idempotent per path and refuses a second path while recording", () => {
  const path = join(dir, "idem.json");
  startTrace({ path, rank: 0 });
  startTrace({ path, rank: 0 });
  assert.equal(tracing(), true);
  assert.throws(() => startTrace({ path: join(dir, "other.json"), rank: 0 }), /already recording .*idem\.json as rank 0; call stopTrace\(\)/);
  assert.throws(() => startTrace({ path, rank: 1 }), /already recording/);
  assert.equal(stopTrace(), rankTracePath(path, 0));
  assert.throws(() => startTrace({ path, rank: -1 }), /rank must be an integer >= 0, got -1/);
  assert.throws(() => startTrace({ path: "", rank: 0 }), /path must be a non-empty file path/);
});

test("traceSpan() nests spans on the main thread, times them, and records a span whose fn throws", () => {
  const path = join(dir, "spans.json");
  const wallUs = Date.now() * 1000;
  startTrace({ path, rank: 3 });
  const result = traceSpan("outer", "forward", () => {
    sleepMs(20);
    const inner = traceSpan("inner", "backward", () => {
      sleepMs(10);
      return "in";
    }, { micro: 1 });
    sleepMs(5);
    return inner + "+out";
  });
  assert.equal(result, "in+out");
  assert.throws(() => traceSpan("boom", "optimizer", () => { throw new Error("x"); }), /x/);
  const file = stopTrace();
  assert.equal(file, join(dir, "spans.json.rank3.json"));
  assert.equal(tracing(), false);

  const { displayTimeUnit, traceEvents } = read(file!);
  assert.equal(displayTimeUnit, "ms");
  const [outer, inner, boom] = spans(traceEvents);
  // Written in time order, the enclosing span first, though it ended (was recorded) last.
  assert.deepEqual([outer!.name, inner!.name, boom!.name], ["outer", "inner", "boom"]);
  for (const e of [outer!, inner!, boom!]) assert.deepEqual([e.pid, e.tid, e.ph], [3, 0, "X"]);
  assert.deepEqual([outer!.cat, inner!.cat, boom!.cat], ["forward", "backward", "optimizer"]);
  assert.deepEqual(inner!.args, { micro: 1 });
  // inner lies within outer, 20 ms after it starts, 5 ms before it ends (µs; sleeps only overshoot).
  assert.ok(inner!.ts - outer!.ts >= 20_000 && inner!.ts - outer!.ts < 20_000 + 15_000, `inner starts ${inner!.ts - outer!.ts} µs into outer`);
  assert.ok(inner!.dur! >= 10_000 && inner!.dur! < 10_000 + 15_000, `inner lasts ${inner!.dur} µs`);
  const tail = outer!.ts + outer!.dur! - (inner!.ts + inner!.dur!);
  assert.ok(tail >= 5_000 && tail < 5_000 + 15_000, `outer ends ${tail} µs after inner`);
  assert.ok(boom!.ts >= outer!.ts + outer!.dur!);
  // Wall-clock microseconds (timeOrigin + now), so ranks started at different times line up.
  assert.ok(Math.abs(outer!.ts - wallUs) < 2e6, `ts ${outer!.ts} is not near the wall clock ${wallUs}`);
  const meta = traceEvents.filter((e) => e.ph === "M").map((e) => [e.name, e.tid, e.args]);
  assert.deepEqual(meta, [
    ["process_name", 0, { name: "rank 3" }], ["process_sort_index", 0, { sort_index: 3 }],
    ["thread_name", 0, { name: "main" }], ["thread_name", 1, { name: "communication thread" }],
  ]);
});

test("traceSpanAsync() lasts until the promise settles; traceComplete() and traceStep() place events where told", async () => {
  const path = join(dir, "async.json");
  startTrace({ path, rank: 0 });
  traceStep(7);
  const v = await traceSpanAsync("wait", "recv", () => new Promise<number>((res) => setTimeout(() => res(5), 30)));
  assert.equal(v, 5);
  await assert.rejects(traceSpanAsync("fail", "send", () => Promise.reject(new Error("nope"))), /nope/);
  const t0 = performance.now() - 50;
  traceComplete("allReduce dp", "allreduce", t0, 12.5, { tid: 1, args: { bytes: 4000 } });
  const events = read(stopTrace()!).traceEvents;

  const step = events.find((e) => e.ph === "i")!;
  assert.deepEqual([step.name, step.cat, step.s, step.args], ["step 7", "step", "p", { step: 7 }]);
  const wait = events.find((e) => e.name === "wait")!;
  assert.ok(wait.dur! >= 25_000 && wait.dur! < 30_000 + 50_000, `async span lasts ${wait.dur} µs`);
  assert.ok(events.some((e) => e.name === "fail" && e.cat === "send"));
  const comm = events.find((e) => e.name === "allReduce dp")!;
  assert.equal(comm.tid, 1);
  assert.equal(comm.dur, 12_500);
  assert.equal(comm.ts, (performance.timeOrigin + t0) * 1000);
  assert.deepEqual(comm.args, { bytes: 4000 });
});

test("stopTrace() writes the file by rename: a hard link to the old file keeps the old contents, no temporary is left", () => {
  const path = join(dir, "atomic", "t.json");
  startTrace({ path, rank: 1 });
  stopTrace();
  const file = rankTracePath(path, 1);
  const link = join(dir, "atomic", "old-link.json");
  writeFileSync(file, "old");
  linkSync(file, link);
  startTrace({ path, rank: 1 });
  traceSpan("forward", "forward", () => 0);
  stopTrace();
  // Writing in place would have changed the shared inode; a rename gives the name a new one.
  assert.equal(readFileSync(link, "utf8"), "old");
  assert.equal(spans(read(file).traceEvents).length, 1);
  assert.deepEqual(readdirSync(join(dir, "atomic")).sort(), ["old-link.json", "t.json.rank1.json"]);
});

test("mergeTraces() gives each rank its pid and name and keeps every event", () => {
  const path = join(dir, "merge.json");
  const counts: number[] = [];
  for (const rank of [0, 1]) {
    startTrace({ path, rank });
    for (let s = 0; s < 2; s++) {
      traceStep(s);
      traceSpan("forward", "forward", () => sleepMs(1));
      traceComplete("allReduce", "allreduce", performance.now(), 1, { tid: 1 });
    }
    counts.push(read(stopTrace()!).traceEvents.length);
  }
  // A file from another tool: named without a rank, pid taken from its events, no names.
  const foreign = join(dir, "foreign.json");
  writeFileSync(foreign, JSON.stringify([{ name: "x", cat: "other", ph: "X", ts: 1, dur: 2, pid: 5, tid: 0 }]));

  const out = join(dir, "merged", "trace.json");
  const n = mergeTraces([rankTracePath(path, 1), rankTracePath(path, 0), foreign], out);
  const merged = read(out).traceEvents;
  assert.equal(counts[0], 4 + 6);  // metadata + 2 steps x (mark, span, comm)
  assert.equal(n, counts[0]! + counts[1]! + 1 + 1);  // + the foreign event and its process name
  assert.equal(merged.length, n);
  for (const r of [0, 1]) {
    const mine = merged.filter((e) => e.pid === r);
    assert.equal(mine.length, counts[r]);
    assert.equal(mine.filter((e) => e.ph === "X" && e.tid === 1).length, 2);
    assert.equal(mine.filter((e) => e.ph === "i").length, 2);
    assert.deepEqual(mine.find((e) => e.name === "process_name")!.args, { name: `rank ${r}` });
  }
  assert.deepEqual(merged.filter((e) => e.pid === 5).map((e) => [e.name, e.args?.name]), [["x", undefined], ["process_name", "rank 5"]]);
  assert.equal(existsSync(`${out}.tmp-${process.pid}`), false);

  assert.throws(() => mergeTraces([rankTracePath(path, 0), rankTracePath(path, 0)], out), /are both rank 0; pass one file per rank/);
  assert.throws(() => mergeTraces([join(dir, "missing.rank4.json")], out), /trace file .*missing\.rank4\.json not found/);
  const bad = join(dir, "bad.rank2.json");
  writeFileSync(bad, '{"traceEvents": [');
  assert.throws(() => mergeTraces([bad], out), /bad\.rank2\.json: not a valid JSON trace/);
});

test("analyzeTrace() measures step time, merged compute and idle fraction per rank (exact, synthetic)", () => {
  const T0 = 1.7e15;  // µs since the epoch, like real traces: large, but integers stay exact
  const ms = 1000;
  const x = (pid: number, cat: string, start: number, dur: number, tid = 0): TraceEvent => ({ name: cat, cat, ph: "X", ts: T0 + start * ms, dur: dur * ms, pid, tid });
  const mark = (pid: number, step: number, at: number): TraceEvent => ({ name: `step ${step}`, cat: "step", ph: "i", ts: T0 + at * ms, pid, tid: 0, args: { step } });
  const events: TraceEvent[] = [{ name: "process_name", cat: "__metadata", ph: "M", ts: 0, pid: 0, tid: 0, args: { name: "rank 0" } }];
  for (let s = 0; s < 3; s++) {
    const b = 100 * s;
    // rank 0 computes the whole 100 ms step
    events.push(mark(0, s, b), x(0, "forward", b, 60), x(0, "backward", b + 60, 40));
    // rank 1: forward 0-40 (with a nested forward span that must not count twice), backward
    // 50-85, an all-reduce 85-100 on the main thread, and a backward-tagged event on the
    // communication thread that is not compute: 75 ms of 100 -> idle 25%.
    events.push(mark(1, s, b), x(1, "forward", b, 40), x(1, "forward", b + 10, 10), x(1, "backward", b + 50, 35),
      x(1, "allreduce", b + 85, 15), x(1, "backward", b + 40, 10, 1));
  }
  // rank 2: the last step ends at its last event (150 ms); rank 3 has no step marks; rank 4
  // marks the end of its last step too: that mark closes the step and opens none.
  events.push(mark(2, 0, 0), mark(2, 1, 100), x(2, "forward", 0, 120), x(2, "backward", 120, 30));
  events.push(x(3, "forward", 0, 10));
  events.push(mark(4, 0, 0), x(4, "forward", 0, 75), mark(4, 1, 100));

  assert.deepEqual(analyzeTrace(events), [
    { rank: 0, steps: 3, stepMs: 100, computeMs: 100, idleFraction: 0 },
    { rank: 1, steps: 3, stepMs: 100, computeMs: 75, idleFraction: 0.25 },
    { rank: 2, steps: 2, stepMs: 75, computeMs: 75, idleFraction: 0 },
    { rank: 3, steps: 0, stepMs: 0, computeMs: 0, idleFraction: 0 },
    { rank: 4, steps: 1, stepMs: 100, computeMs: 75, idleFraction: 0.25 },
  ]);
  // Skipping the warm-up step leaves the others.
  assert.deepEqual(analyzeTrace(events, { skipSteps: 1 }).slice(0, 3).map((r) => [r.rank, r.steps, r.stepMs, r.idleFraction]),
    [[0, 2, 100, 0], [1, 2, 100, 0.25], [2, 1, 50, 0]]);
  assert.throws(() => analyzeTrace(events, { skipSteps: -1 }), /skipSteps must be an integer >= 0, got -1/);
});

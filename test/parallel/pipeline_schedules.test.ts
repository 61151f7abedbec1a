// Pipeline schedules as pure bookkeeping: every layout of the matrix below is checked for
// completeness (each micro-batch passes every model chunk once each way), for running without
// deadlock under the runtime's execution model, for its activation-memory bound, and for the
// textbook bubble, which the simulation must reproduce exactly. Two small schedules are spelled
// out literally so a change in order is caught even when it stays valid.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  pipelineActions, modelChunkOf, locateModelChunk, simulatePipeline, simulateActionLists, bubbleFraction,
  type PipelineAction, type PipelineScheduleName, type PipelineShape,
} from "../../src/parallel/pipeline/schedules.js";

/** The test matrix as data: p in {1,2,4}, m in {1,2,4,8}; interleaved adds v in {2,3} with m % p == 0. */
const layouts: Array<{ schedule: PipelineScheduleName; shape: PipelineShape }> = [];
for (const p of [1, 2, 4]) {
  for (const m of [1, 2, 4, 8]) {
    layouts.push({ schedule: "gpipe", shape: { stages: p, microBatches: m } });
    layouts.push({ schedule: "1f1b", shape: { stages: p, microBatches: m } });
    if (m % p === 0) for (const v of [2, 3]) layouts.push({ schedule: "interleaved", shape: { stages: p, microBatches: m, virtualStages: v } });
  }
}
const label = ({ schedule, shape }: (typeof layouts)[number]) =>
  `${schedule} p=${shape.stages} m=${shape.microBatches}${shape.virtualStages ? ` v=${shape.virtualStages}` : ""}`;

/** "F2" / "B0.1": kind, micro-batch, and the local chunk when it is not 0. */
const short = (a: PipelineAction) => `${a.kind === "forward" ? "F" : "B"}${a.microBatch}${a.chunk ? `.${a.chunk}` : ""}`;
const order = (schedule: PipelineScheduleName, shape: PipelineShape, stage: number) =>
  pipelineActions(schedule, shape, stage).map(short).join(" ");

test("`pipelineActions()` runs every micro-batch through every model chunk exactly once each way, backward after forward", () => {
  for (const layout of layouts) {
    const { schedule, shape } = layout;
    const p = shape.stages, m = shape.microBatches, v = shape.virtualStages ?? 1;
    const count = new Map<string, number>();
    for (let s = 0; s < p; s++) {
      const done = new Set<string>();
      for (const a of pipelineActions(schedule, shape, s)) {
        const k = modelChunkOf(s, a.chunk, p);
        assert.ok(k < p * v && a.microBatch < m, `${label(layout)} stage ${s}: ${short(a)} out of range`);
        const key = `${a.kind} ${a.microBatch} ${k}`;
        count.set(key, (count.get(key) ?? 0) + 1);
        // The runtime keeps a forward's activations until its backward; the reverse order is meaningless.
        if (a.kind === "backward") assert.ok(done.has(`${a.microBatch} ${k}`), `${label(layout)} stage ${s}: ${short(a)} before its forward`);
        else done.add(`${a.microBatch} ${k}`);
      }
    }
    assert.equal(count.size, 2 * m * p * v, label(layout));
    assert.ok([...count.values()].every((c) => c === 1), `${label(layout)}: an action repeats`);
  }
});

test("`simulatePipeline()` never deadlocks on any layout, with or without communication delay", () => {
  for (const layout of layouts) {
    for (const commTime of [0, 0.5]) {
      const r = simulatePipeline(layout.schedule, layout.shape, { commTime });
      assert.equal(r.timeline.flat().length, 2 * layout.shape.microBatches * layout.shape.stages * (layout.shape.virtualStages ?? 1), label(layout));
      assert.ok(r.idleFraction.every((f) => f >= 0 && f < 1), label(layout));
    }
  }
});

test("`pipelineActions()` keeps at most p - stage micro-batches in flight for 1f1b, while gpipe holds all m", () => {
  for (const layout of layouts.filter((l) => l.schedule !== "interleaved")) {
    const { stages: p, microBatches: m } = layout.shape;
    const r = simulatePipeline(layout.schedule, layout.shape);
    const expected = r.maxInFlight.map((_, s) => (layout.schedule === "gpipe" ? m : Math.min(p - s, m)));
    assert.deepEqual(r.maxInFlight, expected, label(layout));
  }
});

test("`pipelineActions()` keeps Megatron's warmup plus one chunk-forwards in flight for interleaved", () => {
  // The interleaved memory cost: (p-s-1)*2 + (v-1)*p warmup forwards plus the first steady one,
  // capped at m*v, and all m*v when m == p (Megatron's all-warmup case).
  for (const layout of layouts.filter((l) => l.schedule === "interleaved")) {
    const { stages: p, microBatches: m, virtualStages: v = 1 } = layout.shape;
    const r = simulatePipeline(layout.schedule, layout.shape);
    const expected = r.maxInFlight.map((_, s) => (m === p ? m * v : Math.min((p - s - 1) * 2 + (v - 1) * p + 1, m * v)));
    assert.deepEqual(r.maxInFlight, expected, label(layout));
  }
});

test("`simulatePipeline()` reproduces the textbook bubble fraction exactly", () => {
  // Bubble = (makespan - busy) / busy per rank: idle time relative to the ideal compute time,
  // which is Narayanan et al.'s "bubble time fraction" ((p-1)/m, or (p-1)/(m*v) interleaved).
  // Every rank has the same busy time, and with tF = tB the ratio is a ratio of small integers,
  // so it must equal the formula to the last bit. It also holds for tB = 2 tF and 3 tF: these
  // schedules only reorder work inside the same critical path.
  for (const layout of layouts) {
    for (const backwardTime of [1, 2, 3]) {
      const r = simulatePipeline(layout.schedule, layout.shape, { forwardTime: 1, backwardTime, commTime: 0 });
      const expected = bubbleFraction(layout.schedule, layout.shape);
      for (const busy of r.busy) assert.equal((r.makespan - busy) / busy, expected, `${label(layout)} tB=${backwardTime}`);
    }
  }
});

test("`pipelineActions()` gives the literal 1f1b and gpipe orders for p=2, m=4", () => {
  const shape = { stages: 2, microBatches: 4 };
  assert.equal(order("1f1b", shape, 0), "F0 F1 B0 F2 B1 F3 B2 B3");
  assert.equal(order("1f1b", shape, 1), "F0 B0 F1 B1 F2 B2 F3 B3");
  assert.equal(order("gpipe", shape, 0), "F0 F1 F2 F3 B0 B1 B2 B3");
  assert.equal(order("gpipe", shape, 1), "F0 F1 F2 F3 B0 B1 B2 B3");
});

test("`pipelineActions()` gives Megatron's literal interleaved order for p=2, m=4, v=2", () => {
  // Rank 0 warms up with (p-0-1)*2 + (v-1)*p = 4 forwards: micro-batches 0,1 through chunk 0,
  // then the same two through chunk 1. Backwards walk the chunks in reverse (chunk 1 first).
  const shape = { stages: 2, microBatches: 4, virtualStages: 2 };
  assert.equal(order("interleaved", shape, 0), "F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3");
  // Rank 1 holds the last model chunk, so its warmup is (v-1)*p = 2 forwards.
  assert.equal(order("interleaved", shape, 1), "F0 F1 F0.1 B0.1 F1.1 B1.1 F2 B0 F3 B1 F2.1 B2.1 F3.1 B3.1 B2 B3");
  // m == p: Megatron makes everything warmup (all forwards, then all backwards), on every rank.
  assert.equal(order("interleaved", { stages: 2, microBatches: 2, virtualStages: 2 }, 1), "F0 F1 F0.1 F1.1 B0.1 B1.1 B0 B1");
});

test("`pipelineActions()` degenerates at p=1: gpipe is all F then all B, 1f1b alternates, interleaved walks the chunks", () => {
  assert.equal(order("gpipe", { stages: 1, microBatches: 3 }, 0), "F0 F1 F2 B0 B1 B2");
  assert.equal(order("1f1b", { stages: 1, microBatches: 3 }, 0), "F0 B0 F1 B1 F2 B2");
  // Warmup (v-1)*p = 1: each micro-batch's backward of chunk 1 follows the forward that finished it.
  assert.equal(order("interleaved", { stages: 1, microBatches: 2, virtualStages: 2 }, 0), "F0 F0.1 B0.1 F1 B0 F1.1 B1.1 B1");
});

test("`simulatePipeline()` times a small gpipe step literally, with comm delay only between ranks", () => {
  const r = simulatePipeline("gpipe", { stages: 2, microBatches: 1 }, { forwardTime: 1, backwardTime: 2, commTime: 0.5 });
  const times = r.timeline.map((t) => t.map((e) => `${short(e.action)}@${e.start}-${e.end}`).join(" "));
  // Rank 1's backward follows its own forward at once: that dependency never crosses ranks.
  assert.deepEqual(times, ["F0@0-1 B0@5-7", "F0@1.5-2.5 B0@2.5-4.5"]);
  assert.equal(r.makespan, 7);
  assert.deepEqual(r.busy, [3, 3]);
  assert.deepEqual(r.idleFraction, [1 - 3 / 7, 1 - 3 / 7]);
});

test("`modelChunkOf()` and `locateModelChunk()` are inverses over Megatron's interleaving", () => {
  assert.equal(modelChunkOf(1, 2, 4), 9);
  assert.deepEqual(locateModelChunk(9, 4), { stage: 1, chunk: 2 });
  for (let k = 0; k < 12; k++) {
    const { stage, chunk } = locateModelChunk(k, 4);
    assert.equal(modelChunkOf(stage, chunk, 4), k);
  }
});

test("`simulateActionLists()` names the stuck ranks and actions of a deadlocking schedule", () => {
  // Rank 1 wants micro-batch 1 first while rank 0 waits for micro-batch 0's gradient: a cycle.
  const F = (i: number): PipelineAction => ({ kind: "forward", microBatch: i, chunk: 0 });
  const B = (i: number): PipelineAction => ({ kind: "backward", microBatch: i, chunk: 0 });
  assert.throws(
    () => simulateActionLists([[F(0), B(0), F(1), B(1)], [F(1), B(1), F(0), B(0)]], { stages: 2, microBatches: 2 }),
    { name: "ValueError", message: /deadlocks: stage 0 waits at backward\(microBatch=0, chunk=0\).*stage 1 waits at forward\(microBatch=1, chunk=0\)/ },
  );
  // A backward scheduled before its own forward on the same rank can never run either.
  assert.throws(() => simulateActionLists([[B(0), F(0)]], { stages: 1, microBatches: 1 }), /stage 0 waits at backward\(microBatch=0/);
  assert.throws(() => simulateActionLists([[F(0), F(0)]], { stages: 1, microBatches: 1 }), /appears twice/);
  assert.throws(() => simulateActionLists([[F(0)]], { stages: 1, microBatches: 1 }), /expected 2 actions/);
});

test("`pipelineActions()` rejects bad inputs with errors naming the value", () => {
  const cases: Array<[() => unknown, RegExp]> = [
    [() => pipelineActions("1f1b", { stages: 4, microBatches: 8 }, 4), /stage must be an integer in \[0, 3\].*got 4/],
    [() => pipelineActions("1f1b", { stages: 4, microBatches: 8 }, -1), /got -1/],
    [() => pipelineActions("1f1b", { stages: 0, microBatches: 8 }, 0), /stages must be an integer >= 1, got 0/],
    [() => pipelineActions("gpipe", { stages: 2, microBatches: 0 }, 0), /microBatches must be an integer >= 1, got 0/],
    [() => pipelineActions("gpipe", { stages: 2, microBatches: 1.5 }, 0), /got 1.5/],
    [() => pipelineActions("1f1b", { stages: 2, microBatches: 4, virtualStages: 2 }, 0), /virtualStages must be 1 for the "1f1b" schedule, got 2/],
    [() => pipelineActions("interleaved", { stages: 2, microBatches: 4 }, 0), /virtualStages must be an integer >= 2, got 1/],
    [() => pipelineActions("interleaved", { stages: 4, microBatches: 6, virtualStages: 2 }, 0), /multiple of stages.*microBatches=6, stages=4; try microBatches=8/],
    [() => pipelineActions("zb" as PipelineScheduleName, { stages: 2, microBatches: 4 }, 0), /got "zb"/],
    [() => bubbleFraction("interleaved", { stages: 3, microBatches: 4, virtualStages: 2 }), /microBatches=4, stages=3/],
    [() => simulatePipeline("gpipe", { stages: 2, microBatches: 2 }, { backwardTime: -1 }), /backwardTime must be a finite number >= 0, got -1/],
    [() => modelChunkOf(2, 0, 2), /stage must be an integer in \[0, 1\], got 2/],
    [() => locateModelChunk(-1, 2), /model chunk must be an integer >= 0, got -1/],
  ];
  for (const [fn, message] of cases) assert.throws(fn, { name: "ValueError", message });
});

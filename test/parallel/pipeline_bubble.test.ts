// The pipeline bubble, measured from the trace: within each step's "pipeline" span, the time a
// stage spends outside forward and backward, relative to the time it computes, matches
// Narayanan et al.'s bubble time fraction: (p - 1) / m for GPipe and 1F1B, (p - 1) / (m v) for
// interleaved 1F1B, within 5 points, for p = 2 and m in {2, 4, 8}, with the compute of a
// micro-batch held constant (the same micro-batch size whatever m).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../../src/cli/launch.js";
import { bubbleFraction, type PipelineScheduleName } from "../../src/parallel/index.js";
import { rankTracePath, type TraceEvent } from "../../src/core/trace.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

/**
 * The bubble of each rank over the traced steps: (makespan - compute) / compute, where a
 * step's makespan runs from the first stage's start of its "pipeline" span to the last
 * stage's end (ranks share one clock), as the textbook counts it for a flushed pipeline.
 */
function measuredBubbles(ranks: TraceEvent[][]): number[] {
  const spans = ranks.map((ev) => ev.filter((e) => e.ph === "X" && e.name === "pipeline" && e.tid === 0).sort((a, b) => a.ts - b.ts));
  const steps = Math.min(...spans.map((s) => s.length));
  let makespan = 0;
  for (let i = 0; i < steps; i++) {
    const start = Math.min(...spans.map((s) => s[i]!.ts)), end = Math.max(...spans.map((s) => s[i]!.ts + s[i]!.dur!));
    makespan += end - start;
  }
  return ranks.map((ev, r) => {
    let busy = 0;
    const compute = ev.filter((e) => e.ph === "X" && e.tid === 0 && (e.cat === "forward" || e.cat === "backward"));
    for (const s of spans[r]!.slice(0, steps)) for (const c of compute) if (c.ts >= s.ts && c.ts + c.dur! <= s.ts + s.dur!) busy += c.dur!;
    return (makespan - busy) / busy;
  });
}

const CASES: Array<[PipelineScheduleName, number, number]> = [
  ["1f1b", 2, 1], ["1f1b", 4, 1], ["1f1b", 8, 1],
  ["gpipe", 2, 1], ["gpipe", 4, 1], ["gpipe", 8, 1],
  ["interleaved", 2, 2], ["interleaved", 4, 2], ["interleaved", 8, 2],
];

test("the measured bubble matches (p-1)/m (GPipe, 1F1B) and (p-1)/(m v) (interleaved) within 5 points, p = 2, m in {2, 4, 8}", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-bubble-"));
  try {
    const rows: string[] = [];
    for (const [schedule, m, v] of CASES) {
      const path = join(root, `${schedule}-${m}.json`);
      const r = spawnSync("mpirun", mpirunArgs(2, [schedule, String(m), String(v), path], undefined, "test/parallel/_workers/bubble_worker.ts", ["--import", "tsx"]), {
        encoding: "utf8", timeout: 180_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
      });
      assert.equal(r.status, 0, r.stderr);
      const want = bubbleFraction(schedule, { stages: 2, microBatches: m, virtualStages: v });
      const bubbles = measuredBubbles([0, 1].map((rank) => (JSON.parse(readFileSync(rankTracePath(path, rank), "utf8")) as { traceEvents: TraceEvent[] }).traceEvents));
      for (let rank = 0; rank < 2; rank++) {
        const got = bubbles[rank]!;
        rows.push(`${schedule} m=${m} v=${v} rank ${rank}: ${got.toFixed(3)} (formula ${want.toFixed(3)})`);
        assert.ok(Math.abs(got - want) <= 0.05, `${schedule} m=${m} v=${v} rank ${rank}: measured bubble ${got.toFixed(3)}, formula ${want.toFixed(3)}\n${rows.join("\n")}`);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

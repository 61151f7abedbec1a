// Pipeline schedules trade memory for bubble, and the allocator measures it: per stage, GPipe
// holds all m micro-batches' activations at its peak, 1F1B (PipeDream-Flush) at most p - stage
// (Narayanan et al. 2021, §2.2). One micro-batch's stored activations (A) and the transient
// working memory (W) are read off GPipe at two values of m; every other run is then predicted
// as W + k·A and must hold k within 10% of the schedule's count.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

function peaks(schedule: string, m: number): number[] {
  const r = spawnSync("mpirun", mpirunArgs(2, [schedule, String(m)], undefined, "test/parallel/_workers/pp_memory_worker.ts", ["--import", "tsx"]), {
    encoding: "utf8", timeout: 120_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
  });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stdout.trim().split("\n").find((l) => l.includes("\"peaks\""))!;
  return (JSON.parse(line.slice(line.indexOf("{"))) as { peaks: number[] }).peaks;
}

test("peak activation memory per stage: GPipe holds m micro-batches, 1F1B at most p - stage (p = 2)", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const p = 2;
  const g4 = peaks("gpipe", 4), g8 = peaks("gpipe", 8);
  for (let s = 0; s < p; s++) {
    const A = (g8[s]! - g4[s]!) / 4, W = g4[s]! - 4 * A;
    assert.ok(A > 0 && W >= 0, `stage ${s}: one micro-batch stores ${A} bytes, working memory ${W}`);
    const held = (peak: number) => (peak - W) / A;
    const g2 = peaks("gpipe", 2)[s]!;
    assert.ok(Math.abs(held(g2) - 2) <= 0.2, `stage ${s}: GPipe m=2 holds ${held(g2).toFixed(2)} micro-batches, expected 2`);
    for (const m of [4, 8]) {
      const k = held(peaks("1f1b", m)[s]!), want = Math.min(p - s, m);
      assert.ok(Math.abs(k - want) <= 0.1 * want + 0.05, `stage ${s}: 1F1B m=${m} holds ${k.toFixed(2)} micro-batches, expected ${want}`);
    }
  }
});

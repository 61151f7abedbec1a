// ZeRO-3 prefetch: while one block computes, the next block's all-gather runs (forward: the
// following block, backward: the preceding one), waited for with fence() inside the
// synchronous forward. Prefetching changes when parameters arrive, never what they are: the
// same losses and final weights, bit for bit, with prefetch on or off and with activation
// checkpointing (whose replay inside backward must not gather a block twice). Real mpirun, 2 ranks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const worker = "test/parallel/_workers/zero3_worker.ts";

interface Report {
  losses: number[]; evalLoss: number; sum: number; sumSq: number; prefetched: number; onDemand: number;
  peakParams: number; liveParams: number; shardBytes: number; blockBytes: number; layers: number; steps: number;
}

function run(prefetch: boolean, ckpt: boolean): Report {
  const args = [prefetch ? "prefetch" : "no-prefetch", ckpt ? "ckpt" : "no-ckpt"];
  const r = spawnSync("mpirun", mpirunArgs(2, args, undefined, worker, ["--import", "tsx"]), {
    encoding: "utf8", timeout: 120_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
  });
  assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
  const line = r.stdout.split("\n").map((l) => l.replace(/^\[\d+,\d+\]<stdout>:/, "")).find((l) => l.startsWith("{"));
  assert.ok(line, `no report in: ${r.stdout}`);
  return JSON.parse(line) as Report;
}

test("ZeRO-3 prefetches every block's gather in forward and backward, with the same losses and weights as gathering on demand (activation checkpointing too)", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const on = run(true, false), off = run(false, false), onCkpt = run(true, true), offCkpt = run(false, true);
  for (const [name, r] of [["prefetch off", off], ["prefetch + checkpointing", onCkpt], ["checkpointing, prefetch off", offCkpt]] as const) {
    assert.deepEqual(r.losses, on.losses, `${name}: losses`);
    assert.equal(r.evalLoss, on.evalLoss, `${name}: eval loss`);
    assert.equal(r.sum, on.sum, `${name}: final weights (sum)`);
    assert.equal(r.sumSq, on.sumSq, `${name}: final weights (sum of squares)`);
  }
  const { layers: L, steps: S } = on;
  // Each training step gathers the root unit (embeddings, final norm) once, on demand, and
  // every block twice (forward, backward), from prefetches. The evaluation forward: the root
  // on demand, every block prefetched. withFullParams at the end: every unit on demand.
  assert.equal(on.prefetched, S * 2 * L + L, "gathers served by a prefetch");
  assert.equal(on.onDemand, S + 1 + (L + 1), "gathers on demand");
  assert.equal(off.prefetched, 0);
  assert.equal(off.onDemand, S * (1 + 2 * L) + 1 + L + (L + 1));
  // Checkpointing's replay keeps the block gathered for its backward: no extra gathers.
  assert.equal(onCkpt.prefetched, on.prefetched, "checkpointing: prefetched gathers");
  assert.equal(onCkpt.onDemand, on.onDemand, "checkpointing: on-demand gathers");
  assert.equal(offCkpt.onDemand, off.onDemand, "checkpointing without prefetch: on-demand gathers");
  // Memory: a prefetch holds at most one more block than gathering on demand, and nothing
  // stays gathered after the steps (the rank's shard is all that is left).
  assert.ok(on.peakParams - off.peakParams <= 1.1 * on.blockBytes, `prefetch peak ${on.peakParams} B vs ${off.peakParams} B on demand; one block is ${on.blockBytes} B`);
  for (const r of [on, off, onCkpt, offCkpt]) assert.ok(r.liveParams <= 1.05 * r.shardBytes, `live params after the steps ${r.liveParams} B, shard ${r.shardBytes} B`);
});

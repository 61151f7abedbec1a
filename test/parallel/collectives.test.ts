// Collectives under real mpirun jobs (2 and 4 ranks) against per-rank references; the
// single-process identity; and a rank that dies ends the whole job quickly with its rank named.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { randn, zeros } from "../../src/index.js";
import { worldGroup, allReduce, allGather, reduceScatter, broadcast } from "../../src/parallel/index.js";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const worker = "test/parallel/_workers/collectives_worker.ts";

function mpirun(np: number, mode: string, timeout = 120_000) {
  const args = mpirunArgs(np, [], undefined, "").slice(0, -2);  // mpirun flags up to `node <bin>`
  return spawnSync("mpirun", [...args, process.execPath, "--import", "tsx", worker, mode], { encoding: "utf8", timeout, env: { ...process.env, MEGALITH_NUM_THREADS: "1" } });
}

test("collectives are the identity in a single process (MPI never loaded)", () => {
  const g = worldGroup();
  assert.deepEqual([g.rank, g.size], [0, 1]);
  const t = randn([5], { seed: 1 });
  const before = t.data();
  allReduce(t, g, "avg");
  broadcast(t, g);
  assert.deepEqual(t.data(), before);
  const out = zeros([5]);
  allGather(t, out, g);
  assert.deepEqual(out.data(), before);
  reduceScatter(t, out, g);
  assert.deepEqual(out.data(), before);
});

for (const np of [2, 4]) {
  test(`every collective matches its reference on ${np} ranks`, { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
    const r = mpirun(np, "check");
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /collectives ok/);
  });
}

test("a rank that exits mid-run ends the job non-zero, quickly, naming the rank", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const t0 = Date.now();
  const r = mpirun(2, "crash", 60_000);
  const secs = (Date.now() - t0) / 1000;
  assert.notEqual(r.status, 0);
  assert.ok(secs < 30, `job took ${secs} s to end`);
  assert.match(r.stderr + r.stdout, /rank 1 of 2 is exiting with code 3/);
});

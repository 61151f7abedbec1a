// Collectives under real mpirun jobs (2 and 4 ranks) against per-rank references, the
// single-process identity (no MPI at all), async overlap, and failures: a rank that exits or
// is killed ends the job quickly with its rank named, and a collective that waits past its
// timeout reports which ranks never arrived.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { randn, zeros, tensor } from "../../src/index.js";
import {
  worldGroup, splitGroup, allReduce, allReduceAsync, allGather, allGatherAsync, reduceScatter, reduceScatterAsync, broadcast, broadcastAsync,
  allToAll, allToAllAsync, barrier, barrierAsync, fence, send, recv, setCommThreadNice, DeviceMesh,
} from "../../src/parallel/index.js";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const skip = haveMpi ? false : "mpirun or the MPI addon is not available";
const worker = "test/parallel/_workers/collectives_worker.ts";

function mpirun(np: number, mode: string, opts: { timeout?: number; env?: Record<string, string> } = {}) {
  const t0 = Date.now();
  const r = spawnSync("mpirun", mpirunArgs(np, [mode], undefined, worker, ["--import", "tsx"]), {
    encoding: "utf8", timeout: opts.timeout ?? 60_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1", ...opts.env },
  });
  return { ...r, secs: (Date.now() - t0) / 1000, all: `${r.stdout}\n${r.stderr}` };
}

test("every collective is the identity in a single process, and MPI is never loaded", async () => {
  const g = worldGroup();
  assert.deepEqual([g.rank, g.size, g.handle], [0, 1, -1]);
  const t = randn([6], { seed: 1 });
  const before = Array.from(t.data());
  allReduce(t, g, { op: "avg" });
  allReduce(t, g, "max");
  broadcast(t, g, { root: 0 });
  await allReduceAsync(t, g).wait();
  await broadcastAsync(t, g).wait();
  barrier(g);
  await barrierAsync(g).wait();
  assert.deepEqual(Array.from(t.data()), before);
  for (const [name, fn] of [
    ["allGather", (o: typeof t) => allGather(t, o, g)], ["reduceScatter", (o: typeof t) => reduceScatter(t, o, g, { op: "avg" })],
    ["allToAll", (o: typeof t) => allToAll(t, o, g)], ["allGatherAsync", (o: typeof t) => allGatherAsync(t, o, g).wait()],
    ["reduceScatterAsync", (o: typeof t) => reduceScatterAsync(t, o, g).wait()], ["allToAllAsync", (o: typeof t) => allToAllAsync(t, o, g).wait()],
  ] as const) {
    const out = zeros([6]);
    await fn(out);
    assert.deepEqual(Array.from(out.data()), before, name);
  }
  // Sub-groups and meshes of one rank work the same way.
  const mesh = new DeviceMesh({ dp: 1 });
  assert.equal(mesh.group("dp").size, 1);
  assert.equal(splitGroup(g, 0, 0).size, 1);
  assert.equal(process.env.OMPI_COMM_WORLD_SIZE, undefined);
});

test("collectives check their arguments the same way in a single process", () => {
  const g = worldGroup();
  assert.throws(() => allGather(zeros([3]), zeros([4]), g), /allGather: output has 4 elements, expected input's 3 x group size 1/);
  assert.throws(() => reduceScatter(zeros([4]), zeros([4], { dtype: "int32" }), g), /input is float32 but output is int32/);
  assert.throws(() => allReduce(tensor([1], { dtype: "int32" }), g, { op: "avg" }), /avg needs a floating dtype, got int32/);
  assert.throws(() => allReduce(zeros([2, 3]).transpose(0, 1), g), /must be contiguous/);
  assert.throws(() => broadcast(zeros([2]), g, { root: 1 }), /root 1 is not a rank of group "world" \(size 1\)/);
  assert.throws(() => send(zeros([2]), g, 0), /one rank, so there is no peer/);
  assert.throws(() => recv(zeros([2]), g, 0), /one rank, so there is no peer/);
  assert.throws(() => new DeviceMesh({ dp: 2 }), /dp=2 .* = 2\) must equal the number of ranks \(1\)/);
  assert.throws(() => new DeviceMesh({ xp: 1 } as never), /unknown axis "xp"/);
  const z = zeros([4]);
  assert.throws(() => allGather(z, z, g), /input and output share storage/);
  assert.throws(() => setCommThreadNice(g, 25), /nice must be an integer in 0\.\.19 \(or -1 for the default\), got 25/);
  assert.throws(() => setCommThreadNice(g, 1.5), /got 1\.5/);
  setCommThreadNice(g, 0);  // a group of one has no communication thread: a no-op
  fence(g);                 // ... and nothing to wait for
});

for (const np of [2, 4]) {
  test(`every collective, blocking and async, matches its reference on ${np} ranks (world and mesh sub-groups, send/recv checks)`, { skip }, () => {
    const r = mpirun(np, "check");
    assert.equal(r.status, 0, r.all);
    assert.match(r.stdout, /collectives ok/);
  });
}

test("an async all-reduce overlaps with compute while its peer is late", { skip }, () => {
  const r = mpirun(2, "overlap");
  assert.equal(r.status, 0, r.all);
  assert.match(r.stdout, /overlap ok/);
});

for (const mode of ["crash", "kill"] as const) {
  test(`a rank that ${mode === "crash" ? "exits with code 3" : "is killed"} mid-run ends the job non-zero, quickly, naming the rank`, { skip }, () => {
    const r = mpirun(2, mode);
    assert.notEqual(r.status, 0, r.all);
    assert.ok(r.secs < 30, `the job took ${r.secs} s to end`);
    if (mode === "crash") assert.match(r.all, /rank 1 of 2 is exiting with code 3; aborting the job/);
    else assert.match(r.all, /rank 1 .*(exited on signal 9|killed)/i);
  });
}

test("a collective past its timeout names the ranks that never arrived and ends the job", { skip }, () => {
  const r = mpirun(4, "timeout", { env: { MEGALITH_COLLECTIVE_TIMEOUT_S: "1.5" } });
  assert.equal(r.status, 124, r.all);
  assert.ok(r.secs < 40, `the job took ${r.secs} s to end`);
  assert.match(r.all, /allReduce #2 on group "world" \(world ranks 0-3\) has waited \d+\.\d s, past its timeout of 1\.5 s/);
  assert.match(r.all, /ranks that have not arrived at allReduce #2: 1, 3/);
  assert.match(r.all, /rank 1 has not arrived: it is in no call on this group; its last was allReduce #1/);
});

test("a recv past its timeout reports what the sender is doing", { skip }, () => {
  const r = mpirun(2, "recv-timeout");
  assert.equal(r.status, 124, r.all);
  assert.match(r.all, /recv from rank 1 \(tag 5\) on group "world" .*past its timeout of 1 s/);
  assert.match(r.all, /rank 1: it has made no call on this group yet \(it is not inside MPI/);
});

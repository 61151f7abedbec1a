// commStats() counts what each rank contributes per call (only on groups of two or more), and
// the collectives' trace events: blocking calls on the main thread, async ones on the
// communication thread (tid 1). The single-process part always runs; the 2-rank part needs
// mpirun and the MPI addon.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randn, zeros } from "../../src/index.js";
import {
  worldGroup, allReduce, allReduceAsync, allGather, allGatherAsync, reduceScatter, reduceScatterAsync, broadcast, broadcastAsync,
  allToAll, allToAllAsync, barrier, barrierAsync, commStats, resetCommStats, type CommKind,
} from "../../src/parallel/index.js";
import { startTrace, stopTrace, mergeTraces, rankTracePath, type TraceEvent } from "../../src/core/trace.js";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const skip = haveMpi ? false : "mpirun or the MPI addon is not available";
const KINDS: CommKind[] = ["allReduce", "allGather", "reduceScatter", "broadcast", "allToAll", "barrier", "send", "recv"];
const counts = (entries: Partial<Record<CommKind, readonly [number, number]>>) =>
  Object.fromEntries(KINDS.map((k) => [k, { calls: entries[k]?.[0] ?? 0, bytes: entries[k]?.[1] ?? 0 }]));

test("commStats() counts nothing for identity calls in a single process, and they leave no trace events", async () => {
  const g = worldGroup();
  const dir = mkdtempSync(join(tmpdir(), "megalith-stats-"));
  resetCommStats();
  startTrace({ path: join(dir, "t.json"), rank: 0 });
  const t = randn([8], { seed: 1 });
  const out = zeros([8]);
  allReduce(t, g);
  broadcast(t, g);
  allGather(t, out, g);
  reduceScatter(t, out, g);
  allToAll(t, out, g);
  barrier(g);
  for (const w of [allReduceAsync(t, g), broadcastAsync(t, g), allGatherAsync(t, out, g), reduceScatterAsync(t, out, g), allToAllAsync(t, out, g), barrierAsync(g)]) {
    await w.wait();
  }
  const events = (JSON.parse(readFileSync(stopTrace()!, "utf8")) as { traceEvents: TraceEvent[] }).traceEvents;
  assert.deepEqual(commStats(), counts({}));
  assert.deepEqual(events.filter((e) => e.ph !== "M"), []);
  // A snapshot, not the live counters.
  const snap = commStats();
  snap.allReduce.calls = 99;
  assert.equal(commStats().allReduce.calls, 0);
});

test("2 ranks: exact byte counts per call kind, blocking calls on the main thread, async calls on the communication thread", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-stats-"));
  const path = join(dir, "trace.json");
  const r = spawnSync("mpirun", mpirunArgs(2, [path], undefined, "test/parallel/_workers/stats_worker.ts", ["--import", "tsx"]), {
    encoding: "utf8", timeout: 60_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
  });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  type Report = { rank: number; stats: unknown; file: string; seconds: Record<string, number> };
  const reports = [...r.stdout.matchAll(/STATS (\{.*\})/g)].map((m) => JSON.parse(m[1]!) as Report).sort((a, b) => a.rank - b.rank);
  assert.equal(reports.length, 2, r.stdout);

  // 1000 float32 = 4000 bytes each: allReduce the tensor, allGather its whole output (2 x 500),
  // reduceScatter its whole input (1000), send / recv the tensor, barrier nothing.
  const shared = { allReduce: [1, 4000], allGather: [1, 4000], reduceScatter: [1, 4000], barrier: [1, 0] } as const;
  assert.deepEqual(reports[0]!.stats, counts({ ...shared, send: [1, 4000] }));
  assert.deepEqual(reports[1]!.stats, counts({ ...shared, recv: [1, 4000] }));

  for (const rep of reports) {
    assert.equal(rep.file, rankTracePath(path, rep.rank));
    const events = (JSON.parse(readFileSync(rep.file, "utf8")) as { traceEvents: TraceEvent[] }).traceEvents.filter((e) => e.ph === "X");
    const where = (e: TraceEvent) => `${e.name}/${e.cat}/tid${e.tid}`;
    const expected = rep.rank === 0
      ? ["allReduce world/allreduce/tid0", "allGatherAsync world/allgather/tid1", "reduceScatterAsync world/reducescatter/tid1", "sendAsync world/send/tid1", "barrier world/barrier/tid0"]
      : ["allReduce world/allreduce/tid0", "allGatherAsync world/allgather/tid1", "reduceScatterAsync world/reducescatter/tid1", "recv world/recv/tid0", "barrier world/barrier/tid0"];
    assert.deepEqual(events.map(where), expected, `rank ${rep.rank}`);
    for (const e of events) {
      assert.equal(e.pid, rep.rank);
      assert.equal(e.args!.bytes, e.cat === "barrier" ? 0 : 4000, where(e));
      assert.equal(e.args!.group, "world");
    }
    // An async event lasts the seconds its Work reported (clipped only if that reaches back
    // before the call was issued).
    const gather = events.find((e) => e.cat === "allgather")!;
    assert.ok(gather.dur! <= rep.seconds.allGather! * 1e6 + 1 && gather.dur! > 0, `allGather lasted ${gather.dur} µs, Work says ${rep.seconds.allGather} s`);
    const p2p = events.find((e) => e.cat === (rep.rank === 0 ? "send" : "recv"))!;
    assert.deepEqual([p2p.args!.peer, p2p.args!.tag], [1 - rep.rank, 9]);
  }

  // The rank files merge into one timeline, each rank its own pid.
  const merged = join(dir, "merged.json");
  const n = mergeTraces([rankTracePath(path, 0), rankTracePath(path, 1)], merged);
  const all = (JSON.parse(readFileSync(merged, "utf8")) as { traceEvents: TraceEvent[] }).traceEvents;
  assert.equal(all.length, n);
  assert.deepEqual([...new Set(all.map((e) => e.pid))].sort(), [0, 1]);
  assert.equal(all.filter((e) => e.ph === "X" && e.tid === 1).length, 5);
});

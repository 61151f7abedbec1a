// Run on 2 ranks under mpirun by test/parallel/collectives_stats.test.ts, with the trace path
// as its argument: one blocking allReduce of 1000 float32, an async allGather (500 -> 1000),
// an async reduceScatter (1000 -> 500), rank 0 sendAsync / rank 1 recv of 1000 float32 and a
// barrier, all while tracing. Prints this rank's commStats(), the Works' seconds and its trace
// file on one line: "STATS {...}".
import { randn, zeros } from "../../../src/index.js";
import {
  worldGroup, allReduce, allGatherAsync, reduceScatterAsync, sendAsync, recv, barrier, commStats, resetCommStats,
} from "../../../src/parallel/index.js";
import { startTrace, stopTrace } from "../../../src/core/trace.js";

const world = worldGroup();
const fail = (msg: string): never => {
  process.stderr.write(`rank ${world.rank}: FAIL ${msg}\n`);
  process.exit(1);
};
if (world.size !== 2) fail(`run on 2 ranks, got ${world.size}`);
const r = world.rank;
startTrace({ path: process.argv[2]!, rank: r });
resetCommStats();

// Blocking: a span on the main thread. Values checked so the counters follow real traffic.
const a = randn([1000], { seed: 10 + r });
const expected = randn([1000], { seed: 10 }).data().map((v, i) => v + randn([1000], { seed: 11 }).data()[i]!);
allReduce(a, world);
if (Math.abs(a.data()[3]! - expected[3]!) > 1e-5) fail(`allReduce gave ${a.data()[3]}, expected ${expected[3]}`);

// Asynchronous: events on the communication thread once they complete.
const full = zeros([1000]);
const gather = allGatherAsync(randn([500], { seed: 20 + r }), full, world);
await gather.wait();
const part = zeros([500]);
const scatter = reduceScatterAsync(randn([1000], { seed: 30 + r }), part, world);
await scatter.wait();

const msg = zeros([1000]);
let sendSecs = 0;
if (r === 0) {
  const w = sendAsync(randn([1000], { seed: 40 }), world, 1, { tag: 9 });
  await w.wait();
  sendSecs = w.seconds;
} else {
  recv(msg, world, 0, { tag: 9 });
  if (msg.data()[0] !== randn([1000], { seed: 40 }).data()[0]) fail("recv got the wrong data");
}
barrier(world);

const stats = commStats();
const file = stopTrace();
process.stdout.write(`STATS ${JSON.stringify({ rank: r, stats, file, seconds: { allGather: gather.seconds, reduceScatter: scatter.seconds, send: sendSecs } })}\n`);

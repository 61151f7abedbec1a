// Run under mpirun by test/parallel/collectives.test.ts, one mode per job:
//   check    every collective (blocking and async) against a reference each rank computes from
//            the known per-rank seeds; send/recv and its mismatch errors; mesh sub-groups
//   overlap  an async all-reduce whose peer arrives late returns at once, JS computes, then waits
//   crash    rank 1 exits with code 3 mid-run while the others wait in an all-reduce
//   kill     rank 1 is killed (SIGKILL) mid-run
//   timeout  the odd ranks never reach an all-reduce (MEGALITH_COLLECTIVE_TIMEOUT_S is short)
//   recv-timeout  rank 0 waits for a message rank 1 never sends
import { randn, zeros, tensor, empty, type Tensor } from "../../../src/index.js";
import {
  worldGroup, allReduce, allReduceAsync, allGather, allGatherAsync, reduceScatter, reduceScatterAsync, broadcast, broadcastAsync,
  allToAll, allToAllAsync, barrier, barrierAsync, fence, send, sendAsync, recv, recvAsync, DeviceMesh, CommError, type ProcessGroup,
} from "../../../src/parallel/index.js";

const mode = process.argv[2] ?? "check";
const world = worldGroup();
const fail = (msg: string): never => {
  process.stderr.write(`rank ${world.rank}: FAIL ${msg}\n`);
  process.exit(1);
};
function close(actual: Tensor, expected: ArrayLike<number>, what: string, tol = 1e-5): void {
  const a = actual.dtype === "float32" || actual.dtype === "int32" ? actual.data() : actual.to("float32").data();
  if (a.length !== expected.length) fail(`${what}: ${a.length} elements, expected ${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    if (!(Math.abs(a[i]! - expected[i]!) <= tol * (1 + Math.abs(expected[i]!)))) fail(`${what}: element ${i} is ${a[i]}, expected ${expected[i]}`);
  }
}
/** Every rank's tensor for a seed, as plain arrays: what each rank computes its references from. */
const everyRank = (n: number, seed: number, size = world.size) => Array.from({ length: size }, (_, r) => Array.from(randn([n], { seed: seed + r }).data()));
const sumOf = (rows: number[][]) => rows[0]!.map((_, i) => rows.reduce((s, row) => s + row[i]!, 0));
/** Sleeps this thread (no event loop, no MPI progress from JS): a rank that is "busy". */
const sleepMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

async function check(g: ProcessGroup, tagBase: number): Promise<void> {
  const n = 37, P = g.size, r = g.rank;
  // allReduce: sum, avg, max, min on float32; sum on int32; sum and avg on bfloat16
  const rows = everyRank(n, 100 * (tagBase + 1), P);
  const mine = () => randn([n], { seed: 100 * (tagBase + 1) + r });
  const s = mine(); allReduce(s, g); close(s, sumOf(rows), `${g.name} allReduce sum`);
  const a = mine(); allReduce(a, g, { op: "avg" }); close(a, sumOf(rows).map((v) => v / P), `${g.name} allReduce avg`);
  const mx = mine(); allReduce(mx, g, "max"); close(mx, rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!))), `${g.name} allReduce max`);
  const mn = mine(); allReduce(mn, g, "min"); close(mn, rows[0]!.map((_, i) => Math.min(...rows.map((row) => row[i]!))), `${g.name} allReduce min`);
  const ints = tensor(Int32Array.from({ length: n }, (_, i) => r * 1000 + i), { dtype: "int32" });
  allReduce(ints, g);
  close(ints, Array.from({ length: n }, (_, i) => (1000 * P * (P - 1)) / 2 + P * i), `${g.name} allReduce int32 sum`, 0);
  const bf = mine().to("bfloat16");
  allReduce(bf, g, { op: "avg" });
  const bfRows = Array.from({ length: P }, (_, q) => Array.from(randn([n], { seed: 100 * (tagBase + 1) + q }).to("bfloat16").to("float32").data()));
  close(bf, sumOf(bfRows).map((v) => v / P), `${g.name} allReduce bfloat16 avg`, 2e-2);

  // reduceScatter (sum, avg) and allGather, blocking and async
  const m = 5;
  const bigRows = everyRank(m * P, 7000 + tagBase, P);
  const big = randn([m * P], { seed: 7000 + tagBase + r });
  const part = zeros([m]);
  reduceScatter(big, part, g);
  close(part, sumOf(bigRows).slice(r * m, (r + 1) * m), `${g.name} reduceScatter sum`);
  const partAvg = zeros([m]);
  await reduceScatterAsync(big, partAvg, g, { op: "avg" }).wait();
  close(partAvg, sumOf(bigRows).slice(r * m, (r + 1) * m).map((v) => v / P), `${g.name} reduceScatterAsync avg`);
  const gathered = zeros([P, n]);
  allGather(mine(), gathered, g);
  close(gathered, rows.flat(), `${g.name} allGather`);
  const gathered2 = zeros([P * n]);
  await allGatherAsync(mine(), gathered2, g).wait();
  close(gathered2, rows.flat(), `${g.name} allGatherAsync`);

  // broadcast from the last rank, blocking and async
  const root = P - 1;
  const b = r === root ? tensor([1, 2, 3]) : zeros([3]);
  broadcast(b, g, { root });
  close(b, [1, 2, 3], `${g.name} broadcast`);
  const b2 = r === 0 ? tensor([4, 5]) : zeros([2]);
  await broadcastAsync(b2, g, 0).wait();
  close(b2, [4, 5], `${g.name} broadcastAsync`);

  // allToAll: rank q sends chunk j (value 100q + 10j + k) to rank j
  const c = 3;
  const mk = (q: number) => Array.from({ length: P * c }, (_, i) => 100 * q + 10 * Math.floor(i / c) + (i % c));
  const expectA2A = Array.from({ length: P * c }, (_, i) => 100 * Math.floor(i / c) + 10 * r + (i % c));
  const out = zeros([P * c]);
  allToAll(tensor(mk(r)), out, g);
  close(out, expectA2A, `${g.name} allToAll`);
  const out2 = zeros([P * c]);
  await allToAllAsync(tensor(mk(r)), out2, g).wait();
  close(out2, expectA2A, `${g.name} allToAllAsync`);

  // Several async calls in flight, then a blocking one: all complete, in issue order.
  const xs = [0, 1, 2].map((k) => randn([1000], { seed: 9000 + 10 * k + r }));
  const works = xs.map((x) => allReduceAsync(x, g));
  const last = mine();
  allReduce(last, g);  // queues behind the three
  // The FIFO ran the three first, so their buffers hold the sums already (reading them before
  // wait() is only safe here because of that order; calls out of order would have mixed up
  // the reductions across ranks).
  for (let k = 0; k < 3; k++) close(xs[k]!, sumOf(Array.from({ length: P }, (_, q) => Array.from(randn([1000], { seed: 9000 + 10 * k + q }).data()))), `${g.name} queued allReduceAsync ${k}`);
  close(last, sumOf(rows), `${g.name} allReduce after async`);
  await Promise.all(works.map((w) => w.wait()));

  // fence(): synchronous code waits for async calls it cannot await. The peers arrive late
  // (rank 0 sleeps first), so the gathers are still running when the fence is reached.
  if (r === 0) sleepMs(50);
  const ins = [0, 1].map((k) => randn([n], { seed: 9500 + 10 * k + r }));
  const outs = [0, 1].map(() => zeros([P * n]));
  const gathers = ins.map((x, k) => allGatherAsync(x, outs[k]!, g));
  fence(g);
  gathers.forEach((w, k) => {
    if (!w.completed) fail(`${g.name} allGatherAsync ${k} is not completed after fence()`);
    close(outs[k]!, Array.from({ length: P }, (_, q) => Array.from(randn([n], { seed: 9500 + 10 * k + q }).data())).flat(), `${g.name} allGatherAsync ${k} after fence()`);
  });
  await Promise.all(gathers.map((w) => w.wait()));
  await barrierAsync(g).wait();
  barrier(g);
}

async function pointToPoint(g: ProcessGroup): Promise<void> {
  const r = g.rank;
  if (r === 0) send(tensor([[1, 2], [3, 4]]), g, 1, { tag: 7 });
  if (r === 1) {
    const t = zeros([2, 2]);
    recv(t, g, 0, { tag: 7 });
    close(t, [1, 2, 3, 4], "send/recv");
  }
  // A shape mismatch and a dtype mismatch: the receiver gets a CommError naming both sides,
  // and the channel stays usable (the next message arrives intact).
  if (r === 0) {
    send(tensor([1, 2, 3]), g, 1, { tag: 8 });
    send(tensor([1, 2], { dtype: "int32" }), g, 1, { tag: 8 });
    send(tensor([9, 8]), g, 1, { tag: 8 });
  }
  if (r === 1) {
    for (const [t, pattern] of [[zeros([2]), /sent float32 \[3\], this rank expects float32 \[2\]/], [zeros([2]), /sent int32 \[2\], this rank expects float32 \[2\]/]] as const) {
      try {
        recv(t, g, 0, { tag: 8 });
        fail("recv accepted a mismatched tensor");
      } catch (e) {
        const msg = (e as Error).message;
        if (!(e instanceof CommError) || !pattern.test(msg)) fail(`unexpected recv error: ${msg}`);
        if (!/recv from rank 0 .*tag 8/.test(msg)) fail(`recv error does not name the sender and tag: ${msg}`);
      }
    }
    const ok = zeros([2]);
    recv(ok, g, 0, { tag: 8 });
    close(ok, [9, 8], "recv after a mismatch");
  }
  // An exchange where both ranks send first, with a tensor large enough for MPI's rendezvous
  // protocol (blocking sends would deadlock): async sends are posted at once.
  if (r < 2) {
    const peer = 1 - r, n = 1 << 18;
    const mine = randn([n], { seed: 50 + r });
    const theirs = empty([n]);
    const sw = sendAsync(mine, g, peer, { tag: 3 });
    const rw = recvAsync(theirs, g, peer, { tag: 3 });
    await Promise.all([sw.wait(), rw.wait()]);
    close(theirs, Array.from(randn([n], { seed: 50 + peer }).data()), "sendAsync/recvAsync exchange");
  }
  barrier(g);
}

if (mode === "check") {
  await check(world, 0);
  await pointToPoint(world);
  // Sub-groups along mesh axes: every collective again inside each group, checked against
  // references over that group's members only.
  const mesh = world.size === 4 ? new DeviceMesh({ dp: 2, tp: 2 }, world) : new DeviceMesh({ dp: world.size }, world);
  for (const axis of ["tp", "dp"] as const) {
    const g = mesh.group(axis);
    if (g.rank !== mesh.coords[axis]) fail(`${axis} group rank ${g.rank} != mesh coordinate ${mesh.coords[axis]}`);
    const expected = world.size === 4 ? (axis === "tp" ? [0, 1].map((t) => 2 * mesh.coords.dp + t) : [0, 1].map((d) => 2 * d + mesh.coords.tp)) : axis === "tp" ? [world.rank] : [0, 1];
    if (JSON.stringify(g.worldRanks) !== JSON.stringify(expected)) fail(`${axis} group members ${JSON.stringify(g.worldRanks)}, expected ${JSON.stringify(expected)}`);
    const x = tensor([world.rank]);
    allReduce(x, g);
    close(x, [expected.reduce((s, q) => s + q, 0)], `${axis}-group allReduce of world ranks`);
    // The collectives of different groups use different seeds per group coordinate, so a
    // reduction leaking across groups would show.
    if (g.size > 1) await check(g, 10 + (axis === "tp" ? mesh.coords.dp : mesh.coords.tp) + (axis === "dp" ? 5 : 0));
  }
  // Async calls on three communicators at once (each has its own thread), then wait for all.
  const groups = [world, mesh.group("tp"), mesh.group("dp")];
  const bufs = groups.map((_, k) => randn([5000], { seed: 300 + 10 * k + world.rank }));
  const inflight = groups.map((grp, k) => allReduceAsync(bufs[k]!, grp));
  await Promise.all(inflight.map((w) => w.wait()));
  groups.forEach((grp, k) => {
    const members = grp.worldRanks ?? [world.rank];
    close(bufs[k]!, sumOf(members.map((q) => Array.from(randn([5000], { seed: 300 + 10 * k + q }).data()))), `concurrent allReduceAsync on ${grp.name}`);
  });
  barrier(world);
  if (world.rank === 0) process.stdout.write("collectives ok\n");
}

if (mode === "overlap") {
  // Rank 1 arrives 600 ms late. On rank 0, allReduceAsync must return at once and the JS work
  // after it runs while the reduction waits; wait() then delivers the sum.
  const x = randn([4096], { seed: 1 + world.rank });
  if (world.rank === 1) sleepMs(600);
  const t0 = performance.now();
  const work = allReduceAsync(x, world);
  const issued = performance.now() - t0;
  let spins = 0;
  const y = randn([128, 128], { seed: 3 });
  while (performance.now() - t0 < 300) {
    y.matmul(y).dispose();
    spins++;
  }
  const busy = performance.now() - t0;
  if (world.rank === 0 && work.completed) fail(`the all-reduce completed after ${busy.toFixed(0)} ms although rank 1 was asleep`);
  await work.wait();
  const waited = performance.now() - t0;
  close(x, sumOf(everyRank(4096, 1)), "overlapped allReduceAsync");
  if (world.rank === 0) {
    if (issued > 50) fail(`allReduceAsync took ${issued.toFixed(1)} ms to return`);
    if (waited < 500) fail(`wait() resolved after ${waited.toFixed(0)} ms, before the late rank arrived`);
    process.stdout.write(`overlap ok: issued in ${issued.toFixed(2)} ms, ${spins} matmuls in ${busy.toFixed(0)} ms while waiting, done after ${waited.toFixed(0)} ms\n`);
  }
}

if (mode === "crash" || mode === "kill") {
  const t = randn([1000], { seed: world.rank });
  allReduce(t, world);
  if (world.rank === 1) {
    if (mode === "crash") process.exit(3);
    process.kill(process.pid, "SIGKILL");
  }
  allReduce(t, world);  // never completes: rank 1 is gone
  process.exit(0);
}

if (mode === "timeout") {
  const t = randn([1000], { seed: world.rank });
  allReduce(t, world);
  if (world.rank % 2 === 1) sleepMs(60_000);  // "hung": never reaches the next all-reduce
  allReduce(t, world);
  process.exit(0);
}

if (mode === "recv-timeout") {
  if (world.rank === 0) recv(zeros([4]), world, 1, { tag: 5, timeoutS: 1 });
  if (world.rank === 1) sleepMs(60_000);
  process.exit(0);
}

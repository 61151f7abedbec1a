// Run under mpirun by test/parallel/collectives.test.ts. Mode "check": every collective against
// a reference each rank computes from the known per-rank seeds. Mode "crash": rank 1 exits
// with code 3 after one all-reduce while the others wait in the next one.
import { randn, zeros, tensor } from "../../../src/index.js";
import { worldGroup, allReduce, allReduceAsync, allGather, reduceScatter, broadcast, barrier, send, recv, DeviceMesh } from "../../../src/parallel/index.js";

const mode = process.argv[2] ?? "check";
const g = worldGroup();
const fail = (msg: string) => {
  process.stderr.write(`rank ${g.rank}: ${msg}\n`);
  process.exit(1);
};
const close = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) => {
  for (let i = 0; i < b.length; i++) if (Math.abs(a[i]! - b[i]!) > 1e-5 * (1 + Math.abs(b[i]!))) fail(`${what}: element ${i} is ${a[i]}, expected ${b[i]}`);
};

if (mode === "crash") {
  const t = randn([1000], { seed: g.rank });
  allReduce(t, g);
  if (g.rank === 1) process.exit(3);
  allReduce(t, g);  // never completes: rank 1 is gone
  process.exit(0);
}

const n = 37;
const mine = randn([n], { seed: 100 + g.rank });
const all = Array.from({ length: g.size }, (_, r) => randn([n], { seed: 100 + r }).data() as Float32Array);
// allReduce sum / avg / max
const s = mine.clone();
allReduce(s, g, "sum");
close(s.data(), all[0]!.map((_, i) => all.reduce((acc, a) => acc + a[i]!, 0)), "allReduce sum");
const mx = mine.clone();
allReduce(mx, g, "max");
close(mx.data(), all[0]!.map((_, i) => Math.max(...all.map((a) => a[i]!))), "allReduce max");
// async overlaps with compute
const av = mine.clone();
const pending = allReduceAsync(av, g, "avg");
const busy = randn([256, 256], { seed: 1 }).matmul(randn([256, 256], { seed: 2 })).sum().item();
await pending;
if (!Number.isFinite(busy)) fail("compute during async all-reduce");
close(av.data(), all[0]!.map((_, i) => all.reduce((acc, a) => acc + a[i]!, 0) / g.size), "allReduceAsync avg");
// allGather, reduceScatter, broadcast
const gathered = zeros([n * g.size]);
allGather(mine, gathered, g);
close(gathered.data(), all.flatMap((a) => [...a]), "allGather");
const big = randn([4 * g.size], { seed: 200 + g.rank });
const bigs = Array.from({ length: g.size }, (_, r) => randn([4 * g.size], { seed: 200 + r }).data() as Float32Array);
const part = zeros([4]);
reduceScatter(big, part, g);
close(part.data(), [0, 1, 2, 3].map((j) => bigs.reduce((acc, a) => acc + a[g.rank * 4 + j]!, 0)), "reduceScatter");
const b = g.rank === 0 ? tensor([1, 2, 3]) : zeros([3]);
broadcast(b, g, 0);
close(b.data(), [1, 2, 3], "broadcast");
// send/recv with a shape check
if (g.rank === 0) send(tensor([[1, 2], [3, 4]]), g, 1, 7);
if (g.rank === 1) {
  const r = zeros([2, 2]);
  recv(r, g, 0, 7);
  close(r.data(), [1, 2, 3, 4], "send/recv");
}
if (g.rank === 0) send(tensor([1, 2, 3]), g, 1, 8);
if (g.rank === 1) {
  try {
    recv(zeros([2]), g, 0, 8);
    fail("recv accepted a mismatched shape");
  } catch (e) {
    if (!/sender sent shape \[3\].*expects \[2\]/.test((e as Error).message)) fail(`unexpected recv error: ${(e as Error).message}`);
  }
}
// Sub-groups along a mesh axis: with dp=2 x tp=size/2, a tp group sums only its own ranks.
if (g.size === 4) {
  const mesh = new DeviceMesh({ dp: 2, tp: 2 }, g);
  const tp = mesh.group("tp");
  const x = tensor([g.rank]);
  allReduce(x, tp);
  const peers = [0, 1, 2, 3].filter((r) => Math.floor(r / 2) === Math.floor(g.rank / 2));
  close(x.data(), [peers.reduce((a, r) => a + r, 0)], "tp-group allReduce");
}
barrier(g);
if (g.rank === 0) process.stdout.write("collectives ok\n");

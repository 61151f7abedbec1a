// Run under mpirun by bench/comm.ts: Megalith's collectives at the sizes comm_ref.c uses.
import { zeros } from "../src/index.js";
import { worldGroup, allReduce, reduceScatter, allGather, barrier } from "../src/parallel/index.js";

const g = worldGroup();
function bestOf(reps: number, fn: () => void): number {
  let best = Infinity;
  for (let r = 0; r < reps + 1; r++) {
    barrier(g);
    const t0 = performance.now();
    fn();
    const dt = (performance.now() - t0) / 1000;
    if (r > 0) best = Math.min(best, dt);
  }
  return best;
}
const sizes: unknown[] = [];
for (let bytes = 1024; bytes <= 64 * 2 ** 20; bytes *= 16) {
  const n = bytes / 4;
  const a = zeros([n]), part = zeros([n / g.size]), full = zeros([n]);
  const reps = bytes > 2 ** 20 ? 5 : 50;
  const t1 = bestOf(reps, () => allReduce(a, g));
  const t2 = bestOf(reps, () => reduceScatter(a, part, g));
  const t3 = bestOf(reps, () => allGather(part, full, g));
  sizes.push({ bytes, allreduce_gbs: bytes / t1 / 1e9, reducescatter_gbs: bytes / t2 / 1e9, allgather_gbs: bytes / t3 / 1e9 });
  for (const t of [a, part, full]) t.dispose();
}
if (g.rank === 0) process.stdout.write(JSON.stringify({ sizes }) + "\n");

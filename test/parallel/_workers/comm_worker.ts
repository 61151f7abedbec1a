// Run under mpirun (2 ranks) by test/parallel/comm_volume.test.ts: one forward + backward of a
// GPT under a layout, and the bytes the collectives layer counted on this rank, per kind.
// argv: layout ("tp" | "tp_sp" | "pp"), n_layer, micro-batches (pp). Rank 0 prints one JSON line
// per rank's counts (gathered), plus the shape numbers.
import { GPT, tensor, randint, withScope } from "../../../src/index.js";
import { DeviceMesh, parallelize, commStats, resetCommStats, allGather, worldGroup } from "../../../src/parallel/index.js";

const layout = process.argv[2] ?? "tp";
const nLayer = Number(process.argv[3] ?? 2);
const m = Number(process.argv[4] ?? 1);
const B = 2, T = 16, C = 32, V = 301;
const world = worldGroup();
const model = new GPT({ nLayer, nHead: 4, nEmbd: C, blockSize: T, vocabSize: V }, { seed: 3 });
const mesh = new DeviceMesh(layout === "pp" ? { pp: 2 } : { tp: 2 }, world);
const par = parallelize(model, mesh, { sequenceParallel: layout === "tp_sp", pipeline: { schedule: "1f1b" } });
const batches = Array.from({ length: m }, (_, i) => ({
  inputs: randint(0, V, [B, T], { seed: 10 + i, dtype: "int32" }).data() as Int32Array,
  targets: randint(0, V, [B, T], { seed: 20 + i, dtype: "int32" }).data() as Int32Array,
  batchSize: B, blockSize: T,
}));
resetCommStats();
await par.schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / m });
const s = commStats();
const mine = [s.allReduce.bytes, s.allGather.bytes, s.reduceScatter.bytes, s.send.bytes, s.recv.bytes, s.broadcast.bytes];
const all = tensor(new Float32Array(mine.length * world.size));
allGather(tensor(mine), all, world);
void withScope;
if (world.rank === 0) {
  const v = Array.from(all.data() as Float32Array);
  const names = ["allReduce", "allGather", "reduceScatter", "send", "recv", "broadcast"];
  const ranks = [0, 1].map((r) => Object.fromEntries(names.map((n, i) => [n, v[r * names.length + i]])));
  console.log(JSON.stringify({ B, T, C, V, nLayer, m, ranks }));
}

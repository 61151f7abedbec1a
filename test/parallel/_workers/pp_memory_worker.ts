// Run under mpirun (2 ranks) by test/parallel/pipeline_memory.test.ts: peak activation bytes
// per stage (the allocator's "activations" category) over one pipeline step, for a schedule
// and a number of micro-batches. argv: schedule, micro-batches. Rank 0 prints both stages' peaks.
import { GPT, tensor, randint, memoryStats, resetPeakMemory } from "../../../src/index.js";
import { DeviceMesh, parallelize, allGather, worldGroup } from "../../../src/parallel/index.js";

const schedule = (process.argv[2] ?? "1f1b") as "gpipe" | "1f1b";
const m = Number(process.argv[3] ?? 4);
const B = 2, T = 32, C = 64, V = 256;
const world = worldGroup();
const model = new GPT({ nLayer: 4, nHead: 4, nEmbd: C, blockSize: T, vocabSize: V }, { seed: 3 });
const par = parallelize(model, new DeviceMesh({ pp: 2 }, world), { pipeline: { schedule } });
const batches = Array.from({ length: m }, (_, i) => ({
  inputs: randint(0, V, [B, T], { seed: 10 + i, dtype: "int32" }).data() as Int32Array,
  targets: randint(0, V, [B, T], { seed: 20 + i, dtype: "int32" }).data() as Int32Array,
  batchSize: B, blockSize: T,
}));
await par.schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / m });   // warm the allocator
model.zeroGrad();
resetPeakMemory();
const base = memoryStats().live.activations;
await par.schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / m });
const peak = memoryStats().peak.activations - base;
const all = tensor(new Float32Array(world.size));
allGather(tensor([peak]), all, world);
if (world.rank === 0) console.log(JSON.stringify({ schedule, m, peaks: Array.from(all.data() as Float32Array) }));

// Run under mpirun (2 ranks) by bench/bubble.ts: pipeline steps recorded in a Chrome trace
// (argv: schedule, micro-batches, virtual stages, trace path, traced steps).
import { GPT, randint } from "../src/index.js";
import { DeviceMesh, parallelize, worldGroup } from "../src/parallel/index.js";
import { startTrace, stopTrace, traceStep } from "../src/core/trace.js";

const schedule = (process.argv[2] ?? "1f1b") as "gpipe" | "1f1b" | "interleaved";
const m = Number(process.argv[3] ?? 4);
const v = Number(process.argv[4] ?? 1);
const path = process.argv[5]!;
// Compute per micro-batch held constant: the same micro-batch whatever m, layers split evenly.
const B = 2, T = 128, C = 384, V = 256;
const world = worldGroup();
const model = new GPT({ nLayer: 8, nHead: 4, nEmbd: C, blockSize: T, vocabSize: V }, { seed: 3 });
const par = parallelize(model, new DeviceMesh({ pp: 2 }, world), { pipeline: { schedule, virtualStages: v } });
const batches = Array.from({ length: m }, (_, i) => ({
  inputs: randint(0, V, [B, T], { seed: 10 + i, dtype: "int32" }).data() as Int32Array,
  targets: randint(0, V, [B, T], { seed: 20 + i, dtype: "int32" }).data() as Int32Array,
  batchSize: B, blockSize: T,
}));
await par.schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / m });   // warm-up, untraced
model.zeroGrad();
startTrace({ path, rank: world.rank });
const steps = Number(process.argv[6] ?? 7);
for (let step = 0; step < steps; step++) {
  traceStep(step);
  await par.schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / m });
  model.zeroGrad();
}
stopTrace();

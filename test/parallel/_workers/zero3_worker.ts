// Run under mpirun by test/parallel/zero3_prefetch.test.ts: trains a small GPT for a few
// steps with ZeRO-3, prefetch on or off (argv[2]: "prefetch" | "no-prefetch"), activation
// checkpointing on or off (argv[3]: "ckpt" | "no-ckpt"), and rank 0 prints one JSON line:
// the losses, a checksum of the final (gathered) parameters, the gather counters, and the
// largest parameter memory seen during the steps.
import { GPT, tensor, randint, withScope, memoryStats, noGrad } from "../../../src/index.js";
import { worldGroup, allReduce, parallelize, DeviceMesh } from "../../../src/parallel/index.js";

const prefetch = process.argv[2] !== "no-prefetch";
const activationCheckpointing = process.argv[3] === "ckpt";
const world = worldGroup();
const model = new GPT({ nLayer: 3, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 300 }, { seed: 9, activationCheckpointing });
model.train();
const { optimizer, gradSync, withFullParams, fsdp } = parallelize(model, new DeviceMesh({ dp: world.size }, world), {
  zero: 3, zero3Prefetch: prefetch, optimizer: { lr: 3e-3, weightDecay: 0.1 },
});

const losses: number[] = [];
let peakParams = 0;
for (let step = 0; step < 4; step++) {
  gradSync.beforeMicroStep(true);
  const loss = withScope(() => {
    // Each rank its own batch, the same in every run.
    const x = randint(0, 300, [2, 16], { seed: 1000 * step + world.rank, dtype: "int32" });
    const y = randint(0, 300, [2, 16], { seed: 1000 * step + world.rank + 500, dtype: "int32" });
    const { loss } = model.forward(x, y);
    peakParams = Math.max(peakParams, memoryStats().live.params);
    loss!.backward();
    return loss!.item();
  });
  await gradSync.afterBackward(true);
  const t = tensor([loss]);
  allReduce(t, world, "avg");
  losses.push(t.item());
  t.dispose();
  const { clipCoef } = await optimizer.gradNorm(1.0);
  optimizer.step({ gradScale: clipCoef });
  optimizer.zeroGrad();
}
// An evaluation forward (no gradients) prefetches too, and leaves nothing gathered.
const evalLoss = noGrad(() => withScope(() => {
  const x = randint(0, 300, [2, 16], { seed: 77, dtype: "int32" });
  return model.forward(x, x).loss!.item();
}));
await gradSync.afterBackward(true);
let sum = 0, sumSq = 0;
await withFullParams(() => {
  for (const p of model.parameters()) for (const v of p.data()) { sum += v; sumSq += v * v; }
});
const live = memoryStats().live.params;
if (world.rank === 0) {
  const blockBytes = model.h[0]!.parameters().reduce((n, p) => n + p.numel * 4, 0);
  process.stdout.write(JSON.stringify({
    losses, evalLoss, sum, sumSq, prefetched: fsdp!.timings.prefetched, onDemand: fsdp!.timings.gatheredOnDemand,
    peakParams, liveParams: live, shardBytes: fsdp!.shards.shardSize * 4, blockBytes, layers: model.h.length, steps: losses.length,
  }) + "\n");
}

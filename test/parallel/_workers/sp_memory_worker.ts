// Run under mpirun (2 ranks) by test/parallel/sequence_parallel_memory.test.ts: activation
// bytes per transformer layer held after the forward (the allocator's "activations" category;
// an L=4 model minus an L=2 one, halved), single-device vs tp=2 vs tp=2 + sequence parallel.
// argv: recomputation ("selective" | "none"), s, b, h, a. Rank 0 prints the three figures.
import { GPT, randint, withScope, memoryStats } from "../../../src/index.js";
import { DeviceMesh, parallelize, worldGroup } from "../../../src/parallel/index.js";

const ac = process.argv[2] === "none" ? false : "selective" as const;
const [s, b, h, a] = process.argv.slice(3, 7).map(Number) as [number, number, number, number];
const world = worldGroup();

function held(L: number, layout: "single" | "tp" | "sp"): number {
  const model = new GPT({ nLayer: L, nHead: a, nEmbd: h, blockSize: s, vocabSize: 64 }, { activationCheckpointing: ac, seed: 3 });
  if (layout !== "single") parallelize(model, new DeviceMesh({ tp: 2 }, world), { sequenceParallel: layout === "sp" });
  model.train();
  const idx = randint(0, 64, [b, s], { seed: 1, dtype: "int32" }).keep(), tgt = randint(0, 64, [b, s], { seed: 2, dtype: "int32" }).keep();
  const bytes = withScope(() => {
    const before = memoryStats().live.activations;
    const { loss } = model.forward(idx, tgt);
    const n = memoryStats().live.activations - before;
    loss!.backward();
    return n;
  });
  for (const p of model.parameters()) p.dispose();
  idx.dispose();
  tgt.dispose();
  return bytes;
}
const perLayer = (layout: "single" | "tp" | "sp") => (held(4, layout) - held(2, layout)) / 2;
const out = { single: perLayer("single"), tp: perLayer("tp"), sp: perLayer("sp"), sbh: s * b * h };
if (world.rank === 0) console.log(JSON.stringify(out));

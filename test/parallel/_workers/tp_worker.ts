// Run under mpirun by test/parallel/tensor_parallel.test.ts. Every rank builds the same seeded
// GPT twice: a plain single-device reference, and one with tensor (and optionally sequence)
// parallelism applied over the world. Both run forward + backward on the same batch; rank 0
// prints one JSON line with the loss difference and, per parameter, the largest difference
// between this rank's gradient and the matching shard of the reference gradient (max over ranks).
// argv: seed, "sp" | "nosp", vocab size, dropout
import { GPT, tensor, randint, withScope } from "../../../src/index.js";
import { worldGroup, allReduce, applyTensorParallel, shardOfLogical } from "../../../src/parallel/index.js";

const seed = Number(process.argv[2] ?? 5);
const sp = process.argv[3] === "sp";
const vocab = Number(process.argv[4] ?? 301);
const dropout = Number(process.argv[5] ?? 0);
const world = worldGroup();
const cfg = { nLayer: 2, nHead: 4, nEmbd: 32, blockSize: 16, vocabSize: vocab, dropout };
const ref = new GPT(cfg, { seed });
const tp = new GPT(cfg, { seed });
const plan = applyTensorParallel(tp, world, { sequenceParallel: sp });

const x = randint(0, vocab, [3, 16], { seed: seed + 1, dtype: "int32" });
const y = randint(0, vocab, [3, 16], { seed: seed + 2, dtype: "int32" });
// A few ignored targets, as padding would give.
const yv = y.data() as Int32Array;
yv[0] = -100; yv[17] = -100;
const y2 = tensor(yv, { shape: [3, 16], dtype: "int32" });

function run(model: GPT): number {
  return withScope(() => {
    const { loss } = model.forward(x, y2);
    loss!.backward();
    return loss!.item();
  });
}
const rngState = (await import("../../../src/core/rng_state.js"));
rngState.manualSeed(77);
const lr = run(ref);
rngState.manualSeed(77);
const lt = run(tp);

const refParams = new Map(ref.namedParameters());
const diffs: Record<string, number> = {};
for (const [name, p] of tp.namedParameters()) {
  const rp = refParams.get(name);
  if (!rp) throw new Error(`no reference parameter ${name}`);
  const spec = plan.specs.get(name)!;
  const want = shardOfLogical(rp.grad!, spec, world.rank, world.size);
  const wv = want.data() as Float32Array, gv = p.grad!.data() as Float32Array;
  const pw = shardOfLogical(rp, spec, world.rank, world.size).data() as Float32Array, pv = p.data() as Float32Array;
  let d = 0, scale = 0;
  if (wv.length !== gv.length) throw new Error(`${name}: ${gv.length} gradient elements, expected ${wv.length}`);
  for (let i = 0; i < wv.length; i++) {
    d = Math.max(d, Math.abs(wv[i]! - gv[i]!), Math.abs(pw[i]! - pv[i]!));
    scale = Math.max(scale, Math.abs(wv[i]!));
  }
  const t = tensor([d / Math.max(scale, 1e-6)]);
  allReduce(t, world, "max");
  diffs[name] = t.item();
}
if (world.rank === 0) console.log(JSON.stringify({ refLoss: lr, tpLoss: lt, diffs }));

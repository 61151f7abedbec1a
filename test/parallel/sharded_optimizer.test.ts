// The pieces parallelize() applies, in one process: at group size 1 ZeRO-1/2/3 (the sharded
// AdamW, and FSDP's units applied through module hooks) compute exactly what plain AdamW
// computes, bit for bit (ZeRO-1 with accumulation too, ZeRO-3 with activation checkpointing
// too), and within float rounding where they sum in another order (clipping's global norm,
// ZeRO-2/3 accumulating gradient shards per micro-step); the flat
// shard layout cuts parameters so that every rank's shards unshard back into them; and a
// sharded optimizer loads logical moments into its shards.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, randint, withScope, zeros, randn, unshard } from "../../src/index.js";
import { AdamW } from "../../src/optim/index.js";
import { DeviceMesh, FlatShards, ShardedAdamW, parallelize, type ProcessGroup } from "../../src/parallel/index.js";

const cfg = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 64 };
const differing = (a: string[], b: string[]) => a.flatMap((x, i) => (x === b[i] ? [] : [i]));

interface RunOptions { accum?: number; activationCheckpointing?: boolean; maxNorm?: number }

/** Trains 3 steps of `accum` micro-steps (clipping at `maxNorm`); returns the losses, norms and the final weights' bytes. */
async function train(zero: 0 | 1 | 2 | 3, opts: RunOptions = {}): Promise<{ losses: number[]; norms: number[]; weights: string[] }> {
  const { accum = 1, activationCheckpointing = false, maxNorm = Infinity } = opts;
  const gpt = new GPT(cfg, { seed: 3 });
  const par = parallelize(gpt, new DeviceMesh({ dp: 1 }), { zero, activationCheckpointing, optimizer: { lr: 1e-2, weightDecay: 0.1 } });
  const { model, optimizer, gradSync } = par;
  model.train();
  const losses: number[] = [], norms: number[] = [];
  for (let step = 0; step < 3; step++) {
    let sum = 0;
    for (let micro = 0; micro < accum; micro++) {
      gradSync.beforeMicroStep(micro === accum - 1);
      sum += withScope(() => {
        const x = randint(0, 64, [2, 8], { seed: 10 * step + micro, dtype: "int32" });
        const y = randint(0, 64, [2, 8], { seed: 10 * step + micro + 5, dtype: "int32" });
        const loss = model.forward(x, y).loss!;
        loss.div(accum).backward();
        return loss.item();
      });
      await gradSync.afterBackward(micro === accum - 1);
    }
    losses.push(sum / accum);
    const { norm, clipCoef } = await optimizer.gradNorm(maxNorm);
    norms.push(norm);
    optimizer.step({ gradScale: clipCoef });
    optimizer.zeroGrad();
  }
  assert.equal(optimizer.stepCount, 3);
  const weights = await par.withFullParams(() => model.parameters().map((p) => Buffer.from((p.data() as Float32Array).buffer).toString("base64")));
  return { losses, norms, weights };
}

test("`parallelize()` at group size 1: ZeRO-1 (with accumulation), ZeRO-2 and ZeRO-3 (FSDP units, with and without activation checkpointing) equal plain AdamW bit for bit", async () => {
  const ref = await train(0), refAccum = await train(0, { accum: 2 });
  const runs = [
    ["ZeRO-1", refAccum, () => train(1, { accum: 2 })],
    ["ZeRO-2", ref, () => train(2)],
    ["ZeRO-3", ref, () => train(3)],
    ["ZeRO-3 + checkpointing", ref, () => train(3, { activationCheckpointing: true })],
  ] as const;
  for (const [name, want, run] of runs) {
    const got = await run();
    assert.deepEqual(got.losses, want.losses, `${name}: losses`);
    assert.deepEqual(differing(got.weights, want.weights), [], `${name}: parameters whose final bits differ from AdamW's`);
  }
});

test("with clipping and accumulation the sharded optimizer matches AdamW to float rounding (its norm sums shard by shard; ZeRO-2/3 add micro-steps' gradients in another order)", async () => {
  const ref = await train(0, { accum: 2, maxNorm: 0.5 });
  for (const zero of [1, 2, 3] as const) {
    const got = await train(zero, { accum: 2, maxNorm: 0.5, activationCheckpointing: zero === 3 });
    got.norms.forEach((n, i) => assert.ok(Math.abs(n - ref.norms[i]!) <= 1e-5 * ref.norms[i]!, `ZeRO-${zero} step ${i}: norm ${n} vs ${ref.norms[i]}`));
    got.losses.forEach((l, i) => assert.ok(Math.abs(l - ref.losses[i]!) <= 1e-5 * ref.losses[i]!, `ZeRO-${zero} step ${i}: loss ${l} vs ${ref.losses[i]}`));
  }
});

test("`parallelize()` returns plain AdamW and a no-op GradSync for one process without ZeRO, and names what it applied", () => {
  const par = parallelize(new GPT(cfg, { seed: 3 }), new DeviceMesh({ dp: 1 }), { activationCheckpointing: true });
  assert.ok(par.optimizer instanceof AdamW);
  assert.equal(par.fsdp, null);
  assert.deepEqual(par.applied, ["activation checkpointing"]);
  assert.equal(par.model.activationCheckpointing, true);
  const z = parallelize(new GPT(cfg, { seed: 3 }), new DeviceMesh({ dp: 1 }), { zero: 2 });
  assert.ok(z.optimizer instanceof ShardedAdamW);
  assert.deepEqual(z.applied, ["ZeRO-2 (dp=1)"]);
});

test("`FlatShards` cuts units into equal padded shards per rank; `unshard()` of every rank's packed shard gives back each parameter", () => {
  const params = [randn([5, 3], { seed: 1 }), randn([4], { seed: 2 }), randn([7], { seed: 3 }), randn([2, 2], { seed: 4 })];
  const size = 3;
  const shardsOf = (rank: number) => new FlatShards(params, { rank, size, handle: -1 } as ProcessGroup, [[params[1]!, params[2]!]]);
  const layouts = Array.from({ length: size }, (_, r) => shardsOf(r));
  const s0 = layouts[0]!;
  // The root unit (parameters 0 and 3: 19 elements) comes first, padded to 21 = 3 x 7; then 11 -> 12 = 3 x 4.
  assert.deepEqual(s0.units.map((u) => [u.params, u.numel, u.shard]), [[[0, 3], 19, 7], [[1, 2], 11, 4]]);
  assert.equal(s0.shardSize, 11);
  const buffers = layouts.map((s) => {
    const buf = zeros([s.shardSize]);
    for (const u of s.units) {
      const view = s.shardOf(buf, u);
      s.pack(u, view, (i) => params[i]!);
      view.dispose();
    }
    return buf.data() as Float32Array;
  });
  const layout = s0.layout();
  const named = { ...layout, units: layout.units.map((u) => ({ ...u, params: u.params.map(String) })) };
  const full = unshard(named, buffers);
  params.forEach((p, i) => assert.deepEqual([...full.get(String(i))!], [...(p.data() as Float32Array)], `parameter ${i}`));
});

test("`ShardedAdamW.loadStateDict()` keeps this rank's slice of logical moments; `stateDict()` gives them back in the sharded form", () => {
  const gpt = new GPT(cfg, { seed: 3 });
  const params = gpt.parameters();
  const opt = new ShardedAdamW(new FlatShards(params, { rank: 0, size: 1, handle: -1 }, gpt.h.map((b) => b.parameters())), {}, { stage: 1 });
  const m = params.map((p, i) => randn(p.shape, { seed: 100 + i })), v = params.map((p, i) => randn(p.shape, { seed: 200 + i }));
  opt.loadStateDict({ state: { step: 7, lr: 0.5, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0 }, moments: { exp_avg: m, exp_avg_sq: v } });
  assert.equal(opt.stepCount, 7);
  assert.equal(opt.lr, 0.5);
  const sd = opt.stateDict();
  assert.ok(sd.shard && !sd.moments);
  const layout = sd.shard.layout;
  const named = { ...layout, units: layout.units.map((u) => ({ ...u, params: u.params.map(String) })) };
  for (const [key, want] of [["exp_avg", m], ["exp_avg_sq", v]] as const) {
    const got = unshard(named, [sd.shard.tensors[key]!.data() as Float32Array]);
    want.forEach((t, i) => assert.deepEqual([...got.get(String(i))!], [...(t.data() as Float32Array)], `${key} ${i}`));
  }
});

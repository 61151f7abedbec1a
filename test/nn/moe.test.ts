// The mixture-of-experts layer (src/nn/moe.ts) beyond the PyTorch fixtures
// (test/models/moe_pytorch.test.ts): the dispatch order, the grouped GEMM against a loop over
// the experts' own forward, no dropping with unbounded capacity, the float32 router under
// bf16 autocast, checkpoints with expert names, and the `model.moe` config key.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MoE, planDispatch } from "../../src/nn/index.js";
import { GPT, resolveGPTConfig, type GPTConfig } from "../../src/models/index.js";
import { tensor, randn, withScope, withAutocast, type Tensor } from "../../src/tensor/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { ValueError } from "../../src/core/errors.js";
import { applyOverrides, moeConfigOf, validateConfig } from "../../src/train/config.js";
import { tempDir } from "../models/_helpers.js";

test("planDispatch() fills first choices in token order, then second choices, and drops the overflow", () => {
  // 4 tokens, k = 2, 2 experts, capacity factor 0.5: ceil(0.5 * 4 * 2 / 2) = 2 slots per expert.
  // choices (first, second): t0 (0, 1), t1 (0, 1), t2 (0, 1), t3 (1, 0)
  const plan = planDispatch(Int32Array.from([0, 1, 0, 1, 0, 1, 1, 0]), 4, 2, 2, 0.5);
  assert.equal(plan.capacity, 2);
  // Expert 0: t0, t1 (first choices; t2's first choice overflows). Expert 1: t3 (first), then t0 (second).
  assert.deepEqual([...plan.slotToken], [0, 1, 3, 0]);
  // choice -> slot (E * S = 4 means dropped): t0 (0, 3), t1 (1, -), t2 (-, -), t3 (2, -)
  assert.deepEqual([...plan.choiceSlot], [0, 3, 1, 4, 4, 4, 2, 4]);
  assert.equal(plan.stats.droppedFraction, 4 / 8);
  assert.deepEqual(plan.stats.expertFraction, [0.5, 0.5]);
});

/** The reference: every token through its experts' own forward, one token at a time. */
function loopReference(moe: MoE, x: Tensor, capacityFactor: number): Float32Array {
  return noGrad(() => withScope(() => {
    const [N, C] = x.shape as [number, number];
    const logits = moe.gate.forward(x);
    const probs = logits.softmax(-1);
    const top = probs.topk(moe.topK, -1);
    const vals = top.values.data() as Float32Array, idx = top.indices.data() as Int32Array;
    const plan = planDispatch(idx, N, moe.topK, moe.numExperts, capacityFactor);
    const out = new Float32Array(N * C);
    for (let n = 0; n < N; n++) {
      const norm = moe.topK === 1 ? 1 : vals[n * 2]! + vals[n * 2 + 1]!;
      for (let j = 0; j < moe.topK; j++) {
        if (plan.choiceSlot[n * moe.topK + j] === plan.slotToken.length) continue;  // dropped
        const y = moe.experts[idx[n * moe.topK + j]!]!.forward(x.narrow(0, n, 1)).data() as Float32Array;
        const g = vals[n * moe.topK + j]! / norm;
        for (let c = 0; c < C; c++) out[n * C + c]! += g * y[c]!;
      }
    }
    return out;
  }));
}

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-30);
}

for (const topK of [1, 2] as const) {
  test(`MoE.forward() (top-${topK}) as one grouped GEMM equals a loop over the experts' own forward, with and without dropping`, () => {
    const moe = new MoE({ nEmbd: 8, numExperts: 4, topK, capacityFactor: 0.75, evalCapacityFactor: Infinity });
    noGrad(() => { for (const p of moe.parameters()) p.copy_(randn(p.shape, { seed: p.numel })); });
    const x = randn([40, 8], { seed: 5 });
    for (const training of [true, false]) {
      if (training) moe.train(); else moe.eval();
      const y = noGrad(() => moe.forward(x));
      const ref = loopReference(moe, x, training ? 0.75 : Infinity);
      const e = maxRelDiff(y.data(), ref);
      assert.ok(e < 1e-5, `${training ? "train" : "eval"}: relative error ${e.toExponential(2)}`);
      const dropped = moe.lastStats!.droppedFraction;
      if (training) assert.ok(dropped > 0, "capacity factor 0.75 must drop some choices");
      else assert.equal(dropped, 0, "unbounded capacity drops nothing");
      moe.takeLosses();
    }
  });
}

test("MoE top-2 with capacity factor Infinity drops nothing, and its routing statistics sum to 1", () => {
  const moe = new MoE({ nEmbd: 8, numExperts: 3, topK: 2, capacityFactor: Infinity });
  const y = noGrad(() => moe.forward(randn([2, 16, 8], { seed: 9 })));
  assert.deepEqual(y.shape, [2, 16, 8]);
  const s = moe.lastStats!;
  assert.equal(s.droppedFraction, 0);
  assert.equal(s.capacity, 32);
  assert.ok(Math.abs(s.expertFraction.reduce((a, b) => a + b, 0) - 1) < 1e-12);
});

test("MoE routes in float32 under bf16 autocast: the same choices and the same float32 router losses", () => {
  const moe = new MoE({ nEmbd: 16, numExperts: 4, topK: 2, capacityFactor: 1.0 });
  const x = randn([64, 16], { seed: 2 });
  const run = (dtype: "bfloat16" | null) => withAutocast(dtype, () => {
    const y = noGrad(() => moe.forward(x));
    const l = moe.takeLosses()!;
    return { y: y.to("float32").data() as Float32Array, aux: l.aux, z: l.z, stats: moe.lastStats! };
  });
  const f32 = run(null), bf16 = run("bfloat16");
  assert.equal(bf16.aux.dtype, "float32");
  assert.equal(bf16.aux.item(), f32.aux.item());
  assert.equal(bf16.z.item(), f32.z.item());
  assert.deepEqual(bf16.stats, f32.stats);
  assert.ok(maxRelDiff(bf16.y, f32.y) < 3e-2, "bf16 experts stay close to float32");
});

const MOE_GPT: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 32, moe: { numExperts: 4, topK: 2, every: 2 } };

test("GPT with model.moe names its experts Mixtral-style and round-trips through savePretrained()", async (t) => {
  const model = new GPT(MOE_GPT);
  const names = model.namedParameters().map(([n]) => n);
  assert.ok(names.includes("h.0.mlp.c_fc.weight"), "block 0 stays dense with every=2");
  for (const n of ["h.1.mlp.gate.weight", "h.1.mlp.experts.0.c_fc.weight", "h.1.mlp.experts.3.c_proj.bias"]) assert.ok(names.includes(n), n);
  assert.ok(!names.includes("h.1.mlp.gate.bias"), "the router has no bias");
  const dir = tempDir(t);
  await model.savePretrained(dir);
  const loaded = await GPT.fromPretrained(dir);
  assert.deepEqual(loaded.config.moe, resolveGPTConfig(MOE_GPT).moe);
  model.eval();
  loaded.eval();
  const idx = tensor(Int32Array.from({ length: 12 }, (_, i) => (i * 7) % 32), { shape: [2, 6], dtype: "int32" });
  const a = noGrad(() => model.forward(idx).logits.data()), b = noGrad(() => loaded.forward(idx).logits.data());
  assert.deepEqual(b, a);
});

test("GPT.forward() with targets reports lmLoss, auxLoss and zLoss, and loss = lmLoss + coefficients x router losses", () => {
  const model = new GPT({ ...MOE_GPT, moe: { numExperts: 4, topK: 1, auxLossCoef: 0.5, zLossCoef: 0.25 } });
  const idx = tensor(Int32Array.from({ length: 16 }, (_, i) => (i * 5) % 32), { shape: [2, 8], dtype: "int32" });
  const out = model.forward(idx, idx);
  const want = out.lmLoss!.item() + 0.5 * out.auxLoss!.item() + 0.25 * out.zLoss!.item();
  assert.ok(Math.abs(out.loss!.item() - want) < 1e-5);
  assert.ok(out.auxLoss!.item() >= 1 - 1e-6, "the balancing loss is at least 1 (its value at perfect balance)");
  const noTargets = model.forward(idx);
  assert.equal(noTargets.auxLoss, undefined);
  assert.throws(() => new GPT({ ...MOE_GPT, moe: { numExperts: 4, topK: 3 as 2 } }), /moe\.topK must be 1 or 2/);
  const ac = new GPT(MOE_GPT, { activationCheckpointing: true });
  assert.throws(() => ac.forward(idx, idx), /full activation checkpointing/);
});

const minimal = () => ({
  out_dir: "runs/x",
  model: { n_layer: 4, n_head: 2, n_embd: 32, block_size: 32 },
  train: { max_steps: 10 },
});

function rejects(raw: unknown, ...patterns: RegExp[]): void {
  assert.throws(() => validateConfig(raw), (e: unknown) => {
    assert.ok(e instanceof ValueError, `expected ValueError, got ${String(e)}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

test("the model.moe config key: defaults, moeConfigOf(), and errors that name the key", () => {
  assert.equal(validateConfig(minimal()).model.moe, null);
  const c = validateConfig(applyOverrides({ ...minimal(), model: { ...minimal().model, moe: null } }, ["model.moe.num_experts=8", "model.moe.top_k=2"]));
  assert.deepEqual(c.model.moe, {
    num_experts: 8, top_k: 2, capacity_factor: 1.25, eval_capacity_factor: 2.0, aux_loss_coef: 0.01, z_loss_coef: 0.001, every: 1, router_jitter: 0,
  });
  assert.deepEqual(moeConfigOf(c), {
    numExperts: 8, topK: 2, capacityFactor: 1.25, evalCapacityFactor: 2.0, auxLossCoef: 0.01, zLossCoef: 0.001, every: 1, routerJitter: 0,
  });
  const withMoE = (moe: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({ ...minimal(), ...extra, model: { ...minimal().model, moe } });
  rejects(withMoE({ num_experts: 8, top_k: 3 }), /model\.moe\.top_k/);
  rejects(withMoE({ top_k: 1 }), /model\.moe\.num_experts/);
  rejects(withMoE({ num_experts: 8, top_k: 1, capacity_factor: 0 }), /model\.moe\.capacity_factor/);
  rejects(withMoE({ num_experts: 8, top_k: 1, router_jitter: 1 }), /model\.moe\.router_jitter/);
  rejects(withMoE({ num_experts: 8, top_k: 1, experts: 2 }), /model\.moe.*experts/);
  rejects(withMoE({ num_experts: 1, top_k: 2 }), /model\.moe\.top_k: 2 exceeds model\.moe\.num_experts \(1\)/);
  rejects(withMoE({ num_experts: 4, top_k: 1, every: 5 }), /model\.moe\.every: 5 exceeds model\.n_layer \(4\)/);
  assert.equal(validateConfig(withMoE({ num_experts: 4, top_k: 1 }, { parallel: { tp: 2, pp: 2 } })).parallel.pp, 2, "tp and pp compose with MoE");
  rejects(withMoE({ num_experts: 4, top_k: 1 }, { parallel: { tp: 2, sp: true } }), /model\.moe: sequence parallelism/);
  rejects(withMoE({ num_experts: 4, top_k: 1 }, { parallel: { dp: 2, ep: 2, pp: 2 } }), /parallel\.ep: .*tensor or pipeline parallelism/);
  rejects(withMoE({ num_experts: 4, top_k: 1 }, { train: { max_steps: 10, activation_checkpointing: "full" } }), /model\.moe: full activation checkpointing/);
  assert.equal(validateConfig(withMoE({ num_experts: 4, top_k: 1 }, { train: { max_steps: 10, activation_checkpointing: "selective" } })).model.moe!.top_k, 1);
});

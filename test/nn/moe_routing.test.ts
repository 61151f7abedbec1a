// Routing behaviour of the mixture-of-experts layer (src/nn/moe.ts) in training mode, the
// issue's two checks: top-2 with unbounded capacity drops nothing, and at capacity factor 1.25
// the dropped share of a skewed router is reported, in RoutingStats and in the trainer's MoE
// metrics. "Unbounded" is what a user can write: JSON has no Infinity, so the config takes any
// capacity_factor >= num_experts / top_k (S = min(N, ceil(cf N k / E)) reaches the token
// count N, and no expert can receive more than N choices); the layer also takes Infinity.
//
// The routers are skewed by construction so that every token picks expert 0 first and
// expert 1 second, whatever the (random) inputs: drops are then certain at 1.25, and their
// count is known in closed form.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MoE, type Linear } from "../../src/nn/index.js";
import { GPT } from "../../src/models/index.js";
import { randn, randint, withScope, type Tensor } from "../../src/tensor/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { applyOverrides, moeConfigOf, validateConfig } from "../../src/train/config.js";
import { MoEMetrics } from "../../src/train/_moe_metrics.js";

const E = 4, K = 2;

/**
 * Gate rows that make expert 0 every token's first choice and expert 1 its second, for inputs
 * whose features all sit near `shift`: logit_e = w_e . x, with w_0 = 0.5, w_1 = 0.25 on every
 * feature and small random rows for the others.
 */
function skewGate(gate: Tensor, seed: number): void {
  noGrad(() => {
    gate.copy_(randn(gate.shape, { seed }).mul(0.02));
    gate.narrow(0, 0, 1).fill_(0.5);
    gate.narrow(0, 1, 1).fill_(0.25);
  });
}

/** Dropped share of N * k choices when `routed[e]` choices go to expert e and each has S slots. */
function expectedDropped(routed: number[], N: number, k: number, capacityFactor: number): number {
  const S = Math.min(N, Math.ceil((capacityFactor * N * k) / routed.length));
  return routed.reduce((d, r) => d + Math.max(0, r - S), 0) / (N * k);
}

/** A training-mode forward and backward of `moe` on x; returns the output and the input's gradient. */
function trainStep(moe: MoE, x: Tensor): { y: Float32Array; dx: Float32Array } {
  return withScope(() => {
    const xin = x.detach().requiresGrad_();
    const y = moe.forward(xin);                                                 // (B, T, C)
    const { aux, z } = moe.takeLosses()!;
    y.square().sum().add(aux.mul(0.01)).add(z.mul(0.001)).backward();
    return { y: y.data() as Float32Array, dx: xin.grad!.data() as Float32Array };
  });
}

test("`MoE.forward()` top-2 in training mode with capacity factor Infinity (or num_experts / top_k) drops nothing, even when one expert is every token's first choice", () => {
  const C = 16, B = 3, T = 20, N = B * T;
  const x = randn([B, T, C], { seed: 11 }).mul(0.5).add(2);                    // (B, T, C), features near 2
  const runs = [Infinity, E / K, 1.25].map((cf) => {
    const moe = new MoE({ nEmbd: C, numExperts: E, topK: K, capacityFactor: cf });
    noGrad(() => { for (const [name, p] of moe.namedParameters()) p.copy_(randn(p.shape, { seed: 100 + name.length * 7 + p.numel }).mul(0.2)); });
    skewGate(moe.gate.weight, 3);
    moe.train();
    assert.equal(moe.training, true);
    const out = trainStep(moe, x);
    return { cf, out, stats: moe.lastStats!, grads: moe.experts.map((e) => (e.c_fc as Linear).weight.grad) };
  });
  const [inf, atEk, tight] = runs as [typeof runs[0], typeof runs[0], typeof runs[0]];
  // The skew holds: every token's choices are experts 0 and 1.
  assert.deepEqual(inf.stats.expertFraction, [0.5, 0.5, 0, 0]);
  for (const r of [inf, atEk]) {
    assert.equal(r.stats.droppedFraction, 0, `capacity factor ${r.cf}: nothing dropped`);
    assert.equal(r.stats.capacity, N, `capacity factor ${r.cf}: one slot per token per expert`);
    assert.equal(r.stats.tokens, N);
    // Every token reached both of its experts, so each output row is a real expert mix (not the
    // residual-only zero row a dropped token gets), and the gradient reaches the used experts.
    for (let n = 0; n < N; n++) {
      const row = r.out.y.subarray(n * C, (n + 1) * C);
      assert.ok(row.some((v) => v !== 0), `capacity factor ${r.cf}: token ${n} has an output`);
    }
    assert.ok(r.grads[0] && r.grads[1], "experts 0 and 1 get gradients");
    assert.ok((r.grads[0]!.data() as Float32Array).some((v) => v !== 0));
  }
  // Infinity and num_experts / top_k are the same layer: same outputs and input gradients.
  assert.deepEqual(atEk.out.y, inf.out.y);
  assert.deepEqual(atEk.out.dx, inf.out.dx);
  // At 1.25 the same router overflows: S = ceil(1.25 * 60 * 2 / 4) = 38 slots, 60 choices each
  // for experts 0 and 1, so 2 x 22 of the 120 choices are dropped, and the dropped tokens' rows differ.
  assert.equal(tight.stats.capacity, 38);
  assert.equal(tight.stats.droppedFraction, (2 * 22) / 120);
  assert.equal(tight.stats.droppedFraction, expectedDropped([N, N, 0, 0], N, K, 1.25));
  assert.notDeepEqual(tight.out.y, inf.out.y);
});

test("`RoutingStats.droppedFraction` at capacity factor 1.25 matches the per-expert overflow of the router's choices on random inputs", () => {
  const C = 8, N = 200;
  // A milder skew than above: random gate plus a bias towards expert 0 (features near 1), so
  // the choices are mixed and the expected drop comes from counting them.
  const moe = new MoE({ nEmbd: C, numExperts: E, topK: K, capacityFactor: 1.25 });
  noGrad(() => {
    moe.gate.weight.copy_(randn(moe.gate.weight.shape, { seed: 21 }));
    const row0 = moe.gate.weight.narrow(0, 0, 1);
    row0.copy_(row0.add(0.6));
  });
  moe.train();
  const x = randn([N, C], { seed: 22 }).add(1);                                 // (N, C)
  trainStep(moe, x);
  const s = moe.lastStats!;
  // Recount the choices from the router itself: its top-2 experts per token.
  const routed = noGrad(() => withScope(() => {
    const idx = moe.gate.forward(x).softmax(-1).topk(K, -1).indices.data() as Int32Array;
    const r = new Array<number>(E).fill(0);
    for (const e of idx) r[e]!++;
    return r;
  }));
  assert.deepEqual(s.expertFraction, routed.map((r) => r / (N * K)));
  const want = expectedDropped(routed, N, K, 1.25);
  assert.ok(want > 0, `the skewed router overflows expert 0 (routed ${routed.join(", ")}, capacity ${s.capacity})`);
  assert.ok(Math.abs(s.droppedFraction - want) < 1e-12, `dropped ${s.droppedFraction}, expected ${want}`);
});

/** A GPT whose MoE routers all send every token to experts 0 then 1 (features near 2 after ln_2). */
function skewedGPT(capacityFactor: number): { model: GPT; cfgCapacity: number } {
  const raw = applyOverrides(
    { out_dir: "runs/x", model: { n_layer: 2, n_head: 2, n_embd: 16, block_size: 16, vocab_size: 64 }, train: { max_steps: 1 } },
    [`model.moe={"num_experts":${E},"top_k":${K}}`, `model.moe.capacity_factor=${capacityFactor}`],
  );
  const c = validateConfig(raw);
  const m = c.model;
  const model = new GPT({ nLayer: m.n_layer, nHead: m.n_head, nEmbd: m.n_embd, blockSize: m.block_size, vocabSize: m.vocab_size, moe: moeConfigOf(c) }, { seed: 5 });
  for (const [i, b] of model.h.entries()) {
    // ln_2's output has zero mean over features; its bias moves every feature to about 2.
    noGrad(() => b.ln_2.bias!.fill_(2));
    skewGate((b.mlp as MoE).gate.weight, 40 + i);
  }
  return { model, cfgCapacity: c.model.moe!.capacity_factor };
}

test("a GPT training step reports the dropped fraction in `MoEMetrics` at capacity_factor 1.25, and none at a config capacity_factor of num_experts / top_k or 1e9", () => {
  const B = 2, T = 16, N = B * T;
  const idx = randint(0, 64, [B, T], { seed: 7 }), tgt = randint(0, 64, [B, T], { seed: 8 });
  const results = [1.25, E / K, 1e9].map((cf) => {
    const { model, cfgCapacity } = skewedGPT(cf);
    assert.equal(cfgCapacity, cf, "the config keeps the value given with --set");
    model.train();
    const metrics = new MoEMetrics(model);
    withScope(() => {
      const out = model.forward(idx, tgt);
      metrics.observe(out);
      out.loss!.backward();
    });
    return { cf, summary: metrics.summary() };
  });
  for (const { cf, summary } of results) {
    assert.equal(summary.moe!.length, 2, "both blocks hold experts");
    assert.ok(Number.isFinite(summary.aux_loss) && summary.aux_loss! > 0);
    for (const l of summary.moe!) {
      assert.deepEqual(l.expert_fraction, [0.5, 0.5, 0, 0], `${l.layer}: the skew holds`);
      // 1.25: S = ceil(1.25 * 32 * 2 / 4) = 20 slots, 32 choices each for experts 0 and 1.
      const want = cf === 1.25 ? (2 * (N - 20)) / (2 * N) : 0;
      assert.equal(l.dropped_fraction, want, `capacity_factor ${cf}, ${l.layer}: dropped ${l.dropped_fraction}, expected ${want}`);
    }
  }
});

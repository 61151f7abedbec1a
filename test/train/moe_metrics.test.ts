// An MoE model's training metrics: metrics.jsonl carries the language-model loss and the
// router's aux and z losses apart (the logged loss is their weighted sum), and per MoE layer
// the expert token fractions (summing to 1) and the dropped fraction; a dense model logs none
// of them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Trainer } from "../../src/train/trainer.js";
import type { GPT } from "../../src/models/index.js";
import { tempDir, tinyConfig, tinyData, readMetrics } from "./_helpers.js";

test("`Trainer` logs lm_loss, aux_loss, z_loss and per-layer expert fractions and dropped fraction for an MoE model", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const moe = { num_experts: 4, top_k: 2, capacity_factor: 1.0, aux_loss_coef: 0.01, z_loss_coef: 0.001, every: 1 };
  const tr = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 3, grad_accum_steps: 2 }, model: { moe } }), { log: false });
  await tr.setup();
  await tr.run();
  const steps = readMetrics(dir).filter((m) => m.split === undefined && m.skipped === undefined);
  assert.equal(steps.length, 3);
  for (const m of steps) {
    const lm = m.lm_loss as number, aux = m.aux_loss as number, z = m.z_loss as number;
    assert.ok(Number.isFinite(lm) && aux > 0 && z > 0, `step ${m.step}: lm ${lm}, aux ${aux}, z ${z}`);
    // The logged loss is the total the trainer backpropagates (mean over micro-batches).
    assert.ok(Math.abs((m.loss as number) - (lm + 0.01 * aux + 0.001 * z)) < 1e-4, `step ${m.step}: loss ${m.loss} vs ${lm} + 0.01 x ${aux} + 0.001 x ${z}`);
    const layers = m.moe as Array<{ layer: string; expert_fraction: number[]; dropped_fraction: number }>;
    assert.equal(layers.length, (tr.model as GPT).config.nLayer, "every block has an MoE layer (every = 1)");
    for (const l of layers) {
      assert.match(l.layer, /^h\.\d+\.mlp$/);
      assert.equal(l.expert_fraction.length, 4);
      assert.ok(Math.abs(l.expert_fraction.reduce((a, b) => a + b, 0) - 1) < 1e-9, `${l.layer}: fractions sum to 1`);
      assert.ok(l.dropped_fraction >= 0 && l.dropped_fraction < 1, `${l.layer}: dropped ${l.dropped_fraction}`);
    }
  }
  // With capacity factor 1.0 and top-2 some choices are dropped somewhere.
  assert.ok(steps.some((m) => (m.moe as Array<{ dropped_fraction: number }>).some((l) => l.dropped_fraction > 0)), "capacity 1.0 drops some routing choices");
});

test("`Trainer` logs no MoE fields for a dense model", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const tr = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 1 } }), { log: false });
  await tr.setup();
  await tr.run();
  const m = readMetrics(dir).find((x) => x.split === undefined)!;
  for (const k of ["lm_loss", "aux_loss", "z_loss", "moe"]) assert.equal(m[k], undefined, `${k} is absent`);
});

// Measured activation memory per transformer layer, against Korthikanti et al. 2022 ("Reducing
// Activation Recomputation in Large Transformer Models"), Table 2: per layer, in bytes of a
// 16-bit format, sbh(34 + 5as/h) with no recomputation, 34sbh with selective recomputation
// (the attention core recomputed), 2sbh with full recomputation (only the block input kept).
//
// Measured from the allocator: live "activations" bytes after the forward, minus the same for a
// model with fewer layers, per layer. Our attention is a fused kernel that never stores the
// s x s scores (FlashAttention), so without recomputation we stay far below the formula's
// 5as/h term; the 34 includes two 1-byte dropout masks we never store (they are regenerated
// from the counter RNG), so with dropout off our selective figure sits just under 34.
// float32 doubles every byte; bfloat16 halves the float32 figure (the 0.5-0.6).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, randint, withScope, memoryStats, withAutocast } from "../../src/index.js";

type AC = false | "selective" | "full";

function activationBytesAfterForward(L: number, ac: AC, dtype: "float32" | "bfloat16", s: number, b: number, h: number, a: number): number {
  const model = new GPT({ nLayer: L, nHead: a, nEmbd: h, blockSize: s, vocabSize: 64 }, { activationCheckpointing: ac, seed: 3 });
  model.train();
  const idx = randint(0, 64, [b, s]).keep(), tgt = randint(0, 64, [b, s]).keep();
  const bytes = withScope(() => {
    const before = memoryStats().live.activations;
    const { loss } = withAutocast(dtype === "float32" ? null : dtype, () => model.forward(idx, tgt));
    const held = memoryStats().live.activations - before;
    loss!.backward();
    return held;
  });
  model.zeroGrad();
  for (const p of model.parameters()) p.dispose();
  idx.dispose();
  tgt.dispose();
  return bytes;
}

/** Bytes per layer: the difference between an L=4 and an L=2 model, halved (embeddings and head cancel). */
function perLayer(ac: AC, dtype: "float32" | "bfloat16", s: number, b: number, h: number, a: number): number {
  return (activationBytesAfterForward(4, ac, dtype, s, b, h, a) - activationBytesAfterForward(2, ac, dtype, s, b, h, a)) / 2;
}

for (const [s, b, h, a] of [[256, 8, 64, 4], [128, 4, 96, 6]] as const) {
  test(`activation bytes per layer match Korthikanti 2022 for full and selective recomputation, bf16 and fp32 (s=${s} b=${b} h=${h} a=${a})`, () => {
    const sbh = s * b * h;
    const formula = { selective: 34 * sbh, full: 2 * sbh, none: sbh * (34 + (5 * a * s) / h) };
    // The weights' 16-bit copies that autocast makes are saved for backward too (12h^2 per layer);
    // the paper counts activations only, so they are taken out of the bf16 figures.
    const weightCopies = 12 * h * h * 2;
    const m = {
      bf16: { none: perLayer(false, "bfloat16", s, b, h, a) - weightCopies, selective: perLayer("selective", "bfloat16", s, b, h, a) - weightCopies, full: perLayer("full", "bfloat16", s, b, h, a) },
      fp32: { none: perLayer(false, "float32", s, b, h, a), selective: perLayer("selective", "float32", s, b, h, a), full: perLayer("full", "float32", s, b, h, a) },
    };
    const within = (got: number, want: number, what: string) =>
      assert.ok(Math.abs(got - want) / want <= 0.1, `${what}: measured ${(got / sbh).toFixed(2)} sbh, formula ${(want / sbh).toFixed(2)} sbh (more than 10% apart)`);
    within(m.bf16.selective, formula.selective, "bf16 selective");
    within(m.bf16.full, formula.full, "bf16 full");
    within(m.fp32.selective, 2 * formula.selective, "fp32 selective");
    within(m.fp32.full, 2 * formula.full, "fp32 full");
    // Without recomputation: the fused attention keeps no s x s matrix, so well under the formula.
    assert.ok(m.bf16.none < formula.none && m.bf16.none > formula.selective, `bf16 none: ${(m.bf16.none / sbh).toFixed(2)} sbh, formula ${(formula.none / sbh).toFixed(2)}`);
    // bf16 activations are about half of fp32's.
    for (const k of ["none", "selective", "full"] as const) {
      const bf = k === "full" ? m.bf16[k] : m.bf16[k] + weightCopies;
      const ratio = bf / m.fp32[k];
      assert.ok(ratio >= 0.45 && ratio <= 0.6, `${k}: bf16 / fp32 activation bytes = ${ratio.toFixed(3)}, expected 0.5-0.6`);
    }
  });
}

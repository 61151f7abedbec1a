// Activation checkpointing recomputes each block in backward instead of storing it: the loss
// and every gradient equal the plain model's (within 1e-6), with dropout too (the replay
// restores the RNG state), and the global RNG ends where the plain run leaves it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT } from "../../src/models/index.js";
import { manualSeed, getRngState } from "../../src/core/rng_state.js";
import { tensor, withScope } from "../../src/tensor/index.js";
import { ids, maxAbsDiff } from "./_helpers.js";

const CFG = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 64 };

function lossAndGrads(activationCheckpointing: boolean, dropout: number): { loss: number; grads: Map<string, Float32Array>; rngAfter: ReturnType<typeof getRngState> } {
  const model = new GPT({ ...CFG, dropout }, { seed: 21, activationCheckpointing });
  model.train();
  manualSeed(99);
  const B = 3, T = 20;
  const seq = ids(B * (T + 1), 64, 17);
  const x = new Int32Array(B * T), y = new Int32Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) {
    x[b * T + t] = seq[b * (T + 1) + t]!;
    y[b * T + t] = seq[b * (T + 1) + t + 1]!;
  }
  const loss = withScope(() => {
    const { loss } = model.forward(tensor(x, { shape: [B, T], dtype: "int32" }), tensor(y, { shape: [B, T], dtype: "int32" }));
    loss!.backward();
    return loss!.item();
  });
  const grads = new Map(model.namedParameters().map(([n, p]) => [n, Float32Array.from(p.grad!.data() as Float32Array)]));
  return { loss, grads, rngAfter: getRngState() };
}

for (const dropout of [0, 0.2]) {
  test(`activation checkpointing gives the plain model's loss and gradients (dropout ${dropout})`, () => {
    const plain = lossAndGrads(false, dropout);
    const ckpt = lossAndGrads(true, dropout);
    assert.ok(Math.abs(plain.loss - ckpt.loss) <= 1e-6, `loss ${plain.loss} vs ${ckpt.loss}`);
    assert.deepEqual([...ckpt.grads.keys()], [...plain.grads.keys()]);
    for (const [name, g] of plain.grads) {
      const d = maxAbsDiff(g, ckpt.grads.get(name)!);
      assert.ok(d <= 1e-6, `gradient of ${name}: max |diff| ${d}`);
    }
    assert.ok([...plain.grads.values()].every((g) => g.some((v) => v !== 0)), "every parameter gets a gradient");
    assert.deepEqual(ckpt.rngAfter, plain.rngAfter, "the replay leaves the global RNG where the plain run does");
  });
}

test("activation checkpointing with dropout really uses dropout (losses differ from dropout 0)", () => {
  assert.notEqual(lossAndGrads(true, 0.2).loss, lossAndGrads(true, 0).loss);
});

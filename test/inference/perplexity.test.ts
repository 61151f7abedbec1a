// Perplexity with sliding windows: against exp(mean cross-entropy) computed by hand from
// GPT.forward logits on the same windows, and int8 against float32 on a briefly trained model.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, AdamW, tensor, noGrad, withScope } from "../../src/index.js";
import { quantizeModelInt8, dequantizeModel } from "../../src/inference/quant/index.js";
import { perplexity } from "../../src/inference/eval/index.js";

const seed = Date.now() % 100000;

// A token stream with structure (a noisy repeating pattern), so a model can learn it.
function stream(n: number, V: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => (i % 7 === 3 ? (i * 31 + salt) % V : (i * 13) % 17));
}

// The reference, written out by hand: window starts 0, stride, 2*stride...; each window feeds up
// to blockSize tokens and scores the targets no earlier window scored; log-softmax in float64.
function referencePerplexity(model: GPT, ids: number[], blockSize: number, stride: number): { ppl: number; windows: number } {
  const V = model.config.vocabSize;
  let nll = 0, scored = 0, windows = 0, done = 0;  // targets ids[1..done] are scored
  for (let start = 0; done < ids.length - 1; start += stride) {
    const T = Math.min(blockSize, ids.length - 1 - start);
    const logits = noGrad(() => withScope(() => {
      const idx = tensor(Int32Array.from(ids.slice(start, start + T)), { shape: [1, T], dtype: "int32" });
      return model.forward(idx).logits.data() as Float32Array;                  // (1, T, V)
    }));
    for (let t = 0; t < T; t++) {
      const target = start + t + 1;
      if (target <= done) continue;
      const row = logits.subarray(t * V, (t + 1) * V);
      let m = -Infinity;
      for (const v of row) m = Math.max(m, v);
      let s = 0;
      for (const v of row) s += Math.exp(v - m);
      nll += m + Math.log(s) - row[ids[target]!]!;
      scored++;
    }
    done = start + T;
    windows++;
  }
  assert.equal(scored, ids.length - 1, "the reference scores every token after the first once");
  return { ppl: Math.exp(nll / scored), windows };
}

test("`perplexity()` equals exp(mean cross-entropy) of GPT.forward on the same sliding windows", () => {
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 101 }, { seed });
  model.eval();
  const ids = stream(150, 101, seed % 7);
  for (const [blockSize, stride, batchSize] of [[32, 32, undefined], [32, 32, 1], [16, 5, 3], [20, 20, 2], [7, 1, undefined]] as const) {
    const ref = referencePerplexity(model, ids, blockSize, stride);
    const got = perplexity(model, ids, { blockSize, stride, ...(batchSize ? { batchSize } : {}) });
    assert.equal(got.tokens, ids.length - 1);
    assert.equal(got.windows, ref.windows, `blockSize ${blockSize} stride ${stride}: windows`);
    assert.ok(Math.abs(got.perplexity - ref.ppl) <= 1e-5 * ref.ppl,
      `blockSize ${blockSize} stride ${stride} batchSize ${batchSize}: ${got.perplexity} vs reference ${ref.ppl} (seed ${seed})`);
    assert.ok(Math.abs(got.meanNll - Math.log(got.perplexity)) < 1e-12);
  }
  // More context per scored token (smaller stride) does not change which tokens are scored.
  assert.equal(perplexity(model, ids.slice(0, 2), { blockSize: 32 }).windows, 1);
});

test("`perplexity()` with int8 projections (and int8 LM head) is within a few % of float32 on a trained model", () => {
  const V = 101, T = 32;
  const model = new GPT({ nLayer: 2, nHead: 4, nEmbd: 64, blockSize: T, vocabSize: V }, { seed });
  const opt = new AdamW(model.parameters(), { lr: 1e-2, betas: [0.9, 0.95], weightDecay: 0 });
  const train = stream(4000, V);
  for (let step = 0; step < 60; step++) {
    withScope(() => {
      const B = 8, x = new Int32Array(B * T), y = new Int32Array(B * T);
      for (let b = 0; b < B; b++) {
        const s = (step * 523 + b * 97) % (train.length - T - 1);
        x.set(train.slice(s, s + T), b * T);
        y.set(train.slice(s + 1, s + T + 1), b * T);
      }
      const { loss } = model.forward(tensor(x, { shape: [B, T], dtype: "int32" }), tensor(y, { shape: [B, T], dtype: "int32" }));
      loss!.backward();
      opt.step();
      opt.zeroGrad();
    });
  }
  model.eval();
  const held = stream(600, V, 5);  // same pattern, other noise
  const fp32 = perplexity(model, held, { blockSize: T, stride: 16 });
  assert.ok(fp32.perplexity < V / 4, `training did not take: held-out perplexity ${fp32.perplexity} of ${V} classes (seed ${seed})`);
  assert.throws(() => perplexity(model, held, { quantized: true }), /needs quantizeModelInt8/);
  quantizeModelInt8(model);
  const int8 = perplexity(model, held, { blockSize: T, stride: 16, quantized: true });
  const rel = Math.abs(int8.perplexity - fp32.perplexity) / fp32.perplexity;
  assert.ok(rel < 0.03, `perplexity fp32 ${fp32.perplexity} vs int8 ${int8.perplexity}: ${(100 * rel).toFixed(2)}% apart (seed ${seed})`);
  assert.ok(rel > 0, "the int8 path must actually differ from float32");
  // The LM head in int8 as well.
  quantizeModelInt8(model, { lmHead: true });
  const int8Head = perplexity(model, held, { blockSize: T, stride: 16, quantized: true });
  const relHead = Math.abs(int8Head.perplexity - fp32.perplexity) / fp32.perplexity;
  assert.ok(relHead < 0.03, `perplexity fp32 ${fp32.perplexity} vs int8 with int8 head ${int8Head.perplexity}: ${(100 * relHead).toFixed(2)}% apart (seed ${seed})`);
  assert.notEqual(int8Head.perplexity, int8.perplexity);
  dequantizeModel(model);
});

test("`perplexity()` rejects a stride past the window, an over-long window and out-of-vocabulary tokens", () => {
  const model = new GPT({ nLayer: 1, nHead: 1, nEmbd: 16, blockSize: 8, vocabSize: 11 }, { seed });
  const ids = stream(20, 11);
  assert.throws(() => perplexity(model, ids, { blockSize: 8, stride: 9 }), /stride must be an integer in \[1, blockSize = 8\].*got 9/);
  assert.throws(() => perplexity(model, ids, { blockSize: 9 }), /blockSize must be an integer in \[1, 8\].*got 9/);
  assert.throws(() => perplexity(model, [1, 2, 11], {}), /token 11 at position 2 is outside the model's vocabulary of 11/);
  assert.throws(() => perplexity(model, [1], {}), /need at least 2 tokens, got 1/);
});

// The paged-attention runner computes the same next-token logits as the plain GPT forward,
// for ragged batches mixing prefill chunks and decodes, with scattered (non-contiguous) blocks;
// with int8 weights, the same logits as the int8 full forward.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, tensor, noGrad, randn } from "../../src/index.js";
import { ModelRunner, type RunnerBatch } from "../../src/inference/runner/index.js";
import { quantizeModelInt8, dequantizeModel } from "../../src/inference/quant/index.js";
import { Int8Linear } from "../../src/nn/index.js";

function fullLogits(model: GPT, ids: number[]): Float32Array {
  return noGrad(() => {
    const out = model.forward(tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "int32" })).logits;
    return out.select(1, ids.length - 1).data() as Float32Array;
  });
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

test("`ModelRunner.execute()` matches GPT.forward across prefill chunks and decodes", () => {
  const seed = Date.now() % 100000;
  const model = new GPT({ nLayer: 2, nHead: 3, nEmbd: 48, blockSize: 64, vocabSize: 97 }, { seed });
  const blockSize = 4;
  const runner = new ModelRunner(model, { numBlocks: 32, blockSize });
  // Two sequences with scattered block tables.
  const tables = [[7, 2, 19, 11, 5, 30, 1, 14], [3, 25, 9, 0, 22, 17, 6, 28]];
  const seqs = [[5, 9, 13, 2, 88, 41, 7, 7, 60, 3, 19], [1, 2, 3, 4, 5, 6, 7]];
  const done = [0, 0];
  const maxBlocks = 8;
  const blockTables = Int32Array.from(tables.flat());
  // Step 1: seq0 prefill chunk of 6, seq1 prefill of all 7. Step 2: seq0 rest (5). Steps 3-4: decode both.
  const plan: Array<Array<[number, number]>> = [[[0, 6], [1, 7]], [[0, 5]], [[0, 1], [1, 1]], [[0, 1], [1, 1]]];
  for (const step of plan) {
    const tokens: number[] = [], positions: number[] = [], seqIndex: number[] = [], slots: number[] = [], sampleRows: number[] = [];
    for (const [s, count] of step) {
      if (done[s]! + count > seqs[s]!.length) seqs[s]!.push((seqs[s]!.length * 31 + s) % 97);  // a "sampled" token to decode
      for (let i = 0; i < count; i++) {
        const p = done[s]! + i;
        tokens.push(seqs[s]![p]!);
        positions.push(p);
        seqIndex.push(s);
        slots.push(tables[s]![Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
      }
      done[s]! += count;
      sampleRows.push(tokens.length - 1);
    }
    const batch: RunnerBatch = {
      tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), seqIndex: Int32Array.from(seqIndex),
      slotMapping: Int32Array.from(slots), blockTables, maxBlocks, sampleRows,
    };
    const logits = runner.execute(batch);
    step.forEach(([s], j) => {
      const ref = fullLogits(model, seqs[s]!.slice(0, done[s]));
      const got = logits.subarray(j * 97, (j + 1) * 97);
      const e = maxRel(got, ref);
      assert.ok(e < 1e-5, `seq ${s} after ${done[s]} tokens: relative error ${e} (seed ${seed})`);
    });
  }
  runner.dispose();
});

test("`ModelRunner.execute()` with int8 projections and LM head matches the int8 model's dense forward", () => {
  const seed = Date.now() % 100000;
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 97 }, { seed });
  const summary = quantizeModelInt8(model, { lmHead: true });
  assert.ok(summary.lmHead && model.lm_head instanceof Int8Linear);
  const blockSize = 4;
  const runner = new ModelRunner(model, { numBlocks: 8, blockSize });
  const table = [5, 1, 6, 2, 7, 0, 3, 4];
  const ids = [3, 14, 15, 92, 65, 35, 8, 9, 79];
  const run = (from: number, to: number) => {
    const pos = Array.from({ length: to - from }, (_, i) => from + i);
    return runner.execute({
      tokens: Int32Array.from(ids.slice(from, to)), positions: Int32Array.from(pos), seqIndex: new Int32Array(pos.length),
      slotMapping: Int32Array.from(pos.map((p) => table[Math.floor(p / blockSize)]! * blockSize + (p % blockSize))),
      blockTables: Int32Array.from(table), maxBlocks: table.length, sampleRows: [pos.length - 1],
    });
  };
  // A prefill of 6 tokens, then three decodes.
  for (const [from, to] of [[0, 6], [6, 7], [7, 8], [8, 9]] as const) {
    const got = run(from, to);
    const idx = tensor(Int32Array.from(ids.slice(0, to)), { shape: [1, to], dtype: "int32" });
    const ref = noGrad(() => model.forward(idx).logits.select(1, to - 1).data() as Float32Array);
    const e = maxRel(got, ref);
    assert.ok(e < 1e-5, `after ${to} tokens: relative error ${e} against the dense int8 forward (seed ${seed})`);
  }
  runner.dispose();
  dequantizeModel(model);
});

test("`ModelRunner.copyBlocks()` copies whole blocks of every layer's k and v pool, leaving the rest", () => {
  const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 8, blockSize: 16, vocabSize: 11 }, { seed: 1 });
  const blockSize = 4, numBlocks = 6;
  const runner = new ModelRunner(model, { numBlocks, blockSize });
  const pools = [...runner.kCache, ...runner.vCache];
  noGrad(() => pools.forEach((p, i) => p.copy_(randn(p.shape, { seed: 40 + i }))));
  const before = pools.map((p) => p.data() as Float32Array);
  runner.copyBlocks([[1, 4], [5, 0]]);
  const row = blockSize * 8;  // floats per block: blockSize x H x D
  pools.forEach((p, i) => {
    const after = p.data() as Float32Array;
    for (let b = 0; b < numBlocks; b++) {
      const src = b === 4 ? 1 : b === 0 ? 5 : b;
      assert.deepEqual(after.subarray(b * row, (b + 1) * row), before[i]!.subarray(src * row, (src + 1) * row), `pool ${i} block ${b}`);
    }
  });
  assert.throws(() => runner.copyBlocks([[1, 6]]), /copyBlocks: block 6 outside the pool of 6 blocks/);
  runner.dispose();
});

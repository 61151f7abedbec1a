// Serving in bfloat16 (`megalith serve --dtype bfloat16`): the model's weights and the KV cache
// in bfloat16. The paged path equals the dense bf16 forward, a bf16 KV pool takes half the bytes,
// and bf16 logits stay close to float32's. A float32 cache under a bf16 model also works
// (--kv-cache-dtype float32).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT, tensor, noGrad, memoryStats } from "../../src/index.js";
import { ModelRunner, type RunnerBatch } from "../../src/inference/runner/index.js";
import { quantizeModelInt8 } from "../../src/inference/quant/index.js";

const CFG = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 71 };

function denseLast(model: GPT, ids: number[]): Float32Array {
  return noGrad(() => {
    const out = model.forward(tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "int32" })).logits;
    return out.select(1, ids.length - 1).to("float32").data() as Float32Array;
  });
}

/** max |a - b| / max |b|. */
function rel(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

/** One prefill of `ids` through blocks 3, 0, 5 (block size 4); logits of the last token. */
function pagedLast(runner: ModelRunner, ids: number[]): Float32Array {
  const table = [3, 0, 5, 7, 1, 2, 4, 6];
  const b: RunnerBatch = {
    tokens: Int32Array.from(ids), positions: Int32Array.from(ids.map((_, i) => i)), seqIndex: new Int32Array(ids.length),
    slotMapping: Int32Array.from(ids.map((_, i) => table[Math.floor(i / 4)]! * 4 + (i % 4))), blockTables: Int32Array.from(table), maxBlocks: 8,
    sampleRows: [ids.length - 1],
  };
  return runner.execute(b);
}

for (const seed of [11, 29]) {
  test(`a bfloat16 model serves through a bfloat16 paged KV cache like its dense forward, close to float32 (seed ${seed})`, () => {
    const ids = Array.from({ length: 11 }, (_, i) => (i * 7 + seed) % CFG.vocabSize);
    const m32 = new GPT(CFG, { seed }).eval();
    const ref32 = denseLast(m32, ids);
    const m16 = new GPT(CFG, { seed }).eval().to("bfloat16");
    assert.ok(m16.parameters().every((p) => p.dtype === "bfloat16"));
    const before = memoryStats().live.kvCache;
    const r16 = new ModelRunner(m16, { numBlocks: 8, blockSize: 4 });
    const bf16Bytes = memoryStats().live.kvCache - before;
    assert.equal(r16.kvCacheDtype, "bfloat16");
    const r32 = new ModelRunner(m32, { numBlocks: 8, blockSize: 4 });
    const f32Bytes = memoryStats().live.kvCache - before - bf16Bytes;
    assert.equal(bf16Bytes * 2, f32Bytes, "a bf16 pool holds the same slots in half the bytes");
    assert.equal(ModelRunner.bytesPerBlock(m16, 4) * 2, ModelRunner.bytesPerBlock(m32, 4));

    const paged16 = pagedLast(r16, ids);
    const dense16 = denseLast(m16, ids);
    assert.ok(rel(paged16, dense16) < 2e-2, `paged vs dense in bf16: ${rel(paged16, dense16)}`);
    assert.ok(rel(paged16, ref32) < 5e-2, `bf16 vs fp32 logits: ${rel(paged16, ref32)}`);
    assert.ok(rel(pagedLast(r32, ids), ref32) < 1e-5, "the fp32 runner is unchanged");

    // A float32 cache beside bfloat16 weights (--kv-cache-dtype float32).
    const mixed = new ModelRunner(m16, { numBlocks: 8, blockSize: 4, kvCacheDtype: "float32" });
    assert.equal(mixed.kCache[0]!.dtype, "float32");
    assert.ok(rel(pagedLast(mixed, ids), dense16) < 2e-2);

    // int8 on top of bf16 (--dtype bfloat16 --quantize int8).
    quantizeModelInt8(m16);
    const r8 = new ModelRunner(m16, { numBlocks: 8, blockSize: 4 });
    assert.ok(rel(pagedLast(r8, ids), ref32) < 8e-2, `bf16 + int8 vs fp32: ${rel(pagedLast(r8, ids), ref32)}`);
    for (const r of [r16, r32, mixed, r8]) r.dispose();
  });
}

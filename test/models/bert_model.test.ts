// BertForPreTraining's behaviour beyond the PyTorch fixture (bert_pytorch.test.ts): the padding
// mask, config validation, name-keyed initialisation, dropout with activation checkpointing,
// bf16 autocast, a batch without MLM labels, and the FLOP count.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tensor, manualSeed, withAutocast, noGrad, ValueError, type Tensor } from "../../src/index.js";
import { BertForPreTraining, BertModel, resolveBERTConfig, type BERTConfig } from "../../src/models/index.js";
import type { Linear } from "../../src/nn/index.js";
import { ids, maxAbsDiff } from "./_helpers.js";

const CFG: BERTConfig = { nLayer: 2, nHead: 4, nEmbd: 32, maxPositions: 16, vocabSize: 53 };
const B = 3, T = 10;

const i32 = (a: number[], shape: number[]) => tensor(Int32Array.from(a), { shape, dtype: "int32" });

/** A batch with padding at the end of rows 1 (4 tokens) and 2 (7 tokens), token types, MLM and NSP labels. */
function batch(seed = 1, padIds = 0) {
  const kept = [T, T - 4, T - 7];
  const tok = ids(B * T, CFG.vocabSize - 1, seed).map((v) => v + 1);
  const mask: number[] = [], types: number[] = [], labels: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const pad = t >= kept[b]!;
      mask.push(pad ? 0 : 1);
      types.push(!pad && t >= kept[b]! / 2 ? 1 : 0);
      labels.push(!pad && t % 3 === 1 ? tok[b * T + t]! : -100);
      if (pad) tok[b * T + t] = padIds === 0 ? 0 : (padIds + 7 * t + b) % CFG.vocabSize;
    }
  }
  return {
    inputIds: i32(tok, [B, T]), tokenTypeIds: i32(types, [B, T]), attentionMask: i32(mask, [B, T]),
    mlmLabels: i32(labels, [B, T]), nspLabels: i32([0, 1, 0], [B]), kept,
  };
}

/** A model whose weights are spread out (x4) so outputs differ clearly between tokens. */
function model(extra: Partial<BERTConfig> = {}, seed = 7): BertForPreTraining {
  const m = new BertForPreTraining({ ...CFG, ...extra }, { seed });
  noGrad(() => { for (const p of m.parameters()) if (p.ndim === 2) { const w = p.mul(4); p.copy_(w); w.dispose(); } });
  return m.eval();
}

const rows = (h: Tensor, b: number, n: number) => Array.from((h.data() as Float32Array).subarray(b * T * CFG.nEmbd, (b * T + n) * CFG.nEmbd));

test("`encode()` ignores padded tokens: outputs at real positions do not change when padded ids or types change", () => {
  const m = model();
  const a = batch(1, 0), b = batch(1, 23);
  const types2 = Int32Array.from(b.tokenTypeIds.data() as Int32Array);
  for (let i = 0; i < types2.length; i++) if ((b.attentionMask.data() as Int32Array)[i] === 0) types2[i] = 1;
  const ha = noGrad(() => m.encode(a.inputIds, { tokenTypeIds: a.tokenTypeIds, attentionMask: a.attentionMask }));
  const hb = noGrad(() => m.encode(b.inputIds, { tokenTypeIds: i32([...types2], [B, T]), attentionMask: b.attentionMask }));
  assert.notDeepEqual(Array.from(a.inputIds.data()), Array.from(b.inputIds.data()));
  for (let r = 0; r < B; r++) assert.equal(maxAbsDiff(rows(ha, r, a.kept[r]!), rows(hb, r, a.kept[r]!)), 0, `row ${r}`);
  // Padded positions themselves do see their own ids: the mask is on keys, not queries.
  assert.ok(maxAbsDiff(rows(ha, 1, T), rows(hb, 1, T)) > 1e-3);
  // Without the mask the padded ids leak into every position.
  const hc = noGrad(() => m.encode(b.inputIds, { tokenTypeIds: b.tokenTypeIds }));
  assert.ok(maxAbsDiff(rows(ha, 1, a.kept[1]!), rows(hc, 1, a.kept[1]!)) > 1e-3);
});

test("`encode()` with an all-ones mask equals no mask, and a fully padded row gives no NaN", () => {
  const m = model();
  const a = batch(2);
  const ones = i32(new Array(B * T).fill(1), [B, T]);
  const h1 = noGrad(() => m.encode(a.inputIds, { attentionMask: ones }));
  const h0 = noGrad(() => m.encode(a.inputIds));
  assert.ok(maxAbsDiff(h1.data(), h0.data()) < 1e-5);
  const mask = Array.from({ length: B * T }, (_, i) => (i >= T && i < 2 * T ? 0 : 1));   // row 1 all padding
  const out = noGrad(() => m.forward(a.inputIds, { attentionMask: i32(mask, [B, T]), mlmLabels: a.mlmLabels, nspLabels: a.nspLabels }));
  for (const t of [out.hidden, out.predictionLogits, out.seqRelationshipLogits, out.loss!]) {
    assert.ok((t.data() as Float32Array).every(Number.isFinite), "no NaN or Inf");
  }
});

test("`resolveBERTConfig()` fills HF's defaults and names the bad field", () => {
  const r = resolveBERTConfig(CFG);
  assert.equal(r.intermediateSize, 128);
  assert.equal(r.typeVocabSize, 2);
  assert.equal(r.layerNormEpsilon, 1e-12);
  assert.equal(r.dropout, 0);
  assert.equal(r.attentionDropout, 0);
  assert.equal(r.padTokenId, 0);
  assert.equal(r.initializerRange, 0.02);
  assert.equal(resolveBERTConfig({ ...CFG, dropout: 0.1 }).attentionDropout, 0.1);
  const bad: Array<[Partial<BERTConfig>, RegExp]> = [
    [{ nLayer: 0 }, /nLayer must be an integer >= 1, got 0/],
    [{ nHead: 5 }, /nEmbd \(32\) must be divisible by nHead \(5\)/],
    [{ vocabSize: 2.5 }, /vocabSize must be an integer >= 1, got 2.5/],
    [{ intermediateSize: 0 }, /intermediateSize must be an integer >= 1, got 0/],
    [{ dropout: 1 }, /dropout must be a number in \[0, 1\), got 1/],
    [{ attentionDropout: -0.1 }, /attentionDropout must be a number in \[0, 1\), got -0.1/],
    [{ layerNormEpsilon: 0 }, /layerNormEpsilon must be a number > 0, got 0/],
    [{ padTokenId: 53 }, /padTokenId must be null or an integer in \[0, 53\), got 53/],
    [{ typeVocabSize: 0 }, /typeVocabSize must be an integer >= 1, got 0/],
  ];
  for (const [patch, re] of bad) assert.throws(() => resolveBERTConfig({ ...CFG, ...patch }), (e: Error) => e instanceof ValueError && re.test(e.message), JSON.stringify(patch));
  assert.equal(resolveBERTConfig({ ...CFG, padTokenId: null }).padTokenId, null);
});

test("`forward()` rejects malformed inputs, naming them and the expected shape", () => {
  const m = model();
  const a = batch();
  assert.throws(() => m.forward(tensor(new Float32Array(B * T), { shape: [B, T] })), /inputIds must be an int32 tensor of shape \(B, T\), got float32 \[3, 10\]/);
  assert.throws(() => m.forward(i32(new Array(17).fill(1), [1, 17])), /sequence length 17 exceeds max_position_embeddings 16/);
  assert.throws(() => m.forward(a.inputIds, { attentionMask: i32(new Array(T).fill(1), [1, T]) }), /attentionMask must have the shape of inputIds \[3, 10\]/);
  assert.throws(() => m.forward(a.inputIds, { tokenTypeIds: i32(new Array(T).fill(0), [1, T]) }), /tokenTypeIds must be an int32 tensor of shape \[3, 10\]/);
  assert.throws(() => m.forward(a.inputIds, { mlmLabels: i32(new Array(T).fill(0), [1, T]) }), /mlmLabels must be int32 of the shape of inputIds \[3, 10\]/);
  assert.throws(() => m.forward(a.inputIds, { nspLabels: i32([0, 1], [2]) }), /nspLabels must be int32 of shape \[3\]/);
});

test("initialisation is HF's, keyed by parameter name: BertModel alone draws the same encoder as BertForPreTraining", () => {
  const full = new BertForPreTraining(CFG, { seed: 3 });
  const alone = new BertModel(CFG, { seed: 3 }, "bert");
  const enc = new Map(alone.namedParameters());
  for (const [name, p] of full.namedParameters()) {
    if (name.startsWith("bert.")) assert.deepEqual(Array.from(p.data()), Array.from(enc.get(name.slice(5))!.data()), name);
    const v = p.data() as Float32Array;
    if (/LayerNorm\.weight$/.test(name)) assert.ok(v.every((x) => x === 1), name);
    else if (p.ndim === 1) assert.ok(v.every((x) => x === 0), `${name}: biases start at 0`);
    else {
      const rowsToCheck = name === "bert.embeddings.word_embeddings.weight" ? v.subarray(CFG.nEmbd) : v;
      const std = Math.sqrt(rowsToCheck.reduce((s, x) => s + x * x, 0) / rowsToCheck.length);
      assert.ok(Math.abs(std - 0.02) < 0.004, `${name}: std ${std}`);
    }
  }
  const word = full.bert.embeddings.word_embeddings.weight.data() as Float32Array;
  assert.ok(word.subarray(0, CFG.nEmbd).every((x) => x === 0), "the padding row starts at zero");
  const self0 = full.bert.encoder.layer[0]!.attention.self;
  assert.notDeepEqual(Array.from((self0.query as Linear).weight.data()), Array.from((self0.key as Linear).weight.data()));
  assert.equal(full.namedParameters().some(([n]) => n.includes("decoder")), false, "the MLM decoder is the word-embedding table, not a parameter");
  const other = new BertForPreTraining(CFG, { seed: 4 });
  assert.notDeepEqual(Array.from(other.cls.seq_relationship.weight.data()), Array.from(full.cls.seq_relationship.weight.data()));
});

function lossAndGrads(m: BertForPreTraining, a: ReturnType<typeof batch>) {
  manualSeed(11);
  m.zeroGrad();
  const out = m.forward(a.inputIds, { tokenTypeIds: a.tokenTypeIds, attentionMask: a.attentionMask, mlmLabels: a.mlmLabels, nspLabels: a.nspLabels });
  out.loss!.backward();
  return { loss: out.loss!.item(), grads: m.parameters().map((p) => Float32Array.from(p.grad!.data() as Float32Array)) };
}

test("dropout in training, and activation checkpointing (full, selective) reproduces its loss and gradients exactly", () => {
  const m = model({ dropout: 0.1 });
  const a = batch(3);
  const evalLoss = noGrad(() => m.forward(a.inputIds, { attentionMask: a.attentionMask, mlmLabels: a.mlmLabels, nspLabels: a.nspLabels }).loss!.item());
  m.train();
  const ref = lossAndGrads(m, a);
  assert.notEqual(ref.loss, evalLoss, "dropout is active in training");
  for (const ac of ["full", "selective"] as const) {
    m.activationCheckpointing = ac;
    const got = lossAndGrads(m, a);
    assert.equal(got.loss, ref.loss, ac);
    got.grads.forEach((g, i) => assert.equal(maxAbsDiff(g, ref.grads[i]!), 0, `${ac}: gradient ${m.namedParameters()[i]![0]}`));
  }
});

test("bf16 autocast: logits in bfloat16, loss within 2% of float32, float32 gradients", () => {
  const m = model();
  const a = batch(4);
  const f32 = lossAndGrads(m, a);
  m.zeroGrad();
  const out = withAutocast("bfloat16", () => m.forward(a.inputIds, { tokenTypeIds: a.tokenTypeIds, attentionMask: a.attentionMask, mlmLabels: a.mlmLabels, nspLabels: a.nspLabels }));
  assert.equal(out.predictionLogits.dtype, "bfloat16");
  assert.equal(out.loss!.dtype, "float32");
  assert.ok(Math.abs(out.loss!.item() - f32.loss) / f32.loss < 0.02, `${out.loss!.item()} vs ${f32.loss}`);
  out.loss!.backward();
  for (const [name, p] of m.namedParameters()) {
    assert.equal(p.grad!.dtype, "float32", name);
    assert.ok((p.grad!.data() as Float32Array).every(Number.isFinite), name);
  }
});

test("`forward()` with no labelled MLM position: mlmLoss 0, zero (not missing) head gradients", () => {
  const m = model();
  const a = batch(5);
  const none = i32(new Array(B * T).fill(-100), [B, T]);
  const out = m.forward(a.inputIds, { attentionMask: a.attentionMask, mlmLabels: none, nspLabels: a.nspLabels });
  assert.equal(out.mlmLoss!.item(), 0);
  assert.equal(out.loss!.item(), out.nspLoss!.item());
  out.loss!.backward();
  const g = m.cls.predictions.transform.dense.weight.grad;
  assert.ok(g, "the MLM head still has a gradient");
  assert.ok((g.data() as Float32Array).every((x) => x === 0));
  assert.ok(maxAbsDiff(m.cls.seq_relationship.weight.grad!.data(), new Float32Array(64)) > 0);
});

test("`flopsPerToken()` counts the MLM head on the predicted fraction and attention per position", () => {
  const m = model();
  const C = CFG.nEmbd, V = CFG.vocabSize;
  const head = m.namedParameters().filter(([n]) => n.startsWith("cls.predictions.")).reduce((s, [, p]) => s + p.numel, 0) + V * C;
  assert.ok(Math.abs(m.flopsPerToken(T, 1) - m.flopsPerToken(T, 0) - 6 * head) < 1e-6);
  const att = (t: number) => 12 * CFG.nLayer * C * t;
  const encoder = m.namedParameters().filter(([n]) => n.startsWith("bert.encoder.") || n.startsWith("bert.embeddings.LayerNorm.")).reduce((s, [, p]) => s + p.numel, 0);
  const seq = (C * C + C) + (2 * C + 2);
  assert.ok(Math.abs(m.flopsPerToken(T, 0) - (6 * (encoder + seq / T) + att(T))) < 1e-6);
});

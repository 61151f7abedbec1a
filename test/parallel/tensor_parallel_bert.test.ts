// BERT's tensor-parallel plan, in one process: cutting the shards needs no communication, so
// both ranks of a tp=2 group are built here (a group of 2 whose collectives are never called)
// and their shards, joined by the plan's specs, must be the single model's parameters exactly.
// The forward and training under real ranks are checked by bert_layouts.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BertForPreTraining, BertForSequenceClassification, BertModel, type BERTConfig } from "../../src/models/index.js";
import { Dropout } from "../../src/nn/index.js";
import { applyBertTensorParallel, logicalFromShards, worldGroup, ColumnParallelLinear, RowParallelLinear, type ProcessGroup } from "../../src/parallel/index.js";

const CFG: BERTConfig = { nLayer: 2, nHead: 4, nEmbd: 16, intermediateSize: 24, maxPositions: 16, vocabSize: 53, dropout: 0.1 };

/** Rank `rank` of a tp group of `size`: shard cutting reads only rank and size. */
const fakeGroup = (rank: number, size: number): ProcessGroup => ({ rank, size, handle: -1, name: "tp" });

test("`applyBertTensorParallel()` cuts shards that join back into the single model's parameters (BertForPreTraining, tp=2)", () => {
  const ref = new BertForPreTraining(CFG, { seed: 3 });
  const ranks = [0, 1].map(() => new BertForPreTraining(CFG, { seed: 3 }));
  const plans = ranks.map((m, r) => applyBertTensorParallel(m, fakeGroup(r, 2)));
  const local = ranks.map((m) => new Map(m.namedParameters()));
  let split = 0;
  for (const [name, p] of ref.namedParameters()) {
    const spec = plans[0]!.specs.get(name)!;
    assert.ok(spec, `${name}: no spec`);
    if (spec.kind !== "replicated") split++;
    const joined = logicalFromShards([local[0]!.get(name)!, local[1]!.get(name)!], spec);
    assert.deepEqual(joined.shape, p.shape, `${name}: joined shape`);
    assert.deepEqual(Array.from(joined.data() as Float32Array), Array.from(p.data() as Float32Array), `${name}: joined values`);
    joined.dispose();
  }
  // Per layer: q, k, v, intermediate (weight + bias each) and the two row-parallel weights.
  assert.equal(split, CFG.nLayer * 10);
  const self = ranks[1]!.bert.encoder.layer[0]!.attention.self;
  assert.ok(self.query instanceof ColumnParallelLinear && self.query.outFeatures === 8, "query holds 2 of the 4 heads");
  assert.ok(ranks[1]!.bert.encoder.layer[0]!.output.dense instanceof RowParallelLinear);
  assert.deepEqual(self.dropout.shard, { index: 1, count: 2 }, "the attention dropout draws rank 1's heads' part of the mask");
  assert.deepEqual(plans[0]!.specs.get("bert.encoder.layer.1.attention.output.dense.bias"), { kind: "replicated" }, "row-parallel biases stay whole");
  assert.deepEqual(plans[0]!.specs.get("bert.embeddings.word_embeddings.weight"), { kind: "replicated" });
});

test("`applyBertTensorParallel()` shards a BertForSequenceClassification's encoder and keeps its classifier whole", () => {
  const clf = new BertForSequenceClassification(new BertModel(CFG, { seed: 4 }), 3, { seed: 4 });
  const plan = applyBertTensorParallel(clf, fakeGroup(0, 2));
  assert.deepEqual(plan.specs.get("bert.encoder.layer.0.intermediate.dense.weight"), { kind: "rows", parts: 1, logicalRows: 24 });
  assert.deepEqual(plan.specs.get("bert.encoder.layer.0.output.dense.weight"), { kind: "cols" });
  assert.deepEqual(plan.specs.get("classifier.weight"), { kind: "replicated" });
  assert.equal(clf.bert.encoder.layer[0]!.intermediate.dense.outFeatures, 12);
});

test("`applyBertTensorParallel()` changes nothing at group size 1 and refuses heads or units that do not split", () => {
  const m = new BertForPreTraining(CFG, { seed: 5 });
  const before = m.namedParameters().map(([n, p]) => [n, [...p.shape]]);
  const plan = applyBertTensorParallel(m, worldGroup());
  assert.deepEqual(m.namedParameters().map(([n, p]) => [n, [...p.shape]]), before);
  assert.ok([...plan.specs.values()].every((s) => s.kind === "replicated"));
  assert.ok(m.bert.encoder.layer[0]!.attention.self.dropout instanceof Dropout && m.bert.encoder.layer[0]!.attention.self.dropout.shard === null);
  assert.throws(() => applyBertTensorParallel(new BertForPreTraining({ ...CFG, nHead: 2, nEmbd: 16, intermediateSize: 24 }), fakeGroup(0, 4)), /n_head \(2\) must be divisible by tp \(4\)/);
  assert.throws(() => applyBertTensorParallel(new BertForPreTraining({ ...CFG, intermediateSize: 18 }), fakeGroup(0, 4)), /intermediate_size \(18\) must be divisible by tp \(4\)/);
});

/**
 * Tensor parallelism (Megatron 1D) for BERT: the encoder's layers hold shards, by the same
 * module swaps and conjugate regions as GPT's (tensor_parallel.ts); the model's forward runs
 * unchanged (BertSelfAttention takes its head count from the projections' width).
 *
 *   attention.self      query, key, value  column-parallel: this rank's nHead/tp heads
 *                       dropout            this rank's heads' part of the single process's mask
 *   attention.output    dense              row-parallel: partial outputs all-reduced, then the
 *                                          replicated bias, dropout, residual and LayerNorm
 *   intermediate        dense              column-parallel: I/tp hidden units
 *   output              dense              row-parallel
 *   embeddings, LayerNorms, pooler, MLM head (tied to the word embeddings), NSP head,
 *   a classifier        replicated
 *
 * Between sublayers every tp rank holds the whole (B, T, C) activation (no sequence
 * parallelism): the column-parallel input is `copyToRegion` (its backward all-reduces the input
 * gradient), the row-parallel output `reduceFromRegion`: 2 all-reduces per layer forward, 2 in
 * backward. So every replicated parameter sees the same activations on every tp rank and gets
 * the same gradient; the plan marks them replicated and the gradient norm counts them on tp
 * rank 0 only (parallelize.ts normScope).
 *
 * Why the embeddings and heads stay replicated: BERT's vocabulary projection runs on the ~15%
 * masked rows only (BertForPreTraining's gathered head), so splitting it would save little
 * compute; the replicated (V, C) table costs memory on every tp rank, which is what a
 * vocabulary-parallel embedding (as GPT's) would remove, left for when BERT-large needs it.
 *
 * The attention probabilities are (B, H, T, T); rank r holds heads [r H/tp, (r+1) H/tp), i.e.
 * the r-th contiguous chunk of each row's H T T elements, which `Dropout(p, { index: r,
 * count: tp })` draws from the single process's mask stream: the masks do not depend on tp.
 *
 * Initialisation is layout-free: the shards are cut from the full, seeded model.
 */
import { ValueError } from "../core/errors.js";
import { Dropout, Linear, type Module } from "../nn/index.js";
import type { Tensor } from "../tensor/index.js";
import type { BertModel, BertForPreTraining, BertForSequenceClassification } from "../models/index.js";
import type { ProcessGroup } from "./collectives.js";
import { ColumnParallelLinear, RowParallelLinear, type ShardSpec, type TensorParallelPlan } from "./tensor_parallel.js";

/** A model around a BERT encoder registered as `bert` (pretraining heads or a classifier). */
export type BertTaskModel = BertForPreTraining | BertForSequenceClassification;

/**
 * Swaps the encoder layers of `model.bert` for their tensor-parallel forms over `group` (see
 * the file comment) and returns each parameter's shard spec by name. Every rank must call it
 * with the same model (the same seed): the shards are cut from it. At group size 1 it changes
 * nothing and every spec is replicated.
 * @example
 * const plan = applyBertTensorParallel(bertForPreTraining, mesh.group("tp"));
 * plan.specs.get("bert.encoder.layer.0.attention.self.query.weight");   // { kind: "rows", parts: 1, ... }
 */
export function applyBertTensorParallel(model: BertTaskModel, group: ProcessGroup): TensorParallelPlan {
  const specs = new Map<string, ShardSpec>();
  const bert: BertModel = model.bert;
  const cfg = bert.config;
  const n = group.size;
  if (n > 1) {
    if (cfg.nHead % n !== 0) throw new ValueError(`tensor parallelism: BERT's n_head (${cfg.nHead}) must be divisible by tp (${n}): each rank holds whole heads`);
    if (cfg.intermediateSize % n !== 0) throw new ValueError(`tensor parallelism: BERT's intermediate_size (${cfg.intermediateSize}) must be divisible by tp (${n})`);
    // The full tensors the shards were cut from are freed (parameters are kept outside scopes).
    const replaced: Tensor[] = [];
    const linear = (m: Module, path: string): Linear => {
      if (!(m instanceof Linear)) throw new ValueError(`tensor parallelism: ${path} is a ${m.constructor.name}, expected a plain Linear to shard (LoRA adapters do not combine with parallel.tp)`);
      return m;
    };
    const column = (owner: Module, name: string, m: Module, path: string) => {
      const src = linear(m, path);
      owner.setModule(name, new ColumnParallelLinear(src, group));
      replaced.push(src.weight, ...(src.bias ? [src.bias] : []));
      specs.set(`${path}.weight`, { kind: "rows", parts: 1, logicalRows: src.outFeatures });
      if (src.bias) specs.set(`${path}.bias`, { kind: "rows", parts: 1, logicalRows: src.outFeatures });
    };
    const row = (owner: Module, name: string, m: Module, path: string) => {
      const src = linear(m, path);
      // The bias stays replicated (added once, after the reduction) and is kept.
      owner.setModule(name, new RowParallelLinear(src, group));
      replaced.push(src.weight);
      specs.set(`${path}.weight`, { kind: "cols" });
    };
    bert.encoder.layer.forEach((layer, i) => {
      const p = `bert.encoder.layer.${i}`;
      const self = layer.attention.self;
      for (const qkv of ["query", "key", "value"] as const) column(self, qkv, self[qkv], `${p}.attention.self.${qkv}`);
      self.setModule("dropout", new Dropout(self.dropout.p, { index: group.rank, count: n }));
      row(layer.attention.output, "dense", layer.attention.output.dense, `${p}.attention.output.dense`);
      column(layer.intermediate, "dense", layer.intermediate.dense, `${p}.intermediate.dense`);
      row(layer.output, "dense", layer.output.dense, `${p}.output.dense`);
    });
    for (const t of replaced) t.dispose();
  }
  for (const [name] of model.namedParameters()) if (!specs.has(name)) specs.set(name, { kind: "replicated" });
  return { group, sequenceParallel: false, specs, paddedVocab: cfg.vocabSize };
}

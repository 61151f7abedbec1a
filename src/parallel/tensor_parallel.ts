/**
 * Tensor parallelism (Megatron 1D, Shoeybi et al. 2019) and sequence parallelism (Korthikanti
 * et al. 2022), applied to a single-device GPT by module swaps: the model's forward runs
 * unchanged over modules that each hold a shard and talk through the conjugate regions of
 * regions.ts (the only communication).
 *
 *   attention  c_attn  column-parallel: this rank's nHead/tp heads of q, k and v
 *              c_proj  row-parallel:    its input columns; the partial outputs are summed
 *   MLP        c_fc    column-parallel: 4C/tp hidden units;  c_proj row-parallel
 *   wte        vocabulary-parallel rows (padded to a multiple of tp, padding masked); the tied
 *              head multiplies by this rank's rows, so full logits never exist on one rank,
 *              and the loss is the vocabulary-parallel cross-entropy
 *   wpe, ln_*  replicated
 *   MoE        replicated: router and experts whole on every tp rank (see below)
 *
 * Without sequence parallelism the region between blocks holds the whole (B, T, C) activation
 * on every rank: a column-parallel input is `copyToRegion`, a row-parallel output
 * `reduceFromRegion` (2 all-reduces per block forward, 2 backward). With it, that region holds
 * this rank's T/tp tokens: inputs are gathered (all-gather, reduce-scatter in backward),
 * outputs reduce-scattered (the same bytes), and layernorm/dropout/residual activations shrink
 * by tp. Replicated parameters used on a token shard (layernorms, row-parallel biases, wpe)
 * go through `copyToRegion`, so their gradients are summed over tp in backward and stay equal.
 *
 * Initialisation is layout-free because the shards are cut from the full, seeded model.
 *
 * Mixture-of-experts MLPs are replicated over tp (DeepSpeed-MoE's choice for tp with experts):
 * the MoE input between blocks is the whole (B, T, C) activation on every tp rank, so each
 * rank routes the same tokens the same way (the router runs in float32 on identical inputs)
 * and computes the same output, with no communication; gradients are identical copies, which
 * is what a replicated parameter needs (the norm counts them on tp rank 0). The attention of
 * those blocks is split as usual. The cost is memory and compute: every tp rank holds and runs
 * all the experts, which expert parallelism (parallel.ep) is for. Sequence parallelism would
 * hand the MoE a token shard, whose routing capacity differs from one process's, so it is
 * refused with MoE.
 */
import { ValueError } from "../core/errors.js";
import { noGrad, recordNode } from "../autograd/index.js";
import { Tensor, tensor, compare, arange, cat, zeros, keep, autocastDtype } from "../tensor/index.js";
import { Module, F, Linear, Embedding, LayerNorm, Dropout, MoE, type Parameter, type Projection } from "../nn/index.js";
import type { GPT } from "../models/index.js";
import { allReduce, type ProcessGroup } from "./collectives.js";
import { copyToRegion, reduceFromRegion, gatherFromSequence, reduceScatterToSequence, gatherSeqRaw, reduceScatterSeqRaw } from "./regions.js";

/**
 * How a local parameter relates to its logical (single-device) tensor:
 *  - replicated: every rank holds all of it;
 *  - rows: dim 0 split evenly; with `parts` > 1 the tensor is `parts` stacked blocks (fused
 *    q, k, v) and each block is split; `logicalRows` < the padded rows for a padded vocabulary;
 *  - cols: dim 1 split evenly.
 */
export type ShardSpec =
  | { kind: "replicated" }
  | { kind: "rows"; parts: number; logicalRows: number }
  | { kind: "cols" };

/** Rows per rank of a padded split: ceil(n / size). */
function paddedPer(n: number, size: number): number {
  return Math.ceil(n / size);
}

/**
 * This rank's shard of the logical tensor `full` (a new tensor; `full` is untouched).
 * @example
 * const local = shardOfLogical(fullQkvWeight, { kind: "rows", parts: 3, logicalRows: 3 * C }, tp.rank, tp.size);
 */
export function shardOfLogical(full: Tensor, spec: ShardSpec, rank: number, size: number): Tensor {
  return noGrad(() => {
    if (spec.kind === "replicated" || size === 1) return full.clone();
    if (spec.kind === "cols") {
      const n = full.shape[1]! / size;
      const v = full.narrow(1, rank * n, n);
      const out = v.clone();
      v.dispose();
      return out;
    }
    if (spec.parts > 1) {
      const block = full.shape[0]! / spec.parts, n = block / size;
      const pieces = Array.from({ length: spec.parts }, (_, j) => full.narrow(0, j * block + rank * n, n));
      const out = cat(pieces, 0);
      for (const p of pieces) p.dispose();
      return out;
    }
    const rows = full.shape[0]!, per = paddedPer(rows, size);
    const start = Math.min(rows, rank * per), end = Math.min(rows, start + per);
    const v = full.narrow(0, start, end - start);
    if (end - start === per) {
      const out = v.clone();
      v.dispose();
      return out;
    }
    const pad = zeros([per - (end - start), ...full.shape.slice(1)], { dtype: full.dtype });
    const out = cat([v, pad], 0);
    v.dispose();
    pad.dispose();
    return out;
  });
}

/** The logical tensor from every rank's shard, in rank order (inverse of `shardOfLogical`). */
export function logicalFromShards(shards: readonly Tensor[], spec: ShardSpec): Tensor {
  return noGrad(() => {
    if (spec.kind === "replicated" || shards.length === 1) return shards[0]!.clone();
    if (spec.kind === "cols") return cat([...shards], 1);
    if (spec.parts > 1) {
      const n = shards[0]!.shape[0]! / spec.parts;
      const pieces: Tensor[] = [];
      for (let j = 0; j < spec.parts; j++) for (const s of shards) pieces.push(s.narrow(0, j * n, n));
      const out = cat(pieces, 0);
      for (const p of pieces) p.dispose();
      return out;
    }
    const all = cat([...shards], 0);
    if (all.shape[0] === spec.logicalRows) return all;
    const v = all.narrow(0, 0, spec.logicalRows);
    const out = v.clone();
    v.dispose();
    all.dispose();
    return out;
  });
}

/** A fresh parameter holding this rank's shard of `full`. */
function shardParam(full: Tensor, spec: ShardSpec, g: ProcessGroup): Tensor {
  return keep(shardOfLogical(full, spec, g.rank, g.size));
}

export interface TensorParallelOptions {
  /** Shard the layernorm/dropout regions along the sequence (Korthikanti et al.). Default false. */
  sequenceParallel?: boolean;
}

// ---- layers -------------------------------------------------------------------------------------

/**
 * y = x W_r^T + b_r for this rank's output features (W's rows): (B, T, in) -> (B, T, out/tp).
 * The input is replicated (copyToRegion) or, under sequence parallelism, gathered from the
 * ranks' token shards.
 */
export class ColumnParallelLinear extends Module implements Projection {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /**
   * @param parts blocks stacked in the weight (3 for a fused q, k, v projection), each split.
   * @example
   * attn.setModule("c_attn", new ColumnParallelLinear(attn.c_attn as Linear, tp, { parts: 3 }));
   */
  constructor(src: Linear, readonly group: ProcessGroup, readonly opts: TensorParallelOptions & { parts?: number } = {}) {
    super();
    const parts = opts.parts ?? 1;
    if (src.outFeatures % (parts * group.size) !== 0) {
      throw new ValueError(`ColumnParallelLinear: ${src.outFeatures} output features (${parts} block(s)) do not split over tp=${group.size}`);
    }
    const spec: ShardSpec = { kind: "rows", parts, logicalRows: src.outFeatures };
    this.inFeatures = src.inFeatures;
    this.outFeatures = src.outFeatures / group.size;
    this.weight = this.param("weight", shardParam(src.weight, spec, group));
    this.bias = src.bias ? this.param("bias", shardParam(src.bias, spec, group)) : null;
  }

  forward(x: Tensor): Tensor {
    if (this.opts.sequenceParallel && this.group.size > 1) return sequenceParallelLinear(x, this.weight, this.bias, this.group);
    const xi = copyToRegion(x, this.group);                                                   // (B, T, in)
    const y = F.linear(xi, this.weight, this.bias);                                           // (B, T, out/tp)
    xi.dispose();
    return y;
  }
}

/**
 * y = gather(x) W^T + b, where x (B, T/tp, in) is this rank's token shard: the all-gathered
 * (B, T, in) input is used and dropped, and backward gathers it again (Korthikanti et al.
 * 2022, §4.2.2: storing the gathered input would undo sequence parallelism's saving, since
 * every column-parallel layer's input is one of the activations it shards). Backward also
 * reduce-scatters the input gradient back to token shards. Under autocast the products run in
 * the autocast dtype, as F.linear's would, and the weight and bias gradients come back in the
 * parameters' dtype.
 */
export function sequenceParallelLinear(x: Tensor, weight: Tensor, bias: Tensor | null, g: ProcessGroup): Tensor {
  const dt = autocastDtype();
  const y = noGrad(() => {
    const full = gatherSeqRaw(x, g);                                                          // (B, T, in)
    const out = F.linear(full, weight, bias);                                                 // (B, T, out)
    full.dispose();
    return out;
  });
  const saved = x.saveForBackward();
  return recordNode("sp_linear", y, [x, weight, bias], (gyIn) => {
    const gy = gyIn as Tensor;
    const out = weight.shape[0]!, inF = weight.shape[1]!;
    const full = gatherSeqRaw(saved, g);                                                      // (B, T, in) again
    const N = full.numel / inF;
    const xc = dt && full.dtype !== dt ? full.to(dt) : full;
    const wc = dt && weight.dtype !== dt ? weight.to(dt) : weight;
    const gy2 = gy.reshape([N, out]);
    const gxFull = gy2.matmul(wc).reshape(full.shape);                                         // (B, T, in)
    const gxLocal = reduceScatterSeqRaw(gxFull, g);                                            // (B, T/tp, in)
    const gyt = gy2.t(), x2 = xc.reshape([N, inF]);
    const gw0 = gyt.matmul(x2);                                                                // (out, in)
    const gw = gw0.dtype === weight.dtype ? gw0 : gw0.to(weight.dtype);
    const gb0 = bias ? gy2.sum(0) : null;
    const gb = gb0 && bias && gb0.dtype !== bias.dtype ? gb0.to(bias.dtype) : gb0;
    const gx = gxLocal.dtype === x.dtype ? gxLocal : gxLocal.to(x.dtype);
    for (const t of new Set([full, xc, wc, gy2, gxFull, gyt, x2, gw0, gb0, gxLocal])) if (t && t !== gw && t !== gb && t !== gx && t !== weight) t.dispose();
    return [gx, gw, gb];
  }, [saved]);
}

/**
 * y = sum over ranks of x_r W_r^T, + b: this rank holds W's input columns and receives the
 * matching slice of the features, (B, T, in/tp) -> (B, T, out), summed by all-reduce (or
 * reduce-scattered to this rank's tokens under sequence parallelism). The bias is replicated.
 */
export class RowParallelLinear extends Module implements Projection {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  constructor(src: Linear, readonly group: ProcessGroup, readonly opts: TensorParallelOptions = {}) {
    super();
    if (src.inFeatures % group.size !== 0) throw new ValueError(`RowParallelLinear: ${src.inFeatures} input features do not split over tp=${group.size}`);
    this.inFeatures = src.inFeatures / group.size;
    this.outFeatures = src.outFeatures;
    this.weight = this.param("weight", shardParam(src.weight, { kind: "cols" }, group));
    this.bias = src.bias ? this.param("bias", src.bias) : null;
  }

  forward(x: Tensor): Tensor {
    const partial = F.linear(x, this.weight, null);                                          // (B, T, out), this rank's part
    const sp = this.opts.sequenceParallel;
    const y = sp ? reduceScatterToSequence(partial, this.group) : reduceFromRegion(partial, this.group);  // (B, T or T/tp, out)
    partial.dispose();
    if (!this.bias) return y;
    const b0 = sp ? copyToRegion(this.bias, this.group) : this.bias;
    const b = b0.dtype === y.dtype ? b0 : b0.to(y.dtype);
    const out = y.add(b);
    y.dispose();
    if (b !== this.bias) b.dispose();
    if (b0 !== this.bias && b0 !== b) b0.dispose();
    return out;
  }
}

/**
 * The token embedding over this rank's vocabulary rows [start, start + V/tp) (the vocabulary
 * padded to a multiple of tp with zero rows that no id reaches): ids outside the range look up
 * zeros, and the ranks' partial embeddings are summed (or reduce-scattered to token shards).
 */
export class VocabParallelEmbedding extends Module {
  readonly weight: Parameter;
  /** The first vocabulary id of this rank's rows. */
  readonly start: number;
  /** Rows per rank (the padded vocabulary / tp). */
  readonly rows: number;
  constructor(src: Embedding, readonly group: ProcessGroup, readonly opts: TensorParallelOptions = {}) {
    super();
    this.rows = paddedPer(src.numEmbeddings, group.size);
    this.start = group.rank * this.rows;
    this.weight = this.param("weight", shardParam(src.weight, { kind: "rows", parts: 1, logicalRows: src.numEmbeddings }, group));
  }

  forward(idx: Tensor): Tensor {
    const ids = idx.data() as Int32Array;
    const local = new Int32Array(ids.length), inside = new Float32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const j = ids[i]! - this.start;
      if (j >= 0 && j < this.rows) { local[i] = j; inside[i] = 1; }
    }
    const li = tensor(local, { shape: idx.shape, dtype: "int32" });
    const e = F.embedding(li, this.weight);                                                   // (B, T, C)
    const m = tensor(inside, { shape: [...idx.shape, 1] });
    const mc = m.dtype === e.dtype ? m : m.to(e.dtype);
    const partial = e.mul(mc);                                                                // rows outside: zeros
    for (const t of new Set([li, e, m, mc])) t.dispose();
    const out = this.opts.sequenceParallel ? reduceScatterToSequence(partial, this.group) : reduceFromRegion(partial, this.group);
    partial.dispose();
    return out;
  }
}

/**
 * Sequence parallelism's position embedding: this rank's token positions only, (T) -> (T/tp, C),
 * the replicated table's gradient summed over tp.
 */
export class SequenceParallelPositionEmbedding extends Module {
  readonly weight: Parameter;
  constructor(src: Embedding, readonly group: ProcessGroup) {
    super();
    this.weight = this.param("weight", src.weight);
  }

  forward(pos: Tensor): Tensor {
    const T = pos.shape[0]!, n = this.group.size;
    if (T % n !== 0) throw new ValueError(`sequence parallelism: the sequence length ${T} must be divisible by tp=${n}`);
    const mine = pos.narrow(0, this.group.rank * (T / n), T / n);
    const w = copyToRegion(this.weight, this.group);
    const out = F.embedding(mine, w);                                                         // (T/tp, C)
    mine.dispose();
    w.dispose();
    return out;
  }
}

/** A replicated LayerNorm applied to a token shard: its parameters' gradients are summed over tp. */
export class SequenceParallelLayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  readonly dim: number;
  readonly eps: number;
  constructor(src: LayerNorm, readonly group: ProcessGroup) {
    super();
    this.dim = src.dim;
    this.eps = src.eps;
    this.weight = this.param("weight", src.weight);
    this.bias = src.bias ? this.param("bias", src.bias) : null;
  }

  forward(x: Tensor): Tensor {
    const w = copyToRegion(this.weight, this.group), b = this.bias ? copyToRegion(this.bias, this.group) : null;
    const y = F.layerNorm(x, [this.dim], w, b, this.eps);
    w.dispose();
    b?.dispose();
    return y;
  }
}

/**
 * The tied LM head over this rank's vocabulary rows: h (..., C) -> logits (..., V/tp) = h E_r^T.
 * It holds the embedding module (not its weight as a parameter: the tie stays one tensor).
 */
export class VocabParallelHead extends Module implements Projection {
  readonly inFeatures: number;
  readonly outFeatures: number;
  constructor(private readonly embedding: VocabParallelEmbedding | Embedding, readonly group: ProcessGroup, readonly opts: TensorParallelOptions = {}) {
    super();
    this.inFeatures = embedding.weight.shape[1]!;
    this.outFeatures = embedding.weight.shape[0]!;
  }

  forward(h: Tensor): Tensor {
    const hi = this.opts.sequenceParallel ? gatherFromSequence(h, this.group) : copyToRegion(h, this.group);   // (B, T, C)
    const wt = this.embedding.weight.t();
    const logits = hi.matmul(wt);                                                               // (B, T, V/tp)
    wt.dispose();
    hi.dispose();
    return logits;
  }
}

/**
 * Mean cross-entropy over rows whose logits are split by vocabulary across the group: this
 * rank holds columns [start, start + cols) of the (padded) vocabulary, of which the first
 * `validCols` are real ids. The max and the sum of exponentials are all-reduced, and so is the
 * target's logit (from the rank that holds it): full logits never exist on one rank. Built from
 * differentiable ops and the regions, so autograd gives softmax - onehot on each shard.
 * logits: (N, cols) float; targets: (N) int32, -100 = ignored. Returns a scalar.
 */
export function vocabParallelCrossEntropy(logits: Tensor, targets: Tensor, group: ProcessGroup, start: number, validCols: number): Tensor {
  const N = logits.shape[0]!;
  const lf = logits.dtype === "float32" ? logits : logits.to("float32");                       // (N, cols)
  const lv = validCols < lf.shape[1]! ? lf.narrow(1, 0, validCols) : lf;                       // (N, valid)
  // The row max only stabilises exp(); it is a constant to autograd, as in Megatron.
  const mx = noGrad(() => {
    const m = lv.max(1).values.contiguous();
    allReduce(m, group, "max");
    return m;
  });
  const z = lv.sub(mx.view([N, 1]));                                                            // (N, valid)
  const e = z.exp();
  const sumLocal = e.sum(1);                                                                    // (N)
  const sumAll = reduceFromRegion(sumLocal, group);
  const tg = targets.data() as Int32Array;
  const local = new Float32Array(N), valid = new Float32Array(N);
  let count = 0;
  for (let i = 0; i < N; i++) {
    const t = tg[i]!;
    if (t === -100) { local[i] = -1; continue; }
    valid[i] = 1;
    count++;
    const j = t - start;
    local[i] = j >= 0 && j < validCols ? j : -1;
  }
  const cols = arange(validCols).view([1, validCols]);
  const lt = tensor(local, { shape: [N, 1] });
  const onehot = compare("eq", cols, lt);                                                      // (N, valid) uint8
  const oh = onehot.to("float32");
  const pickedLocal = z.mul(oh).sum(1);                                                         // (N): z at the target, or 0
  const picked = reduceFromRegion(pickedLocal, group);
  const perRow = sumAll.log().sub(picked);                                                      // (N): logsumexp - z_target
  const v = tensor(valid);
  const loss = perRow.mul(v).sum().div(count);
  for (const t of new Set([lf, lv, mx, z, e, sumLocal, sumAll, cols, lt, onehot, oh, pickedLocal, picked, perRow, v])) if (t !== logits) t.dispose();
  return loss;
}

// ---- applying it --------------------------------------------------------------------------------

/** What `applyTensorParallel` did: each parameter's shard spec, by (logical) name. */
export interface TensorParallelPlan {
  group: ProcessGroup;
  sequenceParallel: boolean;
  /** Parameter name -> how the local tensor relates to the logical one. */
  specs: Map<string, ShardSpec>;
  /** The padded vocabulary (a multiple of tp). */
  paddedVocab: number;
}

/**
 * Swaps `model`'s layers for their tensor-parallel forms over `group` (see the file comment).
 * Every rank must call it with the same model (the same seed): shards are cut from it.
 * At group size 1 it changes nothing and every spec is replicated.
 * @example
 * const plan = applyTensorParallel(gpt, mesh.group("tp"), { sequenceParallel: true });
 */
export function applyTensorParallel(model: GPT, group: ProcessGroup, opts: TensorParallelOptions = {}): TensorParallelPlan {
  const specs = new Map<string, ShardSpec>();
  const V = model.config.vocabSize;
  const n = group.size;
  const sp = opts.sequenceParallel ?? false;
  if (n === 1) {
    if (sp) throw new ValueError("sequence parallelism needs tp > 1 (parallel.sp with parallel.tp=1)");
    for (const [name] of model.namedParameters()) specs.set(name, { kind: "replicated" });
    return { group, sequenceParallel: false, specs, paddedVocab: V };
  }
  const { nHead, nEmbd } = model.config;
  if (nHead % n !== 0) throw new ValueError(`tensor parallelism: n_head (${nHead}) must be divisible by tp (${n})`);
  if ((4 * nEmbd) % n !== 0) throw new ValueError(`tensor parallelism: the MLP width ${4 * nEmbd} must be divisible by tp (${n})`);
  const C = nEmbd;
  const o = { sequenceParallel: sp };
  // The full tensors the shards were cut from are freed (parameters are kept outside scopes).
  const replaced: Tensor[] = [];
  const drop = (l: Linear, keepBias = false) => replaced.push(l.weight, ...(l.bias && !keepBias ? [l.bias] : []));
  model.h.forEach((b, i) => {
    const p = `h.${i}.`;
    if (b.mlp instanceof MoE && sp) throw new ValueError(`tensor parallelism: sequence parallelism would route token shards through the replicated MoE MLP of block ${i} (a capacity per shard, not per batch); use parallel.sp=false with model.moe`);
    drop(b.attn.c_attn as Linear);
    drop(b.attn.c_proj as Linear, true);
    b.attn.setModule("c_attn", new ColumnParallelLinear(b.attn.c_attn as Linear, group, { ...o, parts: 3 }));
    b.attn.setModule("c_proj", new RowParallelLinear(b.attn.c_proj as Linear, group, o));
    specs.set(`${p}attn.c_attn.weight`, { kind: "rows", parts: 3, logicalRows: 3 * C });
    specs.set(`${p}attn.c_attn.bias`, { kind: "rows", parts: 3, logicalRows: 3 * C });
    specs.set(`${p}attn.c_proj.weight`, { kind: "cols" });
    if (!(b.mlp instanceof MoE)) {
      drop(b.mlp.c_fc as Linear);
      drop(b.mlp.c_proj as Linear, true);
      b.mlp.setModule("c_fc", new ColumnParallelLinear(b.mlp.c_fc as Linear, group, o));
      b.mlp.setModule("c_proj", new RowParallelLinear(b.mlp.c_proj as Linear, group, o));
      specs.set(`${p}mlp.c_fc.weight`, { kind: "rows", parts: 1, logicalRows: 4 * C });
      specs.set(`${p}mlp.c_fc.bias`, { kind: "rows", parts: 1, logicalRows: 4 * C });
      specs.set(`${p}mlp.c_proj.weight`, { kind: "cols" });
    }
    if (sp) {
      b.setModule("ln_1", new SequenceParallelLayerNorm(b.ln_1, group));
      b.setModule("ln_2", new SequenceParallelLayerNorm(b.ln_2, group));
      // Dropout on a token shard draws that shard's part of each row's single-device mask.
      b.attn.setModule("resid_dropout", new Dropout(b.attn.resid_dropout.p, { index: group.rank, count: n }));
      b.mlp.setModule("dropout", new Dropout(b.mlp.dropout.p, { index: group.rank, count: n }));
    }
  });
  const wte = new VocabParallelEmbedding(model.wte, group, o);
  replaced.push(model.wte.weight);
  model.setModule("wte", wte);
  specs.set("wte.weight", { kind: "rows", parts: 1, logicalRows: V });
  if (sp) {
    model.setModule("drop", new Dropout(model.drop.p, { index: group.rank, count: n }));
    model.setModule("wpe", new SequenceParallelPositionEmbedding(model.wpe, group));
    model.setModule("ln_f", new SequenceParallelLayerNorm(model.ln_f, group));
  }
  if (model.lm_head) throw new ValueError("tensor parallelism: the model has an untied LM head module; only the tied head is supported");
  model.setModule("lm_head", new VocabParallelHead(wte, group, o));
  const validCols = Math.max(0, Math.min(wte.rows, V - wte.start));
  model.lossFunction = (logits, targets) => vocabParallelCrossEntropy(logits, targets, group, wte.start, validCols);
  for (const t of replaced) t.dispose();
  for (const [name] of model.namedParameters()) if (!specs.has(name)) specs.set(name, { kind: "replicated" });
  return { group, sequenceParallel: sp, specs, paddedVocab: wte.rows * n };
}

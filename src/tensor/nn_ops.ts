/**
 * Fused neural-network primitives: softmax, layer/RMS norm, embedding, cross-entropy, dropout
 * and scaled-dot-product attention. Each is one backend kernel forward and one backward, with
 * only small per-row statistics saved (mean/rstd, log-sum-exp), never a T x T matrix.
 *
 * Dtypes: activations keep their dtype (float32, bfloat16 or float16) through every op; the
 * statistics (mean/rstd, log-sum-exp) and losses are float32, and the kernels accumulate in
 * float32. Norm weights may be in another dtype than their input (float32 master weights
 * under a bfloat16 compute policy): their gradients come back in the weight's dtype.
 */
import { ShapeError, ValueError, fmtShape } from "../core/errors.js";
import { backend } from "../backend/index.js";
import { recordNode, needsGrad } from "../autograd/engine.js";
import { Tensor } from "./tensor.js";
import * as ops from "./ops.js";
import { matmul } from "./matmul.js";
import { normDim, numel, shapesEqual } from "./shape.js";
import { nextRandomOffset } from "./random.js";
import { autocastDtype } from "./autocast.js";

function contig(t: Tensor): Tensor {
  return t.isContiguous ? t.alias() : ops.contiguousCopy(t);
}

/** A contiguous handle in `dtype` the caller owns (a gradient arriving in another dtype is converted). */
function contigAs(t: Tensor, dtype: Tensor["dtype"]): Tensor {
  if (t.dtype === dtype) return contig(t);
  const c = contig(t);
  const out = ops.toDType(c, dtype);
  c.dispose();
  return out;
}

// ---- softmax ------------------------------------------------------------------------------------

function softmaxImpl(x: Tensor, dim: number, log: boolean): Tensor {
  const op = log ? "logSoftmax" : "softmax";
  ops.checkFloat(op, x);
  if (x.ndim === 0) return softmaxImpl(ops.reshape(x, [1]), 0, log).reshape([]);
  const d = normDim(dim, x.ndim, op);
  if (d !== x.ndim - 1) {
    const t = ops.transpose(x, d, -1);
    const y = softmaxImpl(t, -1, log);
    const out = ops.transpose(y, d, -1);
    t.dispose();
    y.dispose();
    return out;
  }
  const cols = x.shape[x.ndim - 1]!;
  const rows = cols === 0 ? 0 : x.numel / cols;
  const xc = contig(x);
  const y = Tensor.empty(x.shape, x.dtype);
  backend.softmaxForward(xc, y, rows, cols, log, x.dtype, x.dtype);
  xc.dispose();
  if (!needsGrad(x)) return y;
  const ctx = { y: y.saveForBackward(), rows, cols };
  return recordNode(op, y, [x], (gyIn) => {
    const gy = contigAs(gyIn as Tensor, ctx.y.dtype);
    const gx = Tensor.empty(ctx.y.shape, gy.dtype);
    backend.softmaxBackward(ctx.y, gy, gx, ctx.rows, ctx.cols, log, ctx.y.dtype, gy.dtype);
    gy.dispose();
    return [gx];
  }, [ctx.y]);
}

/** softmax along `dim` (default last). */
export const softmax = (x: Tensor, dim = -1): Tensor => softmaxImpl(x, dim, false);
/** log(softmax(x)) along `dim`, computed stably. */
export const logSoftmax = (x: Tensor, dim = -1): Tensor => softmaxImpl(x, dim, true);

// ---- normalization ----------------------------------------------------------------------------------

function normRows(op: string, x: Tensor, normalizedShape: number | readonly number[], weight?: Tensor | null, bias?: Tensor | null) {
  ops.checkFloat(op, x);
  const ns = typeof normalizedShape === "number" ? [normalizedShape] : [...normalizedShape];
  const tail = x.shape.slice(x.ndim - ns.length);
  if (ns.length === 0 || ns.length > x.ndim || !shapesEqual(tail, ns)) {
    throw new ShapeError(op, `normalizedShape ${fmtShape(ns)} does not match the trailing dims of input ${fmtShape(x.shape)}`);
  }
  for (const [name, p] of [["weight", weight], ["bias", bias]] as const) {
    if (p != null) {
      ops.checkFloat(op, p);
      if (!shapesEqual(p.shape, ns)) throw new ShapeError(op, `${name} has shape ${fmtShape(p.shape)}, expected ${fmtShape(ns)}`);
    }
  }
  if (weight && bias && weight.dtype !== bias.dtype) throw new ShapeError(op, `weight (${weight.dtype}) and bias (${bias.dtype}) must share a dtype`);
  const cols = numel(ns);
  return { cols, rows: cols === 0 ? 0 : x.numel / cols };
}

/**
 * Layer normalization over the trailing `normalizedShape` dims (torch.nn.functional.layer_norm).
 * @example
 * const y = F.layerNorm(x, [768], ln.weight, ln.bias, 1e-5);
 */
export function layerNorm(x: Tensor, normalizedShape: number | readonly number[], weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  const { rows, cols } = normRows("layerNorm", x, normalizedShape, weight, bias);
  const xc = contig(x);
  const w = weight ? contig(weight) : null;
  const b = bias ? contig(bias) : null;
  const wdt = (weight ?? bias)?.dtype ?? x.dtype;
  const y = Tensor.empty(x.shape, x.dtype);
  const mean = Tensor.empty([rows]);
  const rstd = Tensor.empty([rows]);
  backend.layerNormForward(xc, w, b, y, mean, rstd, rows, cols, eps, x.dtype, wdt);
  b?.dispose();
  if (!needsGrad(x, weight, bias)) {
    for (const t of [xc, w, mean, rstd]) t?.dispose();
    return y;
  }
  const ctx = { x: xc.saveForBackward(), w: w ? w.saveForBackward() : null, mean: mean.saveForBackward(), rstd: rstd.saveForBackward() };
  for (const t of [xc, w, mean, rstd]) t?.dispose();
  const needX = x.requiresGrad, needW = !!weight?.requiresGrad, needB = !!bias?.requiresGrad;
  return recordNode("layerNorm", y, [x, weight ?? null, bias ?? null], (gyIn) => {
    const gy = contigAs(gyIn as Tensor, ctx.x.dtype);
    const gx = needX ? Tensor.empty(ctx.x.shape, ctx.x.dtype) : null;
    const gw = needW ? ops.full([cols], 0, wdt) : null;
    const gb = needB ? ops.full([cols], 0, wdt) : null;
    backend.layerNormBackward(ctx.x, ctx.w, ctx.mean, ctx.rstd, gy, gx, gw, gb, rows, cols, ctx.x.dtype, wdt);
    gy.dispose();
    const shapeW = weight?.shape ?? [cols];
    return [gx, gw ? reshapeOwned(gw, shapeW) : null, gb ? reshapeOwned(gb, bias!.shape) : null];
  }, [ctx.x, ctx.w, ctx.mean, ctx.rstd].filter((t): t is Tensor => t !== null));
}

function reshapeOwned(t: Tensor, shape: readonly number[]): Tensor {
  if (shapesEqual(t.shape, shape)) return t;
  const v = t.view_([...shape], [...shape].map((_, i) => numel(shape.slice(i + 1))), 0);
  t.dispose();
  return v;
}

/** RMS normalization (LLaMA-style): x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(x: Tensor, normalizedShape: number | readonly number[], weight?: Tensor | null, eps = 1e-6): Tensor {
  const { rows, cols } = normRows("rmsNorm", x, normalizedShape, weight, null);
  const xc = contig(x);
  const w = weight ? contig(weight) : null;
  const wdt = weight?.dtype ?? x.dtype;
  const y = Tensor.empty(x.shape, x.dtype);
  const rstd = Tensor.empty([rows]);
  backend.rmsNormForward(xc, w, y, rstd, rows, cols, eps, x.dtype, wdt);
  if (!needsGrad(x, weight)) {
    for (const t of [xc, w, rstd]) t?.dispose();
    return y;
  }
  const ctx = { x: xc.saveForBackward(), w: w ? w.saveForBackward() : null, rstd: rstd.saveForBackward() };
  for (const t of [xc, w, rstd]) t?.dispose();
  const needX = x.requiresGrad, needW = !!weight?.requiresGrad;
  return recordNode("rmsNorm", y, [x, weight ?? null], (gyIn) => {
    const gy = contigAs(gyIn as Tensor, ctx.x.dtype);
    const gx = needX ? Tensor.empty(ctx.x.shape, ctx.x.dtype) : null;
    const gw = needW ? ops.full([cols], 0, wdt) : null;
    backend.rmsNormBackward(ctx.x, ctx.w, ctx.rstd, gy, gx, gw, rows, cols, ctx.x.dtype, wdt);
    gy.dispose();
    return [gx, gw ? reshapeOwned(gw, weight!.shape) : null];
  }, [ctx.x, ctx.w, ctx.rstd].filter((t): t is Tensor => t !== null));
}

// ---- embedding ------------------------------------------------------------------------------------------

/**
 * Looks up rows of `weight` [V, C] by int32 `indices` (torch.nn.functional.embedding order).
 * The gradient scatter-adds into a dense [V, C] tensor.
 */
export function embedding(indices: Tensor, weight: Tensor): Tensor {
  const low = autocastDtype();
  if (low !== null && weight.dtype !== low) {
    // Autocast: look the rows up in the weight's own dtype and cast just those rows (not the
    // whole table); the recorded cast returns the gradient in the weight's dtype.
    const rows = embeddingImpl(indices, weight);
    const out = ops.toDType(rows, low);
    rows.dispose();
    return out;
  }
  return embeddingImpl(indices, weight);
}

function embeddingImpl(indices: Tensor, weight: Tensor): Tensor {
  if (indices.dtype !== "int32") {
    throw new ShapeError("embedding", `indices must be int32, got ${indices.dtype} (create them with dtype: "int32")`);
  }
  ops.checkFloat("embedding", weight);
  if (weight.ndim !== 2) throw new ShapeError("embedding", `weight must be 2-D [num_embeddings, dim], got ${fmtShape(weight.shape)}`);
  const [V, C] = weight.shape as [number, number];
  const idx = contig(indices);
  const w = contig(weight);
  const out = Tensor.empty([...indices.shape, C], weight.dtype);
  const bad = backend.embeddingForward(w, idx, out, indices.numel, C, V, weight.dtype);
  w.dispose();
  if (bad >= 0) {
    const value = (idx.data() as Int32Array)[bad];
    idx.dispose();
    out.dispose();
    throw new ShapeError("embedding", `index ${value} at position ${bad} is out of range for an embedding table with ${V} rows (expected 0..${V - 1})`);
  }
  if (!needsGrad(weight)) {
    idx.dispose();
    return out;
  }
  const ctx = { idx: idx.saveForBackward() };
  idx.dispose();
  return recordNode("embedding", out, [weight], (gyIn) => {
    const gy = contigAs(gyIn as Tensor, weight.dtype);
    const gw = ops.full([V, C], 0, weight.dtype);
    backend.embeddingBackward(gy, ctx.idx, gw, ctx.idx.numel, C, weight.dtype);
    gy.dispose();
    return [gw];
  }, [ctx.idx]);
}

// ---- cross-entropy ----------------------------------------------------------------------------------------

export interface CrossEntropyOptions {
  /** Target value that contributes neither loss nor gradient. Default -100 (PyTorch's). */
  ignoreIndex?: number;
  /** "mean" (over non-ignored targets, the default), "sum" or "none". */
  reduction?: "mean" | "sum" | "none";
  /** Label smoothing in [0, 1). Default 0. */
  labelSmoothing?: number;
}

/**
 * Fused log-softmax + negative log-likelihood (torch.nn.functional.cross_entropy) for logits
 * [N, C] (or [C]) and int32 class targets [N] (or []). Logits of shape [N, C, d1, ...] follow
 * PyTorch's class-dim-1 convention.
 * @example
 * const loss = F.crossEntropy(logits.view([-1, V]), targets.view([-1]));
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const reduction = opts.reduction ?? "mean";
  const smoothing = opts.labelSmoothing ?? 0;
  if (!["mean", "sum", "none"].includes(reduction)) throw new ValueError(`crossEntropy: reduction must be "mean", "sum" or "none", got ${JSON.stringify(reduction)}`);
  if (!(smoothing >= 0 && smoothing < 1)) throw new ValueError(`crossEntropy: labelSmoothing must be in [0, 1), got ${smoothing}`);
  ops.checkFloat("crossEntropy", logits);
  if (targets.dtype !== "int32") throw new ShapeError("crossEntropy", `targets must be int32 class indices, got ${targets.dtype}`);
  if (logits.ndim > 2) {
    // [N, C, d...] -> [N*d..., C], targets [N, d...] -> [N*d...]
    const C = logits.shape[1]!;
    const perm = [0, ...Array.from({ length: logits.ndim - 2 }, (_, i) => i + 2), 1];
    const p = ops.permute(logits, perm);
    const l2 = ops.reshape(p, [-1, C]);
    const t2 = ops.reshape(targets, [-1]);
    const expectT = [logits.shape[0]!, ...logits.shape.slice(2)];
    if (!shapesEqual(targets.shape, expectT)) {
      throw new ShapeError("crossEntropy", `targets shape ${fmtShape(targets.shape)} does not match logits ${fmtShape(logits.shape)} (expected ${fmtShape(expectT)})`);
    }
    let out = crossEntropy(l2, t2, opts);
    if (reduction === "none") { const r = ops.reshape(out, expectT); out.dispose(); out = r; }
    for (const t of [p, l2, t2]) t.dispose();
    return out;
  }
  const oneRow = logits.ndim === 1;
  const rows = oneRow ? 1 : logits.shape[0]!;
  const C = logits.shape[logits.ndim - 1]!;
  const expectT = oneRow ? [] : [rows];
  if (!shapesEqual(targets.shape, expectT)) {
    throw new ShapeError("crossEntropy", `targets shape ${fmtShape(targets.shape)} does not match logits ${fmtShape(logits.shape)} (expected ${fmtShape(expectT)})`);
  }
  const x = contig(logits);
  const t = contig(targets);
  const losses = Tensor.empty(expectT);
  const lse = Tensor.empty([rows]);
  const bad = backend.crossEntropyForward(x, t, losses, lse, rows, C, ignoreIndex, smoothing, x.dtype);
  if (bad >= 0) {
    const value = (t.data() as Int32Array)[bad];
    for (const z of [x, t, losses, lse]) z.dispose();
    throw new ShapeError("crossEntropy", `target ${value} at position ${bad} is out of range for ${C} classes (expected 0..${C - 1} or ignoreIndex ${ignoreIndex})`);
  }
  let count = rows;
  if (reduction === "mean") {
    const tv = t.data() as Int32Array;
    count = 0;
    for (let i = 0; i < tv.length; i++) if (tv[i] !== ignoreIndex) count++;
  }
  let out: Tensor;
  if (reduction === "none") out = losses;
  else {
    // Sum in float64 on the host: the mean over many tokens is the number everyone reads.
    const lv = losses.data() as Float32Array;
    let s = 0;
    for (let i = 0; i < lv.length; i++) s += lv[i]!;
    out = ops.full([], reduction === "mean" ? s / count : s);
    losses.dispose();
  }
  if (!needsGrad(logits)) {
    for (const z of [x, t, lse]) z.dispose();
    return out;
  }
  const ctx = { x: x.saveForBackward(), t: t.saveForBackward(), lse: lse.saveForBackward() };
  for (const z of [x, t, lse]) z.dispose();
  return recordNode("crossEntropy", out, [logits], (gyIn) => {
    const gy = gyIn as Tensor;
    const g = Tensor.empty(ctx.x.shape, ctx.x.dtype);
    if (reduction === "none") {
      const gr = contigAs(gy, "float32");
      backend.crossEntropyBackward(ctx.x, ctx.t, ctx.lse, gr, 0, g, rows, C, ignoreIndex, smoothing, ctx.x.dtype);
      gr.dispose();
    } else {
      const scale = gy.item() / (reduction === "mean" ? count : 1);
      backend.crossEntropyBackward(ctx.x, ctx.t, ctx.lse, null, scale, g, rows, C, ignoreIndex, smoothing, ctx.x.dtype);
    }
    return [g];
  }, [ctx.x, ctx.t, ctx.lse]);
}

// ---- dropout -------------------------------------------------------------------------------------------------

export interface DropoutOptions {
  /** Explicit stream position; by default drawn from the global generator. */
  seed?: number;
  offset?: number;
}

/**
 * Zeroes each element with probability p and scales the rest by 1/(1-p) (inverted dropout).
 * The mask is a function of (seed, offset + position): backward regenerates it, so no mask is
 * stored, and the same positions drop under any parallel layout.
 */
export function dropout(x: Tensor, p = 0.5, training = true, opts: DropoutOptions = {}): Tensor {
  if (!(p >= 0 && p <= 1)) throw new ValueError(`dropout: probability must be in [0, 1], got ${p}`);
  if (!training || p === 0) return recordNode("dropout", x.alias(), [x], (gy) => [(gy as Tensor).alias()]);
  ops.checkFloat("dropout", x);
  const n = x.numel;
  const { seed, offset } = opts.seed !== undefined ? { seed: opts.seed, offset: opts.offset ?? 0 } : nextRandomOffset(n);
  const xc = contig(x);
  const y = Tensor.empty(x.shape, x.dtype);
  backend.dropout(seed, offset, p, xc, y, n, x.dtype);
  xc.dispose();
  return recordNode("dropout", y, [x], (gyIn) => {
    const gy = contig(gyIn as Tensor);
    const gx = Tensor.empty(gy.shape, gy.dtype);
    backend.dropout(seed, offset, p, gy, gx, n, gy.dtype);
    gy.dispose();
    return [gx];
  });
}

// ---- attention ----------------------------------------------------------------------------------------------

export interface AttentionOptions {
  /** Additive float mask, or uint8/int8 boolean mask (nonzero = may attend), broadcast to [..., T, S]. */
  attnMask?: Tensor | null;
  /** Dropout on attention probabilities (applied only when > 0). Default 0. */
  dropoutP?: number;
  /** Causal mask (query i sees keys j <= i, top-left aligned like torch). Default false. */
  isCausal?: boolean;
  /** Score scale. Default 1/sqrt(head dim). */
  scale?: number;
}

/**
 * softmax(q k^T * scale + mask) v, torch.nn.functional.scaled_dot_product_attention.
 * q [..., T, D], k [..., S, D], v [..., S, Dv]. Without a mask or dropout it runs the fused
 * kernel (no T x S tensor kept for backward); otherwise the composed reference path.
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  for (const [n, t] of [["query", q], ["key", k], ["value", v]] as const) {
    ops.checkFloat("scaledDotProductAttention", t);
    if (t.ndim < 2) throw new ShapeError("scaledDotProductAttention", `${n} must have at least 2 dims [..., L, D], got ${fmtShape(t.shape)}`);
  }
  const T = q.shape[q.ndim - 2]!, D = q.shape[q.ndim - 1]!;
  const S = k.shape[k.ndim - 2]!;
  if (k.shape[k.ndim - 1] !== D) throw new ShapeError("scaledDotProductAttention", `query and key head dims differ: ${fmtShape(q.shape)} vs ${fmtShape(k.shape)}`);
  if (v.shape[v.ndim - 2] !== S) throw new ShapeError("scaledDotProductAttention", `key and value lengths differ: ${fmtShape(k.shape)} vs ${fmtShape(v.shape)}`);
  const batch = q.shape.slice(0, -2);
  if (!shapesEqual(k.shape.slice(0, -2), batch) || !shapesEqual(v.shape.slice(0, -2), batch)) {
    throw new ShapeError("scaledDotProductAttention", `batch dims must match: q ${fmtShape(q.shape)}, k ${fmtShape(k.shape)}, v ${fmtShape(v.shape)}`);
  }
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const dropoutP = opts.dropoutP ?? 0;
  const isCausal = opts.isCausal ?? false;
  if (opts.attnMask && isCausal) throw new ValueError("scaledDotProductAttention: pass either attnMask or isCausal, not both");
  if (opts.attnMask || dropoutP > 0 || v.shape[v.ndim - 1] !== D) return attentionComposed(q, k, v, scale, isCausal, opts.attnMask ?? null, dropoutP);

  if (q.dtype !== k.dtype || q.dtype !== v.dtype) {
    throw new ShapeError("scaledDotProductAttention", `query, key and value must share a dtype, got ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  }
  const dt = q.dtype;
  const BH = numel(batch);
  const qc = contig(q), kc = contig(k), vc = contig(v);
  const o = Tensor.empty([...batch, T, D], dt);
  const lse = Tensor.empty([BH, T]);
  backend.attentionForward(qc, kc, vc, o, lse, BH, T, S, D, scale, isCausal, dt);
  if (!needsGrad(q, k, v)) {
    for (const t of [qc, kc, vc, lse]) t.dispose();
    return o;
  }
  const ctx = { q: qc.saveForBackward(), k: kc.saveForBackward(), v: vc.saveForBackward(), o: o.saveForBackward(), lse: lse.saveForBackward() };
  for (const t of [qc, kc, vc, lse]) t.dispose();
  return recordNode("scaledDotProductAttention", o, [q, k, v], (gyIn) => {
    const go = contigAs(gyIn as Tensor, dt);
    const gq = Tensor.empty(ctx.q.shape, dt), gk = Tensor.empty(ctx.k.shape, dt), gv = Tensor.empty(ctx.v.shape, dt);
    backend.attentionBackward(ctx.q, ctx.k, ctx.v, ctx.o, go, ctx.lse, gq, gk, gv, BH, T, S, D, scale, isCausal, dt);
    go.dispose();
    return [gq, gk, gv];
  }, [ctx.q, ctx.k, ctx.v, ctx.o, ctx.lse]);
}

/** The plain reference path: explicit scores, mask, softmax, dropout, weighted sum. */
function attentionComposed(q: Tensor, k: Tensor, v: Tensor, scale: number, isCausal: boolean, mask: Tensor | null, dropoutP: number): Tensor {
  const T = q.shape[q.ndim - 2]!, S = k.shape[k.ndim - 2]!;
  const kt = ops.transpose(k, -1, -2);
  const raw = matmul(q, kt);
  let scores = ops.mul(raw, scale);
  const tmp: Tensor[] = [kt, raw];
  if (isCausal || (mask && mask.dtype !== "float32")) {
    let keep: Tensor;
    if (isCausal) {
      const r = ops.reshape(arangeF(T), [T, 1]);
      const c = ops.reshape(arangeF(S), [1, S]);
      keep = ops.compare("le", c, r);
      tmp.push(r, c);
    } else keep = ops.compare("ne", mask!, 0);
    const masked = ops.where(keep, scores, -Infinity);
    tmp.push(scores, keep);
    scores = masked;
  } else if (mask) {
    const s2 = ops.add(scores, mask);
    tmp.push(scores);
    scores = s2;
  }
  let p = softmax(scores, -1);
  tmp.push(scores);
  if (dropoutP > 0) {
    const pd = dropout(p, dropoutP, true);
    tmp.push(p);
    p = pd;
  }
  const out = matmul(p, v);
  tmp.push(p);
  for (const t of tmp) t.dispose();
  return out;
}

function arangeF(n: number): Tensor {
  const t = Tensor.empty([n]);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  backend.write(t, a);
  return t;
}

/**
 * `F`: the functional API, with PyTorch's argument order and defaults
 * (torch.nn.functional). Everything here is a thin alias of a tensor-layer primitive.
 * @example
 * import { F } from "megalith";
 * const h = F.gelu(F.linear(x, w, b), { approximate: "tanh" });
 */
import { ValueError } from "../core/errors.js";
import {
  Tensor, softmax as softmaxOp, logSoftmax as logSoftmaxOp, layerNorm as layerNormOp, rmsNorm as rmsNormOp,
  embedding as embeddingOp, crossEntropy as crossEntropyOp, dropout as dropoutOp,
  scaledDotProductAttention as sdpaOp, gelu as geluOp, relu as reluOp, silu as siluOp, tanh as tanhOp,
  sigmoid as sigmoidOp, matmul, add, transpose, mean, sub, square,
  type CrossEntropyOptions, type AttentionOptions, type DropoutOptions,
} from "../tensor/index.js";

/** GELU: exact (erf) by default; `{approximate: "tanh"}` is GPT-2's form. */
export function gelu(x: Tensor, opts: { approximate?: "none" | "tanh" } = {}): Tensor {
  return geluOp(x, opts.approximate ?? "none");
}

export const relu = (x: Tensor): Tensor => reluOp(x);
export const silu = (x: Tensor): Tensor => siluOp(x);
export const tanh = (x: Tensor): Tensor => tanhOp(x);
export const sigmoid = (x: Tensor): Tensor => sigmoidOp(x);

/** softmax along `dim` (default -1). */
export const softmax = (x: Tensor, dim = -1): Tensor => softmaxOp(x, dim);
export const logSoftmax = (x: Tensor, dim = -1): Tensor => logSoftmaxOp(x, dim);

/** layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5). */
export const layerNorm = (x: Tensor, normalizedShape: number | readonly number[], weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor =>
  layerNormOp(x, normalizedShape, weight, bias, eps);

export const rmsNorm = (x: Tensor, normalizedShape: number | readonly number[], weight?: Tensor | null, eps = 1e-6): Tensor =>
  rmsNormOp(x, normalizedShape, weight, eps);

/** embedding(input, weight): rows of weight [V, C] by int32 indices. */
export const embedding = (input: Tensor, weight: Tensor): Tensor => embeddingOp(input, weight);

/** cross_entropy(input, target, {ignoreIndex: -100, reduction: "mean", labelSmoothing: 0}). */
export const crossEntropy = (input: Tensor, target: Tensor, opts: CrossEntropyOptions = {}): Tensor => crossEntropyOp(input, target, opts);

/** scaled_dot_product_attention(q, k, v, {attnMask, dropoutP: 0, isCausal: false, scale}). */
export const scaledDotProductAttention = (q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor => sdpaOp(q, k, v, opts);

/** dropout(input, p=0.5, training=true). */
export const dropout = (x: Tensor, p = 0.5, training = true, opts: DropoutOptions = {}): Tensor => dropoutOp(x, p, training, opts);

/** linear(input, weight [out, in], bias [out]) = input @ weight^T + bias. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  if (weight.ndim !== 2) throw new ValueError(`linear: weight must be 2-D [out, in], got ${weight.ndim}-D`);
  const wt = transpose(weight, 0, 1);
  const y = matmul(x, wt);
  wt.dispose();
  if (!bias) return y;
  // The bias joins in the product's dtype (under autocast a bfloat16 product keeps the output
  // bfloat16, as torch's addmm does; the recorded cast returns its gradient in float32).
  const b = bias.dtype === y.dtype ? bias : bias.to(y.dtype);
  const out = add(y, b);
  y.dispose();
  if (b !== bias) b.dispose();
  return out;
}

/** mse_loss(input, target) with mean reduction. */
export function mseLoss(input: Tensor, target: Tensor): Tensor {
  const d = sub(input, target);
  const s = square(d);
  const out = mean(s);
  d.dispose();
  s.dispose();
  return out;
}

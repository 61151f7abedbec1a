/**
 * Int8 weight-only quantization for serving (`--quantize int8`).
 *
 * Each Linear weight W [out, in] becomes int8 q [out, in] plus one float32 scale per output
 * channel (symmetric absmax: scale = max|W[n, :]| / 127, q = round(W / scale)); activations,
 * biases and accumulation stay float32. The native kernel (native/src/kernels_quant.cc)
 * computes y = (x @ q^T) * scales + bias without materialising W, so decode (one row of x per
 * sequence) reads a quarter of the weight bytes it reads in float32.
 *
 * What is quantized: the four projections of every block (attn.c_attn, attn.c_proj,
 * mlp.c_fc, mlp.c_proj), i.e. all of the per-layer matmul weights. The token and position
 * embeddings and the LM head stay float32: GPT-2 ties the LM head to `wte`, which is also
 * read row-wise as the embedding, the head is one matmul per sampled token (not per layer),
 * and the logits are what sampling and logprobs see, so that is where int8 error would be
 * most visible. LayerNorms are tiny and stay float32.
 *
 * How a forward pass uses it: the model's Linear modules are left untouched (training code
 * and `GPT.forward` keep running float32). `quantizeModelInt8` records, in a WeakMap, the
 * QuantizedLinear for each projection; a forward loop that wants int8 calls
 * `quantizedForward(linear, x)` instead of `linear.forward(x)`, which falls back to the
 * float32 Linear when none is registered. Inference only: no autograd graph is recorded.
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import { native } from "../../backend/native/index.js";
import {
  Tensor, tensor, withScope, withCategory, keep, embedding, layerNorm, crossEntropy, scaledDotProductAttention, gelu,
} from "../../tensor/index.js";
import { noGrad } from "../../autograd/index.js";
import type { Linear } from "../../nn/index.js";
import type { GPT } from "../../models/index.js";

/**
 * A Linear whose weight is stored as per-output-channel int8. Forward-only.
 * @example
 * const ql = quantizeLinear(block.mlp.c_fc);
 * const y = ql.forward(x);    // x (..., in) float32 -> y (..., out) float32
 */
export class QuantizedLinear {
  /** int8 [out, in] weight codes. */
  readonly q: Tensor;
  /** float32 [out] per-output-channel scales: W[n, :] ~= scales[n] * q[n, :]. */
  readonly scales: Tensor;
  /** float32 [out], shared with the source Linear (not copied); null if it has none. */
  readonly bias: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;

  constructor(q: Tensor, scales: Tensor, bias: Tensor | null) {
    if (q.dtype !== "int8" || q.ndim !== 2) throw new ValueError(`QuantizedLinear: q must be an int8 [out, in] tensor, got ${q.dtype} ${fmtShape(q.shape)}`);
    const [out, inF] = q.shape as [number, number];
    if (scales.dtype !== "float32" || scales.ndim !== 1 || scales.shape[0] !== out) {
      throw new ValueError(`QuantizedLinear: scales must be float32 [${out}], got ${scales.dtype} ${fmtShape(scales.shape)}`);
    }
    if (bias && (bias.dtype !== "float32" || bias.ndim !== 1 || bias.shape[0] !== out || !bias.isContiguous)) {
      throw new ValueError(`QuantizedLinear: bias must be a contiguous float32 [${out}], got ${bias.dtype} ${fmtShape(bias.shape)}`);
    }
    this.q = q;
    this.scales = scales;
    this.bias = bias;
    this.inFeatures = inF;
    this.outFeatures = out;
  }

  /** x (..., in) float32 -> (..., out) float32 = x @ (scales * q)^T + bias. */
  forward(x: Tensor): Tensor {
    const K = this.inFeatures, N = this.outFeatures;
    if (x.dtype !== "float32" || x.ndim < 1 || x.shape[x.ndim - 1] !== K) {
      throw new ValueError(`QuantizedLinear.forward: x must be float32 (..., ${K}), got ${x.dtype} ${fmtShape(x.shape)}`);
    }
    const M = x.numel / K;
    const y = Tensor.empty([...x.shape.slice(0, -1), N]);
    const xc = x.contiguous();
    native.matmulInt8(xc.ptr, this.q.ptr, this.scales.ptr, this.bias ? this.bias.ptr : null, y.ptr, M, N, K);
    xc.dispose();
    return y;
  }

  /** The float32 weight the int8 codes stand for, scales[n] * q[n, k] (for checks and debugging). */
  dequantize(): Tensor {
    return this.q.float().mul(this.scales.view([this.outFeatures, 1]));
  }

  /** Bytes of the quantized weight (codes + scales; the bias is shared). */
  get nbytes(): number {
    return this.q.numel + 4 * this.scales.numel;
  }

  /** Frees the codes and scales (the bias belongs to the source Linear). */
  dispose(): void {
    this.q.dispose();
    this.scales.dispose();
  }
}

/**
 * Quantizes a Linear's weight per output channel. The result is kept out of any enclosing
 * `withScope` and counted as parameter memory; the Linear itself is not modified.
 * @example
 * const ql = quantizeLinear(model.h[0]!.attn.c_attn);
 */
export function quantizeLinear(linear: Linear): QuantizedLinear {
  const w = linear.weight;
  if (w.dtype !== "float32" || w.ndim !== 2) throw new ValueError(`quantizeLinear: weight must be float32 [out, in], got ${w.dtype} ${fmtShape(w.shape)}`);
  const [out, inF] = w.shape as [number, number];
  return withCategory("params", () => {
    const wc = w.contiguous();
    const q = keep(Tensor.empty([out, inF], "int8"));
    const scales = keep(Tensor.empty([out]));
    native.quantInt8Rowwise(wc.ptr, q.ptr, scales.ptr, out, inF);
    wc.dispose();
    return new QuantizedLinear(q, scales, linear.bias);
  });
}

// Linear -> its int8 stand-in. A WeakMap so a model that is dropped takes its entries with it.
const registry = new WeakMap<Linear, QuantizedLinear>();

/** The QuantizedLinear registered for `linear` by `quantizeModelInt8`, if any. */
export function quantized(linear: Linear): QuantizedLinear | undefined {
  return registry.get(linear);
}

/**
 * `linear.forward(x)`, through the int8 kernel when `linear` has been quantized.
 * @example
 * const qkv = quantizedForward(block.attn.c_attn, h);   // (N, 3C)
 */
export function quantizedForward(linear: Linear, x: Tensor): Tensor {
  const ql = registry.get(linear);
  return ql ? ql.forward(x) : linear.forward(x);
}

/** The four projection Linears of every block, the ones `quantizeModelInt8` replaces. */
export function projectionLinears(model: GPT): Linear[] {
  return model.h.flatMap((b) => [b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj]);
}

/** What `quantizeModelInt8` did. */
export interface QuantizationSummary {
  /** Linears quantized (4 per block). */
  linears: number;
  /** Their weight bytes in float32. */
  bytesFloat32: number;
  /** Their weight bytes as int8 codes + float32 scales. */
  bytesInt8: number;
}

/**
 * Registers an int8 QuantizedLinear for the four projections of every block (idempotent:
 * already-quantized Linears are skipped). Embeddings and the (tied) LM head stay float32;
 * see the file comment for why. The float32 weights stay in the model.
 * @example
 * quantizeModelInt8(model);
 * const y = quantizedForward(model.h[0]!.mlp.c_fc, x);   // int8 path
 */
export function quantizeModelInt8(model: GPT): QuantizationSummary {
  const summary: QuantizationSummary = { linears: 0, bytesFloat32: 0, bytesInt8: 0 };
  for (const lin of projectionLinears(model)) {
    let ql = registry.get(lin);
    if (!ql) {
      ql = quantizeLinear(lin);
      registry.set(lin, ql);
    }
    summary.linears++;
    summary.bytesFloat32 += 4 * lin.weight.numel;
    summary.bytesInt8 += ql.nbytes;
  }
  return summary;
}

/** Unregisters and frees the int8 projections of `model` (it runs float32 again). */
export function dequantizeModel(model: GPT): void {
  for (const lin of projectionLinears(model)) {
    registry.get(lin)?.dispose();
    registry.delete(lin);
  }
}

/** Options of `gptLogits`. */
export interface QuantForwardOptions {
  /** Use the registered int8 projections (true) or the float32 Linears (false). Default true. */
  quantized?: boolean;
}

/**
 * GPT forward (B, T) int32 -> (B, T, V) logits with the projections routed through
 * `quantizedForward`; the same computation as `GPT.forward` in eval mode (no dropout, no KV
 * cache). Used for quality checks of the int8 model; the serving runner has its own paged loop.
 */
export function gptLogits(model: GPT, idx: Tensor, opts: QuantForwardOptions = {}): Tensor {
  const useQ = opts.quantized ?? true;
  const proj = (lin: Linear, x: Tensor) => (useQ ? quantizedForward(lin, x) : lin.forward(x));
  if (idx.dtype !== "int32" || idx.ndim !== 2) throw new ValueError(`gptLogits: idx must be int32 (B, T), got ${idx.dtype} ${fmtShape(idx.shape)}`);
  const c = model.config;
  const [B, T] = idx.shape as [number, number];
  if (T > c.blockSize) throw new ValueError(`gptLogits: sequence length ${T} exceeds the model's context of ${c.blockSize}`);
  const C = c.nEmbd, H = c.nHead, D = C / H;
  return noGrad(() => {
    const pos = tensor(Int32Array.from({ length: T }, (_, i) => i), { dtype: "int32" });
    let x = embedding(idx, model.wte.weight).add(embedding(pos, model.wpe.weight));   // (B, T, C)
    for (const block of model.h) {
      const qkv = proj(block.attn.c_attn, block.ln_1.forward(x));                     // (B, T, 3C)
      const [q, k, v] = qkv.split(C, -1).map((t) => t.view([B, T, H, D]).transpose(1, 2));   // 3 x (B, H, T, D)
      const y = scaledDotProductAttention(q!, k!, v!, { isCausal: true });           // (B, H, T, D)
      x = x.add(proj(block.attn.c_proj, y.transpose(1, 2).reshape([B, T, C])));       // (B, T, C)
      const hid = gelu(proj(block.mlp.c_fc, block.ln_2.forward(x)), "tanh");          // (B, T, 4C)
      x = x.add(proj(block.mlp.c_proj, hid));                                         // (B, T, C)
    }
    const hf = layerNorm(x, [C], model.ln_f.weight, model.ln_f.bias, c.layerNormEpsilon);
    return hf.matmul(model.wte.weight.t());                                           // (B, T, V)
  });
}

/** Options of `perplexity`. */
export interface PerplexityOptions {
  /** Tokens per window (each window predicts its tokens 1..blockSize from 0..blockSize-1). Default: the model's context. */
  blockSize?: number;
  /** Use the int8 projections (the model must have been through `quantizeModelInt8`). Default false. */
  quantized?: boolean;
}

/**
 * Perplexity exp(mean NLL) of a token stream, scored in non-overlapping windows of
 * `blockSize + 1` tokens (a trailing window of at least 2 tokens is scored too). For
 * reporting int8 quality next to float32 on the same stream.
 * @example
 * quantizeModelInt8(model);
 * const fp32 = perplexity(model, ids, { blockSize: 128 });
 * const int8 = perplexity(model, ids, { blockSize: 128, quantized: true });
 */
export function perplexity(model: GPT, tokens: ArrayLike<number>, opts: PerplexityOptions = {}): number {
  const bs = opts.blockSize ?? model.config.blockSize;
  if (!Number.isInteger(bs) || bs < 1 || bs > model.config.blockSize) {
    throw new ValueError(`perplexity: blockSize must be an integer in [1, ${model.config.blockSize}], got ${bs}`);
  }
  if (tokens.length < 2) throw new ValueError(`perplexity: need at least 2 tokens, got ${tokens.length}`);
  const quant = opts.quantized ?? false;
  if (quant && !projectionLinears(model).every((l) => registry.has(l))) {
    throw new ValueError("perplexity: quantized: true needs quantizeModelInt8(model) first");
  }
  const ids = Int32Array.from(tokens);
  let nll = 0, count = 0;
  for (let s = 0; s + 1 < ids.length; s += bs) {
    const T = Math.min(bs, ids.length - 1 - s);
    nll += withScope(() => {
      const x = tensor(ids.subarray(s, s + T), { shape: [1, T], dtype: "int32" });
      const y = tensor(ids.subarray(s + 1, s + 1 + T), { shape: [T], dtype: "int32" });
      const logits = gptLogits(model, x, { quantized: quant });                      // (1, T, V)
      return noGrad(() => crossEntropy(logits.view([T, model.config.vocabSize]), y, { reduction: "sum" }).item());
    });
    count += T;
  }
  return Math.exp(nll / count);
}

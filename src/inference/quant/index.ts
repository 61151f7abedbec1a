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
 * mlp.c_fc, mlp.c_proj), i.e. all of the per-layer matmul weights. By default the token and
 * position embeddings and the LM head stay float32: the logits are what sampling and logprobs
 * see, so that is where int8 error would be most visible. But the head is the largest single
 * read of a decode step (GPT-2: 768 x 50257 floats, 154 MB, against 340 MB for all twelve
 * blocks), so with the blocks in int8 it is about 60% of the bytes per token; `lmHead: true`
 * adds an int8 copy of the tied `wte` (read as [V, C] rows, one scale per vocabulary entry)
 * for the head only. The embedding keeps reading the float32 rows, so this costs V * C bytes
 * of extra memory. `npm run bench -- serve` reports the perplexity of both settings.
 * LayerNorms are tiny and stay float32.
 *
 * How a forward pass uses it: the model's Linear modules are left untouched (training code
 * and `GPT.forward` keep running float32). `quantizeModelInt8` records, in a WeakMap, the
 * QuantizedLinear for each projection (and, with `lmHead`, one for the model's head); a
 * forward loop that wants int8 calls `quantizedForward(linear, x)` instead of
 * `linear.forward(x)` and `lmHeadForward(model, h)` instead of `h @ wte^T`, which fall back to
 * float32 when nothing is registered. Inference only: no autograd graph is recorded.
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import { native } from "../../backend/native/index.js";
import {
  Tensor, tensor, withCategory, keep, embedding, layerNorm, scaledDotProductAttention, gelu,
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
  return quantizeWeight(linear.weight, linear.bias, "quantizeLinear");
}

function quantizeWeight(w: Tensor, bias: Tensor | null, what: string): QuantizedLinear {
  if (w.dtype !== "float32" || w.ndim !== 2) throw new ValueError(`${what}: weight must be float32 [out, in], got ${w.dtype} ${fmtShape(w.shape)}`);
  const [out, inF] = w.shape as [number, number];
  return withCategory("params", () => {
    const wc = w.contiguous();
    const q = keep(Tensor.empty([out, inF], "int8"));
    const scales = keep(Tensor.empty([out]));
    native.quantInt8Rowwise(wc.ptr, q.ptr, scales.ptr, out, inF);
    wc.dispose();
    return new QuantizedLinear(q, scales, bias);
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

// GPT -> the int8 stand-in for its LM head (x @ wte^T), when quantized with lmHead: true.
const heads = new WeakMap<GPT, QuantizedLinear>();

/** The int8 LM head registered for `model` by `quantizeModelInt8(model, { lmHead: true })`, if any. */
export function quantizedLmHead(model: GPT): QuantizedLinear | undefined {
  return heads.get(model);
}

/**
 * The LM head, h (..., C) -> logits (..., V) = h @ wte^T, through the int8 kernel when the
 * model's head has been quantized.
 * @example
 * const logits = lmHeadForward(model, hf);   // (S, V)
 */
export function lmHeadForward(model: GPT, h: Tensor): Tensor {
  const ql = heads.get(model);
  return ql ? ql.forward(h) : h.matmul(model.wte.weight.t());
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
  /** Whether the LM head is int8 too (its bytes are included above). */
  lmHead: boolean;
}

/** Options of `quantizeModelInt8`. */
export interface QuantizeOptions {
  /** Also give the (tied) LM head an int8 copy of `wte`; see the file comment. Default false. */
  lmHead?: boolean;
}

/**
 * Registers an int8 QuantizedLinear for the four projections of every block (idempotent:
 * already-quantized Linears are skipped). Embeddings and the (tied) LM head stay float32;
 * see the file comment for why. The float32 weights stay in the model.
 * @example
 * quantizeModelInt8(model);
 * const y = quantizedForward(model.h[0]!.mlp.c_fc, x);   // int8 path
 */
export function quantizeModelInt8(model: GPT, opts: QuantizeOptions = {}): QuantizationSummary {
  const summary: QuantizationSummary = { linears: 0, bytesFloat32: 0, bytesInt8: 0, lmHead: false };
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
  if (opts.lmHead && !heads.has(model)) heads.set(model, quantizeWeight(model.wte.weight, null, "quantizeModelInt8 (LM head)"));
  const head = heads.get(model);
  if (head) {
    summary.lmHead = true;
    summary.bytesFloat32 += 4 * model.wte.weight.numel;
    summary.bytesInt8 += head.nbytes;
  }
  return summary;
}

/** Unregisters and frees the int8 projections (and head) of `model` (it runs float32 again). */
export function dequantizeModel(model: GPT): void {
  for (const lin of projectionLinears(model)) {
    registry.get(lin)?.dispose();
    registry.delete(lin);
  }
  heads.get(model)?.dispose();
  heads.delete(model);
}

/** Options of `gptLogits`. */
export interface QuantForwardOptions {
  /** Use the registered int8 projections and head (true) or the float32 weights (false). Default true. */
  quantized?: boolean;
}

/**
 * GPT forward (B, T) int32 -> (B, T, V) logits with the projections routed through
 * `quantizedForward`; the same computation as `GPT.forward` in eval mode (no dropout, no KV
 * cache). Used for quality checks of the int8 model (inference/eval's `perplexity`); the serving
 * runner has its own paged loop.
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
    return useQ ? lmHeadForward(model, hf) : hf.matmul(model.wte.weight.t());       // (B, T, V)
  });
}

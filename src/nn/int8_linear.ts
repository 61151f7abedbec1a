/**
 * Int8Linear: a forward-only stand-in for a Linear whose weight is stored as per-output-channel
 * int8 codes plus float32 scales (symmetric absmax; see tensor/quant_ops.ts). Activations,
 * bias and accumulation stay float32. `quantizeModelInt8` (inference/quant) swaps it in for
 * the projections of a model with `Module.setModule`; the model's forward does not change.
 *
 * The bias is the source Linear's own parameter (shared, not copied), registered under the
 * same name, so a quantized model's `namedParameters()` still lists `h.0.attn.c_attn.bias`;
 * the int8 codes and scales are not parameters (nothing trains them).
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { Tensor, keep, withCategory, quantizeInt8Rowwise, matmulInt8, isGradEnabled, dtypeSize } from "./_deps.js";
import { Module, type Parameter } from "./module.js";
import type { Linear, Projection } from "./layers.js";

/**
 * y = x @ (scales * q)^T + bias with q int8 [out, in]. Forward-only.
 * @example
 * const q = Int8Linear.fromLinear(block.mlp.c_fc as Linear);
 * const y = noGrad(() => q.forward(x));    // x (..., in) float32 -> y (..., out) float32
 */
export class Int8Linear extends Module implements Projection {
  /** int8 [out, in] weight codes. */
  readonly q: Tensor;
  /** float32 [out] per-output-channel scales: W[n, :] ~= scales[n] * q[n, :]. */
  readonly scales: Tensor;
  /** float32 [out], shared with the source Linear; null if it has none. */
  readonly bias: Parameter | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /**
   * The Linear this was quantized from, kept (not registered) so `dequantizeModel` can put it
   * back: its float32 weight stays in memory. null when built from a bare weight (a tied head).
   */
  readonly source: Linear | null;

  constructor(q: Tensor, scales: Tensor, bias: Parameter | null, source: Linear | null = null) {
    super();
    if (q.dtype !== "int8" || q.ndim !== 2) throw new ValueError(`Int8Linear: q must be an int8 [out, in] tensor, got ${q.dtype} ${fmtShape(q.shape)}`);
    const [out, inF] = q.shape as [number, number];
    if (scales.dtype !== "float32" || scales.ndim !== 1 || scales.shape[0] !== out) {
      throw new ValueError(`Int8Linear: scales must be float32 [${out}], got ${scales.dtype} ${fmtShape(scales.shape)}`);
    }
    if (bias && ((bias.dtype !== "float32" && bias.dtype !== "bfloat16" && bias.dtype !== "float16") || bias.ndim !== 1 || bias.shape[0] !== out || !bias.isContiguous)) {
      throw new ValueError(`Int8Linear: bias must be a contiguous floating [${out}] tensor, got ${bias.dtype} ${fmtShape(bias.shape)}`);
    }
    this.q = q;
    this.scales = scales;
    this.bias = bias ? this.param("bias", bias) : null;
    this.inFeatures = inF;
    this.outFeatures = out;
    this.source = source;
    this.training = false;
  }

  /**
   * Quantizes a float32 weight [out, in] per output channel; the codes and scales survive any
   * enclosing `withScope` and count as parameter memory.
   */
  static fromWeight(w: Tensor, bias: Parameter | null = null, source: Linear | null = null): Int8Linear {
    if ((w.dtype !== "float32" && w.dtype !== "bfloat16" && w.dtype !== "float16") || w.ndim !== 2) {
      throw new ValueError(`Int8Linear.fromWeight: weight must be a floating [out, in] tensor, got ${w.dtype} ${fmtShape(w.shape)}`);
    }
    return withCategory("params", () => {
      const { q, scales } = quantizeInt8Rowwise(w);
      return new Int8Linear(keep(q), keep(scales), bias, source);
    });
  }

  /** The int8 stand-in for `linear` (which is not modified). */
  static fromLinear(linear: Linear): Int8Linear {
    return Int8Linear.fromWeight(linear.weight, linear.bias, linear);
  }

  /** x (..., in) -> (..., out) in x's dtype (float32, bfloat16 or float16). Refuses inputs that need a gradient (no backward exists). */
  forward(x: Tensor): Tensor {
    if ((x.dtype !== "float32" && x.dtype !== "bfloat16" && x.dtype !== "float16") || x.ndim < 1 || x.shape[x.ndim - 1] !== this.inFeatures) {
      throw new ValueError(`Int8Linear.forward: x must be floating (..., ${this.inFeatures}), got ${x.dtype} ${fmtShape(x.shape)}`);
    }
    if (x.requiresGrad && isGradEnabled()) {
      throw new ValueError("Int8Linear.forward: int8 layers are forward-only; run the model under noGrad() (or dequantizeModel it to train)");
    }
    return matmulInt8(x, this.q, this.scales, this.bias);
  }

  /** The float32 weight the int8 codes stand for, scales[n] * q[n, k] (for checks and debugging). */
  dequantize(): Tensor {
    const s = this.scales.view([this.outFeatures, 1]);
    const w = this.q.float().mul(s);
    s.dispose();
    return w;
  }

  /** Bytes of the quantized weight (codes + scales; the bias is shared). */
  get nbytes(): number {
    return this.q.numel * dtypeSize(this.q.dtype) + this.scales.numel * dtypeSize(this.scales.dtype);
  }

  /** Frees the codes and scales (the bias belongs to the source Linear). */
  dispose(): void {
    this.q.dispose();
    this.scales.dispose();
  }
}

/**
 * Int8 weight-only quantization ops, as tensor functions (native/src/kernels_quant.cc).
 *
 * A weight W [out, in] is stored as int8 codes q [out, in] and one float32 scale per output
 * channel (symmetric absmax: scale[n] = max|W[n, :]| / 127, q = round(W / scale)). The matmul
 * computes y = (x @ q^T) * scales + bias in float32 without materialising W, so a decode step
 * reads a quarter of the weight bytes.
 *
 * Forward-only: no autograd graph is recorded. Activations may be float32, bfloat16 or float16
 * (y comes out in x's dtype, accumulation is float32); the weight being quantized may be any
 * floating dtype.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { backend } from "../backend/index.js";
import { isFloating } from "./dtype.js";
import { Tensor } from "./tensor.js";

/**
 * Per-row absmax int8 quantization of a float32 [rows, cols] weight.
 * Returns q int8 [rows, cols] and scales float32 [rows] with w[r, :] ~= scales[r] * q[r, :].
 * @example
 * const { q, scales } = quantizeInt8Rowwise(linear.weight);
 */
export function quantizeInt8Rowwise(w: Tensor): { q: Tensor; scales: Tensor } {
  if (!isFloating(w.dtype) || w.ndim !== 2) throw new ValueError(`quantizeInt8Rowwise: w must be a floating [rows, cols] tensor, got ${w.dtype} ${fmtShape(w.shape)}`);
  const [rows, cols] = w.shape as [number, number];
  const wc = w.isContiguous ? w : w.contiguous();
  const q = Tensor.empty([rows, cols], "int8");
  const scales = Tensor.empty([rows]);
  backend.quantInt8Rowwise(wc, q, scales, rows, cols, w.dtype);
  if (wc !== w) wc.dispose();
  return { q, scales };
}

/**
 * y (..., N) = x (..., K) @ (scales * q)^T + bias, with q int8 [N, K], scales float32 [N] and
 * an optional contiguous float32 bias [N]. x may be strided (it is made contiguous).
 * @example
 * const y = matmulInt8(x, q, scales, bias);   // (B, T, K) -> (B, T, N)
 */
export function matmulInt8(x: Tensor, q: Tensor, scales: Tensor, bias: Tensor | null): Tensor {
  if (q.dtype !== "int8" || q.ndim !== 2 || !q.isContiguous) throw new ValueError(`matmulInt8: q must be contiguous int8 [N, K], got ${q.dtype} ${fmtShape(q.shape)}`);
  const [N, K] = q.shape as [number, number];
  if (scales.dtype !== "float32" || scales.ndim !== 1 || scales.shape[0] !== N || !scales.isContiguous) {
    throw new ValueError(`matmulInt8: scales must be contiguous float32 [${N}], got ${scales.dtype} ${fmtShape(scales.shape)}`);
  }
  if (bias && (!isFloating(bias.dtype) || bias.ndim !== 1 || bias.shape[0] !== N || !bias.isContiguous)) {
    throw new ValueError(`matmulInt8: bias must be a contiguous floating [${N}] tensor, got ${bias.dtype} ${fmtShape(bias.shape)}`);
  }
  if (!isFloating(x.dtype) || x.ndim < 1 || x.shape[x.ndim - 1] !== K) {
    throw new ValueError(`matmulInt8: x must be floating (..., ${K}), got ${x.dtype} ${fmtShape(x.shape)}`);
  }
  const M = x.numel / K;
  const y = Tensor.empty([...x.shape.slice(0, -1), N], x.dtype);
  const xc = x.isContiguous ? x : x.contiguous();
  // The kernel reads the bias in x's dtype (a float32 bias beside bfloat16 activations is converted).
  const b = bias && bias.dtype !== x.dtype ? bias.to(x.dtype) : bias;
  backend.matmulInt8(xc, q, scales, b, y, M, N, K, x.dtype);
  if (b && b !== bias) b.dispose();
  if (xc !== x) xc.dispose();
  return y;
}

/**
 * Int8 weight-only quantization ops, as tensor functions (native/src/kernels_quant.cc).
 *
 * A weight W [out, in] is stored as int8 codes q [out, in] and one float32 scale per output
 * channel (symmetric absmax: scale[n] = max|W[n, :]| / 127, q = round(W / scale)). The matmul
 * computes y = (x @ q^T) * scales + bias in float32 without materialising W, so a decode step
 * reads a quarter of the weight bytes.
 *
 * Forward-only: no autograd graph is recorded. The native calls still take `t.ptr` until the
 * Backend seam owns them; nothing here computes a byte offset.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { native } from "../backend/native/index.js";
import { Tensor } from "./tensor.js";

/**
 * Per-row absmax int8 quantization of a float32 [rows, cols] weight.
 * Returns q int8 [rows, cols] and scales float32 [rows] with w[r, :] ~= scales[r] * q[r, :].
 * @example
 * const { q, scales } = quantizeInt8Rowwise(linear.weight);
 */
export function quantizeInt8Rowwise(w: Tensor): { q: Tensor; scales: Tensor } {
  if (w.dtype !== "float32" || w.ndim !== 2) throw new ValueError(`quantizeInt8Rowwise: w must be float32 [rows, cols], got ${w.dtype} ${fmtShape(w.shape)}`);
  const [rows, cols] = w.shape as [number, number];
  const wc = w.isContiguous ? w : w.contiguous();
  const q = Tensor.empty([rows, cols], "int8");
  const scales = Tensor.empty([rows]);
  native.quantInt8Rowwise(wc.ptr, q.ptr, scales.ptr, rows, cols);
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
  if (bias && (bias.dtype !== "float32" || bias.ndim !== 1 || bias.shape[0] !== N || !bias.isContiguous)) {
    throw new ValueError(`matmulInt8: bias must be contiguous float32 [${N}], got ${bias.dtype} ${fmtShape(bias.shape)}`);
  }
  if (x.dtype !== "float32" || x.ndim < 1 || x.shape[x.ndim - 1] !== K) {
    throw new ValueError(`matmulInt8: x must be float32 (..., ${K}), got ${x.dtype} ${fmtShape(x.shape)}`);
  }
  const M = x.numel / K;
  const y = Tensor.empty([...x.shape.slice(0, -1), N]);
  const xc = x.isContiguous ? x : x.contiguous();
  native.matmulInt8(xc.ptr, q.ptr, scales.ptr, bias ? bias.ptr : null, y.ptr, M, N, K);
  if (xc !== x) xc.dispose();
  return y;
}

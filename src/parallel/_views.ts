/**
 * Flat ranges of tensors as views, so data-parallel code moves gradient and parameter elements
 * with tensor ops (`copy_`, `add_`, `zero_`) and never computes a byte address.
 */
import { noGrad } from "../autograd/index.js";
import type { Tensor } from "../tensor/index.js";

/**
 * A 1-D view of elements [start, start + len) of contiguous `t` (flattened), outside autograd.
 * The caller disposes it.
 */
export function flatRange(t: Tensor, start: number, len: number): Tensor {
  return noGrad(() => {
    const flat = t.reshape([t.numel]);
    const v = flat.narrow(0, start, len);
    flat.dispose();
    return v;
  });
}

/** dst[dstStart .. +len) = src[srcStart .. +len), both read as flat. */
export function copyRange(dst: Tensor, dstStart: number, src: Tensor, srcStart: number, len: number): void {
  const d = flatRange(dst, dstStart, len), s = flatRange(src, srcStart, len);
  noGrad(() => d.copy_(s));
  d.dispose();
  s.dispose();
}

/** dst[start .. +len) = 0. */
export function zeroRange(dst: Tensor, start: number, len: number): void {
  if (len <= 0) return;
  const d = flatRange(dst, start, len);
  noGrad(() => d.zero_());
  d.dispose();
}

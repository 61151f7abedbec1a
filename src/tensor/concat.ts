/**
 * Concatenation and splitting: cat, stack (copies), split, chunk (views). cat's gradient sits
 * with the others in gradients.ts.
 */
import { ShapeError, fmtShape } from "../core/errors.js";
import { backend } from "../backend/index.js";
import { recordNode } from "../autograd/engine.js";
import { Tensor } from "./tensor.js";
import { dtypeSize } from "./dtype.js";
import { contiguousStrides, normDim, shapesEqual } from "./shape.js";
import { gradients as G } from "./gradients.js";
import { slice, unsqueeze } from "./ops.js";

// ---- concat / split / stack ---------------------------------------------------------------------------

/** Concatenates along `dim` (torch.cat). */
export function cat(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new ShapeError("cat", "expected a non-empty list of tensors");
  const first = tensors[0]!;
  const d = normDim(dim, first.ndim, "cat");
  for (const t of tensors) {
    if (t.ndim !== first.ndim || t.shape.some((s, i) => i !== d && s !== first.shape[i])) {
      throw new ShapeError("cat", `all tensors must match except in dimension ${dim}: got ${fmtShape(first.shape)} and ${fmtShape(t.shape)}`);
    }
    if (t.dtype !== first.dtype) throw new ShapeError("cat", `dtype mismatch: ${first.dtype} vs ${t.dtype}`);
  }
  const shape = [...first.shape];
  shape[d] = tensors.reduce((acc, t) => acc + t.shape[d]!, 0);
  const out = Tensor.empty(shape, first.dtype);
  const ostr = contiguousStrides(shape);
  let off = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    backend.copyStrided(dtypeSize(t.dtype), t, [...t.strides], out.at(off * ostr[d]!), ostr, [...t.shape]);
    off += t.shape[d]!;
    sizes.push(t.shape[d]!);
  }
  const ctx = { dim: d, sizes };
  return recordNode("cat", out, [...tensors], (gy) => G.cat(ctx, gy as Tensor));
}

/** Stacks along a new dim (torch.stack). */
export function stack(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new ShapeError("stack", "expected a non-empty list of tensors");
  const d = normDim(dim, tensors[0]!.ndim + 1, "stack");
  for (const t of tensors) {
    if (!shapesEqual(t.shape, tensors[0]!.shape)) throw new ShapeError("stack", `all tensors must have the same shape: ${fmtShape(tensors[0]!.shape)} vs ${fmtShape(t.shape)}`);
  }
  const us = tensors.map((t) => unsqueeze(t, d));
  const out = cat(us, d);
  for (const u of us) u.dispose();
  return out;
}

/** Splits into chunks of `size` (or the given list of sizes) along `dim`: views. */
export function split(x: Tensor, sizeOrSections: number | number[], dim = 0): Tensor[] {
  const d = normDim(dim, x.ndim, "split");
  const n = x.shape[d]!;
  let sizes: number[];
  if (Array.isArray(sizeOrSections)) {
    sizes = sizeOrSections;
    if (sizes.reduce((p, q) => p + q, 0) !== n) throw new ShapeError("split", `sizes [${sizes.join(", ")}] do not sum to ${n} (dimension ${dim} of ${fmtShape(x.shape)})`);
  } else {
    if (!Number.isInteger(sizeOrSections) || sizeOrSections <= 0) throw new ShapeError("split", `split size must be a positive integer, got ${sizeOrSections}`);
    sizes = [];
    for (let s = 0; s < n; s += sizeOrSections) sizes.push(Math.min(sizeOrSections, n - s));
  }
  const out: Tensor[] = [];
  let s = 0;
  for (const len of sizes) {
    out.push(slice(x, d, s, s + len));
    s += len;
  }
  return out;
}

export function chunk(x: Tensor, chunks: number, dim = 0): Tensor[] {
  const n = x.shape[normDim(dim, x.ndim, "chunk")]!;
  return split(x, Math.ceil(n / chunks), dim);
}

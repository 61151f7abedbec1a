/** Shape and stride arithmetic shared by tensor ops. */
import { ShapeError, fmtShape } from "../core/errors.js";

export type Shape = readonly number[];

export function numel(shape: Shape): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Row-major (C-contiguous) strides, in elements. */
export function contiguousStrides(shape: Shape): number[] {
  const st = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= shape[i]!;
  }
  return st;
}

/** Normalizes a possibly negative dim; throws naming the op when out of range. */
export function normDim(dim: number, ndim: number, op: string): number {
  const n = Math.max(ndim, 1);
  if (!Number.isInteger(dim) || dim < -n || dim >= n) {
    throw new ShapeError(op, `dim ${dim} is out of range for a tensor with ${ndim} dimension(s) (expected ${-n}..${n - 1})`);
  }
  return dim < 0 ? dim + n : dim;
}

/** NumPy/PyTorch broadcasting of two shapes. */
export function broadcastShapes(a: Shape, b: Shape, op: string): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(op, `shapes ${fmtShape(a)} and ${fmtShape(b)} cannot be broadcast together (dimension ${i}: ${da} vs ${db})`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Strides that read a tensor of `shape`/`strides` as if broadcast to `target` (0 on broadcast dims). */
export function broadcastStrides(shape: Shape, strides: readonly number[], target: Shape): number[] {
  const out = new Array<number>(target.length).fill(0);
  const off = target.length - shape.length;
  for (let i = 0; i < shape.length; i++) out[off + i] = shape[i] === 1 && target[off + i] !== 1 ? 0 : strides[i]!;
  return out;
}

export function shapesEqual(a: Shape, b: Shape): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Validates a user-given shape: non-negative integers; resolves a single -1 against `total`. */
export function resolveShape(shape: Shape, total: number | null, op: string): number[] {
  let infer = -1;
  let known = 1;
  const out = [...shape];
  for (let i = 0; i < out.length; i++) {
    const s = out[i]!;
    if (s === -1 && total !== null) {
      if (infer >= 0) throw new ShapeError(op, `only one dimension can be -1, got ${fmtShape(shape)}`);
      infer = i;
    } else if (!Number.isInteger(s) || s < 0) {
      throw new ShapeError(op, `invalid shape ${fmtShape(shape)}: dimensions must be non-negative integers`);
    } else known *= s;
  }
  if (infer >= 0) {
    if (known === 0 || total! % known !== 0) throw new ShapeError(op, `shape ${fmtShape(shape)} is invalid for input of size ${total}`);
    out[infer] = total! / known;
  } else if (total !== null && known !== total) {
    throw new ShapeError(op, `shape ${fmtShape(shape)} is invalid for input of size ${total}`);
  }
  return out;
}

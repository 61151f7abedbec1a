/**
 * Matrix products: torch.matmul semantics (1-D promotion, broadcast batch dims) on OpenBLAS's
 * strided batched GEMM, copying an operand only when its layout cannot be described to BLAS.
 * 16-bit operands run the backend's bf16/f16 GEMM (float32 accumulation) and give a result in
 * their dtype, as torch.matmul does.
 */
import { ShapeError, fmtShape } from "../core/errors.js";
import { backend } from "../backend/index.js";
import { recordNode, needsGrad } from "../autograd/engine.js";
import { Tensor } from "./tensor.js";
import { broadcastShapes, broadcastStrides, numel } from "./shape.js";
import { gradients as G } from "./gradients.js";
import { checkFloat, contiguousCopy, squeeze, unsqueeze, promoteTypes, toDType } from "./ops.js";
import { autocastDtype } from "./autocast.js";

/** How a 2-D matrix view maps to BLAS: transposed flag and leading dimension, or null. */
function blasLayout(rows: number, cols: number, rs: number, cs: number): { trans: boolean; ld: number } | null {
  if (cs === 1 && (rs >= Math.max(1, cols) || rows === 1)) return { trans: false, ld: Math.max(rs, cols, 1) };
  if (rs === 1 && (cs >= Math.max(1, rows) || cols === 1)) return { trans: true, ld: Math.max(cs, rows, 1) };
  return null;
}

/** One stride for all batch dims (after broadcast), or null when they don't collapse. */
function batchStride(shape: readonly number[], strides: readonly number[]): number | null {
  let stride: number | null = null;
  let expected = 0;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] === 1) continue;
    if (stride === null) {
      stride = strides[i]!;
      expected = stride * shape[i]!;
    } else {
      if (strides[i] !== expected) return null;
      expected *= shape[i]!;
    }
  }
  return stride ?? 0;
}

/** Raw batched matmul of a [..., M, K] and b [..., K, N] with broadcast batch dims (no autograd); a and b share a dtype. */
export function matmulRaw(a: Tensor, b: Tensor): Tensor {
  if (a.dtype !== b.dtype) throw new ShapeError("matmul", `internal: operands in ${a.dtype} and ${b.dtype} (promote first)`);
  const dt = a.dtype;
  const M = a.shape[a.ndim - 2]!, K = a.shape[a.ndim - 1]!, N = b.shape[b.ndim - 1]!;
  if (b.shape[b.ndim - 2] !== K) {
    throw new ShapeError("matmul", `inner dimensions differ: ${fmtShape(a.shape)} @ ${fmtShape(b.shape)} (${K} vs ${b.shape[b.ndim - 2]})`);
  }
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2), "matmul");
  const outShape = [...batch, M, N];
  const out = Tensor.empty(outShape, dt);
  const nb = numel(batch);
  if (M === 0 || N === 0 || nb === 0) return out;
  // Fold the batch into M when b is shared and a's batch rows are contiguous (x @ W).
  const aBatchStr = broadcastStrides(a.shape.slice(0, -2), a.strides.slice(0, -2), batch);
  const bBatchStr = broadcastStrides(b.shape.slice(0, -2), b.strides.slice(0, -2), batch);
  let A = a, B = b;
  let la = blasLayout(M, K, a.strides[a.ndim - 2]!, a.strides[a.ndim - 1]!);
  let lb = blasLayout(K, N, b.strides[b.ndim - 2]!, b.strides[b.ndim - 1]!);
  let sa = batchStride(batch, aBatchStr);
  let sb = batchStride(batch, bBatchStr);
  // Operands whose matrices are not BLAS-shaped, or whose batch dims do not collapse to one
  // stride, are materialised (expanded to the full batch shape when the stride was the problem).
  const materialise = (t: Tensor, rows: number, cols: number, expandBatch: boolean): Tensor => {
    if (!expandBatch) return contiguousCopy(t);
    const full = t.view_([...batch, rows, cols], [...broadcastStrides(t.shape.slice(0, -2), t.strides.slice(0, -2), batch), t.strides[t.ndim - 2]!, t.strides[t.ndim - 1]!], t.offset);
    const c = contiguousCopy(full);
    full.dispose();
    return c;
  };
  if (!la || sa === null) {
    A = materialise(a, M, K, sa === null);
    la = { trans: false, ld: K };
    sa = batchStride(batch, broadcastStrides(A.shape.slice(0, -2), A.strides.slice(0, -2), batch));
  }
  if (!lb || sb === null) {
    B = materialise(b, K, N, sb === null);
    lb = { trans: false, ld: N };
    sb = batchStride(batch, broadcastStrides(B.shape.slice(0, -2), B.strides.slice(0, -2), batch));
  }
  const foldable = sb === 0 && !la.trans && sa === M * la.ld && nb > 1;
  if (foldable) {
    backend.gemm(false, lb.trans, M * nb, N, K, 1, A, la.ld, 0, B, lb.ld, 0, 0, out, N, 0, 1, dt, dt);
  } else {
    backend.gemm(la.trans, lb.trans, M, N, K, 1, A, la.ld, sa!, B, lb.ld, sb!, 0, out, N, M * N, nb, dt, dt);
  }
  if (A !== a) A.dispose();
  if (B !== b) B.dispose();
  return out;
}

/**
 * Matrix product with torch.matmul semantics: 1-D operands are promoted and the added dim
 * removed; batch dims broadcast.
 */
export function matmul(aIn: Tensor, bIn: Tensor): Tensor {
  checkFloat("matmul", aIn);
  checkFloat("matmul", bIn);
  const low = autocastDtype();
  if (aIn.dtype !== bIn.dtype || (low !== null && aIn.dtype !== low)) {
    // Under autocast both operands compute in the low dtype; otherwise mixed dtypes meet in the
    // promoted one. The casts are recorded, so each gradient comes back in its operand's dtype.
    const dt = low ?? promoteTypes(aIn.dtype, bIn.dtype);
    const a = aIn.dtype === dt ? aIn : toDType(aIn, dt);
    const b = bIn.dtype === dt ? bIn : toDType(bIn, dt);
    try {
      return matmul(a, b);
    } finally {
      if (a !== aIn) a.dispose();
      if (b !== bIn) b.dispose();
    }
  }
  const a = aIn, b = bIn;
  if (a.ndim === 0 || b.ndim === 0) throw new ShapeError("matmul", `both arguments need at least 1 dimension, got ${fmtShape(a.shape)} and ${fmtShape(b.shape)}`);
  if (a.ndim === 1 || b.ndim === 1) {
    const a2 = a.ndim === 1 ? unsqueeze(a, 0) : a;
    const b2 = b.ndim === 1 ? unsqueeze(b, -1) : b;
    const r = matmul(a2, b2);
    let out = r;
    if (a.ndim === 1) { const t = squeeze(out, -2); if (out !== r) out.dispose(); out = t; }
    if (b.ndim === 1) { const t = squeeze(out, -1); if (out !== r) out.dispose(); out = t; }
    if (out !== r) r.dispose();
    if (a2 !== a) a2.dispose();
    if (b2 !== b) b2.dispose();
    return out;
  }
  const out = matmulRaw(a, b);
  if (!needsGrad(a, b)) return out;
  const ctx = { a: a.saveForBackward(), b: b.saveForBackward(), needA: a.requiresGrad, needB: b.requiresGrad };
  return recordNode("matmul", out, [a, b], (gy) => G.matmul(ctx, gy as Tensor), [ctx.a, ctx.b]);
}

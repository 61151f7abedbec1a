/**
 * The gradient table: for every differentiable primitive, how the gradient of its output maps
 * to gradients of its inputs. Keyed by op name; forward implementations live in ops.ts and
 * nn_ops.ts and record `(ctx, gy) => G[op](ctx, gy)`.
 *
 * Gradient functions run with grad mode off (the engine wraps backward in noGrad), return one
 * entry per recorded input (null = no gradient), and own what they return.
 */
import { backend, BinaryOp } from "../backend/index.js";
import { Tensor } from "./tensor.js";
import * as ops from "./ops.js";
import { matmulRaw } from "./matmul.js";
import { broadcastShapes, broadcastStrides, contiguousStrides } from "./shape.js";
import type { DType } from "./dtype.js";
import { dtypeSize } from "./dtype.js";

type Grads = Array<Tensor | null>;

/** gy reduced to each input's shape, or null when the input does not need it. */
function reduceTo(g: Tensor, shape: readonly number[]): Tensor {
  return ops.sumToShape(g, shape);
}

function withOwned<R>(t: Tensor, fn: (t: Tensor) => R): R {
  try {
    return fn(t);
  } finally {
    t.dispose();
  }
}

export const gradients = {
  to(ctx: { dtype: DType }, gy: Tensor): Tensor {
    return ops.toDType(gy, ctx.dtype);
  },

  add(ctx: { aShape: readonly number[]; bShape: readonly number[] }, gy: Tensor): Grads {
    return [reduceTo(gy, ctx.aShape), reduceTo(gy, ctx.bShape)];
  },

  sub(ctx: { aShape: readonly number[]; bShape: readonly number[] }, gy: Tensor): Grads {
    return [reduceTo(gy, ctx.aShape), withOwned(ops.unaryRaw("neg", gy), (n) => reduceTo(n, ctx.bShape))];
  },

  mul(ctx: { aShape: readonly number[]; bShape: readonly number[]; a: Tensor | null; b: Tensor | null }, gy: Tensor): Grads {
    const ga = withOwned(ops.binaryRaw(BinaryOp.mul, gy, ctx.b!, "mul"), (t) => reduceTo(t, ctx.aShape));
    const gb = withOwned(ops.binaryRaw(BinaryOp.mul, gy, ctx.a!, "mul"), (t) => reduceTo(t, ctx.bShape));
    return [ga, gb];
  },

  div(ctx: { aShape: readonly number[]; bShape: readonly number[]; b: Tensor | null; out: Tensor | null }, gy: Tensor): Grads {
    // d(a/b)/da = 1/b ; d(a/b)/db = -(a/b)/b
    const ga = withOwned(ops.binaryRaw(BinaryOp.div, gy, ctx.b!, "div"), (t) => reduceTo(t, ctx.aShape));
    const q = ops.binaryRaw(BinaryOp.div, ctx.out!, ctx.b!, "div");
    const gb = withOwned(ops.binaryRaw(BinaryOp.mul, gy, q, "mul"), (t) => withOwned(ops.unaryRaw("neg", t), (n) => reduceTo(n, ctx.bShape)));
    q.dispose();
    return [ga, gb];
  },

  pow(ctx: { aShape: readonly number[]; bShape: readonly number[]; a: Tensor | null; b: Tensor | null; out: Tensor | null }, gy: Tensor): Grads {
    // d(a^b)/da = b a^(b-1) = b out / a ; d(a^b)/db = out log(a)
    const bm1 = ops.unaryRaw("addScalar", ctx.b!, -1);
    const apow = ops.binaryRaw(BinaryOp.pow, ctx.a!, bm1, "pow");
    const t1 = ops.binaryRaw(BinaryOp.mul, apow, ctx.b!, "mul");
    const ga = withOwned(ops.binaryRaw(BinaryOp.mul, gy, t1, "mul"), (t) => reduceTo(t, ctx.aShape));
    const la = ops.unaryRaw("log", ctx.a!);
    const t2 = ops.binaryRaw(BinaryOp.mul, ctx.out!, la, "mul");
    const gb = withOwned(ops.binaryRaw(BinaryOp.mul, gy, t2, "mul"), (t) => reduceTo(t, ctx.bShape));
    for (const t of [bm1, apow, t1, la, t2]) t.dispose();
    return [ga, gb];
  },

  maximum(ctx: { aShape: readonly number[]; bShape: readonly number[]; a: Tensor | null; b: Tensor | null }, gy: Tensor): Grads {
    return minmaxGrad(ctx, gy, BinaryOp.gt);
  },

  minimum(ctx: { aShape: readonly number[]; bShape: readonly number[]; a: Tensor | null; b: Tensor | null }, gy: Tensor): Grads {
    return minmaxGrad(ctx, gy, BinaryOp.lt);
  },

  unary(ctx: { name: ops.UnaryName; a: number; b: number; x: Tensor | null; y: Tensor | null }, gy: Tensor): Grads {
    switch (ctx.name) {
      case "neg": return [ops.unaryRaw("neg", gy)];
      case "addScalar": return [gy.alias()];
      case "mulScalar": return [ops.unaryRaw("mulScalar", gy, ctx.a)];
      case "rsubScalar": return [ops.unaryRaw("neg", gy)];
      case "sign": return [ops.unaryRaw("mulScalar", gy, 0)];
      default: return [ops.unaryBackwardRaw(ctx.name, ctx.x, ctx.y, gy, ctx.a, ctx.b)];
    }
  },

  where(ctx: { cond: Tensor; aShape: readonly number[]; bShape: readonly number[] }, gy: Tensor): Grads {
    const zero = ops.full([], 0, gy.dtype);
    const ga = withOwned(whereRaw(ctx.cond, gy, zero), (t) => reduceTo(t, ctx.aShape));
    const gb = withOwned(whereRaw(ctx.cond, zero, gy), (t) => reduceTo(t, ctx.bShape));
    zero.dispose();
    return [ga, gb];
  },

  sum(ctx: { shape: readonly number[]; dims: number[]; keepdim: boolean; scale: number }, gy: Tensor): Grads {
    return [ops.expandReduced(gy, ctx.shape, ctx.dims, ctx.keepdim, ctx.scale)];
  },

  maxDim(ctx: { shape: readonly number[]; dim: number; A: number; R: number; B: number; indices: Tensor }, gy: Tensor): Grads {
    const flat = ops.scatterARB(gy, ctx.indices, ctx.A, ctx.R, ctx.B);
    const out = flat.view_([...ctx.shape], contiguousStrides(ctx.shape), 0);
    flat.dispose();
    return [out];
  },

  topk(ctx: { rows: number; n: number; k: number; indices: Tensor; lastShape: number[]; dim: number; ndim: number }, gy: Tensor): Grads {
    // Scatter each row's k gradients to their source columns: [rows, k] -> [rows, n].
    const idx = ctx.indices.data() as Int32Array;
    const flatIdx = new Int32Array(ctx.rows * ctx.k);
    for (let r = 0; r < ctx.rows; r++) for (let j = 0; j < ctx.k; j++) flatIdx[r * ctx.k + j] = r * ctx.n + idx[r * ctx.k + j]!;
    const fi = Tensor.empty([flatIdx.length], "int32");
    backend.write(fi, flatIdx);
    const out = ops.full([ctx.rows * ctx.n], 0, gy.dtype);
    const g = gy.isContiguous ? gy.alias() : ops.contiguousCopy(gy);
    backend.embeddingBackward(g, fi, out, flatIdx.length, 1, g.dtype);
    g.dispose();
    fi.dispose();
    const shaped = out.view_(ctx.lastShape, contiguousStrides(ctx.lastShape), 0);
    out.dispose();
    if (ctx.dim === ctx.ndim - 1) return [shaped];
    const t = ops.transpose(shaped, ctx.dim, -1);
    shaped.dispose();
    return [t];
  },

  cumsum(ctx: { dim: number }, gy: Tensor): Grads {
    return [ops.cumsumRaw(gy, ctx.dim, true)];
  },

  reshape(ctx: { shape: readonly number[] }, gy: Tensor): Grads {
    return [ops.reshape(gy, ctx.shape)];
  },

  permute(ctx: { inv: number[] }, gy: Tensor): Grads {
    return [ops.permute(gy, ctx.inv)];
  },

  expand(ctx: { shape: readonly number[] }, gy: Tensor): Grads {
    return [ops.sumToShape(gy, ctx.shape)];
  },

  slice(ctx: { shape: readonly number[]; dim: number; start: number; step: number; len: number }, gy: Tensor): Grads {
    const out = ops.full(ctx.shape, 0, gy.dtype);
    const strides = contiguousStrides(ctx.shape);
    const vstr = [...strides];
    vstr[ctx.dim] = strides[ctx.dim]! * ctx.step;
    backend.copyStrided(dtypeSize(gy.dtype), gy, [...gy.strides], out.at(ctx.start * strides[ctx.dim]!), vstr, [...gy.shape]);
    return [out];
  },

  cat(ctx: { dim: number; sizes: number[] }, gy: Tensor): Grads {
    const out: Grads = [];
    let s = 0;
    for (const len of ctx.sizes) {
      const shape = [...gy.shape];
      shape[ctx.dim] = len;
      out.push(gy.view_(shape, gy.strides, gy.offset + s * gy.strides[ctx.dim]!));
      s += len;
    }
    return out;
  },

  matmul(ctx: { a: Tensor; b: Tensor; needA: boolean; needB: boolean }, gy: Tensor): Grads {
    const { a, b } = ctx;
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    if (ctx.needA) {
      const bt = ops.transpose(b, -1, -2);
      ga = withOwned(matmulRaw(gy, bt), (t) => ops.sumToShape(t, a.shape));
      bt.dispose();
    }
    if (ctx.needB) {
      if (b.ndim === 2 && a.ndim > 2) {
        // x @ W with x [..., M, K]: dW = x2d^T @ gy2d in one GEMM instead of a batch + sum.
        const K = a.shape[a.ndim - 1]!, N = gy.shape[gy.ndim - 1]!;
        const a2 = ops.reshape(a, [-1, K]);
        const g2 = ops.reshape(gy, [-1, N]);
        const a2t = ops.transpose(a2, 0, 1);
        gb = matmulRaw(a2t, g2);
        for (const t of [a2, g2, a2t]) t.dispose();
      } else {
        const at = ops.transpose(a, -1, -2);
        gb = withOwned(matmulRaw(at, gy), (t) => ops.sumToShape(t, b.shape));
        at.dispose();
      }
    }
    return [ga, gb];
  },
};

function whereRaw(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const shape = broadcastShapes(broadcastShapes(cond.shape, a.shape, "where"), b.shape, "where");
  const out = Tensor.empty(shape, a.dtype);
  backend.where(cond, broadcastStrides(cond.shape, cond.strides, shape), a, broadcastStrides(a.shape, a.strides, shape),
    b, broadcastStrides(b.shape, b.strides, shape), out, shape, a.dtype);
  return out;
}

function minmaxGrad(ctx: { aShape: readonly number[]; bShape: readonly number[]; a: Tensor | null; b: Tensor | null }, gy: Tensor, cmp: number): Grads {
  // Ties split the gradient evenly (torch.maximum's rule).
  const win = ops.binaryRaw(cmp, ctx.a!, ctx.b!, "maximum");
  const tie = ops.binaryRaw(BinaryOp.eq, ctx.a!, ctx.b!, "maximum");
  const half = ops.unaryRaw("mulScalar", tie, 0.5);
  const wa = ops.binaryRaw(BinaryOp.add, win, half, "maximum");
  const one = ops.full([], 1, gy.dtype);
  const wb = ops.binaryRaw(BinaryOp.sub, one, wa, "maximum");
  const ga = withOwned(ops.binaryRaw(BinaryOp.mul, gy, wa, "mul"), (t) => reduceTo(t, ctx.aShape));
  const gb = withOwned(ops.binaryRaw(BinaryOp.mul, gy, wb, "mul"), (t) => reduceTo(t, ctx.bShape));
  for (const t of [win, tie, half, wa, one, wb]) t.dispose();
  return [ga, gb];
}


/**
 * Tensor ops: creation, elementwise (broadcasting), reductions, scans, shape views (matmul is in
 * matmul.ts).
 *
 * Each differentiable op computes its output with backend kernels and records a node whose
 * gradient is looked up by op name in gradients.ts. Inputs of any strides are accepted;
 * kernels that need contiguous memory get a temporary copy, disposed right after.
 */
import { ShapeError, ValueError, fmtShape } from "../core/errors.js";
import { backend, BinaryOp, UnaryOp, ReduceOp, ArgReduceOp } from "../backend/index.js";
import { recordNode, needsGrad } from "../autograd/engine.js";
import { Tensor, checkInPlace } from "./tensor.js";
import { type DType, checkDType, dtypeSize, dtypeCode, isFloating } from "./dtype.js";
import { broadcastShapes, broadcastStrides, contiguousStrides, normDim, numel, resolveShape, shapesEqual, type Shape } from "./shape.js";
import { gradients as G } from "./gradients.js";

// ---- helpers -------------------------------------------------------------------------------------

/** Throws unless `t` has a floating dtype (float32, bfloat16, float16: the compute dtypes). */
export function checkFloat(op: string, t: Tensor): void {
  if (!isFloating(t.dtype)) {
    throw new ShapeError(op, `expected a floating tensor (float32, bfloat16 or float16), got ${t.dtype} with shape ${fmtShape(t.shape)}` +
      " (convert it with .to(\"float32\"))");
  }
}

/**
 * The dtype two floating operands compute in (PyTorch's promotion): equal dtypes stay, float32
 * wins over a 16-bit float, and bfloat16 with float16 meet in float32.
 */
export function promoteTypes(a: DType, b: DType): DType {
  return a === b ? a : "float32";
}

/** `t` in `dtype`, recorded for autograd (the same handle, aliased, when it already is). */
function castTo(t: Tensor, dtype: DType): Tensor {
  return t.dtype === dtype ? t : toDType(t, dtype);
}

export function checkSameShape(op: string, a: Tensor, b: Tensor): void {
  if (!shapesEqual(a.shape, b.shape)) {
    throw new ShapeError(op, `shape mismatch: ${fmtShape(a.shape)} vs ${fmtShape(b.shape)}`);
  }
}

/** A contiguous copy (no autograd). */
export function contiguousCopy(t: Tensor): Tensor {
  const out = Tensor.empty(t.shape, t.dtype);
  backend.copyStrided(dtypeSize(t.dtype), t, [...t.strides], out, contiguousStrides(t.shape), [...t.shape]);
  return out;
}

/** Runs fn on a contiguous version of t, disposing the temporary copy if one was made. */
function withContig<R>(t: Tensor, fn: (c: Tensor) => R): R {
  if (t.isContiguous) return fn(t);
  const c = contiguousCopy(t);
  try {
    return fn(c);
  } finally {
    c.dispose();
  }
}

/** Contiguous handle the caller owns (an alias when already contiguous). */
function ownedContig(t: Tensor): Tensor {
  return t.isContiguous ? t.alias() : contiguousCopy(t);
}

// ---- creation --------------------------------------------------------------------------------------

/** A tensor filled with `value`. */
export function full(shape: Shape, value: number, dtype: DType = "float32"): Tensor {
  const s = resolveShape(shape, null, "full");
  const t = Tensor.empty(s, dtype);
  fillInPlace(t, value);
  return t;
}

export function fillInPlace(t: Tensor, value: number): void {
  if (!t.isContiguous) {
    const src = full([], value, t.dtype);
    copyInPlace(t, src);
    src.dispose();
    return;
  }
  let v = value;
  if (t.dtype === "bfloat16" || t.dtype === "float16") {
    // pass the 16-bit pattern: convert through the cast kernel
    const f = Tensor.empty([1], "float32");
    backend.fill(f, 1, value, "float32");
    const h = Tensor.empty([1], t.dtype);
    backend.cast("float32", f, t.dtype, h, 1);
    v = new Uint16Array(backend.read(h, 1))[0]!;
    f.dispose();
    h.dispose();
  }
  backend.fill(t, t.numel, v, t.dtype);
}

/** Copies src into dst (dst's shape; src broadcast to it). float32 <-> other dtypes convert. */
export function copyInPlace(dst: Tensor, src: Tensor): void {
  checkInPlace("copy_", dst);
  const shape = broadcastShapes(dst.shape, src.shape, "copy_");
  if (!shapesEqual(shape, dst.shape)) throw new ShapeError("copy_", `cannot copy ${fmtShape(src.shape)} into ${fmtShape(dst.shape)}`);
  let s = src;
  if (src.dtype !== dst.dtype) s = toDTypeRaw(src, dst.dtype);
  backend.copyStrided(dtypeSize(dst.dtype), s, broadcastStrides(s.shape, s.strides, shape), dst, [...dst.strides], [...shape]);
  if (s !== src) s.dispose();
}

/**
 * Whether t covers a dense block of its storage in some dimension order (a transpose or
 * permutation of a contiguous tensor): then a cast can run over the block in memory order and
 * keep t's strides (PyTorch's preserve_format), instead of copying into row-major first.
 */
function denseStrides(t: Tensor): boolean {
  const dims = t.shape.map((_, i) => i).filter((i) => t.shape[i] !== 1).sort((a, b) => t.strides[a]! - t.strides[b]!);
  let expect = 1;
  for (const d of dims) {
    if (t.strides[d] !== expect) return false;
    expect *= t.shape[d]!;
  }
  return true;
}

function toDTypeRaw(t: Tensor, dtype: DType): Tensor {
  if (!t.isContiguous && t.numel > 0 && denseStrides(t)) {
    // Cast the block in memory order; the result has t's strides (the block starts at t.offset).
    const flat = Tensor.empty([t.numel], dtype);
    backend.cast(t.dtype, t, dtype, flat, t.numel);
    const out = flat.view_(t.shape, t.strides.map((st, i) => (t.shape[i] === 1 ? 0 : st)), 0);
    flat.dispose();
    return out;
  }
  return withContig(t, (c) => {
    const out = Tensor.empty(t.shape, dtype);
    backend.cast(t.dtype, c, dtype, out, t.numel);
    return out;
  });
}

export function toDType(t: Tensor, dtypeIn: DType): Tensor {
  const dtype = checkDType(dtypeIn, "toDType");
  if (dtype === t.dtype) return recordNode("to", t.alias(), [t], (gy) => [(gy as Tensor).alias()]);
  const out = toDTypeRaw(t, dtype);
  if (dtype === "float32" && t.dtype === "float32") return out;
  return recordNode("to", out, isFloating(dtype) ? [t] : [], (gy) => [G.to({ dtype: t.dtype }, gy as Tensor)]);
}

// ---- elementwise binary -----------------------------------------------------------------------------

type BinName = "add" | "sub" | "mul" | "div" | "pow" | "maximum" | "minimum";
const BIN_CODE: Record<BinName, number> = {
  add: BinaryOp.add, sub: BinaryOp.sub, mul: BinaryOp.mul, div: BinaryOp.div, pow: BinaryOp.pow,
  maximum: BinaryOp.max, minimum: BinaryOp.min,
};

/** Raw broadcasting binary kernel (no autograd). */
/** Raw broadcasting binary kernel (no autograd); a and b share one floating dtype. */
export function binaryRaw(code: number, a: Tensor, b: Tensor, op: string): Tensor {
  if (a.dtype !== b.dtype) throw new ShapeError(op, `internal: operands in ${a.dtype} and ${b.dtype} (promote first)`);
  const shape = broadcastShapes(a.shape, b.shape, op);
  const out = Tensor.empty(shape, a.dtype);
  backend.binary(code, a, broadcastStrides(a.shape, a.strides, shape), b, broadcastStrides(b.shape, b.strides, shape), out, shape, a.dtype);
  return out;
}

function scalarTensor(v: number, dtype: DType = "float32"): Tensor {
  return full([], v, dtype);
}

function binary(name: BinName, aIn: Tensor, bIn: Tensor | number): Tensor {
  checkFloat(name, aIn);
  if (typeof bIn === "number") return scalarOp(name, aIn, bIn);
  checkFloat(name, bIn);
  // Mixed dtypes compute in the promoted one; the casts are recorded, so gradients come back
  // in each operand's own dtype.
  const dt = promoteTypes(aIn.dtype, bIn.dtype);
  const a = castTo(aIn, dt), b = castTo(bIn, dt);
  try {
    return binarySame(name, a, b);
  } finally {
    if (a !== aIn) a.dispose();
    if (b !== bIn) b.dispose();
  }
}

function binarySame(name: BinName, a: Tensor, b: Tensor): Tensor {
  const out = binaryRaw(BIN_CODE[name], a, b, name);
  if (!needsGrad(a, b)) return out;
  const saveA = name === "mul" || name === "pow" || name === "maximum" || name === "minimum" || name === "div";
  const saveB = name === "mul" || name === "div" || name === "pow" || name === "maximum" || name === "minimum";
  const ctx = {
    aShape: a.shape, bShape: b.shape,
    a: saveA ? a.saveForBackward() : null,
    b: saveB ? b.saveForBackward() : null,
    out: name === "pow" || name === "div" ? out.saveForBackward() : null,
  };
  const saved = [ctx.a, ctx.b, ctx.out].filter((x): x is Tensor => x !== null);
  return recordNode(name, out, [a, b], (gy) => G[name](ctx, gy as Tensor), saved);
}

function scalarOp(name: BinName, a: Tensor, s: number): Tensor {
  switch (name) {
    case "add": return unary("addScalar", a, s);
    case "sub": return unary("addScalar", a, -s);
    case "mul": return unary("mulScalar", a, s);
    case "div": return unary("mulScalar", a, 1 / s);
    case "pow": return unary("powScalar", a, s);
    default: {
      const st = scalarTensor(s, a.dtype);
      const out = binary(name, a, st);
      st.dispose();
      return out;
    }
  }
}

export const add = (a: Tensor, b: Tensor | number): Tensor => binary("add", a, b);
export const sub = (a: Tensor, b: Tensor | number): Tensor => binary("sub", a, b);
export const mul = (a: Tensor, b: Tensor | number): Tensor => binary("mul", a, b);
export const div = (a: Tensor, b: Tensor | number): Tensor => binary("div", a, b);
export const pow = (a: Tensor, b: Tensor | number): Tensor => binary("pow", a, b);
export const maximum = (a: Tensor, b: Tensor): Tensor => binary("maximum", a, b);
export const minimum = (a: Tensor, b: Tensor): Tensor => binary("minimum", a, b);

/** Elementwise comparison; returns float32 0/1 (no gradient). */
export function compare(op: "eq" | "ne" | "lt" | "le" | "gt" | "ge", a: Tensor, b: Tensor | number): Tensor {
  // Compared in float32 (exact for every 16-bit float and every int32 index below 2^24).
  const af = a.dtype === "float32" ? a : toDTypeRaw(a, "float32");
  const bt = typeof b === "number" ? scalarTensor(b) : b.dtype === "float32" ? b : toDTypeRaw(b, "float32");
  const out = binaryRaw(BinaryOp[op], af, bt, op);
  if (af !== a) af.dispose();
  if (bt !== b) bt.dispose();
  return out;
}

/** In place: dst += alpha * src (src broadcast to dst). No autograd. */
export function addInPlace(dst: Tensor, src: Tensor, alpha = 1): void {
  checkInPlace("add_", dst);
  checkFloat("add_", dst);
  checkFloat("add_", src);
  // Every check runs before the write, so a failed call leaves dst untouched.
  if (!dst.isContiguous) {
    throw new ValueError(`add_: destination must be contiguous, got shape ${fmtShape(dst.shape)} with strides ${fmtShape(dst.strides)}; call .contiguous() first`);
  }
  const shape = broadcastShapes(dst.shape, src.shape, "add_");
  if (!shapesEqual(shape, dst.shape)) throw new ShapeError("add_", `cannot add ${fmtShape(src.shape)} into ${fmtShape(dst.shape)}`);
  // A source in another dtype (a bfloat16 gradient into a float32 .grad) is converted first.
  const sc = src.dtype === dst.dtype ? src : toDTypeRaw(src, dst.dtype);
  const s = alpha !== 1 ? mulScalarRaw(sc, alpha) : sc;
  backend.binary(BinaryOp.add, dst, [...dst.strides], s, broadcastStrides(s.shape, s.strides, shape), dst, [...shape], dst.dtype);
  if (s !== sc) s.dispose();
  if (sc !== src) sc.dispose();
}

function mulScalarRaw(t: Tensor, s: number): Tensor {
  return withContig(t, (c) => {
    const out = Tensor.empty(t.shape, t.dtype);
    backend.unary(UnaryOp.mulScalar, c, out, t.numel, s, 0, t.dtype);
    return out;
  });
}

export function mulScalarInPlace(t: Tensor, s: number): void {
  checkInPlace("mul_", t);
  checkFloat("mul_", t);
  if (!t.isContiguous) throw new ValueError("mul_: tensor must be contiguous");
  backend.unary(UnaryOp.mulScalar, t, t, t.numel, s, 0, t.dtype);
}

// ---- elementwise unary ---------------------------------------------------------------------------------

export type UnaryName = keyof typeof UnaryOp;
/** What the native backward of each unary op reads: x (input), y (output), or nothing. */
const UNARY_SAVES: Partial<Record<UnaryName, "x" | "y">> = {
  exp: "y", log: "x", sqrt: "y", rsqrt: "y", tanh: "y", relu: "x", geluTanh: "x", geluErf: "x", silu: "x",
  sigmoid: "y", abs: "x", powScalar: "x", clamp: "x", square: "x", erf: "x", reciprocal: "y", rdivScalar: "x",
  sin: "x", cos: "x",
};

/** Raw unary kernel on any layout (no autograd). */
export function unaryRaw(name: UnaryName, x: Tensor, a = 0, b = 0): Tensor {
  return withContig(x, (c) => {
    const out = Tensor.empty(x.shape, x.dtype);
    backend.unary(UnaryOp[name], c, out, x.numel, a, b, x.dtype);
    return out;
  });
}

export function unary(name: UnaryName, x: Tensor, a = 0, b = 0): Tensor {
  checkFloat(name, x);
  const xc = ownedContig(x);
  const out = Tensor.empty(x.shape, x.dtype);
  backend.unary(UnaryOp[name], xc, out, x.numel, a, b, x.dtype);
  if (!needsGrad(x)) {
    xc.dispose();
    return out;
  }
  const what = UNARY_SAVES[name];
  const ctx = {
    name, a, b,
    x: what === "x" ? xc.saveForBackward() : null,
    y: what === "y" ? out.saveForBackward() : null,
  };
  xc.dispose();
  const saved = [ctx.x, ctx.y].filter((t): t is Tensor => t !== null);
  return recordNode(name, out, [x], (gy) => G.unary(ctx, gy as Tensor), saved);
}

/** gx = gy * f'(x) through the native backward kernel. */
export function unaryBackwardRaw(name: UnaryName, x: Tensor | null, y: Tensor | null, gy: Tensor, a: number, b: number): Tensor {
  return withContig(gy, (g) => {
    // The native backward reads x or y (whichever the op saved); the other is never touched, so
    // the gradient itself stands in for it (same dtype and size).
    const gx = Tensor.empty(g.shape, g.dtype);
    backend.unaryBackward(UnaryOp[name], x ?? g, y ?? g, g, gx, g.numel, a, b, g.dtype);
    return gx;
  });
}

export const neg = (x: Tensor): Tensor => unary("neg", x);
export const exp = (x: Tensor): Tensor => unary("exp", x);
export const log = (x: Tensor): Tensor => unary("log", x);
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
export const relu = (x: Tensor): Tensor => unary("relu", x);
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
export const silu = (x: Tensor): Tensor => unary("silu", x);
export const abs = (x: Tensor): Tensor => unary("abs", x);
export const square = (x: Tensor): Tensor => unary("square", x);
export const erf = (x: Tensor): Tensor => unary("erf", x);
export const reciprocal = (x: Tensor): Tensor => unary("reciprocal", x);
export const sin = (x: Tensor): Tensor => unary("sin", x);
export const cos = (x: Tensor): Tensor => unary("cos", x);

/** GELU: exact erf form by default, or GPT-2's tanh approximation. */
export function gelu(x: Tensor, approximate: "none" | "tanh" = "none"): Tensor {
  if (approximate !== "none" && approximate !== "tanh") {
    throw new ValueError(`gelu: approximate must be "none" or "tanh", got ${JSON.stringify(approximate)}`);
  }
  return unary(approximate === "tanh" ? "geluTanh" : "geluErf", x);
}

export function clamp(x: Tensor, min?: number | null, max?: number | null): Tensor {
  if (min == null && max == null) throw new ValueError("clamp: at least one of min or max must be given");
  return unary("clamp", x, min ?? -Infinity, max ?? Infinity);
}

// ---- where / masked fill -----------------------------------------------------------------------------

/** Elementwise select: cond ? a : b (cond nonzero = true), with broadcasting. */
export function where(cond: Tensor, a: Tensor | number, b: Tensor | number): Tensor {
  const c = cond.dtype === "float32" ? cond : toDTypeRaw(cond, "float32");
  const dt = typeof a !== "number" ? (typeof b !== "number" ? promoteTypes(a.dtype, b.dtype) : a.dtype) : typeof b !== "number" ? b.dtype : "float32";
  const at = typeof a === "number" ? scalarTensor(a, dt) : castTo(a, dt);
  const bt = typeof b === "number" ? scalarTensor(b, dt) : castTo(b, dt);
  checkFloat("where", at);
  checkFloat("where", bt);
  const shape = broadcastShapes(broadcastShapes(c.shape, at.shape, "where"), bt.shape, "where");
  const out = Tensor.empty(shape, dt);
  backend.where(c, broadcastStrides(c.shape, c.strides, shape), at, broadcastStrides(at.shape, at.strides, shape),
    bt, broadcastStrides(bt.shape, bt.strides, shape), out, shape, dt);
  const ta = typeof a === "number" ? null : at;
  const tb = typeof b === "number" ? null : bt;
  let result = out;
  if (needsGrad(ta, tb)) {
    const ctx = { cond: c.saveForBackward(), aShape: at.shape, bShape: bt.shape };
    result = recordNode("where", out, [ta, tb], (gy) => G.where(ctx, gy as Tensor), [ctx.cond]);
  }
  if (c !== cond) c.dispose();
  if (at !== a) at.dispose();
  if (bt !== b) bt.dispose();
  return result;
}

export function maskedFill(x: Tensor, mask: Tensor, value: number): Tensor {
  return where(mask, value, x);
}

// ---- reductions ---------------------------------------------------------------------------------------

function normDims(dim: number | number[] | null | undefined, ndim: number, op: string): number[] {
  if (dim == null) return Array.from({ length: ndim }, (_, i) => i);
  const dims = (Array.isArray(dim) ? dim : [dim]).map((d) => normDim(d, ndim, op));
  if (new Set(dims).size !== dims.length) throw new ShapeError(op, `dim ${JSON.stringify(dim)} appears more than once`);
  return dims.sort((p, q) => p - q);
}

function keptShape(shape: readonly number[], dims: number[], keepdim: boolean): number[] {
  const out: number[] = [];
  shape.forEach((s, i) => {
    if (!dims.includes(i)) out.push(s);
    else if (keepdim) out.push(1);
  });
  return out;
}

/** Views x as [A, R, B] with R the reduced dims, copying (permuted) only when needed. */
function asARB(x: Tensor, dims: number[]): { t: Tensor; A: number; R: number; B: number } {
  const consecutive = dims.every((d, i) => i === 0 || d === dims[i - 1]! + 1);
  if (x.isContiguous && consecutive && dims.length > 0) {
    const A = numel(x.shape.slice(0, dims[0]));
    const R = numel(dims.map((d) => x.shape[d]!));
    const B = numel(x.shape.slice(dims[dims.length - 1]! + 1));
    return { t: x.alias(), A, R, B };
  }
  const keptDims = x.shape.map((_, i) => i).filter((i) => !dims.includes(i));
  const perm = [...keptDims, ...dims];
  const p = x.view_(perm.map((d) => x.shape[d]!), perm.map((d) => x.strides[d]!), x.offset);
  const c = contiguousCopy(p);
  p.dispose();
  return { t: c, A: numel(keptDims.map((d) => x.shape[d]!)), R: numel(dims.map((d) => x.shape[d]!)), B: 1 };
}

/** Raw reduction over `dims` (no autograd). */
export function reduceRaw(op: keyof typeof ReduceOp, x: Tensor, dims: number[], keepdim: boolean, scale = 1): Tensor {
  const { t, A, R, B } = asARB(x, dims);
  const out = Tensor.empty(keptShape(x.shape, dims, keepdim), x.dtype);
  backend.reduce(ReduceOp[op], t, out, A, R, B, scale, x.dtype, x.dtype);
  t.dispose();
  return out;
}

export function sum(x: Tensor, dim?: number | number[] | null, keepdim = false): Tensor {
  checkFloat("sum", x);
  const dims = normDims(dim, x.ndim, "sum");
  const out = reduceRaw("sum", x, dims, keepdim);
  const ctx = { shape: x.shape, dims, keepdim, scale: 1 };
  return recordNode("sum", out, [x], (gy) => G.sum(ctx, gy as Tensor));
}

export function mean(x: Tensor, dim?: number | number[] | null, keepdim = false): Tensor {
  checkFloat("mean", x);
  const dims = normDims(dim, x.ndim, "mean");
  const R = numel(dims.map((d) => x.shape[d]!));
  const out = reduceRaw("sum", x, dims, keepdim, 1 / R);
  const ctx = { shape: x.shape, dims, keepdim, scale: 1 / R };
  return recordNode("mean", out, [x], (gy) => G.sum(ctx, gy as Tensor));
}

/** Variance with Bessel's correction by default (torch.var). */
export function variance(x: Tensor, dim: number | number[] | null | undefined, opts: { correction?: number; keepdim?: boolean }): Tensor {
  const dims = normDims(dim, x.ndim, "var");
  const correction = opts.correction ?? 1;
  const n = numel(dims.map((d) => x.shape[d]!));
  const mu = mean(x, dims, true);
  const d = sub(x, mu);
  const sq = square(d);
  const s = sum(sq, dims, opts.keepdim ?? false);
  const out = div(s, Math.max(n - correction, 0));
  for (const t of [mu, d, sq, s]) t.dispose();
  return out;
}

/** Gradient helper: broadcasts gy (reduced shape) back over the reduced dims. */
export function expandReduced(gy: Tensor, shape: readonly number[], dims: number[], keepdim: boolean, scale: number): Tensor {
  const keep = keptShape(shape, dims, true);
  const g = keepdim ? gy.alias() : reshape(gy, keep);
  const e = g.view_(shape, broadcastStrides(g.shape, g.strides, shape), g.offset);
  const out = scale === 1 ? contiguousCopy(e) : mulScalarRaw(e, scale);
  g.dispose();
  e.dispose();
  return out;
}

/** Max/min over all elements. */
export function maxAll(x: Tensor, kind: "max" | "min"): Tensor {
  checkFloat(kind, x);
  if (x.numel === 0) throw new ShapeError(kind, "cannot reduce an empty tensor");
  const flat = reshape(x, [x.numel]);
  const r = maxDim(flat, 0, false, kind);
  flat.dispose();
  r.indices.dispose();
  return r.values;
}

/** Max/min along a dim: {values, indices (int32)}. Gradient flows to the selected elements. */
export function maxDim(x: Tensor, dim: number, keepdim: boolean, kind: "max" | "min"): { values: Tensor; indices: Tensor } {
  checkFloat(kind, x);
  const d = normDim(dim, x.ndim, kind);
  if (x.shape[d] === 0) throw new ShapeError(kind, `cannot reduce dim ${dim} of size 0`);
  // A contiguous x keeps the reduced dim in place as [A, R, B] (never permuted), which the
  // gradient's scatter relies on.
  const xc = ownedContig(x);
  const { t, A, R, B } = asARB(xc, [d]);
  xc.dispose();
  const shape = keptShape(x.shape, [d], keepdim);
  const values = Tensor.empty(shape, x.dtype);
  const indices = Tensor.empty(shape, "int32");
  backend.argReduce(kind === "max" ? ArgReduceOp.argmax : ArgReduceOp.argmin, t, values, indices, A, R, B, x.dtype);
  t.dispose();
  if (!needsGrad(x)) return { values, indices };
  // asARB only copies in the permuted case; the gradient scatter assumes the [A, R, B] of a
  // contiguous x with the reduced dim in place, which holds for a single dim.
  const ctx = { shape: x.shape, dim: d, A, R, B, indices: indices.saveForBackward() };
  return { values: recordNode(kind, values, [x], (gy) => G.maxDim(ctx, gy as Tensor), [ctx.indices]), indices };
}

export function argReduce(x: Tensor, dim: number | undefined, keepdim: boolean, kind: "argmax" | "argmin"): Tensor {
  checkFloat(kind, x);
  if (dim === undefined) {
    const flat = reshape(x, [x.numel]);
    const out = argReduce(flat, 0, false, kind);
    flat.dispose();
    return out;
  }
  const d = normDim(dim, x.ndim, kind);
  const { t, A, R, B } = asARB(x, [d]);
  const indices = Tensor.empty(keptShape(x.shape, [d], keepdim), "int32");
  backend.argReduce(ArgReduceOp[kind], t, null, indices, A, R, B, x.dtype);
  t.dispose();
  return indices;
}

/** Scatters gy[a, b] into out[a, idx[a, b], b] of a zero [A, R, B] tensor (gradient of gather-like ops). */
export function scatterARB(gy: Tensor, idx: Tensor, A: number, R: number, B: number): Tensor {
  const out = full([A * R * B], 0, gy.dtype);
  const ind = idx.data() as Int32Array;
  const flat = new Int32Array(A * B);
  for (let a = 0; a < A; a++) for (let b = 0; b < B; b++) flat[a * B + b] = a * R * B + ind[a * B + b]! * B + b;
  const fi = Tensor.empty([A * B], "int32");
  backend.write(fi, flat);
  withContig(gy, (g) => backend.embeddingBackward(g, fi, out, A * B, 1, g.dtype));
  fi.dispose();
  return out;
}

export function cumsum(x: Tensor, dim: number): Tensor {
  checkFloat("cumsum", x);
  const d = normDim(dim, x.ndim, "cumsum");
  const out = cumsumRaw(x, d, false);
  const ctx = { dim: d };
  return recordNode("cumsum", out, [x], (gy) => G.cumsum(ctx, gy as Tensor));
}

export function cumsumRaw(x: Tensor, d: number, reverse: boolean): Tensor {
  return withContig(x, (c) => {
    const out = Tensor.empty(x.shape, x.dtype);
    const A = numel(x.shape.slice(0, d)), R = x.shape[d] ?? 1, B = numel(x.shape.slice(d + 1));
    backend.cumsum(c, out, A, R, B, reverse, x.dtype);
    return out;
  });
}

/** The k largest (or smallest) entries along `dim`, sorted. */
export function topk(x: Tensor, k: number, dim = -1, largest = true): { values: Tensor; indices: Tensor } {
  checkFloat("topk", x);
  const d = normDim(dim, x.ndim, "topk");
  const n = x.shape[d] ?? 1;
  if (!Number.isInteger(k) || k < 0 || k > n) throw new ShapeError("topk", `k=${k} is out of range for dimension ${dim} of size ${n}`);
  const last = x.ndim === 0 ? x : d === x.ndim - 1 ? x : transpose(x, d, -1);
  const c = ownedContig(last);
  const rows = c.numel / Math.max(n, 1);
  const vshape = [...last.shape.slice(0, -1), k];
  const values = Tensor.empty(vshape, x.dtype);
  const indices = Tensor.empty(vshape, "int32");
  backend.topk(c, values, indices, rows, n, k, largest, x.dtype);
  c.dispose();
  if (last !== x) last.dispose();
  let v = values;
  if (needsGrad(x)) {
    const ctx = { rows, n, k, indices: indices.saveForBackward(), lastShape: [...vshape.slice(0, -1), n], dim: d, ndim: x.ndim };
    v = recordNode("topk", values, [x], (gy) => G.topk(ctx, gy as Tensor), [ctx.indices]);
  }
  if (d !== x.ndim - 1 && x.ndim > 0) {
    const vt = transpose(v, d, -1);
    const it = transpose(indices, d, -1);
    return { values: vt, indices: it };
  }
  return { values: v, indices };
}

/**
 * Sum of squares of every element, accumulated in float64 across rows of 4096 (parallel,
 * and accurate for the hundred-million-element gradients of a real model).
 */
export function reduceSumSq(t: Tensor): number {
  checkFloat("reduceSumSq", t);
  return withContig(t, (c) => {
    const n = c.numel;
    const row = 4096;
    const A = Math.floor(n / row);
    let total = 0;
    if (A > 0) {
      const out = Tensor.empty([A]);
      backend.reduce(ReduceOp.sumSq, c, out, A, row, 1, 1, c.dtype, "float32");
      for (const v of out.data() as Float32Array) total += v;
      out.dispose();
    }
    const rest = n - A * row;
    if (rest > 0) {
      const out = Tensor.empty([1]);
      backend.reduce(ReduceOp.sumSq, c.at(A * row), out, 1, rest, 1, 1, c.dtype, "float32");
      total += (out.data() as Float32Array)[0]!;
      out.dispose();
    }
    return total;
  });
}

// ---- shape views --------------------------------------------------------------------------------------

/** Strides for viewing (shape, strides) as newShape without copying, or null if impossible. */
function viewStrides(shape: readonly number[], strides: readonly number[], newShape: number[]): number[] | null {
  // Group old dims into contiguous chunks and map new dims onto them (torch's computeStride).
  if (numel(shape) === 0) return contiguousStrides(newShape);
  const out = new Array<number>(newShape.length);
  let viewD = newShape.length - 1;
  let chunkBase = strides[strides.length - 1] ?? 1;
  let tensorNumel = 1;
  let viewNumel = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    tensorNumel *= shape[d]!;
    if (d === 0 || (shape[d - 1] !== 1 && strides[d - 1] !== tensorNumel * chunkBase)) {
      while (viewD >= 0 && (viewNumel < tensorNumel || newShape[viewD] === 1)) {
        out[viewD] = viewNumel * chunkBase;
        viewNumel *= newShape[viewD]!;
        viewD--;
      }
      if (viewNumel !== tensorNumel) return null;
      if (d > 0) {
        chunkBase = strides[d - 1]!;
        tensorNumel = 1;
        viewNumel = 1;
      }
    }
  }
  if (viewD !== -1) {
    for (; viewD >= 0; viewD--) out[viewD] = 1;  // trailing size-1 dims
  }
  return out;
}

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const s = resolveShape(shape, x.numel, "reshape");
  const st = viewStrides(x.shape, x.strides, s);
  let out: Tensor;
  if (st) out = x.view_(s, st, x.offset);
  else {
    const c = contiguousCopy(x);
    out = c.view_(s, contiguousStrides(s), 0);
    c.dispose();
  }
  const ctx = { shape: x.shape };
  return recordNode("reshape", out, [x], (gy) => G.reshape(ctx, gy as Tensor));
}

export function flatten(x: Tensor, startDim = 0, endDim = -1): Tensor {
  if (x.ndim === 0) return reshape(x, [1]);
  const s = normDim(startDim, x.ndim, "flatten"), e = normDim(endDim, x.ndim, "flatten");
  const shape = [...x.shape.slice(0, s), numel(x.shape.slice(s, e + 1)), ...x.shape.slice(e + 1)];
  return reshape(x, shape);
}

export function permute(x: Tensor, dims: readonly number[]): Tensor {
  if (dims.length !== x.ndim) throw new ShapeError("permute", `expected ${x.ndim} dims for shape ${fmtShape(x.shape)}, got [${dims.join(", ")}]`);
  const d = dims.map((v) => normDim(v, x.ndim, "permute"));
  if (new Set(d).size !== d.length) throw new ShapeError("permute", `repeated dim in [${dims.join(", ")}]`);
  const out = x.view_(d.map((i) => x.shape[i]!), d.map((i) => x.strides[i]!), x.offset);
  const inv = new Array<number>(d.length);
  d.forEach((v, i) => (inv[v] = i));
  const ctx = { inv };
  return recordNode("permute", out, [x], (gy) => G.permute(ctx, gy as Tensor));
}

export function transpose(x: Tensor, a: number, b: number): Tensor {
  if (x.ndim === 0) return recordNode("transpose", x.alias(), [x], (gy) => [(gy as Tensor).alias()]);
  const p = x.shape.map((_, i) => i);
  const da = normDim(a, x.ndim, "transpose"), db = normDim(b, x.ndim, "transpose");
  [p[da], p[db]] = [p[db]!, p[da]!];
  return permute(x, p);
}

export function expand(x: Tensor, shape: readonly number[]): Tensor {
  if (shape.length < x.ndim) throw new ShapeError("expand", `cannot expand ${fmtShape(x.shape)} to fewer dims ${fmtShape(shape)}`);
  const target = shape.map((s, i) => {
    const j = i - (shape.length - x.ndim);
    if (s === -1) {
      if (j < 0) throw new ShapeError("expand", `-1 is not allowed in a new leading dimension (${fmtShape(shape)})`);
      return x.shape[j]!;
    }
    if (j >= 0 && x.shape[j] !== 1 && x.shape[j] !== s) {
      throw new ShapeError("expand", `cannot expand ${fmtShape(x.shape)} to ${fmtShape(shape)}: dimension ${i} is ${x.shape[j]}, not 1 or ${s}`);
    }
    return s;
  });
  const out = x.view_(target, broadcastStrides(x.shape, x.strides, target), x.offset);
  const ctx = { shape: x.shape };
  return recordNode("expand", out, [x], (gy) => G.expand(ctx, gy as Tensor));
}

/** Reduces a broadcast gradient back to `shape` (sums over broadcast dims). */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (shapesEqual(g.shape, shape)) return g.alias();
  const lead = g.ndim - shape.length;
  const dims: number[] = [];
  for (let i = 0; i < g.ndim; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) dims.push(i);
  }
  const r = reduceRaw("sum", g, dims, true);
  const out = r.view_([...shape], contiguousStrides(shape), 0);
  r.dispose();
  return out;
}

export function slice(x: Tensor, dim: number, start: number, end?: number, step = 1): Tensor {
  const d = normDim(dim, x.ndim, "slice");
  const n = x.shape[d]!;
  if (!Number.isInteger(step) || step < 1) throw new ShapeError("slice", `step must be a positive integer, got ${step}`);
  let s = start < 0 ? start + n : start;
  let e = end === undefined ? n : end < 0 ? end + n : end;
  s = Math.min(Math.max(s, 0), n);
  e = Math.min(Math.max(e, s), n);
  const len = Math.ceil((e - s) / step);
  const shape = [...x.shape];
  shape[d] = len;
  const strides = [...x.strides];
  strides[d] = x.strides[d]! * step;
  const out = x.view_(shape, strides, x.offset + s * x.strides[d]!);
  const ctx = { shape: x.shape, dim: d, start: s, step, len };
  return recordNode("slice", out, [x], (gy) => G.slice(ctx, gy as Tensor));
}

export function select(x: Tensor, dim: number, index: number): Tensor {
  const d = normDim(dim, x.ndim, "select");
  const n = x.shape[d]!;
  if (!Number.isInteger(index) || index < -n || index >= n) throw new ShapeError("select", `index ${index} is out of range for dimension ${dim} of size ${n}`);
  const i = index < 0 ? index + n : index;
  const s = slice(x, d, i, i + 1);
  const out = squeeze(s, d);
  s.dispose();
  return out;
}

export function squeeze(x: Tensor, dim?: number): Tensor {
  let keepDims: number[];
  if (dim === undefined) keepDims = x.shape.map((_, i) => i).filter((i) => x.shape[i] !== 1);
  else {
    const d = normDim(dim, x.ndim, "squeeze");
    keepDims = x.shape.map((_, i) => i).filter((i) => i !== d || x.shape[i] !== 1);
  }
  return reshape(x, keepDims.map((i) => x.shape[i]!));
}

export function unsqueeze(x: Tensor, dim: number): Tensor {
  const d = normDim(dim, x.ndim + 1, "unsqueeze");
  const shape = [...x.shape];
  shape.splice(d, 0, 1);
  return reshape(x, shape);
}

export function contiguous(x: Tensor): Tensor {
  // A contiguous input gives a new handle on the same storage, still in the graph.
  const out = x.isContiguous ? x.alias() : contiguousCopy(x);
  return recordNode("contiguous", out, [x], (gy) => [(gy as Tensor).alias()]);
}

export function clone(x: Tensor): Tensor {
  const out = contiguousCopy(x);
  return recordNode("clone", out, [x], (gy) => [(gy as Tensor).alias()]);
}

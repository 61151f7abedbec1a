/**
 * The kernel table: every compute kernel of a backend, declared once.
 *
 * Each entry names a kernel, its arguments in call order and the element types it computes in.
 * From this one table:
 *  - the TypeScript typings of a backend's kernels follow (`KernelArgs` below: a "view" argument
 *    is a typed buffer view, a "dims" argument an array of integers...);
 *  - the native addon's N-API registration and argument unpacking are generated
 *    (`scripts/gen_kernels.ts` writes native/src/_kernels.gen.inc; a test checks it is current and
 *    that the loaded addon exports exactly these kernels).
 *
 * Conventions the kernels share:
 *  - "view" arguments are buffer + element offset + dtype; the backend resolves addresses. A
 *    kernel's activation tensors (x, y, gradients of activations) are in its `dtype` argument's
 *    element type; statistics (layer-norm mean/rstd, attention and cross-entropy log-sum-exp,
 *    losses) and optimizer moments are always float32; accumulation is float32 for every dtype.
 *  - dtype arguments come last, so a kernel's float32 call reads like its math.
 *  - strides and shapes are in elements.
 */

/** Argument kinds. "view?" may be null. */
export type ArgKind = "view" | "view?" | "i64" | "f64" | "bool" | "dims" | "dtype" | "op";

/** A kernel's declaration. */
export interface KernelSpec {
  readonly args: ReadonlyArray<readonly [name: string, kind: ArgKind]>;
  /** "void", or "i64" for kernels that report the first bad index (-1 when all were valid). */
  readonly returns: "void" | "i64";
  /** Element types the kernel computes in (its dtype arguments take these). */
  readonly dtypes: readonly KernelDType[];
  /** One line: what it computes. */
  readonly doc: string;
}

export type KernelDType = "float32" | "bfloat16" | "float16" | "int32" | "int8" | "uint8";

const FLOAT = ["float32", "bfloat16", "float16"] as const;

/** The kernel table (see the file comment). Order is irrelevant; names are the contract. */
export const KERNELS = {
  fill: {
    args: [["dst", "view"], ["n", "i64"], ["value", "f64"], ["dtype", "dtype"]],
    returns: "void", dtypes: ["float32", "bfloat16", "float16", "int32", "int8", "uint8"],
    doc: "dst[0..n) = value (the value already encoded for 16-bit floats: see Backend.fill)",
  },
  copyStrided: {
    args: [["esize", "i64"], ["src", "view"], ["srcStrides", "dims"], ["dst", "view"], ["dstStrides", "dims"], ["shape", "dims"]],
    returns: "void", dtypes: ["float32", "bfloat16", "float16", "int32", "int8", "uint8"],
    doc: "strided copy of elements of esize bytes",
  },
  cast: {
    args: [["srcDtype", "dtype"], ["src", "view"], ["dstDtype", "dtype"], ["dst", "view"], ["n", "i64"]],
    returns: "void", dtypes: ["float32", "bfloat16", "float16", "int32", "int8", "uint8"],
    doc: "contiguous element conversion (round to nearest even into 16-bit floats)",
  },
  binary: {
    args: [["op", "op"], ["a", "view"], ["aStrides", "dims"], ["b", "view"], ["bStrides", "dims"], ["out", "view"], ["shape", "dims"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "out = a (op) b, broadcasting through strides (0 = broadcast); comparisons give 0/1",
  },
  unary: {
    args: [["op", "op"], ["x", "view"], ["y", "view"], ["n", "i64"], ["a", "f64"], ["b", "f64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "y = f(x) over n contiguous elements, with scalar parameters a, b",
  },
  unaryBackward: {
    args: [["op", "op"], ["x", "view"], ["y", "view"], ["gy", "view"], ["gx", "view"], ["n", "i64"], ["a", "f64"], ["b", "f64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "gx = gy * f'(x) (y = f(x) given for ops whose derivative uses it)",
  },
  where: {
    args: [["c", "view"], ["cStrides", "dims"], ["a", "view"], ["aStrides", "dims"], ["b", "view"], ["bStrides", "dims"], ["out", "view"], ["shape", "dims"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "out = c != 0 ? a : b; c is float32, a, b, out are dtype",
  },
  reduce: {
    args: [["op", "op"], ["x", "view"], ["out", "view"], ["A", "i64"], ["R", "i64"], ["B", "i64"], ["scale", "f64"], ["dtype", "dtype"], ["outDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "out[a, b] = scale * reduce_r x[a, r, b], accumulated in float32",
  },
  argReduce: {
    args: [["op", "op"], ["x", "view"], ["vals", "view?"], ["idx", "view"], ["A", "i64"], ["R", "i64"], ["B", "i64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "argmax/argmin over r of x[a, r, b] into int32 idx (and the values, in dtype)",
  },
  cumsum: {
    args: [["x", "view"], ["y", "view"], ["A", "i64"], ["R", "i64"], ["B", "i64"], ["reverse", "bool"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "inclusive prefix sum over r, accumulated in float32",
  },
  topk: {
    args: [["x", "view"], ["vals", "view"], ["idx", "view"], ["rows", "i64"], ["cols", "i64"], ["k", "i64"], ["largest", "bool"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "the k largest (or smallest) of each row, sorted, ties by lower index",
  },
  softmaxForward: {
    args: [["x", "view"], ["y", "view"], ["rows", "i64"], ["cols", "i64"], ["log", "bool"], ["dtype", "dtype"], ["outDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "(log-)softmax over rows, computed in float32; y in outDtype",
  },
  softmaxBackward: {
    args: [["y", "view"], ["gy", "view"], ["gx", "view"], ["rows", "i64"], ["cols", "i64"], ["log", "bool"], ["dtype", "dtype"], ["gradDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "gradient of (log-)softmax from its output y (dtype) and gy (gradDtype) into gx (gradDtype)",
  },
  layerNormForward: {
    args: [["x", "view"], ["w", "view?"], ["b", "view?"], ["y", "view"], ["mean", "view"], ["rstd", "view"], ["rows", "i64"], ["cols", "i64"], ["eps", "f64"], ["dtype", "dtype"], ["wDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "y = (x - mean) * rstd * w + b per row; x, y in dtype, w, b in wDtype, mean/rstd float32",
  },
  layerNormBackward: {
    args: [["x", "view"], ["w", "view?"], ["mean", "view"], ["rstd", "view"], ["gy", "view"], ["gx", "view?"], ["gw", "view?"], ["gb", "view?"], ["rows", "i64"], ["cols", "i64"], ["dtype", "dtype"], ["wDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "layer-norm gradients; gy, gx in dtype, gw, gb (written, not accumulated) in wDtype",
  },
  rmsNormForward: {
    args: [["x", "view"], ["w", "view?"], ["y", "view"], ["rstd", "view"], ["rows", "i64"], ["cols", "i64"], ["eps", "f64"], ["dtype", "dtype"], ["wDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "y = x * rstd * w per row",
  },
  rmsNormBackward: {
    args: [["x", "view"], ["w", "view?"], ["rstd", "view"], ["gy", "view"], ["gx", "view?"], ["gw", "view?"], ["rows", "i64"], ["cols", "i64"], ["dtype", "dtype"], ["wDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "RMS-norm gradients (gw written, not accumulated)",
  },
  embeddingForward: {
    args: [["w", "view"], ["idx", "view"], ["out", "view"], ["n", "i64"], ["dim", "i64"], ["vocab", "i64"], ["dtype", "dtype"]],
    returns: "i64", dtypes: FLOAT,
    doc: "out[i] = w[idx[i]] (int32 idx); returns the first out-of-range position or -1",
  },
  embeddingBackward: {
    args: [["gout", "view"], ["idx", "view"], ["gw", "view"], ["n", "i64"], ["dim", "i64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "gw[idx[i]] += gout[i], gout and gw in dtype",
  },
  crossEntropyForward: {
    args: [["logits", "view"], ["targets", "view"], ["loss", "view"], ["lse", "view"], ["rows", "i64"], ["vocab", "i64"], ["ignoreIndex", "i64"], ["smoothing", "f64"], ["dtype", "dtype"]],
    returns: "i64", dtypes: FLOAT,
    doc: "per-row loss and log-sum-exp (float32) of logits (dtype); returns the first bad target row or -1",
  },
  crossEntropyBackward: {
    args: [["logits", "view"], ["targets", "view"], ["lse", "view"], ["gradRows", "view?"], ["gradScale", "f64"], ["glogits", "view"], ["rows", "i64"], ["vocab", "i64"], ["ignoreIndex", "i64"], ["smoothing", "f64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "glogits (dtype) = (softmax - target) * (gradRows[row] or 1) * gradScale",
  },
  adamw: {
    args: [["p", "view"], ["g", "view"], ["m", "view"], ["v", "view"], ["n", "i64"], ["lr", "f64"], ["beta1", "f64"], ["beta2", "f64"], ["eps", "f64"], ["weightDecay", "f64"], ["bc1", "f64"], ["bc2", "f64"], ["gradScale", "f64"], ["dtype", "dtype"], ["gradDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "fused AdamW on n elements: p (dtype), g * gradScale (gradDtype), m, v float32",
  },
  attentionForward: {
    args: [["q", "view"], ["k", "view"], ["v", "view"], ["o", "view"], ["lse", "view"], ["BH", "i64"], ["T", "i64"], ["S", "i64"], ["D", "i64"], ["scale", "f64"], ["causal", "bool"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "FlashAttention-2-style attention; q, k, v, o in dtype, lse float32",
  },
  attentionBackward: {
    args: [["q", "view"], ["k", "view"], ["v", "view"], ["o", "view"], ["go", "view"], ["lse", "view"], ["gq", "view"], ["gk", "view"], ["gv", "view"], ["BH", "i64"], ["T", "i64"], ["S", "i64"], ["D", "i64"], ["scale", "f64"], ["causal", "bool"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "attention gradients from the saved log-sum-exp; all tensors but lse in dtype",
  },
  gemm: {
    args: [["transA", "bool"], ["transB", "bool"], ["M", "i64"], ["N", "i64"], ["K", "i64"], ["alpha", "f64"], ["A", "view"], ["lda", "i64"], ["strideA", "i64"], ["B", "view"], ["ldb", "i64"], ["strideB", "i64"], ["beta", "f64"], ["C", "view"], ["ldc", "i64"], ["strideC", "i64"], ["batch", "i64"], ["dtype", "dtype"], ["outDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "row-major batched C = alpha op(A) op(B) + beta C; A, B in dtype, C in outDtype, float32 accumulation",
  },
  kvCacheWrite: {
    args: [["kCache", "view"], ["vCache", "view"], ["k", "view"], ["v", "view"], ["slots", "view"], ["n", "i64"], ["row", "i64"], ["cacheDtype", "dtype"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "k_cache[slots[t]] = k[t] (and v), rows of `row` elements, converting dtype -> cacheDtype",
  },
  pagedAttention: {
    args: [["q", "view"], ["kCache", "view"], ["vCache", "view"], ["blockTables", "view"], ["maxBlocks", "i64"], ["blockSize", "i64"], ["seq", "view"], ["pos", "view"], ["out", "view"], ["n", "i64"], ["H", "i64"], ["D", "i64"], ["scale", "f64"], ["dtype", "dtype"], ["cacheDtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "ragged causal attention over a paged KV cache; q and out in dtype, the cache in cacheDtype",
  },
  quantInt8Rowwise: {
    args: [["w", "view"], ["q", "view"], ["scales", "view"], ["rows", "i64"], ["cols", "i64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "per-row absmax int8 quantization of w (dtype) into q (int8) and float32 scales",
  },
  matmulInt8: {
    args: [["x", "view"], ["q", "view"], ["scales", "view"], ["bias", "view?"], ["y", "view"], ["M", "i64"], ["N", "i64"], ["K", "i64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "y [M, N] = (x [M, K] @ q[N, K]^T) * scales[N] + bias[N]; x, y, bias in dtype",
  },
  random: {
    args: [["kind", "op"], ["seed", "i64"], ["offset", "i64"], ["out", "view"], ["n", "i64"], ["a", "f64"], ["b", "f64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "counter-based Philox draws: value i depends only on (seed, offset + i)",
  },
  dropout: {
    args: [["seed", "i64"], ["offset", "i64"], ["p", "f64"], ["x", "view"], ["y", "view"], ["n", "i64"], ["dtype", "dtype"]],
    returns: "void", dtypes: FLOAT,
    doc: "y = x * keep / (1 - p), keep drawn from (seed, offset + i)",
  },
} as const satisfies Record<string, KernelSpec>;

export type KernelName = keyof typeof KERNELS;

/** TypeScript type of each argument kind; `V` is what a "view" argument is at that level. */
type ArgType<K extends ArgKind, V> =
  K extends "view" ? V :
  K extends "view?" ? V | null :
  K extends "dims" ? readonly number[] :
  K extends "bool" ? boolean :
  K extends "dtype" ? KernelDType :
  number;

type ArgTypes<A, V> = { -readonly [I in keyof A]: A[I] extends readonly [string, infer K extends ArgKind] ? ArgType<K, V> : never };

/** The argument tuple of kernel `N`, with views of type `V`. */
export type KernelArgs<N extends KernelName, V> = ArgTypes<(typeof KERNELS)[N]["args"], V>;

/** The return type of kernel `N`. */
export type KernelReturn<N extends KernelName> = (typeof KERNELS)[N]["returns"] extends "i64" ? number : void;

/** A full set of kernel functions whose views are `V` (a backend's typed surface). */
export type KernelFns<V> = { [N in KernelName]: (...args: KernelArgs<N, V>) => KernelReturn<N> };

/** Op codes of "op" arguments, shared with native/src/megalith.h (the generator emits the C++ enums from these). */
export const OP_CODES = {
  BinaryOp: { add: 0, sub: 1, mul: 2, div: 3, pow: 4, max: 5, min: 6, eq: 7, ne: 8, lt: 9, le: 10, gt: 11, ge: 12 },
  UnaryOp: {
    neg: 0, exp: 1, log: 2, sqrt: 3, rsqrt: 4, tanh: 5, relu: 6, geluTanh: 7, geluErf: 8, silu: 9, sigmoid: 10, abs: 11,
    addScalar: 12, mulScalar: 13, powScalar: 14, rsubScalar: 15, rdivScalar: 16, clamp: 17, square: 18, sign: 19, erf: 20,
    reciprocal: 21, sin: 22, cos: 23,
  },
  ReduceOp: { sum: 0, max: 1, min: 2, sumSq: 3 },
  ArgReduceOp: { argmax: 0, argmin: 1 },
  RandomKind: { uniform: 0, normal: 1 },
  DType: { float32: 0, bfloat16: 1, int32: 2, int8: 3, uint8: 4, float16: 5 },
} as const;

/** Tensor factories: tensor(), zeros, ones, full, arange, randn, rand, empty. */
import { ValueError, fmtShape } from "../core/errors.js";
import { backend, RandomKind } from "../backend/index.js";
import { Tensor, type NestedArray } from "./tensor.js";
import { type DType, checkDType } from "./dtype.js";
import { numel, resolveShape, type Shape } from "./shape.js";
import * as ops from "./ops.js";
import { nextRandomOffset } from "./random.js";

export interface TensorOptions {
  /** Element type. Default float32 (int32 for Int32Array data). */
  dtype?: DType;
  /** Make the result a leaf that accumulates gradients. */
  requiresGrad?: boolean;
}

export interface TensorDataOptions extends TensorOptions {
  /** Shape for flat data. Default: inferred from nesting (flat data -> 1-D). */
  shape?: readonly number[];
}

type Data = number | NestedArray | ArrayLike<number>;

function inferShape(data: Data): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0];
  }
  if (shape.length === 0 && typeof data === "object") shape.push((data as ArrayLike<number>).length);
  return shape;
}

function flatten(data: Data, shape: number[], out: number[], depth = 0): void {
  if (typeof data === "number") {
    out.push(data);
    return;
  }
  if (!Array.isArray(data)) {
    for (let i = 0; i < data.length; i++) out.push(data[i]!);
    return;
  }
  if (data.length !== shape[depth]) {
    throw new ValueError(`tensor: ragged nested array: expected ${shape[depth]} elements at depth ${depth}, found ${data.length}`);
  }
  for (const d of data) flatten(d as Data, shape, out, depth + 1);
}

function finish(t: Tensor, opts: TensorOptions): Tensor {
  if (opts.requiresGrad) t.requiresGrad_(true);
  return t;
}

/**
 * Creates a tensor from nested arrays, a flat array or typed array (+ shape), or a number.
 * @example
 * const x = tensor([[1, 2], [3, 4]], { requiresGrad: true });
 * const ids = tensor([5, 7, 9], { dtype: "int32" });
 * const y = tensor(new Float32Array(6), { shape: [2, 3] });
 */
export function tensor(data: Data, opts: TensorDataOptions = {}): Tensor {
  const dtype = checkDType(opts.dtype ?? (data instanceof Int32Array ? "int32" : "float32"), "tensor");
  let values: ArrayLike<number>;
  let shape: number[];
  if (typeof data === "number") {
    values = [data];
    shape = [];
  } else if (Array.isArray(data)) {
    shape = inferShape(data);
    const flat: number[] = [];
    flatten(data, shape, flat);
    values = flat;
  } else {
    values = data as ArrayLike<number>;
    shape = [values.length];
  }
  if (opts.shape) {
    const s = resolveShape(opts.shape, values.length, "tensor");
    if (numel(s) !== values.length) throw new ValueError(`tensor: shape ${fmtShape(s)} needs ${numel(s)} values, got ${values.length}`);
    shape = s;
  }
  for (let i = 0; i < values.length; i++) {
    if (typeof values[i] !== "number") throw new ValueError(`tensor: element ${i} is ${JSON.stringify(values[i])}, expected a number`);
  }
  let t: Tensor;
  if (dtype === "float32" || dtype === "int32" || dtype === "int8" || dtype === "uint8") {
    t = Tensor.empty(shape, dtype);
    const arr = dtype === "float32" ? Float32Array.from(values) : dtype === "int32" ? Int32Array.from(values)
      : dtype === "int8" ? Int8Array.from(values) : Uint8Array.from(values);
    backend.write(t, arr);
  } else {
    const f = tensor(Float32Array.from(values), { shape });
    t = ops.toDType(f, dtype);
    f.dispose();
  }
  return finish(t, opts);
}

/** Uninitialised tensor (contents are whatever the allocator hands back). */
export function empty(shape: Shape, opts: TensorOptions = {}): Tensor {
  return finish(Tensor.empty(resolveShape(shape, null, "empty"), opts.dtype ?? "float32"), opts);
}

export function full(shape: Shape, value: number, opts: TensorOptions = {}): Tensor {
  return finish(ops.full(shape, value, opts.dtype ?? "float32"), opts);
}

export const zeros = (shape: Shape, opts: TensorOptions = {}): Tensor => full(shape, 0, opts);
export const ones = (shape: Shape, opts: TensorOptions = {}): Tensor => full(shape, 1, opts);
export const zerosLike = (t: Tensor, opts: TensorOptions = {}): Tensor => full(t.shape, 0, { dtype: t.dtype, ...opts });
export const onesLike = (t: Tensor, opts: TensorOptions = {}): Tensor => full(t.shape, 1, { dtype: t.dtype, ...opts });

/**
 * Values start, start+step, ... below end (torch.arange). `arange(5)` is [0..4].
 */
export function arange(start: number, end?: number, step = 1, opts: TensorOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  if (step === 0 || !Number.isFinite(step)) throw new ValueError(`arange: step must be a non-zero finite number, got ${step}`);
  const n = Math.max(0, Math.ceil((end - start) / step));
  const vals = new Float64Array(n);
  for (let i = 0; i < n; i++) vals[i] = start + i * step;
  const dtype = opts.dtype ?? (Number.isInteger(start) && Number.isInteger(step) && Number.isInteger(end) ? "float32" : "float32");
  return tensor(vals, { ...opts, dtype, shape: [n] });
}

export interface RandomOptions extends TensorOptions {
  /** Use an explicit stream (seed, offset) instead of the global generator. */
  seed?: number;
  offset?: number;
}

function randomImpl(kind: number, shape: Shape, a: number, b: number, opts: RandomOptions): Tensor {
  const s = resolveShape(shape, null, kind === RandomKind.normal ? "randn" : "rand");
  const n = numel(s);
  const { seed, offset } = opts.seed !== undefined ? { seed: opts.seed, offset: opts.offset ?? 0 } : nextRandomOffset(n);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ValueError(`random: seed must be a non-negative safe integer, got ${seed}`);
  const t = Tensor.empty(s);
  backend.random(kind, seed, offset, t, n, a, b, "float32");
  const out = opts.dtype && opts.dtype !== "float32" ? ops.toDType(t, opts.dtype) : t;
  if (out !== t) t.dispose();
  return finish(out, opts);
}

/**
 * Standard normal samples from the counter-based generator. With `{seed}` the values depend
 * only on (seed, position), never on the global generator.
 * @example
 * const w = randn([768, 3072], { seed: 42 }).mul(0.02);
 */
export function randn(shape: Shape, opts: RandomOptions = {}): Tensor {
  return randomImpl(RandomKind.normal, shape, 0, 1, opts);
}

/** Uniform samples in [0, 1). */
export function rand(shape: Shape, opts: RandomOptions = {}): Tensor {
  return randomImpl(RandomKind.uniform, shape, 0, 1, opts);
}

/** Normal samples with the given mean and std (used by initialisers). */
export function normal(shape: Shape, mean: number, std: number, opts: RandomOptions = {}): Tensor {
  return randomImpl(RandomKind.normal, shape, mean, std, opts);
}

/** Uniform integers in [low, high) as int32. */
export function randint(low: number, high: number, shape: Shape, opts: RandomOptions = {}): Tensor {
  const u = randomImpl(RandomKind.uniform, shape, low, high, { ...opts, dtype: "float32", requiresGrad: false });
  const f = u.data() as Float32Array;
  u.dispose();
  const ints = new Int32Array(f.length);
  for (let i = 0; i < f.length; i++) ints[i] = Math.min(high - 1, Math.floor(f[i]!));
  return tensor(ints, { shape: resolveShape(shape, null, "randint"), dtype: "int32" });
}

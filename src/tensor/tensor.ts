/**
 * The Tensor: a strided view of a refcounted native buffer, plus autograd state.
 *
 * Views (reshape of contiguous data, permute/transpose, slice, expand, squeeze) share storage;
 * `contiguous()` copies only when needed. Methods are thin: the work happens in ops.ts
 * (elementwise, reductions, shapes), nn_ops.ts (fused NN kernels) and linalg in ops.ts, and each
 * differentiable op's gradient sits in gradients.ts.
 *
 * Memory is freed deterministically: `dispose()`, scopes (`withScope`), and autograd freeing
 * saved tensors as backward consumes them. See storage.ts.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { backend, type BufferView, type DeviceBuffer } from "../backend/index.js";
import { runBackward, type Differentiable, type Node, isGradEnabled, noGrad } from "../autograd/engine.js";
import { type DType, dtypeSize } from "./dtype.js";
import { Storage, Category, allocationCategory, trackTensor, keep, withScope } from "./storage.js";
import { contiguousStrides, numel, type Shape } from "./shape.js";
import * as ops from "./ops.js";
import * as concat from "./concat.js";
import { matmul } from "./matmul.js";
import * as nn from "./nn_ops.js";

// Backstop for tensors that are never disposed: release their storage when collected.
const finalizer = new FinalizationRegistry<Storage>((s) => s.release());

export type NestedArray = number | NestedArray[];

/** A multi-dimensional array on the backend, with autograd. A Tensor is a BufferView: kernels take it directly. */
export class Tensor implements Differentiable, BufferView {
  /** Size of each dimension. */
  readonly shape: readonly number[];
  /** Elements to step in storage per index of each dimension. */
  readonly strides: readonly number[];
  /** Element offset of this view into its storage. */
  readonly offset: number;
  readonly dtype: DType;
  /** The shared buffer (do not use after dispose()). */
  readonly storage: Storage;
  /** Whether gradients flow to this tensor. Set on leaves with `requiresGrad_()`. */
  requiresGrad = false;
  /** Accumulated gradient (leaves only). */
  grad: Tensor | null = null;
  /** The op that produced this tensor (null for leaves). */
  gradFn: Node | null = null;
  /** Functions called when this leaf's gradient is complete in a backward pass. */
  gradReadyHooks?: Array<(self: Differentiable) => void>;
  /** Optional label (parameter names). */
  name?: string;
  private disposed = false;

  /** Internal: use the factories (tensor, zeros, randn...) instead. */
  constructor(storage: Storage, shape: readonly number[], strides: readonly number[], offset: number, dtype: DType) {
    this.storage = storage;
    this.shape = shape;
    this.strides = strides;
    this.offset = offset;
    this.dtype = dtype;
    finalizer.register(this, storage, this);
    trackTensor(this);
  }

  /** A new uninitialised contiguous tensor (counted under the current allocation category). */
  static empty(shape: Shape, dtype: DType = "float32"): Tensor {
    const n = numel(shape);
    const storage = new Storage(Math.max(n, 1) * dtypeSize(dtype), allocationCategory());
    return new Tensor(storage, [...shape], contiguousStrides(shape), 0, dtype);
  }

  // ---- properties -------------------------------------------------------------------------------

  /** The backend buffer behind this view (kernels resolve it with `offset` and `dtype`). */
  get buffer(): DeviceBuffer {
    this.checkAlive();
    const b = this.storage.buffer;
    if (b === null) {
      throw new ValueError(
        `tensor ${this.name ?? `of shape ${fmtShape(this.shape)}`} has no data here: its storage is released ` +
          "(a sharded parameter is materialised only while its module runs; read it inside withFullParams())",
      );
    }
    return b;
  }

  /** A view of this tensor's buffer starting `elements` further on (for kernels that write into part of a tensor). */
  at(elements: number): BufferView {
    return { buffer: this.buffer, offset: this.offset + elements, dtype: this.dtype };
  }

  get ndim(): number {
    return this.shape.length;
  }
  get numel(): number {
    return numel(this.shape);
  }
  get isLeaf(): boolean {
    return this.gradFn === null;
  }
  get isDisposed(): boolean {
    return this.disposed;
  }
  /** Size of one dimension (negative dims count from the end), or the whole shape. */
  size(): number[];
  size(dim: number): number;
  size(dim?: number): number | number[] {
    if (dim === undefined) return [...this.shape];
    return this.shape[dim < 0 ? dim + this.ndim : dim]!;
  }
  dim(): number {
    return this.ndim;
  }
  get isContiguous(): boolean {
    let acc = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.strides[i] !== acc) return false;
      acc *= this.shape[i]!;
    }
    return true;
  }

  // ---- memory -------------------------------------------------------------------------------------

  /** Releases this handle's reference to the storage (idempotent). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    finalizer.unregister(this);
    this.storage.release();
  }

  /** Throws the "used after dispose()" error if this handle was disposed. */
  private checkAlive(): void {
    if (this.disposed) throw new ValueError(`tensor of shape ${fmtShape(this.shape)} was used after dispose()`);
  }

  /** A view with the same shape, strides and storage (a separate handle to dispose). */
  alias(): Tensor {
    // A disposed handle may share storage with live views (refcount > 0), so retain() alone
    // would not notice; check the handle itself.
    this.checkAlive();
    return new Tensor(this.storage.retain(), this.shape, this.strides, this.offset, this.dtype);
  }

  /** A view over the same storage with another shape/strides/offset. */
  view_(shape: readonly number[], strides: readonly number[], offset: number): Tensor {
    this.checkAlive();
    return new Tensor(this.storage.retain(), shape, strides, offset, this.dtype);
  }

  /** An alias owned by an autograd node: not tracked by scopes, released by the node. */
  saveForBackward(): Tensor {
    const t = this.alias();
    keep(t);
    return t;
  }

  /**
   * Runs `fn` in a tensor scope (`withScope`): how activation checkpointing, which lives in the
   * autograd layer and imports no tensor code, frees what its block allocates.
   */
  scoped<R>(fn: () => R): R {
    return withScope(fn);
  }

  /** Keeps this tensor alive past the scopes it was created in. */
  keep(): this {
    return keep(this);
  }

  // ---- autograd -----------------------------------------------------------------------------------

  /** Sets requiresGrad in place (leaves only) and returns this. */
  requiresGrad_(flag = true): this {
    if (!this.isLeaf && !flag) throw new ValueError("requiresGrad_(false) is only allowed on leaf tensors; use detach()");
    if (flag && this.dtype !== "float32" && this.dtype !== "bfloat16" && this.dtype !== "float16") {
      throw new ValueError(`requiresGrad_: only floating tensors (float32, bfloat16, float16) can require grad, this one is ${this.dtype}`);
    }
    this.requiresGrad = flag;
    return this;
  }

  /**
   * Backpropagates from this tensor. A scalar needs no gradient argument (it uses 1.0).
   * @example
   * const loss = F.crossEntropy(logits, targets); loss.backward(); w.grad!.toArray();
   */
  backward(gradient?: Tensor): void {
    let g: Tensor;
    if (gradient === undefined) {
      if (this.numel !== 1) {
        throw new ValueError(`backward: grad can be implicitly created only for scalar outputs; this tensor has shape ${fmtShape(this.shape)} — pass a gradient`);
      }
      g = ops.full(this.shape, 1);
    } else {
      ops.checkSameShape("backward", this, gradient);
      g = gradient.alias();
    }
    noGrad(() => runBackward(this, g));
  }

  /** Adds `g` into `.grad` (leaves), taking ownership of `g`; grads are counted as "grads". */
  accumulateGrad(gIn: Differentiable): void {
    let g = gIn as Tensor;
    if (!g.isContiguous || g.storage.refCount > 1 || g.offset !== 0 || !sameShape(g.shape, this.shape)) {
      const c = ops.contiguousCopy(g.shape.length === this.shape.length ? g : g.reshape(this.shape));
      g.dispose();
      g = c;
    }
    if (this.grad === null) {
      g.storage.setCategory(Category.grads);
      this.grad = keep(g);
    } else {
      ops.addInPlace(this.grad, g);
      g.dispose();
    }
  }

  /** this + other as gradients (the engine's accumulation for non-leaf nodes). */
  plus(other: Differentiable): Tensor {
    return ops.add(this, other as Tensor);
  }

  /** Registers a function called when this leaf's gradient is complete (data-parallel overlap). */
  registerGradReadyHook(fn: (t: Tensor) => void): () => void {
    const hook = fn as (self: Differentiable) => void;
    (this.gradReadyHooks ??= []).push(hook);
    return () => {
      this.gradReadyHooks = this.gradReadyHooks?.filter((h) => h !== hook);
    };
  }

  /** A tensor sharing data but cut from the graph (torch.detach). */
  detach(): Tensor {
    return this.alias();
  }

  // ---- data out -----------------------------------------------------------------------------------

  /** The elements as a flat typed array, copied (row-major). bfloat16/float16 come out as float32. */
  data(): Float32Array | Int32Array | Int8Array | Uint8Array {
    const c = this.isContiguous ? this : ops.contiguousCopy(this);
    try {
      const n = this.numel;
      if (this.dtype === "bfloat16" || this.dtype === "float16") {
        const f = Tensor.empty(this.shape, "float32");
        backend.cast(this.dtype, c, "float32", f, n);
        const out = new Float32Array(backend.read(f, n));
        f.dispose();
        return out;
      }
      const buf = backend.read(c, n);
      switch (this.dtype) {
        case "int32": return new Int32Array(buf);
        case "int8": return new Int8Array(buf);
        case "uint8": return new Uint8Array(buf);
        default: return new Float32Array(buf);
      }
    } finally {
      if (c !== this) c.dispose();
    }
  }

  /** The elements as nested JavaScript arrays (a number for a 0-d tensor), like torch's tolist(). */
  toArray(): NestedArray {
    const flat = this.data();
    if (this.ndim === 0) return flat[0]!;
    const build = (dim: number, off: number): NestedArray => {
      const n = this.shape[dim]!;
      if (dim === this.ndim - 1) return Array.from(flat.subarray(off, off + n));
      const inner = numel(this.shape.slice(dim + 1));
      const out: NestedArray[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = build(dim + 1, off + i * inner);
      return out;
    };
    return build(0, 0);
  }

  /** Alias of toArray(). */
  tolist(): NestedArray {
    return this.toArray();
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.numel !== 1) throw new ValueError(`item: only one-element tensors can be converted to a number; shape is ${fmtShape(this.shape)}`);
    return this.data()[0]!;
  }

  toString(): string {
    const body = this.numel <= 64 ? JSON.stringify(this.toArray()) : `... ${this.numel} elements`;
    return `tensor(${body}, shape=${fmtShape(this.shape)}, dtype=${this.dtype}${this.requiresGrad ? ", requiresGrad" : ""})`;
  }

  // ---- elementwise ---------------------------------------------------------------------------------
  add(o: Tensor | number): Tensor { return ops.add(this, o); }
  sub(o: Tensor | number): Tensor { return ops.sub(this, o); }
  mul(o: Tensor | number): Tensor { return ops.mul(this, o); }
  div(o: Tensor | number): Tensor { return ops.div(this, o); }
  pow(o: Tensor | number): Tensor { return ops.pow(this, o); }
  maximum(o: Tensor): Tensor { return ops.maximum(this, o); }
  minimum(o: Tensor): Tensor { return ops.minimum(this, o); }
  neg(): Tensor { return ops.neg(this); }
  exp(): Tensor { return ops.exp(this); }
  log(): Tensor { return ops.log(this); }
  sqrt(): Tensor { return ops.sqrt(this); }
  rsqrt(): Tensor { return ops.rsqrt(this); }
  tanh(): Tensor { return ops.tanh(this); }
  relu(): Tensor { return ops.relu(this); }
  sigmoid(): Tensor { return ops.sigmoid(this); }
  silu(): Tensor { return ops.silu(this); }
  gelu(approximate: "none" | "tanh" = "none"): Tensor { return ops.gelu(this, approximate); }
  abs(): Tensor { return ops.abs(this); }
  square(): Tensor { return ops.square(this); }
  reciprocal(): Tensor { return ops.reciprocal(this); }
  clamp(min?: number | null, max?: number | null): Tensor { return ops.clamp(this, min, max); }
  eq(o: Tensor | number): Tensor { return ops.compare("eq", this, o); }
  ne(o: Tensor | number): Tensor { return ops.compare("ne", this, o); }
  lt(o: Tensor | number): Tensor { return ops.compare("lt", this, o); }
  le(o: Tensor | number): Tensor { return ops.compare("le", this, o); }
  gt(o: Tensor | number): Tensor { return ops.compare("gt", this, o); }
  ge(o: Tensor | number): Tensor { return ops.compare("ge", this, o); }
  maskedFill(mask: Tensor, value: number): Tensor { return ops.maskedFill(this, mask, value); }

  // ---- reductions ----------------------------------------------------------------------------------
  sum(dim?: number | number[] | null, keepdim = false): Tensor { return ops.sum(this, dim, keepdim); }
  mean(dim?: number | number[] | null, keepdim = false): Tensor { return ops.mean(this, dim, keepdim); }
  /** max over all elements, or {values, indices} along `dim`. */
  max(): Tensor;
  max(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  max(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    return dim === undefined ? ops.maxAll(this, "max") : ops.maxDim(this, dim, keepdim, "max");
  }
  min(): Tensor;
  min(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  min(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    return dim === undefined ? ops.maxAll(this, "min") : ops.maxDim(this, dim, keepdim, "min");
  }
  argmax(dim?: number, keepdim = false): Tensor { return ops.argReduce(this, dim, keepdim, "argmax"); }
  argmin(dim?: number, keepdim = false): Tensor { return ops.argReduce(this, dim, keepdim, "argmin"); }
  var(dim?: number | number[] | null, opts: { correction?: number; keepdim?: boolean } = {}): Tensor { return ops.variance(this, dim, opts); }
  softmax(dim = -1): Tensor { return nn.softmax(this, dim); }
  logSoftmax(dim = -1): Tensor { return nn.logSoftmax(this, dim); }
  cumsum(dim: number): Tensor { return ops.cumsum(this, dim); }
  topk(k: number, dim = -1, largest = true): { values: Tensor; indices: Tensor } { return ops.topk(this, k, dim, largest); }

  // ---- linear algebra --------------------------------------------------------------------------------
  matmul(o: Tensor): Tensor { return matmul(this, o); }

  // ---- shape -------------------------------------------------------------------------------------------
  reshape(shape: readonly number[]): Tensor { return ops.reshape(this, shape); }
  view(shape: readonly number[]): Tensor { return ops.reshape(this, shape); }
  permute(dims: readonly number[]): Tensor { return ops.permute(this, dims); }
  transpose(a: number, b: number): Tensor { return ops.transpose(this, a, b); }
  /** Transpose of a 2-D tensor. */
  t(): Tensor {
    if (this.ndim !== 2) throw new ValueError(`t: expects a 2-D tensor, got shape ${fmtShape(this.shape)}`);
    return ops.transpose(this, 0, 1);
  }
  expand(shape: readonly number[]): Tensor { return ops.expand(this, shape); }
  slice(dim: number, start: number, end?: number, step = 1): Tensor { return ops.slice(this, dim, start, end, step); }
  narrow(dim: number, start: number, length: number): Tensor { return ops.slice(this, dim, start, start + length); }
  select(dim: number, index: number): Tensor { return ops.select(this, dim, index); }
  squeeze(dim?: number): Tensor { return ops.squeeze(this, dim); }
  unsqueeze(dim: number): Tensor { return ops.unsqueeze(this, dim); }
  flatten(startDim = 0, endDim = -1): Tensor { return ops.flatten(this, startDim, endDim); }
  split(sizeOrSections: number | number[], dim = 0): Tensor[] { return concat.split(this, sizeOrSections, dim); }
  chunk(chunks: number, dim = 0): Tensor[] { return concat.chunk(this, chunks, dim); }
  contiguous(): Tensor { return ops.contiguous(this); }
  clone(): Tensor { return ops.clone(this); }
  /** Converts the dtype (copy). Gradients flow through float conversions. */
  to(dtype: DType): Tensor { return ops.toDType(this, dtype); }
  float(): Tensor { return ops.toDType(this, "float32"); }

  // ---- in place (no autograd) -----------------------------------------------------------------------
  /** Fills with `value`. */
  fill_(value: number): this { ops.fillInPlace(this, value); return this; }
  zero_(): this { ops.fillInPlace(this, 0); return this; }
  /** Copies `src` (broadcast to this shape, any dtype conversion from float32) into this tensor. */
  copy_(src: Tensor): this { ops.copyInPlace(this, src); return this; }

  /**
   * Makes this tensor hold `src`'s data, shape and dtype, keeping its identity (torch's
   * `param.data = src`): how a module changes the dtype of its parameters in place. Takes
   * ownership of `src`'s handle. Leaves only; the gradient, if any, is dropped.
   */
  setData_(src: Tensor): this {
    if (!this.isLeaf) throw new ValueError("setData_: only leaf tensors (parameters) can be given new data");
    const self = this as unknown as { storage: Storage; shape: readonly number[]; strides: readonly number[]; offset: number; dtype: DType };
    finalizer.unregister(this);
    this.storage.release();
    src.storage.retain();
    self.storage = src.storage;
    self.shape = src.shape;
    self.strides = src.strides;
    self.offset = src.offset;
    self.dtype = src.dtype;
    finalizer.register(this, this.storage, this);
    src.dispose();
    this.grad?.dispose();
    this.grad = null;
    return this;
  }
  /** this += alpha * other. */
  add_(other: Tensor, alpha = 1): this { ops.addInPlace(this, other, alpha); return this; }
  /** this *= s. */
  mul_(s: number): this { ops.mulScalarInPlace(this, s); return this; }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Internal guard for in-place ops. */
export function checkInPlace(op: string, t: Tensor): void {
  if (t.requiresGrad && isGradEnabled() && t.isLeaf) {
    throw new ValueError(`${op}: in-place operation on a leaf tensor that requires grad; wrap it in noGrad()`);
  }
}

/**
 * Tensor memory: refcounted native buffers, categories, and scopes.
 *
 * JavaScript has no reference counting, so tensor memory never waits for the garbage
 * collector in the hot path:
 *  - a Storage is shared by a tensor and its views and freed when the last handle is disposed;
 *  - `withScope(fn)` disposes every tensor created inside `fn` except what it returns (and
 *    what was `keep()`-ed), and releases autograd nodes recorded inside it;
 *  - a FinalizationRegistry is only a backstop for tensors created outside any scope.
 * Live and peak bytes are counted per category by the native allocator (`memoryStats()`).
 */
import { backend, type DeviceBuffer } from "../backend/index.js";
import { Node, setNodeObserver } from "../autograd/engine.js";

/** Memory categories, matching native/src/megalith.h. */
export const Category = { other: 0, params: 1, grads: 2, optimizer: 3, activations: 4, kvCache: 5 } as const;
export type CategoryName = keyof typeof Category;
const CATEGORY_NAMES = Object.keys(Category) as CategoryName[];

/** A refcounted backend buffer. */
export class Storage {
  readonly nbytes: number;
  private refs = 1;
  private buf: DeviceBuffer | null;

  constructor(nbytes: number, category: number) {
    this.nbytes = nbytes;
    this.buf = backend.alloc(nbytes, category);
  }

  /** The backend buffer (null while the data is released with `releaseData_()`). */
  get buffer(): DeviceBuffer | null {
    return this.buf;
  }

  /**
   * Whether the buffer exists. Parameter sharding (FSDP / ZeRO-3) releases a parameter's
   * buffer between uses while the tensor, its views and the autograd graph keep referring to
   * the same Storage object (PyTorch FSDP's `storage.resize_(0)`).
   */
  get resident(): boolean {
    return this.buf !== null;
  }

  /** Frees the buffer but keeps this object and its handles (see `resident`). */
  releaseData_(): void {
    if (this.buf === null || this.refs <= 0) return;
    backend.free(this.buf);
    this.buf = null;
  }

  /** Allocates the buffer again (contents undefined) under `category`. */
  restoreData_(category: number): void {
    if (this.refs <= 0) throw new Error("internal: restoreData_() on a freed storage");
    if (this.buf === null) this.buf = backend.alloc(this.nbytes, category);
  }

  retain(): this {
    if (this.refs <= 0) throw new Error("internal: retain() on a freed storage");
    this.refs++;
    return this;
  }

  release(): void {
    if (this.refs <= 0) return;
    if (--this.refs === 0 && this.buf !== null) {
      backend.free(this.buf);
      this.buf = null;
    }
  }

  /** Number of live handles (a tensor and its views each hold one). */
  get refCount(): number {
    return this.refs;
  }

  get alive(): boolean {
    return this.refs > 0;
  }

  setCategory(category: number): void {
    if (this.buf !== null) backend.setCategory(this.buf, category);
  }
}

// ---- category of new allocations ---------------------------------------------------------------

let currentCategory: number = Category.activations;

/** The category new tensors are counted under. */
export function allocationCategory(): number {
  return currentCategory;
}

/**
 * Runs `fn` with new allocations counted under `category` (e.g. "optimizer" for AdamW state).
 * @example
 * const m = withCategory("optimizer", () => zeros(p.shape));
 */
export function withCategory<T>(category: CategoryName, fn: () => T): T {
  const prev = currentCategory;
  currentCategory = Category[category];
  try {
    return fn();
  } finally {
    currentCategory = prev;
  }
}

// ---- scopes ----------------------------------------------------------------------------------

/** What a scope needs from a tensor. */
export interface Scoped {
  dispose(): void;
  readonly isDisposed: boolean;
}

interface ScopeFrame {
  tensors: Scoped[];
  nodes: Node[];
  kept: Set<Scoped>;
}

const scopes: ScopeFrame[] = [];

/** Called by the Tensor constructor: tracks the tensor in the innermost scope. */
export function trackTensor(t: Scoped): boolean {
  const top = scopes[scopes.length - 1];
  if (!top) return false;
  top.tensors.push(t);
  return true;
}

/** Marks a tensor to survive the scopes it was created in (parameters, optimizer state, grads). */
export function keep<T extends Scoped>(t: T): T {
  for (const s of scopes) s.kept.add(t);
  return t;
}

/** Collects the tensors in a scope's return value (arrays, plain objects, maps). */
function collectReturned(value: unknown, out: Set<Scoped>, depth = 0): void {
  if (value == null || depth > 4 || typeof value !== "object") return;
  if ("dispose" in value && "isDisposed" in value) {
    out.add(value as Scoped);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collectReturned(v, out, depth + 1);
  else if (value instanceof Map) for (const v of value.values()) collectReturned(v, out, depth + 1);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collectReturned(v, out, depth + 1);
}

/**
 * Runs `fn`, then disposes every tensor created inside it except those it returns (which move
 * to the enclosing scope) and those passed to `keep()`. Autograd nodes recorded inside are
 * released too, so a step's whole graph is freed even if backward was not called.
 * @example
 * const loss = withScope(() => { const { loss } = model.forward(x, y); loss.backward(); return loss.item(); });
 */
export function withScope<T>(fn: () => T): T {
  const frame: ScopeFrame = { tensors: [], nodes: [], kept: new Set() };
  scopes.push(frame);
  const prevObserver = setNodeObserver((n) => scopes[scopes.length - 1]?.nodes.push(n));
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
    setNodeObserver(scopes.length ? prevObserver : null);
  }
  const returned = new Set<Scoped>();
  collectReturned(result, returned);
  const parent = scopes[scopes.length - 1];
  // Nodes reachable from a returned tensor's graph stay alive (they move to the parent scope);
  // every other node recorded here is released now.
  const reachable = new Set<Node>();
  const stack: Node[] = [];
  for (const t of returned) {
    const fn = (t as unknown as { gradFn?: Node | null }).gradFn;
    if (fn) stack.push(fn);
  }
  while (stack.length) {
    const n = stack.pop()!;
    if (reachable.has(n)) continue;
    reachable.add(n);
    for (const inp of n.inputs) if (inp?.gradFn) stack.push(inp.gradFn);
  }
  for (const n of frame.nodes) {
    if (reachable.has(n)) parent?.nodes.push(n);
    else n.release();
  }
  for (const t of frame.tensors) {
    if (frame.kept.has(t)) continue;
    if (returned.has(t)) {
      parent?.tensors.push(t);
      continue;
    }
    t.dispose();
  }
  return result;
}

// ---- statistics ------------------------------------------------------------------------------

export interface MemoryStats {
  /** Live bytes per category. */
  live: Record<CategoryName, number>;
  /** Peak live bytes per category since start (or the last `resetPeakMemory()`). */
  peak: Record<CategoryName, number>;
  liveTotal: number;
  peakTotal: number;
  /** Bytes held in the allocator's free lists, ready for reuse. */
  cached: number;
  allocs: number;
  cacheHits: number;
}

/**
 * Live and peak bytes of tensor memory, per category.
 * @example
 * console.log(memoryStats().live.activations);
 */
export function memoryStats(): MemoryStats {
  const s = backend.memoryStats();
  const live = {} as Record<CategoryName, number>;
  const peak = {} as Record<CategoryName, number>;
  CATEGORY_NAMES.forEach((name, i) => {
    live[name] = s.live[i]!;
    peak[name] = s.peak[i]!;
  });
  return { live, peak, liveTotal: s.liveTotal, peakTotal: s.peakTotal, cached: s.cached, allocs: s.allocs, cacheHits: s.cacheHits };
}

/** Starts peak tracking afresh from the current live bytes. */
export function resetPeakMemory(): void {
  backend.resetPeak();
}

/** Returns cached free blocks to the OS. */
export function emptyCache(): void {
  backend.emptyCache();
}

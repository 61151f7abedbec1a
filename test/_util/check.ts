/**
 * Test helpers shared by the op suites: tolerances per dtype, fresh random inputs with a
 * replayable seed, `assertClose` that names the worst element, the kernel-set / thread-count
 * matrix, and `checkOp`, which runs one op forward and backward against test/_util/reference.ts.
 *
 * Seeds: every run draws a fresh base seed (printed in every failure message). Replay a failure
 * with `MEGALITH_TEST_SEED=<base> node --import tsx --test <file>`; each test derives its own
 * seed from the base and its label, so a replay does not depend on which tests ran before.
 */
import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { _native, tensor, withScope, type Tensor } from "../../src/index.js";
import { type Arr, arr, numGrad, unravel } from "./reference.js";

// ---- tolerances ---------------------------------------------------------------------------------
// Every comparison is elementwise: |actual - expected| <= atol + rtol * |expected|, with the
// reference computed in float64 on the same (float32-rounded) inputs.

export interface Tol {
  rtol: number;
  atol: number;
}

/** float32 round-off: u = 2^-24 ~ 6e-8 per rounding. */
const U32 = 2 ** -24;

export const TOL = {
  float32: {
    /** One rounding of an exactly computed value (add, mul, copies, views, casts): ~1 ulp. */
    exact: { rtol: 4 * U32, atol: 1e-7 },
    /**
     * Simple elementwise ops. 1e-5 leaves room for libmvec's vectorized expf/tanhf/erff (a few
     * ulp) and for compositions of two or three of them (gelu, silu).
     */
    simple: { rtol: 1e-5, atol: 1e-6 },
    /**
     * Backward of a float32 kernel vs float64 finite differences. The gradient formulas of
     * normalizations and softmax subtract nearly equal row sums (g - mean(g) - xhat * mean(g xhat)),
     * which costs about two digits: 1e-4 relative.
     */
    grad: { rtol: 1e-4, atol: 1e-5 },
  },
  /** bfloat16 keeps 8 significant bits: half an ulp is 2^-8 relative. */
  bfloat16: { rtol: 2 ** -8, atol: 0 },
  /** float16 keeps 11 significant bits: half an ulp is 2^-11 relative (normals). */
  float16: { rtol: 2 ** -11, atol: 2 ** -25 },
} as const;

/**
 * Tolerance for a float32 result accumulated over `n` terms of magnitude about `scale` (sums,
 * matmul inner products, softmax/norm row statistics). A naive float32 sum's round-off grows
 * like n * u * scale in the worst case and sqrt(n) * u * |partial sums| typically; 4 n u scale
 * covers both with margin, and never goes below the simple-op tolerance.
 */
export function accumTol(n: number, scale = 1): Tol {
  return { rtol: 1e-5, atol: Math.max(1e-6, 4 * n * U32 * scale) };
}

/** Gradient tolerance for an op whose backward accumulates over `n` terms of size ~`scale`. */
export function gradTol(n: number, scale = 1): Tol {
  return { rtol: TOL.float32.grad.rtol, atol: Math.max(TOL.float32.grad.atol, 8 * n * U32 * scale) };
}

// ---- seeds and random inputs ----------------------------------------------------------------------

/** This run's base seed (MEGALITH_TEST_SEED to replay). */
export const RUN_SEED: number = process.env.MEGALITH_TEST_SEED ? Number(process.env.MEGALITH_TEST_SEED) : randomInt(1, 2 ** 31 - 1);

/** A seed for one test case: the base seed mixed with the label (FNV-1a), so replays are order-free. */
export function seedFor(label: string): number {
  let h = 0x811c9dc5 ^ RUN_SEED;
  for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
  return (h >>> 0) % 2_000_000_000 + 1;
}

/** How to print a seed in a failure message. */
export function seedNote(seed: number): string {
  return `seed ${seed}; replay with MEGALITH_TEST_SEED=${RUN_SEED}`;
}

/** mulberry32: a small, well-mixed 32-bit generator for test inputs (not Megalith's Philox). */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  normal(): number {
    const u1 = 1 - this.next(), u2 = this.next();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [xs[i], xs[j]] = [xs[j]!, xs[i]!];
    }
    return xs;
  }
}

export interface RandOptions {
  /** "normal" (default, times `scale`) or "uniform" in [lo, hi). */
  dist?: "normal" | "uniform";
  scale?: number;
  lo?: number;
  hi?: number;
  /** Keep every value at least `gap` away from these points (kinks: 0 for relu/abs, clamp bounds). */
  awayFrom?: number[];
  /** With awayFrom: the minimum distance; with distinct: the minimum spacing. Default 0.02. */
  gap?: number;
  /** All values pairwise at least `gap` apart (no ties for max/min/topk/argmax). */
  distinct?: boolean;
}

/** Fresh random float64 data, rounded to float32 so reference and Megalith see the same numbers. */
export function randArr(shape: readonly number[], seed: number, opts: RandOptions = {}): Arr {
  const rng = new Rng(seed);
  const a = arr(shape);
  const n = a.data.length;
  const gap = opts.gap ?? 0.02;
  if (opts.distinct) {
    // A shuffled grid with jitter: random order, guaranteed spacing, roughly standard scale.
    const spacing = Math.max(gap * 2, 4 / Math.max(n, 1)) * (opts.scale ?? 1);
    const order = rng.shuffle(Array.from({ length: n }, (_, i) => i));
    for (let i = 0; i < n; i++) a.data[i] = Math.fround((order[i]! - n / 2 + 0.25 * rng.next()) * spacing);
    return a;
  }
  for (let i = 0; i < n; i++) {
    let v: number;
    for (;;) {
      v = opts.dist === "uniform" ? rng.uniform(opts.lo ?? 0, opts.hi ?? 1) : rng.normal() * (opts.scale ?? 1);
      if (!opts.awayFrom || opts.awayFrom.every((p) => Math.abs(v - p) >= gap)) break;
    }
    a.data[i] = Math.fround(v);
  }
  return a;
}

/** A float32 Megalith tensor holding `a`. */
export function toTensor(a: Arr, opts: { requiresGrad?: boolean } = {}): Tensor {
  return tensor(Float32Array.from(a.data), { shape: a.shape, requiresGrad: opts.requiresGrad ?? false });
}

/** Fresh random inputs as a Megalith tensor (see randArr). */
export function randTensor(shape: readonly number[], seed: number, opts: RandOptions & { requiresGrad?: boolean } = {}): Tensor {
  return toTensor(randArr(shape, seed, opts), opts);
}

export function fromTensor(t: Tensor): Arr {
  return arr(t.shape, t.data());
}

// ---- comparison ---------------------------------------------------------------------------------------

export interface CloseOptions extends Partial<Tol> {
  /** What is being compared (op, case, input), first in the failure message. */
  what: string;
  seed?: number;
}

type Values = Tensor | Arr | ArrayLike<number> | number;

function asShaped(v: Values): { shape: number[] | null; data: ArrayLike<number> } {
  if (typeof v === "number") return { shape: [], data: [v] };
  if (typeof (v as Tensor).data === "function") {
    const t = v as Tensor;
    return { shape: [...t.shape], data: t.data() };
  }
  if ((v as Arr).shape !== undefined && (v as Arr).data !== undefined) return { shape: (v as Arr).shape, data: (v as Arr).data };
  return { shape: null, data: v as ArrayLike<number> };
}

/**
 * Asserts actual ~ expected elementwise; on failure reports the worst element (by error over
 * allowance), its index, both values, how many elements failed, and the seed.
 */
export function assertClose(actual: Values, expected: Values, opts: CloseOptions): void {
  const rtol = opts.rtol ?? TOL.float32.simple.rtol, atol = opts.atol ?? TOL.float32.simple.atol;
  const a = asShaped(actual), e = asShaped(expected);
  const seed = opts.seed !== undefined ? ` (${seedNote(opts.seed)})` : "";
  if (a.shape && e.shape) {
    assert.deepEqual(a.shape, e.shape, `${opts.what}: shape [${a.shape}] but expected [${e.shape}]${seed}`);
  }
  assert.equal(a.data.length, e.data.length, `${opts.what}: ${a.data.length} elements but expected ${e.data.length}${seed}`);
  let worst = -1, worstRatio = 0, bad = 0;
  for (let i = 0; i < e.data.length; i++) {
    const x = a.data[i]!, y = e.data[i]!;
    let ratio: number;
    if (Number.isNaN(y) || Number.isNaN(x)) ratio = Number.isNaN(x) && Number.isNaN(y) ? 0 : Infinity;
    else if (!Number.isFinite(y) || !Number.isFinite(x)) ratio = x === y ? 0 : Infinity;
    else ratio = Math.abs(x - y) / (atol + rtol * Math.abs(y));
    if (ratio > 1) bad++;
    if (ratio > worstRatio || (ratio === Infinity && worst < 0)) {
      worstRatio = ratio;
      worst = i;
    }
  }
  if (bad > 0) {
    const idx = e.shape ? `[${unravel(worst, e.shape).join(", ")}]` : `${worst}`;
    const x = a.data[worst]!, y = e.data[worst]!;
    assert.fail(
      `${opts.what}: ${bad} of ${e.data.length} elements differ; worst at ${idx}: got ${x}, expected ${y} ` +
        `(|diff| ${Math.abs(x - y).toExponential(2)} > atol ${atol.toExponential(1)} + rtol ${rtol.toExponential(1)} * |expected|)${seed}`,
    );
  }
}

// ---- kernel sets and threads ------------------------------------------------------------------------

export type KernelSet = "generic" | "avx2" | "avx512";

/** The kernel builds this CPU can run: always generic, plus avx2 and avx512 where available. */
export const KERNEL_SETS: KernelSet[] = [
  "generic",
  ...(_native.cpuInfo().avx2 ? ["avx2" as const] : []),
  ...(_native.cpuInfo().avx512 ? ["avx512" as const] : []),
];

/** Runs fn with the given kernel build, restoring the previous one. */
export function withKernelSet<T>(ks: KernelSet, fn: () => T): T {
  const prev = _native.cpuInfo().kernels;
  _native.setKernelSet(ks);
  try {
    return fn();
  } finally {
    _native.setKernelSet(prev);
  }
}

/** Runs fn with `n` pool threads, restoring the previous count. */
export function withThreads<T>(n: number, fn: () => T): T {
  const prev = _native.numThreads();
  if (prev !== n) _native.setNumThreads(n);
  try {
    return fn();
  } finally {
    if (prev !== n) _native.setNumThreads(prev);
  }
}

/** Every (kernel set, thread count) pair, for kernels whose results depend on either. */
export function configs(threads: number[] = [1, 2]): Array<{ ks: KernelSet; threads: number; label: string }> {
  return KERNEL_SETS.flatMap((ks) => threads.map((t) => ({ ks, threads: t, label: `${ks}, ${t} thread${t > 1 ? "s" : ""}` })));
}

/** Runs fn under one configuration from `configs()`. */
export function withConfig<T>(c: { ks: KernelSet; threads: number }, fn: () => T): T {
  return withKernelSet(c.ks, () => withThreads(c.threads, fn));
}

// ---- one op, forward and backward ----------------------------------------------------------------------

export interface OpCase {
  /** Op and case, e.g. "softmax dim=1 [3, 17, 5]". */
  what: string;
  seed: number;
  /** Reference inputs (float32-valued); each becomes a leaf tensor. */
  inputs: Arr[];
  /** Which inputs require grad (default: all). */
  requiresGrad?: boolean[];
  /** The Megalith computation, from the leaves (it may take views of them first). */
  megalith: (...xs: Tensor[]) => Tensor;
  /** The same computation in float64. */
  reference: (...xs: Arr[]) => Arr;
  /** Hand-derived gradients of sum(reference * gy), one per input (null = skip); default: numGrad. */
  referenceGrad?: (gy: Arr, ...xs: Arr[]) => Array<Arr | null>;
  tol?: Tol;
  gradTol?: Tol;
  /** Skip the backward check (ops without gradients). */
  forwardOnly?: boolean;
}

/**
 * Runs `megalith` on leaf tensors made from `inputs`, compares the output with `reference`, then
 * backpropagates a random output gradient and compares every input's .grad with the reference
 * gradient (hand-derived or by finite differences of the float64 reference).
 */
export function checkOp(c: OpCase): void {
  const needs = c.inputs.map((_, i) => !c.forwardOnly && (c.requiresGrad?.[i] ?? true));
  const leaves: Tensor[] = [];
  try {
    withScope(() => {
      for (let i = 0; i < c.inputs.length; i++) leaves.push(toTensor(c.inputs[i]!, { requiresGrad: needs[i] }).keep());
      const y = c.megalith(...leaves);
      const expected = c.reference(...c.inputs);
      assertClose(y, expected, { ...(c.tol ?? TOL.float32.simple), what: `${c.what}: forward`, seed: c.seed });
      if (!needs.some(Boolean)) return;
      const gy = randArr(expected.shape, c.seed ^ 0x5bd1e995);
      y.backward(toTensor(gy));
      const wrt = needs.map((n, i) => (n ? i : -1)).filter((i) => i >= 0);
      let ref: Array<Arr | null>;
      if (c.referenceGrad) ref = c.referenceGrad(gy, ...c.inputs);
      else {
        const g = numGrad(c.reference, c.inputs, gy, wrt);
        ref = c.inputs.map((_, i) => (needs[i] ? g[wrt.indexOf(i)]! : null));
      }
      for (const i of wrt) {
        if (!ref[i]) continue;
        const leaf = leaves[i]!;
        assert.ok(leaf.grad, `${c.what}: input ${i} got no gradient (${seedNote(c.seed)})`);
        assertClose(leaf.grad, ref[i]!, { ...(c.gradTol ?? TOL.float32.grad), what: `${c.what}: gradient of input ${i}`, seed: c.seed });
      }
    });
  } finally {
    for (const l of leaves) {
      l.grad?.dispose();
      l.dispose();
    }
  }
}

/**
 * The default random generator state: a (seed, offset) pair for the native counter-based Philox.
 *
 * Every draw reads positions [offset, offset + n) of the stream keyed by `seed` and advances
 * the offset, so a value depends only on the seed and its logical position. Code that must be
 * layout-independent (parameter init, dropout under tensor parallelism) passes explicit
 * `{seed, offset}` instead of using the global generator.
 */
import { ValueError } from "./errors.js";

export interface GeneratorState {
  seed: number;
  offset: number;
  /** Inside a `withRandomStream` that names them: each batch row's sample number. */
  rows?: readonly number[] | null;
}

const state: GeneratorState = { seed: 0x5eed, offset: 0, rows: null };

/**
 * Seeds the default generator (torch.manual_seed).
 * @example
 * manualSeed(1337); const w = randn([768, 768]);
 */
export function manualSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new ValueError(`manualSeed: seed must be a non-negative safe integer, got ${seed}`);
  }
  state.seed = seed;
  state.offset = 0;
  state.rows = null;
}

/** Reserves `n` stream positions (rounded up to a multiple of 4) and returns where they start. */
export function nextRandomOffset(n: number): { seed: number; offset: number } {
  const start = state.offset;
  state.offset += Math.ceil(n / 4) * 4;
  return { seed: state.seed, offset: start };
}

/** A copy of the generator state, for checkpoints (the row numbers only inside a stream that has them). */
export function getRngState(): GeneratorState {
  return state.rows ? { ...state } : { seed: state.seed, offset: state.offset };
}

/** Restores a state saved with getRngState(). */
export function setRngState(s: GeneratorState): void {
  if (!Number.isSafeInteger(s.seed) || !Number.isSafeInteger(s.offset) || s.offset < 0) {
    throw new ValueError(`setRngState: invalid state ${JSON.stringify(s)}`);
  }
  state.seed = s.seed;
  state.offset = s.offset;
  state.rows = s.rows ?? null;
}

/**
 * A 53-bit seed for the sub-stream `key` of `seed` (two rounds of a 32-bit multiplicative
 * hash): distinct keys give unrelated Philox streams.
 */
export function mixSeed(seed: number, key: number): number {
  const h = (a: number, b: number) => {
    let x = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ b;
    x = Math.imul(x ^ (x >>> 16), 0xc2b2ae35);
    x = Math.imul(x ^ (x >>> 13), 0x27d4eb2f);
    return (x ^ (x >>> 16)) >>> 0;
  };
  const lo = seed >>> 0, hi = Math.floor(seed / 2 ** 32) >>> 0, k = key >>> 0, kh = Math.floor(key / 2 ** 32) >>> 0;
  const a = h(h(lo, k), hi ^ kh), b = h(h(hi, a), k ^ 0x51ed27);
  return (b & 0x1fffff) * 2 ** 32 + a;
}

/**
 * Runs `fn` on the sub-stream `key` of the current stream: draws inside start at offset 0 of
 * `mixSeed(seed, key)` and leave the outer stream where it was. Streams nest, so a value drawn
 * in (step, micro-batch, layer) depends on those keys only, not on how many draws other code
 * made before: the same dropout masks whichever ranks run which layers or micro-batches.
 * `rows` names each batch row's sample number for per-row draws (nn's Dropout).
 * @example
 * withRandomStream(stepKey, () => withRandomStream(layer, () => block.forward(x)));
 */
export function withRandomStream<T>(key: number, fn: () => T, opts: { rows?: readonly number[] } = {}): T {
  if (!Number.isSafeInteger(key) || key < 0) throw new ValueError(`withRandomStream: key must be a non-negative safe integer, got ${key}`);
  const saved = { ...state };
  state.seed = mixSeed(state.seed, key);
  state.offset = 0;
  if (opts.rows) state.rows = opts.rows;
  try {
    return fn();
  } finally {
    state.seed = saved.seed;
    state.offset = saved.offset;
    state.rows = saved.rows ?? null;
  }
}

/** The current stream's row sample numbers, or null (outside a stream that names them). */
export function currentRows(): readonly number[] | null {
  return state.rows ?? null;
}

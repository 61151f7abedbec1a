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
}

const state: GeneratorState = { seed: 0x5eed, offset: 0 };

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
}

/** Reserves `n` stream positions (rounded up to a multiple of 4) and returns where they start. */
export function nextRandomOffset(n: number): { seed: number; offset: number } {
  const start = state.offset;
  state.offset += Math.ceil(n / 4) * 4;
  return { seed: state.seed, offset: start };
}

/** A copy of the generator state, for checkpoints. */
export function getRngState(): GeneratorState {
  return { ...state };
}

/** Restores a state saved with getRngState(). */
export function setRngState(s: GeneratorState): void {
  if (!Number.isSafeInteger(s.seed) || !Number.isSafeInteger(s.offset) || s.offset < 0) {
    throw new ValueError(`setRngState: invalid state ${JSON.stringify(s)}`);
  }
  state.seed = s.seed;
  state.offset = s.offset;
}

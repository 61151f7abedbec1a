/**
 * The autocast compute dtype in force (tensor/autocast.ts is its public API). It lives in core,
 * beside the RNG state, for the same reason: activation checkpointing (autograd) must replay a
 * block under the mode its forward ran in, and autograd imports no tensor code.
 */
let current: string | null = null;

/** The low compute dtype in force ("bfloat16", "float16"), or null. */
export function getAutocastState(): string | null {
  return current;
}

/** Sets it; returns the previous value (for restoring). */
export function setAutocastState(dtype: string | null): string | null {
  const prev = current;
  current = dtype;
  return prev;
}

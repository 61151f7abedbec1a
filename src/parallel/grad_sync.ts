/**
 * GradSync: how a train step tells the data-parallel machinery where it is in gradient
 * accumulation. DDP (all-reduce), ZeRO's sharded optimizer (reduce-scatter) and FSDP's units
 * (release what backward left gathered) implement it; `parallelize()` composes the ones it
 * applied, and at group size 1 it is the identity (`noGradSync`).
 *
 * A train step calls, for each micro-step:
 *   gradSync.beforeMicroStep(isLast);  forward; backward;  await gradSync.afterBackward(isLast);
 * and after the last one the gradients (or gradient shards) the optimizer reads are complete.
 */

/** The accumulation hooks of a train step (see the file comment). */
export interface GradSync {
  /** Before the micro-step's forward: `isLast` says whether its backward ends the step. */
  beforeMicroStep(isLast: boolean): void;
  /** After the micro-step's backward: waits for the reductions it started (a collective). */
  afterBackward(isLast: boolean): Promise<void>;
}

/** Nothing to synchronise: a single process, or a layout whose gradients need no reduction. */
export const noGradSync: GradSync = {
  beforeMicroStep() {},
  async afterBackward() {},
};

/**
 * One GradSync running several in order (e.g. the sharded optimizer's reductions first, then
 * FSDP's cleanup, which must see every unit's gradients reduced).
 * @example
 * const sync = composeGradSync([optimizer, fsdp]);
 */
export function composeGradSync(parts: readonly GradSync[]): GradSync {
  if (parts.length === 0) return noGradSync;
  if (parts.length === 1) return parts[0]!;
  return {
    beforeMicroStep(isLast) {
      for (const p of parts) p.beforeMicroStep(isLast);
    },
    async afterBackward(isLast) {
      for (const p of parts) await p.afterBackward(isLast);
    },
  };
}

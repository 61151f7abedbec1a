/**
 * The Optimizer interface: everything the training loop needs from an optimizer, whether it
 * holds its state whole (AdamW) or sharded over a data-parallel group (parallel/'s ShardedAdamW).
 *
 * The trainer talks only to this interface, so sharding is a property of the object
 * `parallelize()` hands it, never a branch in the loop.
 */
import type { Tensor, FlatShardLayout } from "./_deps.js";

/** Options of one `step()`. */
export interface StepOptions {
  /** Learning rate for this step (and later ones). Default: the current `lr`. */
  lr?: number;
  /** Multiplies the gradients first (the clipping coefficient). Default 1. */
  gradScale?: number;
}

/** A global gradient norm and the clipping coefficient derived from it. */
export interface GradNormResult {
  /** L2 norm of all (averaged) gradients. */
  norm: number;
  /** min(1, maxNorm / (norm + 1e-6)), or 1 without clipping (torch.nn.utils.clip_grad_norm_). */
  clipCoef: number;
}

/** Serializable optimizer scalars (saved in trainer_state.json; tensors are saved separately). */
export interface AdamWState {
  step: number;
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/**
 * An optimizer's state. Moments come in one of two forms:
 *  - logical: one tensor per parameter, in `params` order, shaped like it (PyTorch's
 *    `state_dict()` keyed by parameter index). Every layout can load this form.
 *  - sharded: this rank's flat shards plus the layout that says which elements they hold, so a
 *    checkpoint never materialises full moments on one rank; `checkpoint/`'s `unshard()` turns
 *    every rank's shards back into the logical form. The layout names parameters by index.
 */
export interface OptimizerStateDict {
  state: AdamWState;
  /** Logical form: moment name ("exp_avg", "exp_avg_sq") -> one tensor per parameter. */
  moments?: Record<string, Tensor[]>;
  /** Sharded form: this rank's flat shards (moment name -> 1-D tensor) and their layout. */
  shard?: { rank: number; size: number; layout: FlatShardLayout<number>; tensors: Record<string, Tensor> };
}

/** One moment in host memory (a copy): what a checkpoint writes, without a tensor. */
export interface HostArray {
  shape: number[];
  data: Float32Array;
}

/**
 * An `OptimizerStateDict` whose moments are host arrays instead of tensors, in the same two
 * forms: what `Optimizer.hostStateDict()` returns for a checkpoint.
 */
export interface HostOptimizerStateDict {
  state: AdamWState;
  moments?: Record<string, HostArray[]>;
  shard?: { rank: number; size: number; layout: FlatShardLayout<number>; tensors: Record<string, HostArray> };
}

/**
 * What the trainer calls. `gradNorm` may be a collective (a sharded optimizer sums its shards and
 * all-reduces): every rank calls it, and the trainer awaits it.
 * @example
 * const { clipCoef } = await opt.gradNorm(1.0);
 * await opt.step({ lr, gradScale: clipCoef });
 * opt.zeroGrad();
 */
export interface Optimizer {
  /** The parameters, in the order the logical state lists them. */
  readonly params: readonly Tensor[];
  /** Current learning rate. */
  lr: number;
  /** Completed steps. */
  readonly stepCount: number;
  /**
   * One update from the current gradients. An optimizer that streams its state (offload.ts)
   * returns a promise, which the caller awaits before touching parameters or state again.
   */
  step(opts?: StepOptions): void | Promise<void>;
  /** Drops every gradient (and gradient shard). */
  zeroGrad(): void;
  /** Global L2 norm of the gradients the next step will use, and the clipping coefficient. */
  gradNorm(maxNorm?: number): GradNormResult | Promise<GradNormResult>;
  /** Scalars and moments (see OptimizerStateDict for the two forms). */
  stateDict(): OptimizerStateDict;
  /** Restores scalars and, when given, moments in the logical form (any layout saved them). */
  loadStateDict(sd: OptimizerStateDict): void;
  /**
   * The state dict with host copies of the moments, for a checkpoint. Optional: an optimizer
   * whose moments are on disk (offload.ts) reads them into host memory here without allocating
   * tensors; without it, the caller copies `stateDict()`'s tensors itself.
   */
  hostStateDict?(): HostOptimizerStateDict;
}

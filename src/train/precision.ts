/**
 * Mixed precision as a policy (`train.precision`), applied around the model, never inside it.
 *
 *  fp32  everything float32 (the default).
 *  bf16  the forward runs under autocast("bfloat16"): matmuls and embeddings compute in
 *        bfloat16, so activations and what autograd saves are bfloat16; softmax, layer-norm
 *        statistics and the loss stay float32 in the kernels. Parameters, gradients and
 *        AdamW's state stay float32 ("master weights"): every cast is recorded, so `.grad`
 *        arrives in float32. bfloat16 has float32's exponent range: no loss scaling.
 *  fp16  as bf16 with float16, plus dynamic loss scaling (Micikevicius et al. 2018): the
 *        loss is multiplied by `scale` before backward so small gradients survive float16's
 *        range; the optimizer divides it back out (folded into AdamW's gradient scale). A
 *        step whose gradients are not finite is skipped and the scale halved; after
 *        `growthInterval` finite steps in a row it doubles.
 *
 * The scaler's state (scale, finite-step counter, skipped steps) is part of the trainer state,
 * so resume is bit-exact in every precision.
 */
import { ValueError } from "../core/errors.js";
import { withAutocast, type DType } from "../tensor/index.js";

export type Precision = "fp32" | "bf16" | "fp16";

/** The compute dtype of each precision setting. */
export const PRECISION_DTYPE: Record<Precision, DType> = { fp32: "float32", bf16: "bfloat16", fp16: "float16" };

export interface LossScaleOptions {
  /** Starting scale. Default 2^16. */
  initial?: number;
  /** Finite steps in a row before the scale grows. Default 2000. */
  growthInterval?: number;
  /** Growth multiplier. Default 2. */
  growthFactor?: number;
  /** Multiplier after an overflow. Default 0.5. */
  backoffFactor?: number;
}

/** Serializable scaler state (trainer_state.json). */
export interface LossScalerState {
  scale: number;
  goodSteps: number;
  skippedSteps: number;
}

/** Dynamic loss scaling: grows the scale while steps stay finite, halves it on overflow. */
export class DynamicLossScaler {
  scale: number;
  /** Finite steps since the last growth or overflow. */
  goodSteps = 0;
  /** Steps skipped for non-finite gradients, over the whole run. */
  skippedSteps = 0;
  readonly growthInterval: number;
  readonly growthFactor: number;
  readonly backoffFactor: number;

  constructor(o: LossScaleOptions = {}) {
    this.scale = o.initial ?? 2 ** 16;
    this.growthInterval = o.growthInterval ?? 2000;
    this.growthFactor = o.growthFactor ?? 2;
    this.backoffFactor = o.backoffFactor ?? 0.5;
    if (!(this.scale > 0 && Number.isFinite(this.scale))) throw new ValueError(`loss scale: initial must be a positive finite number, got ${this.scale}`);
    if (!Number.isInteger(this.growthInterval) || this.growthInterval < 1) throw new ValueError(`loss scale: growth_interval must be an integer >= 1, got ${this.growthInterval}`);
    if (!(this.growthFactor > 1)) throw new ValueError(`loss scale: growth_factor must be > 1, got ${this.growthFactor}`);
    if (!(this.backoffFactor > 0 && this.backoffFactor < 1)) throw new ValueError(`loss scale: backoff_factor must be in (0, 1), got ${this.backoffFactor}`);
  }

  /**
   * Records one optimizer step's outcome; returns whether the step should be applied.
   * Non-finite gradients: skip, scale *= backoff. Otherwise count, and grow every `growthInterval`.
   */
  update(finite: boolean): boolean {
    if (!finite) {
      this.scale *= this.backoffFactor;
      this.goodSteps = 0;
      this.skippedSteps++;
      return false;
    }
    if (++this.goodSteps >= this.growthInterval) {
      this.scale *= this.growthFactor;
      this.goodSteps = 0;
    }
    return true;
  }

  state(): LossScalerState {
    return { scale: this.scale, goodSteps: this.goodSteps, skippedSteps: this.skippedSteps };
  }

  load(s: LossScalerState): void {
    this.scale = s.scale;
    this.goodSteps = s.goodSteps;
    this.skippedSteps = s.skippedSteps;
  }
}

/** The policy the trainer applies: how the forward computes and how the loss is scaled. */
export class PrecisionPolicy {
  readonly precision: Precision;
  /** Dtype of compute and stored activations. */
  readonly computeDtype: DType;
  /** fp16 only. */
  readonly scaler: DynamicLossScaler | null;

  constructor(precision: Precision = "fp32", lossScale: LossScaleOptions = {}) {
    if (!(precision in PRECISION_DTYPE)) throw new ValueError(`train.precision must be "fp32", "bf16" or "fp16", got ${JSON.stringify(precision)}`);
    this.precision = precision;
    this.computeDtype = PRECISION_DTYPE[precision];
    this.scaler = precision === "fp16" ? new DynamicLossScaler(lossScale) : null;
  }

  /** Runs a forward pass under the policy's compute dtype. */
  forward<T>(fn: () => T): T {
    return this.precision === "fp32" ? fn() : withAutocast(this.computeDtype, fn);
  }

  /** What the loss is multiplied by before backward (1 unless fp16). */
  get lossScale(): number {
    return this.scaler?.scale ?? 1;
  }

  /**
   * After the gradients of a step are complete: whether to apply the step, given whether the
   * (scaled) gradient norm is finite. Without a scaler a non-finite step is the trainer's own
   * business (it skips and reports it), so this returns true.
   */
  stepAllowed(finite: boolean): boolean {
    return this.scaler ? this.scaler.update(finite) : true;
  }
}

/**
 * TrainSchedule: how one optimizer step's micro-batches go through forward and backward. The
 * trainer hands it the step's micro-batches and gets the loss back; whether that is a plain
 * accumulation loop or a pipeline schedule across stages is the schedule's business, so the
 * trainer has no pipeline branch (DESIGN.md: "an Optimizer interface and a schedule").
 *
 * Both forms leave the same thing behind: every parameter gradient (or gradient shard) of the
 * step complete and reduced over data parallelism, scaled by `lossFactor`, ready for the
 * optimizer.
 */
import { tensor, withScope, type Tensor, type DType } from "../tensor/index.js";
import type { GPT, GPTOutput } from "../models/index.js";
import type { GradSync } from "./grad_sync.js";
import { traceSpan } from "../core/trace.js";
import { ValueError } from "../core/errors.js";
import { nextRandomOffset, withRandomStream } from "../core/rng_state.js";

/**
 * The step's random stream key, drawn from the global generator (every rank draws it, so it is
 * the same on all of them). Forwards run on this stream with their rows' sample numbers, so a
 * sample's dropout masks do not depend on its micro-batch, data-parallel rank or stage.
 */
export function stepRandomKey(): number {
  return nextRandomOffset(1).offset;
}

/** Runs a micro-batch's forward on the step's stream, naming its rows. */
export function onStepStream<T>(key: number, b: MicroBatch, fn: () => T): T {
  return withRandomStream(key, fn, b.rows ? { rows: b.rows } : {});
}

/**
 * One micro-batch: (batchSize, blockSize) token ids and the targets the task's loss reads
 * (next tokens for language modelling, -100 where no loss applies; masked-token labels for
 * BERT's MLM; one class per row for classification).
 */
export interface MicroBatch {
  inputs: Int32Array;
  targets: Int32Array;
  batchSize: number;
  blockSize: number;
  /** Each row's sample number (the data loader's global order): per-sample random draws (dropout) are keyed by it. */
  rows?: readonly number[];
  /** Further int32 inputs some tasks take, row-major: token_type_ids and attention_mask (B, T), next_sentence_label (B)... */
  fields?: Readonly<Record<string, Int32Array>>;
}

/** The model output a schedule needs: the loss (GPTOutput and the other tasks' outputs have it). */
export interface LossOutput {
  loss: Tensor | null;
}

/**
 * A micro-batch's forward with its loss, for models other than the GPT language model (the
 * default: `model.forward(inputs, targets)`). The trainer's task supplies it (src/train/tasks).
 */
export type BatchForward = (b: MicroBatch) => LossOutput;

/** What the trainer's policy contributes to a step. */
export interface StepFunctions {
  /** Runs a forward under the precision policy (autocast); returns its result. */
  forward<T>(fn: () => T): T;
  /** Each micro-batch's loss is multiplied by this before backward (loss scale / micro-batches). */
  lossFactor: number;
  /** dtype of the activations that cross pipeline stages (the policy's compute dtype). Default float32. */
  activationDtype?: DType;
  /** Called with each micro-batch's model output where this rank computes the loss (metrics such as MoE router losses). */
  onOutput?: (out: GPTOutput | LossOutput, microBatch: number) => void;
}

export interface TrainSchedule {
  /** "plain" or the pipeline schedule's name. */
  readonly name: string;
  /**
   * Forward and backward over the step's micro-batches, gradient reduction included. Resolves
   * to the sum of the micro-batches' losses, on every rank of the model-parallel group (a
   * pipeline sends it from its last stage). A collective over the model's groups.
   */
  run(batches: readonly MicroBatch[], fns: StepFunctions): Promise<number>;
  /** The loss of one batch, no gradients (evaluation); on every rank. A collective. */
  evalLoss(batch: MicroBatch, fns: Pick<StepFunctions, "forward" | "activationDtype">): Promise<number>;
}

/** The batch's tensors (B, T) int32, inside the caller's scope. */
export function batchTensors(b: MicroBatch): { x: Tensor; y: Tensor } {
  return {
    x: tensor(b.inputs, { shape: [b.batchSize, b.blockSize], dtype: "int32" }),
    y: tensor(b.targets, { shape: [b.batchSize, b.blockSize], dtype: "int32" }),
  };
}

/**
 * Gradient accumulation on one stage: for each micro-batch, forward, scaled backward, and the
 * GradSync hooks (DDP's overlapped all-reduce fires during the last backward). Each micro-step
 * runs in its own tensor scope, so a micro-batch's activations are freed before the next.
 * @example
 * const schedule = new PlainSchedule(model, gradSync);
 * const lossSum = await schedule.run(batches, { forward: (f) => f(), lossFactor: 1 / batches.length });
 */
export class PlainSchedule implements TrainSchedule {
  readonly name = "plain";
  private readonly forwardBatch: BatchForward;
  constructor(model: GPT | null, private readonly gradSync: GradSync, forwardBatch?: BatchForward) {
    if (!forwardBatch && !model) throw new ValueError("PlainSchedule: pass a GPT or a forwardBatch function");
    this.forwardBatch = forwardBatch ?? ((b) => {
      const { x, y } = batchTensors(b);
      return model!.forward(x, y);
    });
  }

  async run(batches: readonly MicroBatch[], fns: StepFunctions): Promise<number> {
    let lossSum = 0;
    const key = stepRandomKey();
    for (let i = 0; i < batches.length; i++) {
      const isLast = i === batches.length - 1;
      this.gradSync.beforeMicroStep(isLast);
      lossSum += withScope(() => {
        const b = batches[i]!;
        const out = traceSpan("forward", "forward", () => onStepStream(key, b, () => fns.forward(() => this.forwardBatch(b))), { microBatch: i });
        fns.onOutput?.(out, i);
        const loss = out.loss!;
        const value = loss.item();
        const scaled = fns.lossFactor === 1 ? loss : loss.mul(fns.lossFactor);
        traceSpan("backward", "backward", () => scaled.backward(), { microBatch: i });
        return value;
      });
      await this.gradSync.afterBackward(isLast);
    }
    return lossSum;
  }

  async evalLoss(batch: MicroBatch, fns: Pick<StepFunctions, "forward">): Promise<number> {
    return withScope(() => fns.forward(() => this.forwardBatch(batch)).loss!.item());
  }
}

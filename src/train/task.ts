/**
 * A training task: what the trainer trains and on which batches. The loop (trainer.ts) is the
 * same for every task: steps, accumulation, precision, the parallel layout, checkpoints,
 * signals, metrics. A task supplies the model, its data loader and evaluation batches, the
 * micro-batch forward with its loss, and the model's files (torchtitan's TrainSpec idea).
 *
 * - `task_lm.ts`: GPT language modelling on prepared token shards (pretraining, the default).
 * - `task_mlm.ts`: BERT pretraining, masked-language modelling + next-sentence prediction.
 * - `task_classify.ts`: sequence classification (finetune --task classify) on GPT or BERT.
 * - `task_sft.ts`: supervised fine-tuning of a GPT on prompt/completion pairs, loss on completions.
 */
import type { MicroBatch, BatchForward, ParallelModel } from "../parallel/index.js";
import type { TensorRecord } from "../checkpoint/index.js";
import type { Tokenizer } from "../tokenizers/index.js";

/** The task kinds: `model.type` and `finetune.task` pick one (createTask in index.ts). */
export type TaskKind = "lm" | "mlm" | "classify" | "sft";

/** A resumable source of training micro-batches for this rank. */
export interface TaskLoader {
  nextBatch(): MicroBatch;
  /** Plain JSON saved in trainer_state.json; `restore` continues exactly there. */
  state(): unknown;
  restore(state: unknown): void;
}

/** What a task hands the trainer. */
export interface TrainTask {
  readonly kind: TaskKind;
  /** The whole trained model (encoder and heads): what parallelize() wraps and checkpoints hold. */
  readonly model: ParallelModel;
  /** The tokenizer the data was made with (written into model directories), when known. */
  readonly tokenizer: Tokenizer | null;
  /** This rank's training batches. */
  readonly loader: TaskLoader;
  /** Token positions in one micro-batch (padding included): throughput and tokens_seen count these. */
  readonly tokensPerMicroBatch: number;
  /** Training FLOPs per token of the logical model (for MFU). */
  readonly flopsPerToken: number;
  /** The micro-batch's forward and loss; undefined = GPT's `forward(inputs, targets)`. */
  readonly forwardBatch?: BatchForward;
  /** Manifest `kind` of this task's checkpoints. */
  readonly checkpointKind: string;
  /** One line for the start of the run: model, sizes, data. */
  describe(): string;
  /** Whole validation micro-batches available (0: no eval). */
  valBatchCount(): number;
  /** The first `n` validation micro-batches, the same on every call and every rank. */
  evalBatches(n: number): Iterable<MicroBatch>;
  /**
   * Extra validation numbers logged beside the loss (bits per byte, accuracy and F1...). Runs the
   * model forward itself where it needs predictions; on every rank (a collective under ZeRO-3).
   */
  evalExtras?(loss: number): Record<string, unknown> | undefined;
  /**
   * The tensors of `model` (default: the task's own) under their file names, for checkpoints.
   * Under model parallelism the task's model holds shards, so checkpoints pass a logical model.
   */
  records(model?: ParallelModel): Record<string, TensorRecord>;
  /** config.json of checkpoints and model directories. */
  hfConfig(): Record<string, unknown>;
  /** Loads the weights a checkpoint directory holds into `model` (default: the task's own). */
  loadWeights(dir: string, model?: ParallelModel): Promise<void>;
  /** Writes a complete model directory (weights of `model`, default the task's; config, tokenizer files) for `final/`. */
  saveModelDir(dir: string, model?: ParallelModel): Promise<void>;
  /**
   * A fresh single-device model of the same architecture and config as `model` (its values are
   * overwritten): model-parallel checkpoints (tp, pp, ep) fill it with the logical tensors
   * gathered from the shards and write it with `records` / `saveModelDir`, and load a
   * checkpoint into it with `loadWeights` to cut this rank's shards (_logical_checkpoint.ts).
   * Absent: the task runs with data parallelism and ZeRO only.
   */
  logicalModel?(): ParallelModel;
}

/** What a task needs from the trainer while it builds the model and data. */
export interface TaskContext {
  /** Progress lines (rank 0 prints them). */
  say(msg: string): void;
  /** This rank's position in the data-parallel group (the loader's shard). */
  rank: number;
  dpSize: number;
  /** model.init_from / --model: follow a model.safetensors that links outside its directory. */
  allowSymlinks: boolean;
  /** Called once the data is known and before the model is allocated (memory budget check, seeding). */
  beforeModel(): void;
}

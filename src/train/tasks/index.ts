/**
 * Training tasks (see task.ts): `createTask()` picks one from the config: `finetune.task` when a
 * finetune section is present, else `model.type` ("gpt": language modelling, "bert": MLM + NSP).
 */
import type { TrainConfig } from "../config.js";
import { LanguageModelTask } from "./lm.js";
import { ClassifyTask } from "./classify.js";
import type { TrainTask } from "./task.js";

export type { TrainTask, TaskLoader, TaskKind } from "./task.js";
export { LanguageModelTask, specialTokenIds } from "./lm.js";
export { ClassifyTask, classificationReport, type ClassificationReport } from "./classify.js";

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

/**
 * The task the config describes.
 * @example
 * const task = await createTask(config, { say: console.error, rank: 0, dpSize: 1, allowSymlinks: false, beforeModel: () => {} });
 */
export async function createTask(c: TrainConfig, ctx: TaskContext): Promise<TrainTask> {
  if (c.finetune?.task === "classify") return ClassifyTask.create(c, ctx);
  return LanguageModelTask.create(c, ctx);
}

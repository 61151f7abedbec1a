/**
 * Training tasks (see task.ts): `createTask()` picks one from the config: `finetune.task` when a
 * finetune section is present, else `model.type` ("gpt": language modelling, "bert": MLM + NSP).
 */
import type { TrainConfig } from "./config.js";
import { LanguageModelTask } from "./task_lm.js";
import { ClassifyTask } from "./task_classify.js";
import { MaskedLanguageModelTask } from "./task_mlm.js";
import { SftTask } from "./task_sft.js";
import type { TrainTask, TaskContext } from "./task.js";

export type { TrainTask, TaskLoader, TaskKind, TaskContext } from "./task.js";
export { LanguageModelTask, specialTokenIds } from "./task_lm.js";
export { ClassifyTask, classificationReport, type ClassificationReport } from "./task_classify.js";
export { MaskedLanguageModelTask, mlmMicroBatch } from "./task_mlm.js";
export { SftTask, sftTokens } from "./task_sft.js";


/**
 * The task the config describes.
 * @example
 * const task = await createTask(config, { say: console.error, rank: 0, dpSize: 1, allowSymlinks: false, beforeModel: () => {} });
 */
export async function createTask(c: TrainConfig, ctx: TaskContext): Promise<TrainTask> {
  if (c.finetune?.task === "classify") return ClassifyTask.create(c, ctx);
  if (c.finetune?.task === "sft") return SftTask.create(c, ctx);
  if (c.model.type === "bert") return MaskedLanguageModelTask.create(c, ctx);
  return LanguageModelTask.create(c, ctx);
}

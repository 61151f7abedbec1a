/** optim: the Optimizer interface, AdamW (fused), learning-rate schedules, gradient clipping. */
export {
  type Optimizer, type OptimizerStateDict, type StepOptions, type GradNormResult, type AdamWState, type HostArray, type HostOptimizerStateDict,
} from "./optimizer.js";
export {
  AdamW, adamwUpdate, adamwStepHyper, resolveAdamWOptions, momentsOf, gradNorm, clipCoefficient, type GradNormScope, clearGrads, adamwState,
  type AdamWOptions, type AdamWHyper,
} from "./adamw.js";
export { cosineLr, type CosineScheduleOptions } from "./schedule.js";
export { OffloadFile, OffloadedAdamW, type OffloadOptions, type OffloadedAdamWOptions, type OffloadSegment, type OffloadTimings } from "./offload.js";

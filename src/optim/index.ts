/** optim: AdamW (fused), learning-rate schedules, gradient clipping. */
export { AdamW, gradNorm, clipCoefficient, clearGrads, adamwState, type AdamWOptions, type AdamWState } from "./adamw.js";
export { cosineLr, type CosineScheduleOptions } from "./schedule.js";

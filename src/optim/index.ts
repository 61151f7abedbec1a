/** optim: AdamW (fused), learning-rate schedules, gradient clipping. */
export { AdamW, gradNorm, type AdamWOptions, type AdamWState } from "./adamw.js";
export { cosineLr, type CosineScheduleOptions } from "./schedule.js";

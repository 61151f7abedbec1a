/** train: config, the trainer loop, checkpoints and metrics. */
export { TrainConfigSchema, type TrainConfig, applyOverrides, validateConfig, loadConfig, tokensPerStep, worldSizeOf } from "./config.js";
export { Trainer, type TrainerOptions, type StepMetrics } from "./trainer.js";

/**
 * The planner: the papers' formulas (`formulas.ts`), hardware profiles (`hardware.ts`) and the
 * layout enumeration and ranking (`planner.ts`). Pure arithmetic over a config: nothing here
 * touches tensors, so planning a 1T-parameter model takes milliseconds. The one measuring part,
 * `calibrate.ts` (GEMM and copy bandwidth for `cpu-this`), is imported on its own by the CLI so
 * that planning never loads the native backend.
 *
 * @example
 * import { plan, resolveHardware } from "./plan/index.js";
 * const p = plan(loadConfig("configs/tiny.json"), 4, resolveHardware("h100-80g", "bfloat16", 4));
 * console.log(p.explanation.join("\n"));
 */
export {
  type ZeroStage, type Recompute, type ModelStateBytes, type StateBytesPerParam, type ActivationShape, type FlopShape,
  MIXED_PRECISION_ADAM, FP32_ADAM, modelStateBytes, activationLayerBytes, activationLayerBytesAt, dropoutMaskBytes, allocatedBytes, activationOutsideLayersBytes,
  inFlightMicroBatches, iterationFlops, pipelineBubble, ringBytes, trainingTimeSeconds,
} from "./formulas.js";
export {
  type HardwareProfile, type CalibrationRecord, type CollectiveCalibration, type CollectiveKind, BUILTIN_PROFILES, calibrationFile, readCalibration, writeCalibration,
  cpuProfile, resolveHardware, defaultHardwareName,
} from "./hardware.js";
export {
  type PlanConfig, type Layout, type MemoryPrediction, type CommBytes, type Prediction, type Refusal, type Plan,
  gptParameters, stageParameters, checkLayout, commBytes, memoryTrafficBytes, trafficParts, modelGemmShapes, gemmRate, gemmSeconds, opsPerStep, forwardBackwardOps, predict, rankPredictions, describeLayout, formatSeconds, plan,
} from "./planner.js";

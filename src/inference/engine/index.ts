/** inference/engine: the step loop and the contract with the HTTP layer. */
export { Engine, type EngineOptions, type SpeculativeOptions } from "./engine.js";
export { EngineRejection, type EngineEvent, type EngineLike, type EngineStats, type GenerationRequest, type TokenLogprob } from "./types.js";

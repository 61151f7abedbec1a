/** inference: KV-cache bookkeeping, scheduler, runner, sampling and the engine loop. */
export * from "./kv_cache/index.js";
export * from "./scheduler/index.js";
export { ModelRunner, type RunnerBatch, type ModelRunnerOptions } from "./runner/index.js";
export { sampleNext, validateSampling, DEFAULT_SAMPLING, type SamplingParams, type SampleResult } from "./sample/index.js";
export * from "./engine/index.js";
export {
  quantizeModelInt8, dequantizeModel, quantizeLinear, isQuantizedInt8, QuantizedLinear, type QuantizationSummary, type QuantizeOptions,
} from "./quant/index.js";
export { perplexity, readSplitTokens, type PerplexityOptions, type PerplexityResult } from "./eval/index.js";
export {
  embedTexts, gptEmbedder, bertEmbedder, l2Normalize, meanPool, EmbeddingInputError,
  type Embedder, type EmbedOptions, type EmbedResult, type EmbeddingInputProblem, type GPTEmbedderOptions,
  type BERTEncoderModel, type BERTEmbedderOptions,
} from "./embed/index.js";

/** nn: Module/Parameter, standard layers, attention contexts, Int8Linear, and the functional API `F`. */
export { Module, asParameter, type Parameter } from "./module.js";
export { Linear, Embedding, LayerNorm, RMSNorm, Dropout, type InitOptions, type Projection } from "./layers.js";
export { Int8Linear } from "./int8_linear.js";
export { MoE, Expert, planDispatch, setMoEDropless, type MoEOptions, type RoutingStats, type RouterLosses, type ExpertExchange } from "./moe.js";
export {
  causalAttention, contextPositions, advanceContext, isKVCache, CAUSAL,
  type AttentionContext, type CausalContext, type KVContext, type PagedContext, type KVCache,
} from "./attention.js";
export * as F from "./functional.js";
export {
  LoRALinear, applyLoRA, mergeLoRA, loraModules, loraTargets, trainableParameters, countParameters, validateLoRAConfig,
  type LoRAConfig, type LoRAOptions, type LoRASummary,
} from "./lora.js";
export {
  saveLoRAAdapters, loadLoRAAdapters, readAdapterConfig, detectPeftModelType, PEFT_NAMINGS, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
  type PeftLoraConfig, type PeftNaming, type PeftTaskType, type PeftModelType, type SaveLoRAOptions, type LoadLoRAOptions,
} from "./lora_files.js";

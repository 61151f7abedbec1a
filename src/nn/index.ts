/** nn: Module/Parameter, standard layers, attention contexts, Int8Linear, and the functional API `F`. */
export { Module, asParameter, type Parameter } from "./module.js";
export { Linear, Embedding, LayerNorm, RMSNorm, Dropout, type InitOptions, type Projection } from "./layers.js";
export { Int8Linear } from "./int8_linear.js";
export { MoE, Expert, planDispatch, type MoEOptions, type RoutingStats, type RouterLosses, type ExpertExchange } from "./moe.js";
export {
  causalAttention, contextPositions, advanceContext, isKVCache, CAUSAL,
  type AttentionContext, type CausalContext, type KVContext, type PagedContext, type KVCache,
} from "./attention.js";
export * as F from "./functional.js";

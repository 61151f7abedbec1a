// Lower layers the GPT model builds on.
export { Tensor, normal, zeros, ones, tensor, withScope, rand } from "../../tensor/index.js";
export { checkpoint, noGrad } from "../../autograd/index.js";
export {
  F, Module, Linear, Embedding, LayerNorm, Dropout, causalAttention, contextPositions, advanceContext, isKVCache, CAUSAL, MoE, setMoEDropless,
  type Projection, type AttentionContext, type KVCache, type RouterLosses,
} from "../../nn/index.js";
export { withRandomStream } from "../../core/rng_state.js";

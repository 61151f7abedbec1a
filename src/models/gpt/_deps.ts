// Lower layers the GPT model builds on.
export { Tensor, normal, zeros, ones, cat, tensor, withScope, rand } from "../../tensor/index.js";
export { checkpoint, noGrad } from "../../autograd/index.js";
export { F, Module, Linear, Embedding, LayerNorm } from "../../nn/index.js";

// Lower layers the BERT model builds on.
export { Tensor, normal, zeros, tensor } from "../../tensor/index.js";
export { checkpoint, noGrad } from "../../autograd/index.js";
export { F, Module, Linear, Embedding, LayerNorm, Dropout, type Parameter, type Projection } from "../../nn/index.js";
export { withRandomStream } from "../../core/rng_state.js";

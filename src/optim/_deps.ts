// Lower layers the optimizers build on.
export { backend } from "../backend/index.js";
export { noGrad } from "../autograd/index.js";
export { zeros, withCategory, keep, Tensor, reduceSumSq, tensor } from "../tensor/index.js";
export type { FlatShardLayout } from "../checkpoint/index.js";

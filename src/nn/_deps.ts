// The lower layers nn builds on, gathered in one place.
export {
  Tensor, Category, keep, withCategory, dtypeSize, quantizeInt8Rowwise, matmulInt8, kvCacheWrite, pagedAttention,
  scaledDotProductAttention, cat, tensor, embedding,
} from "../tensor/index.js";
export { noGrad as noGradScope, isGradEnabled, checkpoint } from "../autograd/index.js";

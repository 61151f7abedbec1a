/** tensor: the Tensor, its dtypes, memory, random numbers and every primitive op. */
export { Tensor, type NestedArray } from "./tensor.js";
export { type DType, DTYPES, dtypeSize } from "./dtype.js";
export { type Shape, numel, broadcastShapes } from "./shape.js";
export {
  Category, type CategoryName, withScope, keep, withCategory, memoryStats, resetPeakMemory, emptyCache, type MemoryStats,
} from "./storage.js";
export { manualSeed, getRngState, setRngState, nextRandomOffset, type GeneratorState } from "./random.js";
export {
  tensor, empty, full, zeros, ones, zerosLike, onesLike, arange, randn, rand, normal, randint,
  type TensorOptions, type TensorDataOptions, type RandomOptions,
} from "./creation.js";
export {
  add, sub, mul, div, pow, maximum, minimum, neg, exp, log, sqrt, rsqrt, tanh, relu, sigmoid, silu, gelu, abs, square,
  erf, reciprocal, sin, cos, clamp, where, maskedFill, sum, mean, variance, maxAll, maxDim, argReduce, cumsum, topk,
  reshape, flatten, permute, transpose, expand, slice, select, squeeze, unsqueeze, contiguous, clone, toDType, compare, reduceSumSq, promoteTypes,
} from "./ops.js";
export { matmul } from "./matmul.js";
export { cat, stack, split, chunk } from "./concat.js";
export {
  softmax, logSoftmax, layerNorm, rmsNorm, embedding, crossEntropy, dropout, scaledDotProductAttention,
  type CrossEntropyOptions, type AttentionOptions, type DropoutOptions,
} from "./nn_ops.js";
export { withAutocast, autocastDtype } from "./autocast.js";
export { kvCacheWrite, pagedAttention } from "./paged_ops.js";
export { quantizeInt8Rowwise, matmulInt8 } from "./quant_ops.js";

// Lower layers the optimizers build on.
export { native as _native } from "../backend/native/index.js";
export { zeros, withCategory, keep, Tensor, reduceSumSq } from "../tensor/index.js";
export type { FlatShardLayout } from "../checkpoint/index.js";

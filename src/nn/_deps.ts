// The lower layers nn builds on, gathered in one place.
export { Tensor, Category, keep } from "../tensor/index.js";
export { noGrad as noGradScope } from "../autograd/index.js";

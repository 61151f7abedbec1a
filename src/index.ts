/**
 * Megalith: train and serve transformer models from TypeScript.
 *
 * @example
 * import { tensor, randn, F, noGrad, manualSeed } from "megalith";
 * manualSeed(0);
 * const x = randn([4, 8]).requiresGrad_();
 * const loss = F.gelu(x).sum();
 * loss.backward();
 * console.log(x.grad!.toArray());
 */
export * from "./core/index.js";
export * from "./tensor/index.js";
export { noGrad, enableGrad, isGradEnabled, checkpoint } from "./autograd/index.js";
export * from "./nn/index.js";
export { backend, type Backend, type BufferView, type BackendInfo } from "./backend/index.js";
export * from "./models/index.js";
export * from "./optim/index.js";
export * from "./checkpoint/index.js";
export * from "./train/index.js";
export * from "./data/index.js";
export * from "./tokenizers/index.js";

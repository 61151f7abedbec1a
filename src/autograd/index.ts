/** autograd: the engine (graph nodes, grad mode, backward) and activation checkpointing. */
export { Node, type Differentiable, noGrad, enableGrad, isGradEnabled, isBackwardRunning, recordNode, needsGrad, runBackward } from "./engine.js";
export { checkpoint, type Checkpointable } from "./checkpoint.js";

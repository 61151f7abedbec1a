/** nn: Module/Parameter, standard layers, and the functional API `F`. */
export { Module, asParameter, type Parameter } from "./module.js";
export { Linear, Embedding, LayerNorm, RMSNorm, Dropout, type InitOptions } from "./layers.js";
export * as F from "./functional.js";

/** models: single-device model definitions. */
export * from "./gpt/index.js";
export * from "./bert/index.js";

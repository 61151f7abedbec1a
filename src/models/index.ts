/** models: single-device model definitions. */
export * from "./gpt/index.js";

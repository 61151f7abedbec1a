/** core: errors, progress, small utilities. Depends on nothing else in Megalith. */
export * from "./errors.js";
export * from "./progress.js";
export * from "./rng_state.js";

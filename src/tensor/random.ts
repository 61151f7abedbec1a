/** The default generator lives in core (so autograd's checkpoint can save and restore it). */
export { manualSeed, nextRandomOffset, getRngState, setRngState, type GeneratorState } from "../core/rng_state.js";

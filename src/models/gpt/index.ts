/** models/gpt: the GPT-2 model and its Hugging Face weight adapters. */
import { GPT as GPTBase, type GPTOptions } from "./model.js";
import { loadGPT, saveGPT, type LoadWeightsOptions, type SpecialTokenIds } from "./weights.js";

/**
 * GPT-2 with Hugging Face directory I/O.
 * @example
 * const model = await GPT.fromPretrained("path/to/gpt2-dir");
 * await model.savePretrained("out/model");
 */
export class GPT extends GPTBase {
  /** Loads config.json + model.safetensors from a Hugging Face GPT-2 directory. */
  static async fromPretrained(dir: string, opts: GPTOptions & LoadWeightsOptions = {}): Promise<GPT> {
    return loadGPT(dir, opts, (c, o) => new GPT(c, o));
  }

  /** Writes config.json, generation_config.json and model.safetensors with HF names and layouts. */
  async savePretrained(dir: string, ids: SpecialTokenIds = {}): Promise<void> {
    await saveGPT(this, dir, ids);
  }
}

export { type GPTConfig, type GPTMoEConfig, type ResolvedGPTConfig, isMoELayer, type GPTOptions, type GPTOutput, type KVCache, type ActivationCheckpointing, resolveGPTConfig, Block, MLP, CausalSelfAttention } from "./model.js";
export { readGPTConfig, hfConfig, generationConfig, gptToRecords, loadGPTWeights, type LoadWeightsOptions, type SpecialTokenIds } from "./weights.js";
export { generate, sampleToken, type GenerateOptions, type SampleOptions } from "./generate.js";
export { GPT2ForSequenceClassification, type ClassifierOutput, type SequencePooling } from "./classify.js";

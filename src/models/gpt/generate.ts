/**
 * Autoregressive generation with a KV cache: the prompt is run once, then one token per step,
 * through the model's one forward with a `{kind: "kv"}` attention context.
 * Sampling is temperature / top-k / top-p over the last position's logits by the one sampler
 * (inference/sample, which the server engine uses too), with the request's seeded
 * counter-based stream at output index i, so the same seed gives the same text here and in
 * `megalith serve`; temperature 0 is greedy.
 */
import { ValueError } from "../../core/errors.js";
import { DEFAULT_SAMPLING, drawToken, tokenDistribution, uniformAt, type SamplingParams } from "../../inference/sample/index.js";
import { tensor, noGrad, withScope, setMoEDropless } from "./_deps.js";
import { GPT } from "./model.js";

export interface SampleOptions {
  /** 0 = greedy (argmax). Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off). Default 0. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = off). Default 1. */
  topP?: number;
}

export interface GenerateOptions extends SampleOptions {
  maxNewTokens: number;
  /** Seed of the sampling stream. Default 0. */
  seed?: number;
  /** Stop after emitting any of these tokens. */
  stopTokens?: readonly number[];
  /**
   * Sample only ids below this: the tokenizer's vocabulary when the model's embedding table is
   * padded past it (nanoGPT pads GPT-2's 50257 tokens to 50304), so no id without text is drawn.
   * Default: every id of the model.
   */
  vocabSize?: number;
}

/** Checks the options `megalith sample` takes; errors name the option. */
function checkSampleOptions(opts: SampleOptions): SamplingParams {
  const temperature = opts.temperature ?? 1;
  const topK = opts.topK ?? 0;
  const topP = opts.topP ?? 1;
  if (!(temperature >= 0)) throw new ValueError(`temperature must be >= 0, got ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0) throw new ValueError(`topK must be a non-negative integer, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new ValueError(`topP must be in (0, 1], got ${topP}`);
  return { ...DEFAULT_SAMPLING, temperature, topK, topP };
}

/**
 * Picks the next token from one row of logits with the one sampler (inference/sample's
 * tokenDistribution + drawToken). `u` is a uniform sample in [0, 1).
 * Exported for tests and callers that bring their own random stream.
 * @example
 * const id = sampleToken(logits, { temperature: 0.8, topK: 40 }, uniformAt(seed, i));
 */
export function sampleToken(logits: Float32Array, opts: SampleOptions, u: number): number {
  return drawToken(tokenDistribution(logits, checkSampleOptions(opts), [], []), u);
}

/**
 * Generates up to `maxNewTokens` tokens after `prompt`, yielding each as it is produced.
 * @example
 * for (const id of generate(model, tok.encode("Hello"), { maxNewTokens: 20, temperature: 0 })) process.stdout.write(tok.decode([id]));
 */
export function* generate(model: GPT, prompt: readonly number[], opts: GenerateOptions): Generator<number> {
  if (prompt.length === 0) throw new ValueError("generate: the prompt must contain at least one token");
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 0) throw new ValueError(`maxNewTokens must be a non-negative integer, got ${opts.maxNewTokens}`);
  const block = model.config.blockSize;
  if (prompt.length > block) throw new ValueError(`generate: prompt has ${prompt.length} tokens, more than the model's context of ${block}`);
  const params = checkSampleOptions(opts);
  const wasTraining = model.training;
  model.eval();
  // MoE layers drop nothing while generating, as in serving (nn/moe.ts), so `megalith sample`
  // and `megalith serve` give the same greedy tokens.
  const restoreDropless = setMoEDropless(model, true);
  const kv = model.newKVCache();
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ValueError(`generate: seed must be a non-negative integer, got ${seed}`);
  const stop = new Set(opts.stopTokens ?? []);
  const V = model.config.vocabSize;
  const limit = opts.vocabSize ?? V;
  if (!Number.isInteger(limit) || limit < 1 || limit > V) throw new ValueError(`generate: vocabSize must be an integer in 1..${V} (the model's vocabulary), got ${opts.vocabSize}`);
  try {
    let input = [...prompt];
    for (let i = 0; i < opts.maxNewTokens; i++) {
      if (kv.length + input.length > block) break;  // context full
      const logits = noGrad(() => withScope(() => {
        const x = tensor(Int32Array.from(input), { shape: [1, input.length], dtype: "int32" });
        const last = tensor(Int32Array.of(input.length - 1), { dtype: "int32" });
        // The head on the last row only (as the server's runner does): (1, V).
        return model.forward(x, null, { kind: "kv", cache: kv, logitsRows: last }).logits.data() as Float32Array;
      }));
      const d = tokenDistribution(limit < V ? logits.subarray(0, limit) : logits, params, [], []);
      const next = params.temperature === 0 ? d.ids![0]! : drawToken(d, uniformAt(seed, i));
      yield next;
      if (stop.has(next)) break;
      input = [next];
    }
  } finally {
    GPT.disposeKVCache(kv);
    restoreDropless();
    model.train(wasTraining);
  }
}

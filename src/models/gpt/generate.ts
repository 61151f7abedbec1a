/**
 * Autoregressive generation with a KV cache: the prompt is run once, then one token per step.
 * Sampling is temperature / top-k / top-p over the last position's logits, with a seeded
 * counter-based stream so the same seed always gives the same text; temperature 0 is greedy.
 */
import { ValueError } from "../../core/errors.js";
import { tensor, noGrad, withScope, rand } from "./_deps.js";
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

/**
 * Picks the next token from one row of logits. `u` is a uniform sample in [0, 1).
 * Exported for tests and the inference engine.
 */
export function sampleToken(logits: Float32Array, opts: SampleOptions, u: number): number {
  const temperature = opts.temperature ?? 1;
  const topK = opts.topK ?? 0;
  const topP = opts.topP ?? 1;
  if (!(temperature >= 0)) throw new ValueError(`temperature must be >= 0, got ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0) throw new ValueError(`topK must be a non-negative integer, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new ValueError(`topP must be in (0, 1], got ${topP}`);
  const V = logits.length;
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  // Candidates sorted by logit (descending, ties by id), cut by top-k, then softmax + top-p.
  let ids = Array.from({ length: V }, (_, i) => i);
  ids.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (topK > 0 && topK < V) ids = ids.slice(0, topK);
  const m = logits[ids[0]!]!;
  const p = ids.map((i) => Math.exp((logits[i]! - m) / temperature));
  let total = p.reduce((s, x) => s + x, 0);
  if (topP < 1) {
    let acc = 0, keep = 0;
    while (keep < p.length) {
      acc += p[keep]! / total;
      keep++;
      if (acc >= topP) break;
    }
    ids = ids.slice(0, keep);
    p.length = keep;
    total = p.reduce((s, x) => s + x, 0);
  }
  let r = u * total;
  for (let j = 0; j < ids.length; j++) {
    r -= p[j]!;
    if (r < 0) return ids[j]!;
  }
  return ids[ids.length - 1]!;
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
  const wasTraining = model.training;
  model.eval();
  const kv = model.newKVCache();
  const seed = opts.seed ?? 0;
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
        const out = model.forward(x, null, kv).logits;                          // (1, T, V)
        return out.select(1, input.length - 1).data() as Float32Array;          // (V)
      }));
      const u = withScope(() => rand([1], { seed, offset: i }).item());
      const next = sampleToken(limit < V ? logits.subarray(0, limit) : logits, opts, u);
      yield next;
      if (stop.has(next)) break;
      input = [next];
    }
  } finally {
    GPT.disposeKVCache(kv);
    model.train(wasTraining);
  }
}

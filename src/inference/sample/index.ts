/**
 * Sampling for serving: logits processors and the sampler, per request.
 *
 * Order (vLLM's): logit bias (OpenAI's `logit_bias`, added to the raw logits), repetition
 * penalty (prompt + output tokens), presence/frequency penalties (output tokens), temperature,
 * top-k, top-p, min-p, then a draw. The draw uses the request's
 * own counter-based stream (seed, output index), so a seeded request produces the same text
 * whatever else is in the batch. Logprobs are those of the model's distribution (log-softmax
 * of the raw logits), as the OpenAI API reports them.
 *
 * The processed distribution is a value of its own (tokenDistribution, or processedProbs as a
 * dense vector), so speculative decoding can compare the target's and the draft's
 * distributions under exactly the transforms sampleNext applies, and draw with drawToken /
 * sampleFromProbs from the same seeded stream.
 *
 * This is the one sampler: the server engine, the draft model and `generate()` (`megalith
 * sample`, through models/gpt's `sampleToken`) all draw here, so a seed gives the same text
 * everywhere. A draw is the inverse CDF over the candidates in id order, whether or not
 * top-k/top-p/min-p cut them (they choose which candidates stay by descending probability, ties
 * by id): last-bit differences in the logits between batch shapes then leave the drawn token
 * unchanged except with negligible probability (see inverseCdf).
 */
import { ValueError } from "../../core/errors.js";
import { backend, RandomKind } from "../../backend/index.js";
import { Tensor } from "../../tensor/index.js";

/** Per-request sampling parameters (OpenAI / vLLM names, camelCase). */
export interface SamplingParams {
  /** 0 = greedy. Default 1. */
  temperature: number;
  /** Keep the k most likely tokens; 0 or -1 = off. */
  topK: number;
  /** Nucleus threshold in (0, 1]; 1 = off. */
  topP: number;
  /** Drop tokens whose probability is below minP x the top probability; 0 = off. */
  minP: number;
  /** > 1 discourages tokens already in the prompt or output (HF/vLLM rule). 1 = off. */
  repetitionPenalty: number;
  /** Subtracted once from the logit of every token already generated. */
  presencePenalty: number;
  /** Subtracted from the logit of every generated token, times its count. */
  frequencyPenalty: number;
  /** Seed of this request's stream (a random one is chosen when absent). */
  seed: number;
  /** How many top alternatives to report per token (0 = none, just the chosen token's logprob). */
  logprobs: number;
  /**
   * OpenAI's `logit_bias`: [token id, bias in [-100, 100]] pairs added to the raw logits before
   * everything else. -100 effectively bans a token and +100 effectively forces it (a model's
   * logits span far less than 100). Absent or empty = off. Logprobs stay the model's own.
   */
  logitBias?: ReadonlyArray<readonly [number, number]>;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: 0,
};

/** Checks ranges; errors name the parameter (the server turns them into 400s). */
export function validateSampling(p: SamplingParams): void {
  const bad = (name: string, v: unknown, want: string) => new ValueError(`${name} must be ${want}, got ${JSON.stringify(v)}`);
  if (!(p.temperature >= 0 && p.temperature <= 100)) throw bad("temperature", p.temperature, "in [0, 100]");
  if (!Number.isInteger(p.topK) || p.topK < -1) throw bad("top_k", p.topK, "-1, 0 or a positive integer");
  if (!(p.topP > 0 && p.topP <= 1)) throw bad("top_p", p.topP, "in (0, 1]");
  if (!(p.minP >= 0 && p.minP <= 1)) throw bad("min_p", p.minP, "in [0, 1]");
  if (!(p.repetitionPenalty > 0 && p.repetitionPenalty <= 10)) throw bad("repetition_penalty", p.repetitionPenalty, "in (0, 10]");
  if (!(p.presencePenalty >= -2 && p.presencePenalty <= 2)) throw bad("presence_penalty", p.presencePenalty, "in [-2, 2]");
  if (!(p.frequencyPenalty >= -2 && p.frequencyPenalty <= 2)) throw bad("frequency_penalty", p.frequencyPenalty, "in [-2, 2]");
  if (!Number.isSafeInteger(p.seed) || p.seed < 0) throw bad("seed", p.seed, "a non-negative integer");
  if (!Number.isInteger(p.logprobs) || p.logprobs < 0 || p.logprobs > 20) throw bad("logprobs", p.logprobs, "an integer in [0, 20]");
  for (const [t, b] of p.logitBias ?? []) {
    if (!Number.isInteger(t) || t < 0) throw bad("logit_bias token id", t, "a non-negative integer");
    if (!(b >= -100 && b <= 100)) throw bad(`logit_bias[${t}]`, b, "in [-100, 100]");
  }
}

export interface SampleResult {
  token: number;
  /** log p(token) under the model. */
  logprob: number;
  /** The `logprobs` most likely tokens with their log-probabilities, most likely first. */
  top: Array<{ token: number; logprob: number }>;
}

/** A uniform draw in [0, 1) at position `index` of the stream keyed by `seed`. */
export function uniformAt(seed: number, index: number): number {
  const t = Tensor.empty([1]);
  backend.random(RandomKind.uniform, seed, index, t, 1, 0, 1, "float32");
  const u = (t.data() as Float32Array)[0]!;
  t.dispose();
  return u;
}

function logSoftmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  let s = 0;
  for (const v of x) s += Math.exp(v - m);
  const ls = m + Math.log(s);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! - ls;
  return out;
}

/**
 * The distribution a request samples its next token from: the candidates left after the
 * logits processors, in the order the sampler walks them, with unnormalised weights.
 * Greedy (temperature 0) is the one candidate with the largest processed logit, weight 1.
 */
export interface TokenDistribution {
  /** Vocabulary size of the logits it came from. */
  vocabSize: number;
  /**
   * Candidate ids, ascending (the draw order); null = every id of the vocabulary (plain
   * temperature sampling). Greedy: the one argmax id.
   */
  ids: Int32Array | null;
  /** Unnormalised probability of each candidate (aligned with ids, or indexed by id when ids is null). */
  weights: Float64Array;
  /** Sum of weights. */
  total: number;
}

/**
 * Applies the logit bias, then the penalties, to a copy of the logits (repetition over prompt +
 * output, presence/frequency over output). Bias ids outside the row are ignored (the server
 * refuses them before they get here).
 */
function penalized(logitsIn: Float32Array, p: SamplingParams, prompt: readonly number[], output: readonly number[]): Float32Array {
  const V = logitsIn.length;
  const logits = Float32Array.from(logitsIn);
  for (const [t, b] of p.logitBias ?? []) if (t >= 0 && t < V) logits[t] = logits[t]! + b;
  if (p.repetitionPenalty !== 1) {
    const seen = new Set<number>([...prompt, ...output]);
    for (const t of seen) if (t >= 0 && t < V) logits[t] = logits[t]! > 0 ? logits[t]! / p.repetitionPenalty : logits[t]! * p.repetitionPenalty;
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    const counts = new Map<number, number>();
    for (const t of output) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, c] of counts) if (t >= 0 && t < V) logits[t] = logits[t]! - p.presencePenalty - p.frequencyPenalty * c;
  }
  return logits;
}

/**
 * The processed next-token distribution of one request (penalties, temperature, top-k, top-p,
 * min-p, in that order): exactly what sampleNext draws from. `prompt` and `output` are the
 * request's token ids so far (the penalties' history).
 */
export function tokenDistribution(logitsIn: Float32Array, p: SamplingParams, prompt: readonly number[], output: readonly number[]): TokenDistribution {
  const V = logitsIn.length;
  const logits = penalized(logitsIn, p, prompt, output);
  if (p.temperature === 0) {
    let token = 0;
    for (let i = 1; i < V; i++) if (logits[i]! > logits[token]!) token = i;
    return { vocabSize: V, ids: Int32Array.of(token), weights: Float64Array.of(1), total: 1 };
  }
  if ((p.topK <= 0 || p.topK >= V) && p.topP === 1 && p.minP === 0) {
    // Plain temperature sampling: every id, in id order (total summed in that order: drawToken).
    let m = -Infinity;
    for (const v of logits) if (v > m) m = v;
    const weights = new Float64Array(V);
    let total = 0;
    for (let i = 0; i < V; i++) total += weights[i] = Math.exp((logits[i]! - m) / p.temperature);
    return { vocabSize: V, ids: null, weights, total };
  }
  // Truncation needs the candidates by descending logit; ties by id (lower first), so which of
  // tied tokens top-k / top-p / min-p keep at the cut is deterministic. Cut by top-k.
  let ids = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (p.topK > 0 && p.topK < V) ids = ids.slice(0, p.topK);
  const m = logits[ids[0]!]!;
  let probs = ids.map((i) => Math.exp((logits[i]! - m) / p.temperature));
  let total = probs.reduce((s, x) => s + x, 0);
  if (p.topP < 1) {
    let acc = 0, keep = 0;
    while (keep < probs.length) {
      acc += probs[keep]! / total;
      keep++;
      if (acc >= p.topP) break;
    }
    ids = ids.slice(0, keep);
    probs = probs.slice(0, keep);
  }
  if (p.minP > 0) {
    const floor = p.minP * probs[0]!;  // probs[0] is the largest (unnormalised)
    const keep = probs.findIndex((x) => x < floor);
    if (keep > 0) {
      ids = ids.slice(0, keep);
      probs = probs.slice(0, keep);
    }
  }
  // The kept candidates are drawn in id order, like plain sampling: the sort above decides only
  // which tokens stay, so a near-tie inside the kept set cannot change the draw.
  const kept = Int32Array.from(ids).sort();
  const weights = new Float64Array(kept.length);
  total = 0;
  for (let j = 0; j < kept.length; j++) total += weights[j] = Math.exp((logits[kept[j]!]! - m) / p.temperature);
  return { vocabSize: V, ids: kept, weights, total };
}

/**
 * The token at uniform draw `u` in [0, 1) of a distribution: the inverse CDF over its
 * candidates in id order (the first candidate whose cumulative weight exceeds u x total).
 */
export function drawToken(d: TokenDistribution, u: number): number {
  const j = inverseCdf(d.weights, d.total, u);
  return d.ids ? d.ids[j]! : j;
}

/**
 * The inverse-CDF walk every draw goes through: the first index whose cumulative weight
 * exceeds u x total, walking the weights in their order (id order). `total` must be their sum
 * accumulated in that same order, as tokenDistribution and sampleFromProbs compute it: the
 * walk then reproduces the same partial sums, ends at exactly `total`, and u < 1 always finds
 * an index. Zero weights are never returned (the cumulative sum does not grow there).
 *
 * Why id order and not descending probability: the logits of one request differ in their last
 * bits between batch shapes (a GEMM's accumulation order), and in id order such a change moves
 * each boundary of the CDF by a comparable amount, so the same u picks the same token except
 * when it falls within that amount of a boundary (negligible). In descending order two nearly
 * tied tokens trade places, and a u that fell on either of them picks the other.
 * One pass, O(V): about 0.1 ms at V = 50304, beside about 1 ms for tokenDistribution's exp pass.
 */
function inverseCdf(w: Float64Array, total: number, u: number): number {
  const r = u * total;
  let acc = 0;
  let last = -1;
  for (let i = 0; i < w.length; i++) {
    const x = w[i]!;
    if (x > 0) {
      acc += x;
      last = i;
      if (r < acc) return i;
    }
  }
  if (last < 0) throw new ValueError(`inverse-CDF draw: the weights sum to ${total}; need a positive entry`);
  return last;  // only when u >= 1 or the weights are not finite
}

/** A distribution as a dense, normalised probability vector over the vocabulary. */
export function toProbs(d: TokenDistribution): Float64Array {
  const probs = new Float64Array(d.vocabSize);
  for (let j = 0; j < d.weights.length; j++) probs[d.ids ? d.ids[j]! : j] = d.weights[j]! / d.total;
  return probs;
}

/**
 * The processed next-token probabilities (length V, summing to 1) that sampleNext samples
 * from: what speculative decoding compares between the target and the draft model.
 *
 * @example
 * const p = processedProbs(targetRow, params, prompt, output);
 * const q = processedProbs(draftRow, params, prompt, output);
 * if (u < p[x] / q[x]) accept(x);
 */
export function processedProbs(logits: Float32Array, p: SamplingParams, prompt: readonly number[], output: readonly number[]): Float64Array {
  return toProbs(tokenDistribution(logits, p, prompt, output));
}

/** Inverse-CDF draw (in id order, as drawToken) from a probability vector, with uniform `u` in [0, 1); weights need not be normalised. */
export function sampleFromProbs(probs: Float64Array, u: number): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i]! > 0) total += probs[i]!;
  if (!(total > 0)) throw new ValueError(`sampleFromProbs: the probabilities sum to ${total}; need a positive entry`);
  return inverseCdf(probs, total, u);
}

/** The model's log-probability of `token` and the `k` most likely alternatives (log-softmax of the raw logits). */
export function tokenLogprobs(logits: Float32Array, token: number, k: number): Pick<SampleResult, "logprob" | "top"> {
  const lp = logSoftmax(logits);
  const top: SampleResult["top"] = [];
  if (k > 0) {
    const order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => lp[b]! - lp[a]! || a - b).slice(0, k);
    for (const t of order) top.push({ token: t, logprob: lp[t]! });
  }
  return { logprob: lp[token]!, top };
}

/**
 * Picks the next token for one request from its row of logits.
 * `prompt` and `output` are the request's token ids so far; `output.length` indexes the stream.
 */
export function sampleNext(logits: Float32Array, p: SamplingParams, prompt: readonly number[], output: readonly number[]): SampleResult {
  const d = tokenDistribution(logits, p, prompt, output);
  const token = p.temperature === 0 ? d.ids![0]! : drawToken(d, uniformAt(p.seed, output.length));
  return { token, ...tokenLogprobs(logits, token, p.logprobs) };
}

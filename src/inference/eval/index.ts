/**
 * Held-out quality of a model: perplexity over a token stream with sliding windows, in float32
 * or with the int8 projections of `quantizeModelInt8` (`megalith eval`, `npm run bench -- serve`).
 *
 * Windows (the Hugging Face "perplexity of fixed-length models" scheme): window i feeds tokens
 * [i * stride, i * stride + blockSize) and predicts each next token, but scores only the
 * targets no earlier window scored. With stride = blockSize the windows do not overlap and the
 * first tokens of every window are predicted from little context; a smaller stride gives every
 * scored token at least blockSize - stride tokens of context, at blockSize / stride times the
 * compute. Every token after the first is scored exactly once, so the result is
 * exp(sum NLL / (tokens - 1)) whatever the stride.
 *
 * The model is scored as it is, through its own `GPT.forward`: after `quantizeModelInt8` its
 * projections are Int8Linear modules, so the same forward is the int8 one. Windows of equal
 * length are batched; each batch runs in its own `withScope` under `noGrad`, so memory stays
 * at one batch of logits.
 */
import { join } from "node:path";
import { ValueError } from "../../core/errors.js";
import { tensor, withScope, crossEntropy } from "../../tensor/index.js";
import { noGrad } from "../../autograd/index.js";
import { readMeta, readShard, type Split } from "../../data/index.js";
import { isQuantizedInt8 } from "../quant/index.js";
import type { GPT } from "../../models/index.js";

/** Options of `perplexity`. */
export interface PerplexityOptions {
  /** Tokens fed per window. Default: the model's context (config.blockSize). */
  blockSize?: number;
  /** Tokens between window starts, 1..blockSize. Default: blockSize (no overlap). */
  stride?: number;
  /**
   * Require the int8 projections: throws unless the model went through `quantizeModelInt8`
   * (a guard against scoring the float model by mistake). The model is scored as it is either
   * way. Default false.
   */
  quantized?: boolean;
  /** Windows per forward pass. Default: as many as keep one batch of logits under 128 MiB (at least 1). */
  batchSize?: number;
}

/** What `perplexity` measured. */
export interface PerplexityResult {
  /** exp(mean NLL) over the scored tokens. */
  perplexity: number;
  /** Mean negative log-likelihood per scored token, in nats. */
  meanNll: number;
  /** Tokens scored (the stream's length minus one). */
  tokens: number;
  /** Windows (forward rows) it took. */
  windows: number;
}

/** One window of the sliding-window plan: feed [start, start + length), score local positions >= firstScored. */
interface Window {
  start: number;
  length: number;
  firstScored: number;
}

function windowPlan(n: number, blockSize: number, stride: number): Window[] {
  const out: Window[] = [];
  let scoredUpTo = 0;  // targets 1..scoredUpTo (absolute token indices) are done
  for (let start = 0; scoredUpTo < n - 1; start += stride) {
    const length = Math.min(blockSize, n - 1 - start);
    out.push({ start, length, firstScored: scoredUpTo - start });
    scoredUpTo = start + length;
  }
  return out;
}

/**
 * Perplexity of `model` on a token stream, scored with sliding windows (see the file comment).
 * @example
 * const ids = readSplitTokens(".cache/megalith/data/brown-gpt2", "val");
 * const fp32 = perplexity(model, ids, { blockSize: 128, stride: 64 });
 * quantizeModelInt8(model);
 * const int8 = perplexity(model, ids, { blockSize: 128, stride: 64, quantized: true });
 * console.log(fp32.perplexity, int8.perplexity);
 */
export function perplexity(model: GPT, tokens: ArrayLike<number>, opts: PerplexityOptions = {}): PerplexityResult {
  const c = model.config;
  const bs = opts.blockSize ?? c.blockSize;
  if (!Number.isInteger(bs) || bs < 1 || bs > c.blockSize) {
    throw new ValueError(`perplexity: blockSize must be an integer in [1, ${c.blockSize}] (the model's context), got ${bs}`);
  }
  const stride = opts.stride ?? bs;
  if (!Number.isInteger(stride) || stride < 1 || stride > bs) {
    throw new ValueError(`perplexity: stride must be an integer in [1, blockSize = ${bs}] (a larger stride would skip tokens), got ${stride}`);
  }
  if (tokens.length < 2) throw new ValueError(`perplexity: need at least 2 tokens, got ${tokens.length}`);
  const quant = opts.quantized ?? false;
  if (quant && !isQuantizedInt8(model)) {
    throw new ValueError("perplexity: quantized: true needs quantizeModelInt8(model) first");
  }
  const V = c.vocabSize;
  const maxBatch = opts.batchSize ?? Math.max(1, Math.floor(2 ** 25 / (bs * V)));
  if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new ValueError(`perplexity: batchSize must be a positive integer, got ${maxBatch}`);
  const ids = Int32Array.from(tokens);
  for (let i = 0; i < ids.length; i++) {
    if (ids[i]! < 0 || ids[i]! >= V) throw new ValueError(`perplexity: token ${ids[i]} at position ${i} is outside the model's vocabulary of ${V}`);
  }

  const plan = windowPlan(ids.length, bs, stride);
  const wasTraining = model.training;
  model.eval();
  let nll = 0;
  try {
    for (let w = 0; w < plan.length; ) {
      // A batch: up to maxBatch consecutive windows of the same length (all but the last are full).
      let e = w + 1;
      while (e < plan.length && e - w < maxBatch && plan[e]!.length === plan[w]!.length) e++;
      const batch = plan.slice(w, e);
      const B = batch.length, T = batch[0]!.length;
      const x = new Int32Array(B * T);
      const y = new Int32Array(B * T);
      batch.forEach((win, b) => {
        x.set(ids.subarray(win.start, win.start + T), b * T);
        y.set(ids.subarray(win.start + 1, win.start + 1 + T), b * T);
        y.fill(-100, b * T, b * T + win.firstScored);  // already scored by an earlier window: ignored
      });
      nll += noGrad(() => withScope(() => {
        const idx = tensor(x, { shape: [B, T], dtype: "int32" });
        const logits = model.forward(idx).logits;                                      // (B, T, V)
        return crossEntropy(logits.view([B * T, V]), tensor(y, { dtype: "int32" }), { reduction: "sum", ignoreIndex: -100 }).item();
      }));
      w = e;
    }
  } finally {
    if (wasTraining) model.train();
  }
  const count = ids.length - 1;
  return { perplexity: Math.exp(nll / count), meanNll: nll / count, tokens: count, windows: plan.length };
}

/**
 * The tokens of one split of a prepared directory (`megalith prepare`, or the Brown cache), its
 * shards concatenated in order: documents stay separated by the eot token they were written with.
 * @example
 * const { dir } = await ensurePreparedBrown(".cache/megalith/data", "gpt2");
 * const val = readSplitTokens(dir, "val");
 */
export function readSplitTokens(dir: string, split: Split = "val"): Int32Array {
  const meta = readMeta(dir);
  const info = meta.splits[split];
  const out = new Int32Array(info.tokens);
  let at = 0;
  for (const s of info.shards) {
    const { tokens } = readShard(join(dir, s.file));
    out.set(tokens, at);
    at += tokens.length;
  }
  if (at !== info.tokens) throw new ValueError(`readSplitTokens: the ${split} shards of ${dir} hold ${at} tokens, meta.json says ${info.tokens}; prepare the directory again`);
  return out;
}

/**
 * Validation loss in bits per byte: the loss per token (nats) divided by ln 2 and by the UTF-8
 * bytes each predicted token stands for. Unlike loss per token it does not depend on the
 * tokenizer, so a run with GPT-2's 50k vocabulary and one with a 4k BPE compare directly.
 *
 * The bytes are those of the exact targets the eval scores (the same windows `evaluate()`
 * reads), decoded by the run's tokenizer. The end-of-text separator stands for no text: it
 * counts 0 bytes, while its loss stays in the mean (it is ~1 token in 3,000 of Brown).
 */
import { evalBatches, type EvalBatchesOptions } from "../data/index.js";
import type { Tokenizer } from "../tokenizers/index.js";

/**
 * Mean UTF-8 bytes per target token over the eval batches `opts` describes.
 * @example const bpt = bytesPerToken(tok, { dir, blockSize: 64, microBatchSize: 16, numBatches: 8 });
 */
export function bytesPerToken(tokenizer: Tokenizer, opts: EvalBatchesOptions): number {
  const lengths = new Map<number, number>();
  const bytesOf = (id: number): number => {
    let n = lengths.get(id);
    if (n === undefined) {
      n = id === tokenizer.eotToken ? 0 : tokenizer.decodeBytes([id]).length;
      lengths.set(id, n);
    }
    return n;
  };
  let bytes = 0, tokens = 0;
  for (const b of evalBatches(opts)) {
    for (const id of b.targets) bytes += bytesOf(id);
    tokens += b.targets.length;
  }
  return tokens ? bytes / tokens : NaN;
}

/**
 * Bits per byte from a mean loss in nats per token.
 * @example bitsPerByte(1.5, 3.9) // 0.555
 */
export function bitsPerByte(lossNats: number, bytesPerTok: number): number {
  return lossNats / Math.LN2 / bytesPerTok;
}

/**
 * Dynamic masking for masked-language-model pretraining (BERT's 80/10/10 rule), drawn when an
 * example is loaded rather than baked into the shards, so every epoch sees fresh masks
 * (RoBERTa's "dynamic masking").
 *
 * The rule, per example:
 * 1. Candidates are all positions except the special tokens [CLS], [SEP], [PAD], [MASK] and
 *    [UNK] (Hugging Face's DataCollatorForLanguageModeling excludes the tokenizer's special ids
 *    the same way; predicting [UNK] teaches nothing).
 * 2. k = floor(maskProb * candidates + u), u uniform in [0, 1), positions are chosen: an exact
 *    count with random rounding, as fairseq's MaskTokensDataset does. Its expectation is exactly
 *    maskProb * candidates (Google's round() over-selects short examples: 1 of 3 candidates is
 *    33%), and its spread is smaller than a per-token coin flip's.
 * 3. Each chosen position independently becomes [MASK] with probability 0.8, a random token
 *    with 0.1 (uniform over the vocabulary minus the special ids above), and stays unchanged
 *    with 0.1. Its label is the original id; every other label is -100 (PyTorch's
 *    cross-entropy ignore_index).
 *
 * The random stream of an example is keyed by (seed, epoch, example index) only, never by rank,
 * batch or row: the same example in the same epoch gets the same mask under every
 * data-parallel layout, and a resumed run redraws exactly the masks it would have drawn.
 */

import { ValueError } from "../core/errors.js";
import { hashWords, splitU53 } from "./_permutation.js";
import type { MlmSpecialIds } from "./meta.js";

/** The label of a position that is not predicted (PyTorch's CrossEntropyLoss ignore_index). */
export const MLM_IGNORE_INDEX = -100;

/** Options of the 80/10/10 rule. Defaults are BERT's. */
export interface MaskingOptions {
  /** Fraction of candidate tokens selected for prediction. Default 0.15. */
  maskProb?: number;
  /** Of the selected tokens, the fraction replaced by [MASK]. Default 0.8. */
  maskTokenFraction?: number;
  /** Of the selected tokens, the fraction replaced by a random token (the rest stay). Default 0.1. */
  randomTokenFraction?: number;
}

/** The vocabulary facts masking needs, built once by maskingVocab(). */
export interface MaskingVocab {
  /** The [MASK] id. */
  mask: number;
  /** Ids never selected: [CLS], [SEP], [PAD], [MASK] and [UNK] if any. */
  special: ReadonlySet<number>;
  /** Ids a selected token may be replaced with: every id below vocabSize except `special`. */
  replacements: Int32Array;
}

/**
 * The masking vocabulary of a tokenizer with the given special ids.
 * @example const vocab = maskingVocab(meta.mlm!.special, meta.tokenizer.vocabSize);
 */
export function maskingVocab(special: MlmSpecialIds, vocabSize: number): MaskingVocab {
  const ids = [special.cls, special.sep, special.pad, special.mask, ...(special.unk === null ? [] : [special.unk])];
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new ValueError(`special id ${id} is not an id below vocabSize ${vocabSize}`);
  }
  const set = new Set(ids);
  if (vocabSize - set.size < 1) throw new ValueError(`vocabSize ${vocabSize} leaves no non-special token to draw random replacements from`);
  const replacements = new Int32Array(vocabSize - set.size);
  let n = 0;
  for (let id = 0; id < vocabSize; id++) if (!set.has(id)) replacements[n++] = id;
  return { mask: special.mask, special: set, replacements };
}

/** Checks MaskingOptions and fills in BERT's defaults. */
export function resolveMasking(opts: MaskingOptions = {}): Required<MaskingOptions> {
  const r = { maskProb: opts.maskProb ?? 0.15, maskTokenFraction: opts.maskTokenFraction ?? 0.8, randomTokenFraction: opts.randomTokenFraction ?? 0.1 };
  for (const [k, v] of Object.entries(r)) {
    if (typeof v !== "number" || !(v >= 0 && v <= 1)) throw new ValueError(`${k} must be a number in [0, 1], got ${v}`);
  }
  if (r.maskTokenFraction + r.randomTokenFraction > 1) {
    throw new ValueError(`maskTokenFraction + randomTokenFraction must be at most 1, got ${r.maskTokenFraction} + ${r.randomTokenFraction}`);
  }
  return r;
}

/** Domain word that keeps the masking stream apart from the shuffle permutation's keys. */
const MASK_STREAM = 0x4d4c4d31; // "MLM1"

/**
 * A uniform [0, 1) stream keyed by (seed, epoch, example): mulberry32 started from a hash of the
 * key, so an example's draws need nothing but its key.
 */
function _exampleStream(seed: number, epoch: number, example: number): () => number {
  const [sLo, sHi] = splitU53(seed);
  const [eLo, eHi] = splitU53(example);
  let a = hashWords([sLo, sHi, epoch >>> 0, eLo, eHi, MASK_STREAM]);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Where an example's random stream comes from; see the file comment. */
export interface MaskKey {
  /** The loader's seed (a non-negative safe integer). */
  seed: number;
  /** The epoch the example is read in (0 for evaluation). */
  epoch: number;
  /** The example's index in its split. */
  example: number;
}

/**
 * Masks one example in place: `inputIds` holds the example's tokens on entry and the masked
 * tokens on return; `labels` (same length) receives the original id at every selected position
 * and MLM_IGNORE_INDEX elsewhere. Returns the number of selected positions.
 * @example
 * const ids = Int32Array.from(example); const labels = new Int32Array(ids.length);
 * maskExample(ids, labels, maskingVocab(special, vocabSize), { seed: 1, epoch: 0, example: 42 });
 */
export function maskExample(inputIds: Int32Array, labels: Int32Array, vocab: MaskingVocab, key: MaskKey, opts: Required<MaskingOptions> = resolveMasking()): number {
  if (labels.length !== inputIds.length) throw new ValueError(`labels has ${labels.length} entries, inputIds ${inputIds.length}; they must match`);
  const rand = _exampleStream(key.seed, key.epoch, key.example);
  const candidates: number[] = [];
  for (let i = 0; i < inputIds.length; i++) {
    labels[i] = MLM_IGNORE_INDEX;
    if (!vocab.special.has(inputIds[i])) candidates.push(i);
  }
  const n = candidates.length;
  const k = Math.min(n, Math.floor(opts.maskProb * n + rand()));
  // Partial Fisher-Yates: the first k entries become a uniform k-subset of the candidates.
  for (let j = 0; j < k; j++) {
    const r = j + Math.floor(rand() * (n - j));
    const pos = candidates[r];
    candidates[r] = candidates[j];
    candidates[j] = pos;
    labels[pos] = inputIds[pos];
    const u = rand();
    if (u < opts.maskTokenFraction) inputIds[pos] = vocab.mask;
    else if (u < opts.maskTokenFraction + opts.randomTokenFraction) inputIds[pos] = vocab.replacements[Math.floor(rand() * vocab.replacements.length)];
  }
  return k;
}

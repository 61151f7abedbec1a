/**
 * Batches of masked sentence pairs from an mlm directory (`megalith prepare --task mlm`), for
 * BERT pretraining and evaluation.
 *
 * Order and sharding work exactly as TokenLoader's (loader.ts), with examples in place of
 * windows: with N examples the loader reads global sample positions p = 0, 1, 2, ...; position p
 * is in epoch floor(p / N) and reads example perm_epoch(p mod N), perm_epoch a keyed permutation
 * of (seed, epoch). One step consumes microBatchSize * worldSize positions and rank r takes the
 * r-th contiguous slice of them, so the ranks' batches concatenated in rank order are the batch
 * one process with microBatchSize * worldSize reads. The state is that single position.
 *
 * Masks are drawn per example at load time (mlm_masking.ts), keyed by (seed, epoch, example
 * index): each epoch masks an example afresh, and neither the data-parallel layout nor a resume
 * changes which tokens are masked.
 *
 * Every batch is padded to T = max_seq_len of the directory (fixed, so every step has the same
 * shapes): [PAD] ids, attention mask 0, token type 0 and label -100 past each example's end.
 */

import { join } from "node:path";
import { FormatError, ValueError } from "../core/errors.js";
import { restoredPosition } from "./_loader_state.js";
import { IndexPermutation, splitU53 } from "./_permutation.js";
import { readMeta, requireTask, type MlmInfo, type PreparedMeta, type Split } from "./meta.js";
import { MLM_IGNORE_INDEX, maskExample, maskingVocab, resolveMasking, type MaskingOptions, type MaskingVocab } from "./mlm_masking.js";
import { MlmIndexReader } from "./mlm_shards.js";
import { ShardReader, readShardHeader } from "./shards.js";

/** One rank's micro-batch of masked pairs. Arrays are row-major int32, ready to wrap as tensors. */
export interface MlmBatch {
  /** (B, T) token ids after masking, [PAD] past each example's end. */
  inputIds: Int32Array;
  /** (B, T) segment ids: 0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding. */
  tokenTypeIds: Int32Array;
  /** (B, T) 1 on the example's tokens, 0 on padding. */
  attentionMask: Int32Array;
  /** (B, T) the original id where a token was selected for prediction, -100 (MLM_IGNORE_INDEX) elsewhere. */
  mlmLabels: Int32Array;
  /** (B) next-sentence labels as Hugging Face's next_sentence_label: 0 = B follows A, 1 = B is random. */
  nspLabels: Int32Array;
  /**
   * (B) each row's sample number in the loader's global order (the TokenLoader's `rows`): the same
   * sample has the same number under any data-parallel layout, so per-sample randomness
   * (dropout) can be keyed by it. For evaluation batches, the row's place in the eval order.
   */
  sampleIds: Int32Array;
  /** (B) each row's example index in its split (what the masks are keyed by, with seed and epoch). */
  exampleIds: Int32Array;
  /** B, rows in this batch. */
  rows: number;
  /** T, the padded length: always the directory's max_seq_len. */
  seqLen: number;
  /** Epoch of this batch's first row (training) or 0 (evaluation). */
  epoch: number;
}

/** How many open shard files a split keeps at most (the rest are reopened on demand). */
const MAX_OPEN_SHARDS = 64;

/** The examples of one split: the index, shard readers, and the masking vocabulary. */
class _SplitExamples {
  readonly meta: PreparedMeta;
  readonly mlm: MlmInfo;
  readonly count: number;
  readonly vocab: MaskingVocab;
  private readonly indexPath: string;
  private index: MlmIndexReader | undefined; // opened on first read, so an unused eval generator holds no file
  private readonly paths: string[];
  private readonly starts: number[]; // prefix sums: shard s holds split tokens [starts[s], starts[s+1])
  private readonly open = new Map<number, ShardReader>();

  constructor(
    readonly dir: string,
    readonly split: Split,
  ) {
    this.meta = readMeta(dir);
    requireTask(this.meta, dir, "mlm");
    this.mlm = this.meta.mlm!;
    const info = this.meta.splits[split];
    this.paths = info.shards.map((s) => join(dir, s.file));
    this.starts = [0];
    info.shards.forEach((s, i) => {
      const header = readShardHeader(this.paths[i]);
      if (header.tokenCount !== s.tokens || header.dtype !== this.meta.dtype) {
        throw new FormatError(
          this.paths[i],
          `header (${header.tokenCount} ${header.dtype} tokens) does not match meta.json (${s.tokens} ${this.meta.dtype} tokens); the directory mixes two preparations`,
        );
      }
      this.starts.push(this.starts[i] + s.tokens);
    });
    const indexPath = join(dir, this.mlm.splits[split].index);
    this.indexPath = indexPath;
    const index = new MlmIndexReader(indexPath);
    index.close();
    const { exampleCount, maxSeqLen } = index.header;
    if (exampleCount !== this.mlm.splits[split].examples || maxSeqLen !== this.mlm.maxSeqLen) {
      throw new FormatError(
        indexPath,
        `header (${exampleCount} examples, max_seq_len ${maxSeqLen}) does not match meta.json (${this.mlm.splits[split].examples}, ${this.mlm.maxSeqLen}); the directory mixes two preparations`,
      );
    }
    this.count = exampleCount;
    if (this.count === 0) {
      throw new ValueError(
        `the ${split} split of ${dir} has no sentence-pair examples (${info.documents} documents); prepare more text` +
          (split === "val" ? " or a larger --val-fraction" : ""),
      );
    }
    if (this.count > 2 ** 31 - 1) throw new ValueError(`the ${split} split of ${dir} has ${this.count} examples, more than the 2^31 - 1 an int32 example id holds`);
    this.vocab = maskingVocab(this.mlm.special, this.meta.tokenizer.vocabSize);
  }

  get seqLen(): number {
    return this.mlm.maxSeqLen;
  }

  /** Reads example `e` into row `row` of `batch` and masks it with the stream of (seed, epoch, e). */
  readExample(e: number, batch: MlmBatch, row: number, seed: number, epoch: number, masking: ReturnType<typeof resolveMasking>): void {
    this.index ??= new MlmIndexReader(this.indexPath);
    const rec = this.index.read(e);
    let s = 0;
    let hi = this.paths.length - 1;
    while (s < hi) {
      const mid = (s + hi + 1) >>> 1;
      if (this.starts[mid] <= rec.offset) s = mid;
      else hi = mid - 1;
    }
    // Empty shards share a start with the next one; step past them.
    while (s + 1 < this.paths.length && this.starts[s + 1] <= rec.offset) s++;
    if (rec.offset + rec.length > this.starts[s + 1]) {
      throw new FormatError(this.indexPath, `example ${e} (tokens ${rec.offset}..${rec.offset + rec.length}) runs past its shard ${this.paths[s]}; the index does not match the shards`);
    }
    const tokens = this.reader(s).read(rec.offset - this.starts[s], rec.length);
    const { cls, sep } = this.mlm.special;
    if (tokens[0] !== cls || tokens[rec.bStart - 1] !== sep || tokens[rec.length - 1] !== sep) {
      throw new FormatError(this.indexPath, `example ${e} is not [CLS] A [SEP] B [SEP] (ids ${tokens[0]}, ${tokens[rec.bStart - 1]}, ${tokens[rec.length - 1]} at 0, ${rec.bStart - 1}, ${rec.length - 1}); the index does not match the shards`);
    }
    const T = this.seqLen;
    const base = row * T;
    const ids = batch.inputIds.subarray(base, base + rec.length);
    ids.set(tokens);
    maskExample(ids, batch.mlmLabels.subarray(base, base + rec.length), this.vocab, { seed, epoch, example: e }, masking);
    for (let t = 0; t < T; t++) {
      batch.tokenTypeIds[base + t] = t >= rec.bStart && t < rec.length ? 1 : 0;
      batch.attentionMask[base + t] = t < rec.length ? 1 : 0;
    }
    batch.inputIds.fill(this.mlm.special.pad, base + rec.length, base + T);
    batch.mlmLabels.fill(MLM_IGNORE_INDEX, base + rec.length, base + T);
    batch.nspLabels[row] = rec.nspLabel;
    batch.exampleIds[row] = e;
  }

  private reader(s: number): ShardReader {
    let r = this.open.get(s);
    if (r !== undefined) {
      this.open.delete(s); // re-insert: Map order is our LRU order
    } else {
      if (this.open.size >= MAX_OPEN_SHARDS) {
        const [oldest, old] = this.open.entries().next().value as [number, ShardReader];
        old.close();
        this.open.delete(oldest);
      }
      r = new ShardReader(this.paths[s]);
    }
    this.open.set(s, r);
    return r;
  }

  close(): void {
    for (const r of this.open.values()) r.close();
    this.open.clear();
    this.index?.close();
    this.index = undefined;
  }
}

function _emptyBatch(B: number, T: number, epoch: number): MlmBatch {
  return {
    inputIds: new Int32Array(B * T),
    tokenTypeIds: new Int32Array(B * T),
    attentionMask: new Int32Array(B * T),
    mlmLabels: new Int32Array(B * T),
    nspLabels: new Int32Array(B),
    sampleIds: new Int32Array(B),
    exampleIds: new Int32Array(B),
    rows: B,
    seqLen: T,
    epoch,
  };
}

function _checkLayout(microBatchSize: number, rank: number, worldSize: number): void {
  if (!Number.isSafeInteger(microBatchSize) || microBatchSize < 1) throw new ValueError(`microBatchSize must be a positive integer, got ${microBatchSize}`);
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw new ValueError(`worldSize must be a positive integer, got ${worldSize}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) throw new ValueError(`rank must be an integer in [0, ${worldSize}), got ${rank}`);
}

function _checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ValueError(`seed must be a non-negative safe integer, got ${seed}`);
}

/** Options for MlmLoader. */
export interface MlmLoaderOptions {
  /** A directory written by prepareMlmData / `megalith prepare --task mlm`. */
  dir: string;
  /** Which split to read. Default "train". */
  split?: Split;
  /** B: rows per batch on this rank. The global batch is B * worldSize. */
  microBatchSize: number;
  /** Seed of the shuffle and of the masks, a non-negative safe integer. Default 0. */
  seed?: number;
  /** This process's data-parallel rank. Default 0. */
  rank?: number;
  /** Data-parallel world size. Default 1. */
  worldSize?: number;
  /** Shuffle example order per epoch. Default true; false reads examples in file order. */
  shuffle?: boolean;
  /** The 80/10/10 rule's probabilities. Default BERT's (0.15; 0.8, 0.1). */
  masking?: MaskingOptions;
}

/** An MlmLoader's position: plain JSON, stored in checkpoints. Independent of rank/worldSize. */
export interface MlmLoaderState {
  kind: "megalith-mlm-loader";
  version: 1;
  split: Split;
  seed: number;
  shuffle: boolean;
  /** The masking probabilities: a resumed run must draw masks by the same rule. */
  masking: Required<MaskingOptions>;
  /** Examples per epoch: identifies the dataset, so a state is not restored onto other data. */
  examples: number;
  /** Global sample positions consumed so far (all ranks together). */
  position: number;
}

/**
 * Reproducible, resumable, data-parallel-sharded batches of dynamically masked sentence pairs.
 * @example
 * const loader = new MlmLoader({ dir: "data/wiki-mlm", microBatchSize: 32, seed: 1, rank: comm.rank, worldSize: comm.size });
 * const { inputIds, tokenTypeIds, attentionMask, mlmLabels, nspLabels } = loader.nextBatch(); // (32 * 128) each, nsp (32)
 * const saved = loader.state(); ... loader.restore(saved);
 */
export class MlmLoader {
  readonly split: Split;
  readonly microBatchSize: number;
  readonly seed: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly shuffle: boolean;
  readonly masking: Required<MaskingOptions>;
  private readonly examples: _SplitExamples;
  private position = 0;
  private perm: IndexPermutation | undefined;
  private permEpoch = -1;

  constructor(opts: MlmLoaderOptions) {
    this.split = opts.split ?? "train";
    this.microBatchSize = opts.microBatchSize;
    this.seed = opts.seed ?? 0;
    this.rank = opts.rank ?? 0;
    this.worldSize = opts.worldSize ?? 1;
    this.shuffle = opts.shuffle ?? true;
    this.masking = resolveMasking(opts.masking);
    _checkSeed(this.seed);
    _checkLayout(this.microBatchSize, this.rank, this.worldSize);
    this.examples = new _SplitExamples(opts.dir, this.split);
  }

  /** The prepared directory's manifest. */
  get meta(): PreparedMeta {
    return this.examples.meta;
  }

  /** T: every batch's padded length, the directory's max_seq_len. */
  get seqLen(): number {
    return this.examples.seqLen;
  }

  /** Examples in one epoch of this split. */
  get examplesPerEpoch(): number {
    return this.examples.count;
  }

  /** Rows per step over all ranks: microBatchSize * worldSize. */
  get globalBatchSize(): number {
    return this.microBatchSize * this.worldSize;
  }

  /** Epoch of the next sample (fractional: 1.5 = halfway through the second epoch). */
  get epoch(): number {
    return this.position / this.examples.count;
  }

  /** This rank's next micro-batch; advances the global position by one global batch. */
  nextBatch(): MlmBatch {
    const B = this.microBatchSize;
    const N = this.examples.count;
    const first = this.position + this.rank * B;
    if (first + B > 2 ** 31) throw new ValueError(`sample position ${first + B} no longer fits the int32 sampleIds; restart the loader's position`);
    const batch = _emptyBatch(B, this.seqLen, Math.floor(first / N));
    for (let b = 0; b < B; b++) {
      const p = first + b;
      const epoch = Math.floor(p / N);
      const i = p - epoch * N;
      this.examples.readExample(this.shuffle ? this.permutation(epoch).at(i) : i, batch, b, this.seed, epoch, this.masking);
      batch.sampleIds[b] = p;
    }
    this.position += this.globalBatchSize;
    return batch;
  }

  /** The position to save; see MlmLoaderState. */
  state(): MlmLoaderState {
    return {
      kind: "megalith-mlm-loader",
      version: 1,
      split: this.split,
      seed: this.seed,
      shuffle: this.shuffle,
      masking: { ...this.masking },
      examples: this.examples.count,
      position: this.position,
    };
  }

  /**
   * Continues from a saved state (possibly saved under another rank/worldSize): the next batches
   * and their masks are the ones the saving run would have read next. Throws a ValueError if it
   * was saved for another split, seed, shuffle setting, masking rule or dataset.
   */
  restore(state: MlmLoaderState): void {
    this.position = restoredPosition(state, this.state(), ["split", "seed", "shuffle", "masking", "examples"], "examples", "an MlmLoader");
  }

  /** Closes the index and shard files. */
  close(): void {
    this.examples.close();
  }

  private permutation(epoch: number): IndexPermutation {
    if (this.perm === undefined || this.permEpoch !== epoch) {
      const [lo, hi] = splitU53(this.seed);
      this.perm = new IndexPermutation(this.examples.count, [lo, hi, epoch]);
      this.permEpoch = epoch;
    }
    return this.perm;
  }
}

/** Options for mlmEvalBatches. */
export interface MlmEvalBatchesOptions {
  dir: string;
  /** Default "val". */
  split?: Split;
  /** Rows per batch on this rank. */
  microBatchSize: number;
  /**
   * Global batches to yield. Default: every whole global batch of examples in the split. A
   * smaller number spreads the examples evenly over the split rather than taking its start.
   */
  numBatches?: number;
  rank?: number;
  worldSize?: number;
  /** Seed of the (fixed) evaluation masks. Default 0. */
  seed?: number;
  /** The 80/10/10 rule's probabilities. Default BERT's. */
  masking?: MaskingOptions;
}

/**
 * How many full evaluation batches the split holds for this layout.
 * @example const n = mlmEvalBatchCount({ dir, microBatchSize: 32 });
 */
export function mlmEvalBatchCount(opts: Omit<MlmEvalBatchesOptions, "numBatches" | "seed" | "masking">): number {
  const examples = new _SplitExamples(opts.dir, opts.split ?? "val");
  examples.close();
  return Math.floor(examples.count / (opts.microBatchSize * (opts.worldSize ?? 1)));
}

/**
 * Deterministic evaluation batches: the same examples with the same masks on every call (masks
 * keyed by (seed, epoch 0, example)), sharded across data-parallel ranks like MlmLoader, so the
 * ranks' losses average to the single-process one.
 * @example
 * for (const batch of mlmEvalBatches({ dir, microBatchSize: 32, numBatches: 20 })) { ... }
 */
export function mlmEvalBatches(opts: MlmEvalBatchesOptions): Generator<MlmBatch> {
  const rank = opts.rank ?? 0;
  const worldSize = opts.worldSize ?? 1;
  const seed = opts.seed ?? 0;
  const B = opts.microBatchSize;
  _checkLayout(B, rank, worldSize);
  _checkSeed(seed);
  const masking = resolveMasking(opts.masking);
  // Validated here, not on the first next(), so a bad option fails where it is passed.
  const examples = new _SplitExamples(opts.dir, opts.split ?? "val");
  const N = examples.count;
  const G = B * worldSize;
  const maxBatches = Math.floor(N / G);
  const numBatches = opts.numBatches ?? maxBatches;
  if (!Number.isSafeInteger(numBatches) || numBatches < 1 || numBatches > maxBatches) {
    examples.close();
    throw new ValueError(
      `numBatches must be an integer in [1, ${maxBatches}] for the ${examples.split} split of ${opts.dir} (${N} examples, global batch ${G}), got ${numBatches}` +
        (maxBatches === 0 ? "; use a smaller batch, or a larger --val-fraction" : ""),
    );
  }
  return (function* (): Generator<MlmBatch> {
    const K = numBatches * G;
    try {
      for (let step = 0; step < numBatches; step++) {
        const batch = _emptyBatch(B, examples.seqLen, 0);
        for (let b = 0; b < B; b++) {
          const k = step * G + rank * B + b;
          examples.readExample(Math.floor((k * N) / K), batch, b, seed, 0, masking);
          batch.sampleIds[b] = k;
        }
        yield batch;
      }
    } finally {
      examples.close();
    }
  })();
}

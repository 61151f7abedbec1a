/**
 * Batches of (inputs, targets) windows from a prepared directory, for training and evaluation.
 *
 * A split is cut into non-overlapping windows of blockSize + 1 tokens starting at multiples of
 * blockSize inside each shard (windows never straddle shards): inputs are the first blockSize
 * tokens, targets the same window shifted by one. With N windows, the training loader reads an
 * endless stream of global sample positions p = 0, 1, 2, ...: position p belongs to epoch
 * floor(p / N) and reads window perm_epoch(p mod N), where perm_epoch is a keyed permutation of
 * (seed, epoch) (see _permutation.ts). Epochs follow each other without dropping or padding.
 *
 * Data parallelism: one step consumes a global batch of microBatchSize * worldSize positions;
 * rank r takes the r-th contiguous slice of microBatchSize of them. So the ranks' batches of a
 * step, concatenated in rank order, are exactly the batch a single process with
 * microBatchSize * worldSize reads: a layout change never changes which samples a step sees.
 * The loader's state is the single global position, which also means a checkpoint restores
 * into a different data-parallel layout.
 */

import { join } from "node:path";
import { FormatError, ValueError } from "../core/errors.js";
import { restoredPosition } from "./_loader_state.js";
import { IndexPermutation, splitU53 } from "./_permutation.js";
import { readMeta, requireTask, type PreparedMeta, type Split } from "./meta.js";
import { ShardReader, readShardHeader } from "./shards.js";

/** One rank's micro-batch. Arrays are row-major (B, T) int32, ready to wrap as tensors. */
export interface Batch {
  /** (B, T) token ids. */
  inputs: Int32Array;
  /** (B, T) next-token ids: targets[b, t] = inputs[b, t + 1] within the same window. */
  targets: Int32Array;
  /** B, rows in this batch. */
  batchSize: number;
  /** T, the window length. */
  blockSize: number;
  /** Epoch of this batch's first row (training) or 0 (evaluation). */
  epoch: number;
  /**
   * Each row's sample number in the loader's global order (training): the same sample has the
   * same number under any data-parallel layout, so per-sample randomness (dropout) can be keyed
   * by it. Absent for evaluation batches.
   */
  rows?: number[];
}

/** How many open shard files a split keeps at most (the rest are reopened on demand). */
const MAX_OPEN_SHARDS = 64;

/** The windows of one split: shard readers and the window -> (shard, offset) map. */
class SplitWindows {
  readonly meta: PreparedMeta;
  readonly windowCount: number;
  private readonly paths: string[];
  private readonly firstWindow: number[]; // prefix sums: shard s holds windows [firstWindow[s], firstWindow[s+1])
  private readonly open = new Map<number, ShardReader>();

  constructor(
    readonly dir: string,
    readonly split: Split,
    readonly blockSize: number,
  ) {
    if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new ValueError(`blockSize must be a positive integer, got ${blockSize}`);
    this.meta = readMeta(dir);
    requireTask(this.meta, dir, "lm"); // an mlm directory holds [CLS] A [SEP] B [SEP] examples, not a document stream
    const info = this.meta.splits[split];
    this.paths = info.shards.map((s) => join(dir, s.file));
    this.firstWindow = [0];
    info.shards.forEach((s, i) => {
      const header = readShardHeader(this.paths[i]);
      if (header.tokenCount !== s.tokens || header.dtype !== this.meta.dtype || header.eotToken !== this.meta.tokenizer.eotToken) {
        throw new FormatError(
          this.paths[i],
          `header (${header.tokenCount} ${header.dtype} tokens, eot ${header.eotToken}) does not match meta.json ` +
            `(${s.tokens} ${this.meta.dtype} tokens, eot ${this.meta.tokenizer.eotToken}); the directory mixes two preparations`,
        );
      }
      this.firstWindow.push(this.firstWindow[i] + Math.max(0, Math.floor((s.tokens - 1) / blockSize)));
    });
    this.windowCount = this.firstWindow[info.shards.length];
    if (this.windowCount === 0) {
      throw new ValueError(
        `the ${split} split of ${dir} has ${info.tokens} tokens in ${info.shards.length} shard(s), not enough for one window of ` +
          `blockSize + 1 = ${blockSize + 1} tokens; use a smaller blockSize or prepare more data` +
          (split === "val" ? " (or a larger --val-fraction)" : ""),
      );
    }
  }

  /** Copies window `w` into row `row` of `inputs` and `targets` (each (B, T)). */
  readWindow(w: number, inputs: Int32Array, targets: Int32Array, row: number): void {
    let lo = 0;
    let hi = this.paths.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.firstWindow[mid] <= w) lo = mid;
      else hi = mid - 1;
    }
    // Empty shards share a firstWindow with the next one; step past them.
    while (this.firstWindow[lo + 1] <= w) lo++;
    const T = this.blockSize;
    const tokens = this.reader(lo).read((w - this.firstWindow[lo]) * T, T + 1);
    const base = row * T;
    for (let t = 0; t < T; t++) {
      inputs[base + t] = tokens[t];
      targets[base + t] = tokens[t + 1];
    }
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
  }
}

function checkLayout(microBatchSize: number, rank: number, worldSize: number): void {
  if (!Number.isSafeInteger(microBatchSize) || microBatchSize < 1) throw new ValueError(`microBatchSize must be a positive integer, got ${microBatchSize}`);
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw new ValueError(`worldSize must be a positive integer, got ${worldSize}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) throw new ValueError(`rank must be an integer in [0, ${worldSize}), got ${rank}`);
}

/** Options for TokenLoader. */
export interface TokenLoaderOptions {
  /** A directory written by prepareData / `megalith prepare`. */
  dir: string;
  /** Which split to read. Default "train". */
  split?: Split;
  /** T: tokens per row of inputs (each window reads T + 1 tokens). */
  blockSize: number;
  /** B: rows per batch on this rank. The global batch is B * worldSize. */
  microBatchSize: number;
  /** Shuffle seed, a non-negative safe integer. Default 0. */
  seed?: number;
  /** This process's data-parallel rank. Default 0. */
  rank?: number;
  /** Data-parallel world size. Default 1. */
  worldSize?: number;
  /** Shuffle window order per epoch. Default true; false reads windows in file order. */
  shuffle?: boolean;
}

/** A TokenLoader's position: plain JSON, stored in checkpoints. Independent of rank/worldSize. */
export interface TokenLoaderState {
  kind: "megalith-token-loader";
  version: 1;
  split: Split;
  seed: number;
  shuffle: boolean;
  blockSize: number;
  /** Windows per epoch: identifies the dataset cut, so a state is not restored onto other data. */
  windows: number;
  /** Global sample positions consumed so far (all ranks together). */
  position: number;
}

/**
 * Reproducible, resumable, data-parallel-sharded batches over a prepared split.
 * @example
 * const loader = new TokenLoader({ dir: "data/brown", blockSize: 256, microBatchSize: 8, seed: 1337,
 *   rank: comm.rank, worldSize: comm.size });
 * const { inputs, targets } = loader.nextBatch(); // Int32Array (8 * 256) each
 * const saved = loader.state(); ... loader.restore(saved);
 */
export class TokenLoader {
  readonly split: Split;
  readonly blockSize: number;
  readonly microBatchSize: number;
  readonly seed: number;
  readonly rank: number;
  readonly worldSize: number;
  readonly shuffle: boolean;
  private readonly windows: SplitWindows;
  private position = 0;
  private perm: IndexPermutation | undefined;
  private permEpoch = -1;

  constructor(opts: TokenLoaderOptions) {
    this.split = opts.split ?? "train";
    this.blockSize = opts.blockSize;
    this.microBatchSize = opts.microBatchSize;
    this.seed = opts.seed ?? 0;
    this.rank = opts.rank ?? 0;
    this.worldSize = opts.worldSize ?? 1;
    this.shuffle = opts.shuffle ?? true;
    if (!Number.isSafeInteger(this.seed) || this.seed < 0) throw new ValueError(`seed must be a non-negative safe integer, got ${this.seed}`);
    checkLayout(this.microBatchSize, this.rank, this.worldSize);
    this.windows = new SplitWindows(opts.dir, this.split, this.blockSize);
  }

  /** The prepared directory's manifest. */
  get meta(): PreparedMeta {
    return this.windows.meta;
  }

  /** Windows in one epoch of this split. */
  get windowsPerEpoch(): number {
    return this.windows.windowCount;
  }

  /** Rows per step over all ranks: microBatchSize * worldSize. */
  get globalBatchSize(): number {
    return this.microBatchSize * this.worldSize;
  }

  /** Epoch of the next sample (fractional: 1.5 = halfway through the second epoch). */
  get epoch(): number {
    return this.position / this.windows.windowCount;
  }

  /** This rank's next micro-batch; advances the global position by one global batch. */
  nextBatch(): Batch {
    const B = this.microBatchSize;
    const T = this.blockSize;
    const N = this.windows.windowCount;
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    const first = this.position + this.rank * B;
    for (let b = 0; b < B; b++) {
      const p = first + b;
      const epoch = Math.floor(p / N);
      const i = p - epoch * N;
      this.windows.readWindow(this.shuffle ? this.permutation(epoch).at(i) : i, inputs, targets, b);
    }
    this.position += this.globalBatchSize;
    return { inputs, targets, batchSize: B, blockSize: T, epoch: Math.floor(first / N), rows: Array.from({ length: B }, (_, b) => first + b) };
  }

  /** The position to save; see TokenLoaderState. */
  state(): TokenLoaderState {
    return {
      kind: "megalith-token-loader",
      version: 1,
      split: this.split,
      seed: this.seed,
      shuffle: this.shuffle,
      blockSize: this.blockSize,
      windows: this.windows.windowCount,
      position: this.position,
    };
  }

  /**
   * Continues from a saved state (possibly saved under another rank/worldSize). Throws a
   * ValueError if it was saved for another split, seed, blockSize, shuffle setting or dataset.
   */
  restore(state: TokenLoaderState): void {
    this.position = restoredPosition(state, this.state(), ["split", "seed", "shuffle", "blockSize", "windows"], "windows", "a TokenLoader");
  }

  /** Closes the shard files. */
  close(): void {
    this.windows.close();
  }

  private permutation(epoch: number): IndexPermutation {
    if (this.perm === undefined || this.permEpoch !== epoch) {
      const [lo, hi] = splitU53(this.seed);
      this.perm = new IndexPermutation(this.windows.windowCount, [lo, hi, epoch]);
      this.permEpoch = epoch;
    }
    return this.perm;
  }
}

/** Options for evalBatches. */
export interface EvalBatchesOptions {
  dir: string;
  /** Default "val". */
  split?: Split;
  blockSize: number;
  /** Rows per batch on this rank. */
  microBatchSize: number;
  /**
   * Global batches to yield. Default: every whole global batch of windows in the split. A
   * smaller number spreads the windows evenly over the split rather than taking its start.
   */
  numBatches?: number;
  rank?: number;
  worldSize?: number;
}

/**
 * Deterministic evaluation batches: the same windows in the same order on every call, whatever
 * the seed, sharded across data-parallel ranks like TokenLoader (so the ranks' losses average to
 * the single-process one).
 * @example
 * for (const { inputs, targets } of evalBatches({ dir, blockSize: 256, microBatchSize: 8, numBatches: 20 })) { ... }
 */
/** How many full evaluation batches the split holds for this layout (0 when it is too small). */
export function evalBatchCount(opts: Omit<EvalBatchesOptions, "numBatches">): number {
  const windows = new SplitWindows(opts.dir, opts.split ?? "val", opts.blockSize);
  return Math.floor(windows.windowCount / (opts.microBatchSize * (opts.worldSize ?? 1)));
}

export function evalBatches(opts: EvalBatchesOptions): Generator<Batch> {
  const rank = opts.rank ?? 0;
  const worldSize = opts.worldSize ?? 1;
  const B = opts.microBatchSize;
  checkLayout(B, rank, worldSize);
  // Validated here, not on the first next(), so a bad option fails where it is passed.
  const windows = new SplitWindows(opts.dir, opts.split ?? "val", opts.blockSize);
  const N = windows.windowCount;
  const G = B * worldSize;
  const maxBatches = Math.floor(N / G);
  const numBatches = opts.numBatches ?? maxBatches;
  if (!Number.isSafeInteger(numBatches) || numBatches < 1 || numBatches > maxBatches) {
    throw new ValueError(
      `numBatches must be an integer in [1, ${maxBatches}] for the ${windows.split} split of ${opts.dir} ` +
        `(${N} windows of ${opts.blockSize + 1} tokens, global batch ${G}), got ${numBatches}` +
        (maxBatches === 0 ? "; use a smaller batch or blockSize, or a larger --val-fraction" : ""),
    );
  }
  return (function* (): Generator<Batch> {
    const K = numBatches * G;
    const T = opts.blockSize;
    try {
      for (let step = 0; step < numBatches; step++) {
        const inputs = new Int32Array(B * T);
        const targets = new Int32Array(B * T);
        for (let b = 0; b < B; b++) {
          const k = step * G + rank * B + b;
          windows.readWindow(Math.floor((k * N) / K), inputs, targets, b);
        }
        yield { inputs, targets, batchSize: B, blockSize: T, epoch: 0 };
      }
    } finally {
      windows.close(); // shard files are opened lazily, so an unused generator holds none
    }
  })();
}

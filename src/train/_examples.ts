/**
 * A resumable, data-parallel loader over a list of in-memory examples (fine-tuning sets are
 * small enough to tokenize up front), plus the right-padding collation the tasks share.
 *
 * Samples are numbered globally: sample k is example perm_e[k mod N] of epoch e = floor(k / N),
 * with a seeded permutation per epoch. Each micro-batch consumes B x dp consecutive samples and
 * rank r takes its B of them, so the global batch is the same under any dp layout, a sample's
 * number keys its dropout masks, and the state is one counter.
 */
import { ValueError } from "../core/errors.js";
import type { MicroBatch } from "../parallel/index.js";
import { seededPermutation as permutation } from "../data/index.js";
import type { TaskLoader } from "./task.js";

/** Position of an ExampleLoader: samples consumed by the whole data-parallel group. */
export interface ExampleLoaderState {
  samples: number;
}

/** Options of ExampleLoader. */
export interface ExampleLoaderOptions<E> {
  examples: readonly E[];
  microBatchSize: number;
  seed: number;
  rank: number;
  worldSize: number;
  /** Builds a micro-batch from examples; `rows` are their global sample numbers. */
  collate(examples: readonly E[], rows: number[]): MicroBatch;
}

/**
 * Shuffled, resumable micro-batches of in-memory examples for one data-parallel rank.
 * @example
 * const loader = new ExampleLoader({ examples, microBatchSize: 8, seed: 1, rank: 0, worldSize: 1, collate });
 * const b = loader.nextBatch();
 */
export class ExampleLoader<E> implements TaskLoader {
  private samples = 0;
  private perm: { epoch: number; order: Int32Array } | null = null;
  constructor(private readonly o: ExampleLoaderOptions<E>) {
    if (o.examples.length === 0) throw new ValueError("ExampleLoader: no training examples (the split left none; lower finetune.val_fraction or add data)");
  }

  /** Epochs completed so far (fractional). */
  get epoch(): number {
    return this.samples / this.o.examples.length;
  }

  private example(k: number): E {
    const n = this.o.examples.length;
    const epoch = Math.floor(k / n);
    if (this.perm?.epoch !== epoch) this.perm = { epoch, order: permutation(n, (this.o.seed ^ Math.imul(epoch + 1, 0x9e3779b1)) >>> 0) };
    return this.o.examples[this.perm.order[k % n]!]!;
  }

  nextBatch(): MicroBatch {
    const { microBatchSize: B, rank, worldSize } = this.o;
    const first = this.samples + rank * B;
    const rows = Array.from({ length: B }, (_, i) => first + i);
    this.samples += B * worldSize;
    return this.o.collate(rows.map((k) => this.example(k)), rows);
  }

  state(): ExampleLoaderState {
    return { samples: this.samples };
  }

  restore(s: unknown): void {
    const st = s as Partial<ExampleLoaderState> | null;
    if (!st || typeof st.samples !== "number" || !Number.isInteger(st.samples) || st.samples < 0) {
      throw new ValueError(`ExampleLoader.restore: expected {samples: integer >= 0}, got ${JSON.stringify(s)}`);
    }
    this.samples = st.samples;
    this.perm = null;
  }
}

/** A tokenized example: ids, optional per-token targets (-100 = no loss), and a class label. */
export interface TokenizedExample {
  ids: number[];
  /** Per-token targets (SFT), aligned with ids. */
  targets?: number[];
  /** Class index (classification). */
  label?: number;
}

/**
 * Right-pads examples to the longest in the batch (at most `maxLen`) with `padId`:
 * inputs (B, T); targets (B, T) per token with -100 on padding when examples carry targets,
 * else (B) labels; fields.attention_mask (B, T) 1/0 and fields.lengths (B).
 */
export function collatePadded(examples: readonly TokenizedExample[], rows: number[], padId: number, maxLen: number): MicroBatch {
  const B = examples.length;
  const T = Math.max(1, Math.min(maxLen, Math.max(...examples.map((e) => e.ids.length))));
  const inputs = new Int32Array(B * T).fill(padId);
  const mask = new Int32Array(B * T);
  const lengths = new Int32Array(B);
  const perToken = examples.some((e) => e.targets);
  const targets = perToken ? new Int32Array(B * T).fill(-100) : new Int32Array(B);
  examples.forEach((e, b) => {
    const n = Math.min(T, e.ids.length);
    lengths[b] = n;
    for (let t = 0; t < n; t++) {
      inputs[b * T + t] = e.ids[t]!;
      mask[b * T + t] = 1;
      if (perToken) targets[b * T + t] = e.targets?.[t] ?? -100;
    }
    if (!perToken) targets[b] = e.label ?? -100;
  });
  return { inputs, targets, batchSize: B, blockSize: T, rows, fields: { attention_mask: mask, lengths } };
}

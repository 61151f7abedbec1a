/**
 * Training a byte-level BPE vocabulary (the algorithm of GPT-2 and Hugging Face's BpeTrainer):
 *
 * 1. Count words: stream the text, split it with GPT-2's pre-tokenizer and count each distinct
 *    pre-token. Merges never cross pre-token boundaries, so the corpus reduces to (word, count).
 * 2. Learn merges: start from the 256 byte tokens; repeatedly merge the most frequent adjacent
 *    pair (summed over word counts) into a new token, until the vocabulary has `vocabSize` ids.
 *
 * Step 2 is incremental, never a rescan of the corpus: `pairCounts` holds every pair's count,
 * `where` lists the words a pair occurs in, and a max-heap with lazy deletion picks the next
 * pair. Merging a pair touches only the words that contain it and adjusts the counts of the
 * pairs around each occurrence.
 */
import { statSync } from "node:fs";
import { Progress } from "../core/progress.js";
import { ValueError } from "../core/errors.js";
import { BYTE_ORDER, BYTE_TO_CHAR, utf8EncodeInto } from "./_byte_level.js";
import { countFile, countText } from "./_word_counts.js";
import { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";

/** Options of `trainBpe()`. */
export interface TrainBpeOptions {
  /** UTF-8 text files, streamed in chunks (invalid UTF-8 is read as U+FFFD). */
  files?: readonly string[];
  /** In-memory texts, each complete on its own (counted after the files). */
  texts?: Iterable<string>;
  /** Total ids: 256 byte tokens + learned merges + `<|endoftext|>`. At least 257. */
  vocabSize: number;
  /** Pairs seen fewer times than this are never merged. Default 2. */
  minFrequency?: number;
  /** Name of the resulting tokenizer. Default `bpe-<vocabSize>`. */
  name?: string;
  /** Print progress lines to stderr. Default true. */
  progress?: boolean;
  /** Bytes read per file chunk. Default 1 MiB. */
  chunkBytes?: number;
}

/**
 * Trains a byte-level BPE tokenizer. Deterministic: the same inputs give the same vocabulary
 * (ties between equally frequent pairs go to the pair with the smaller ids).
 * Throws ValueError when the text supports fewer merges than `vocabSize` asks for.
 *
 * `<|endoftext|>` in the text is a boundary, not text: it is never part of a counted word.
 * @example
 * const tok = await trainBpe({ files: ["data/tiny.txt"], vocabSize: 4096 });
 * tok.save("runs/tok.json");
 */
export async function trainBpe(options: TrainBpeOptions): Promise<ByteLevelBpe> {
  const { vocabSize } = options;
  const minFrequency = options.minFrequency ?? 2;
  const chunkBytes = options.chunkBytes ?? 1 << 20;
  const showProgress = options.progress ?? true;
  if (!Number.isInteger(vocabSize) || vocabSize < 257) {
    throw new ValueError(`trainBpe: vocabSize must be an integer >= 257 (256 bytes + <|endoftext|>), got ${vocabSize}`);
  }
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new ValueError(`trainBpe: minFrequency must be an integer >= 1, got ${minFrequency}`);
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1) throw new ValueError(`trainBpe: chunkBytes must be an integer >= 1, got ${chunkBytes}`);
  const files = options.files ?? [];
  if (files.length === 0 && options.texts === undefined) throw new ValueError("trainBpe: give files or texts to train on");

  const counts = new Map<string, number>();
  const fileBytes = files.reduce((sum, f) => sum + fileSize(f), 0);
  // The total is known only for files; in-memory texts are counted as they come.
  const total = options.texts === undefined ? fileBytes : undefined;
  const progress = showProgress ? new Progress("tokenizer: counting words", { total, unit: "MB", unitScale: 1e6 }) : undefined;
  for (const file of files) await countFile(file, counts, chunkBytes, progress);
  for (const text of options.texts ?? []) {
    countText(text, counts);
    progress?.tick(Buffer.byteLength(text, "utf8"));
  }
  progress?.done();

  const model = learnMerges(counts, vocabSize, minFrequency, showProgress);
  return new ByteLevelBpe(model, { name: options.name ?? `bpe-${vocabSize}` });
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch (err) {
    throw new ValueError(`trainBpe: cannot read input file ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

/** Max-heap of (count, pair key): larger count first, then smaller key (smaller ids). */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  private above(a: number, b: number): boolean {
    const ca = this.counts[a]!;
    const cb = this.counts[b]!;
    return ca > cb || (ca === cb && this.keys[a]! < this.keys[b]!);
  }

  private swap(a: number, b: number): void {
    const c = this.counts[a]!;
    const k = this.keys[a]!;
    this.counts[a] = this.counts[b]!;
    this.keys[a] = this.keys[b]!;
    this.counts[b] = c;
    this.keys[b] = k;
  }

  push(count: number, key: number): void {
    let i = this.keys.length;
    this.counts.push(count);
    this.keys.push(key);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Removes the top entry and returns [count, key]. */
  pop(): [number, number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastCount = this.counts.pop()!;
    const lastKey = this.keys.pop()!;
    const n = this.keys.length;
    if (n > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const m = l + 1 < n && this.above(l + 1, l) ? l + 1 : l;
        if (!this.above(m, i)) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

function learnMerges(wordCounts: Map<string, number>, vocabSize: number, minFrequency: number, showProgress: boolean) {
  // Token strings by id: the 256 bytes in GPT-2's order, so byte ids match GPT-2's.
  const tokens: string[] = BYTE_ORDER.map((b) => BYTE_TO_CHAR[b]!);
  const tokenIds = new Map<string, number>(tokens.map((t, id) => [t, id]));
  const byteId = new Int32Array(256);
  BYTE_ORDER.forEach((b, id) => (byteId[b] = id));

  // Words as arrays of token ids. Single-byte words have no pairs and are left out.
  const words: number[][] = [];
  const counts: number[] = [];
  let bytes = new Uint8Array(64);
  for (const [word, count] of wordCounts) {
    if (bytes.length < 3 * word.length) bytes = new Uint8Array(3 * word.length);
    const n = utf8EncodeInto(word, 0, word.length, bytes);
    if (n < 2) continue;
    const symbols = new Array<number>(n);
    for (let i = 0; i < n; i++) symbols[i] = byteId[bytes[i]!]!;
    words.push(symbols);
    counts.push(count);
  }

  // Pair key = left * stride + right; ids stay below vocabSize.
  const stride = vocabSize;
  const pairCounts = new Map<number, number>();
  const where = new Map<number, number[]>();
  words.forEach((w, wi) => {
    for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i]! * stride + w[i + 1]!;
      pairCounts.set(k, (pairCounts.get(k) ?? 0) + counts[wi]!);
      const list = where.get(k);
      if (list === undefined) where.set(k, [wi]);
      else if (list[list.length - 1] !== wi) list.push(wi);
    }
  });
  const heap = new PairHeap();
  for (const [k, c] of pairCounts) heap.push(c, k);

  const target = vocabSize - 1; // the last id is <|endoftext|>
  const merges: Array<readonly [string, string]> = [];
  const progress = showProgress ? new Progress("tokenizer: learning merges", { total: target - 256, unit: "tok" }) : undefined;
  const visited = new Int32Array(words.length).fill(-1);
  let touched: number[] = [];
  const change = (left: number, right: number, delta: number, wi: number, merged: number) => {
    const k = left * stride + right;
    if (k === merged) return; // the merged pair's count is dropped as a whole
    const c = (pairCounts.get(k) ?? 0) + delta;
    if (c === 0) pairCounts.delete(k);
    else pairCounts.set(k, c);
    if (delta > 0) {
      const list = where.get(k);
      if (list === undefined) where.set(k, [wi]);
      else if (list[list.length - 1] !== wi) list.push(wi);
      touched.push(k);
    }
  };

  while (tokens.length < target) {
    if (heap.size === 0) throw exhausted(merges.length, tokens.length, vocabSize, minFrequency);
    const [count, key] = heap.pop();
    const current = pairCounts.get(key) ?? 0;
    if (current !== count) {
      if (current > 0 && current < count) heap.push(current, key); // stale: count fell since pushed
      continue;
    }
    if (count < minFrequency) throw exhausted(merges.length, tokens.length, vocabSize, minFrequency);
    const a = Math.floor(key / stride);
    const b = key - a * stride;
    const text = tokens[a]! + tokens[b]!;
    // A string can arise from two different merges ("ab"+"c", "a"+"bc"): one id, two merges.
    let id = tokenIds.get(text);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(text);
      tokenIds.set(text, id);
      progress?.tick();
    }
    merges.push([tokens[a]!, tokens[b]!]);
    pairCounts.delete(key);
    const list = where.get(key)!;
    where.delete(key);
    touched = [];
    const step = merges.length;
    for (const wi of list) {
      if (visited[wi] === step) continue;
      visited[wi] = step;
      mergeWord(words[wi]!, a, b, id, counts[wi]!, wi, key, change);
    }
    for (const k of touched) {
      const c = pairCounts.get(k);
      if (c !== undefined && c > 0) heap.push(c, k);
    }
  }
  progress?.done();

  const vocab = new Map(tokens.map((t, id) => [t, id] as [string, number]));
  vocab.set(END_OF_TEXT, target);
  return { vocab, merges, special: new Map([[END_OF_TEXT, target]]) };
}

/**
 * Replaces each (a, b) in `w` by `id`, left to right, reporting the pair count changes around
 * each occurrence (weighted by the word's count) — Hugging Face's Word::merge, in place.
 */
function mergeWord(
  w: number[],
  a: number,
  b: number,
  id: number,
  count: number,
  wi: number,
  merged: number,
  change: (l: number, r: number, delta: number, wi: number, merged: number) => void,
): void {
  let out = 0;
  for (let i = 0; i < w.length; ) {
    if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
      if (out > 0) {
        const prev = w[out - 1]!;
        change(prev, a, -count, wi, merged);
        change(prev, id, count, wi, merged);
      }
      if (i + 2 < w.length) {
        const next = w[i + 2]!;
        change(b, next, -count, wi, merged);
        change(id, next, count, wi, merged);
      }
      w[out++] = id;
      i += 2;
    } else {
      w[out++] = w[i++]!;
    }
  }
  w.length = out;
}

function exhausted(merges: number, tokens: number, vocabSize: number, minFrequency: number): ValueError {
  return new ValueError(
    `trainBpe: the text supports only ${merges} merges with minFrequency ${minFrequency} (a vocabulary of ${tokens + 1} ids), but vocabSize ${vocabSize} was asked for; train on more text or ask for a smaller vocabSize`,
  );
}

/**
 * The merge-learning loop shared by the BPE trainer (byte-level, GPT-2) and the WordPiece trainer
 * (Hugging Face's WordPieceTrainer is a BPE trainer over characters with "##" continuations).
 * Both start from words as arrays of symbol ids with a count each; they differ only in the
 * initial symbols and in how two token strings join ("a" + "##b" is "ab" for WordPiece).
 *
 * The loop is incremental, never a rescan of the corpus: `pairCounts` holds every pair's count,
 * `where` lists the words a pair occurs in, and a max-heap with lazy deletion picks the next
 * pair. Merging a pair touches only the words that contain it and adjusts the counts of the
 * pairs around each occurrence. Ties between equally frequent pairs go to the pair with the
 * smaller (left, right) ids, as in Hugging Face's BpeTrainer, so training is deterministic.
 */
import type { Progress } from "../core/progress.js";

/** Input of `learnMerges()`. `tokens` and the words are updated in place. */
export interface LearnMergesInput {
  /** Token strings by id: the initial symbols. Merge results are appended. */
  tokens: string[];
  /** Each word as symbol ids (ids into `tokens`). Merged in place. */
  words: number[][];
  /** How many times each word occurs (same length as `words`). */
  counts: number[];
  /** Stop once `tokens.length` reaches this. Every id stays below it. */
  target: number;
  /** Pairs seen fewer times than this are never merged. */
  minFrequency: number;
  /** The token string made by merging `left` and `right`. */
  join: (left: string, right: string) => string;
  /** Ticked once per new token. */
  progress?: Progress;
}

/** Result of `learnMerges()`. */
export interface LearnMergesResult {
  /** Merges in the order learned: [left, right] token strings. */
  merges: Array<readonly [string, string]>;
  /** True when the loop stopped before `target` because no pair reached `minFrequency`. */
  exhausted: boolean;
}

/**
 * Learns merges until `tokens` has `target` entries or no pair is frequent enough.
 * @example
 * const { merges } = learnMerges({ tokens, words, counts, target: 1000, minFrequency: 2, join: (a, b) => a + b });
 */
export function learnMerges(input: LearnMergesInput): LearnMergesResult {
  const { tokens, words, counts, target, minFrequency, join, progress } = input;
  const tokenIds = new Map<string, number>(tokens.map((t, id) => [t, id]));
  // Pair key = left * stride + right; every id stays below target, so keys are unique and order
  // like (left, right).
  const stride = Math.max(target, tokens.length);
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

  const merges: Array<readonly [string, string]> = [];
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
    if (heap.size === 0) return { merges, exhausted: true };
    const [count, key] = heap.pop();
    const current = pairCounts.get(key) ?? 0;
    if (current !== count) {
      if (current > 0 && current < count) heap.push(current, key); // stale: count fell since pushed
      continue;
    }
    if (count < minFrequency) return { merges, exhausted: true };
    const a = Math.floor(key / stride);
    const b = key - a * stride;
    const text = join(tokens[a]!, tokens[b]!);
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
  return { merges, exhausted: false };
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

/**
 * Applying BPE merges to one pre-token: the hot loop of encode() on a cache miss.
 *
 * Semantics (Hugging Face tokenizers' BPE, and GPT-2's): repeatedly merge the adjacent pair with
 * the lowest merge rank, leftmost first on ties, until no adjacent pair is a merge.
 *
 * Two paths compute that same result:
 * - short pieces (almost all words): an array of symbols plus an array of the rank of each
 *   adjacent pair; each step scans for the minimum and updates only the two neighbours.
 * - long pieces (a 10 kB run of digits or base64): a doubly linked list of symbols and a binary
 *   min-heap of (rank, position), so a piece of n bytes costs O(n log n), not O(n^2).
 */

/**
 * Open-addressing hash map from a token pair (left id, right id) to its merge rank. Plain `Map`
 * would need a composite key; a pair key left * V + right overflows V8's small-integer range for
 * GPT-2-sized vocabularies and becomes a boxed double, which is several times slower to hash.
 */
export class PairRanks {
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly rank: Int32Array;
  private readonly mask: number;

  constructor(merges: ReadonlyArray<readonly [number, number]>) {
    let cap = 16;
    while (cap < merges.length * 2) cap *= 2;
    this.left = new Int32Array(cap).fill(-1);
    this.right = new Int32Array(cap);
    this.rank = new Int32Array(cap);
    this.mask = cap - 1;
    // First occurrence wins if a (corrupt) merges list repeats a pair; callers reject duplicates.
    merges.forEach(([a, b], r) => {
      let h = hashPair(a, b) & this.mask;
      while (this.left[h] !== -1) {
        if (this.left[h] === a && this.right[h] === b) return;
        h = (h + 1) & this.mask;
      }
      this.left[h] = a;
      this.right[h] = b;
      this.rank[h] = r;
    });
  }

  /** Merge rank of (a, b), or -1 when the pair is not a merge. */
  get(a: number, b: number): number {
    let h = hashPair(a, b) & this.mask;
    for (;;) {
      const l = this.left[h]!;
      if (l === -1) return -1;
      if (l === a && this.right[h] === b) return this.rank[h]!;
      h = (h + 1) & this.mask;
    }
  }
}

function hashPair(a: number, b: number): number {
  const h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77);
  return (h ^ (h >>> 15)) >>> 0;
}

/** Pieces up to this many bytes use the array path; longer ones the heap path. */
const SHORT_PIECE = 64;

/**
 * Merges `symbols[0, n)` (token ids of single bytes) in place and returns the resulting ids.
 * `results[r]` is the id produced by merge rank r.
 */
export function applyMerges(symbols: Int32Array, n: number, ranks: PairRanks, results: Int32Array): number[] {
  return n <= SHORT_PIECE ? mergeShort(symbols, n, ranks, results) : mergeLong(symbols, n, ranks, results);
}

const NONE = 0x7fffffff;
const pairRank = new Int32Array(SHORT_PIECE);

function mergeShort(sym: Int32Array, n: number, ranks: PairRanks, results: Int32Array): number[] {
  // pairRank[i] = rank of (sym[i], sym[i + 1]), NONE when not a merge.
  for (let i = 0; i + 1 < n; i++) {
    const r = ranks.get(sym[i]!, sym[i + 1]!);
    pairRank[i] = r < 0 ? NONE : r;
  }
  while (n > 1) {
    let best = NONE;
    let at = -1;
    for (let i = 0; i + 1 < n; i++) {
      if (pairRank[i]! < best) {
        best = pairRank[i]!;
        at = i;
      }
    }
    if (at < 0) break;
    sym[at] = results[best]!;
    // Drop symbol at+1 and the pair rank that started at it.
    sym.copyWithin(at + 1, at + 2, n);
    pairRank.copyWithin(at + 1, at + 2, n - 1);
    n--;
    if (at > 0) {
      const r = ranks.get(sym[at - 1]!, sym[at]!);
      pairRank[at - 1] = r < 0 ? NONE : r;
    }
    if (at + 1 < n) {
      const r = ranks.get(sym[at]!, sym[at + 1]!);
      pairRank[at] = r < 0 ? NONE : r;
    }
  }
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = sym[i]!;
  return out;
}

function mergeLong(sym: Int32Array, n: number, ranks: PairRanks, results: Int32Array): number[] {
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  // Min-heap of candidate merges ordered by (rank, position). Entries go stale when a neighbour
  // merges; they are checked against the current pair when popped instead of being removed.
  const heap = new MinHeap(n);
  for (let i = 0; i + 1 < n; i++) {
    const r = ranks.get(sym[i]!, sym[i + 1]!);
    if (r >= 0) heap.push(r, i);
  }
  while (heap.size > 0) {
    const r = heap.topRank();
    const i = heap.pop();
    const j = next[i]!;
    if (sym[i]! < 0 || j < 0 || ranks.get(sym[i]!, sym[j]!) !== r) continue; // stale
    sym[i] = results[r]!;
    sym[j] = -1;
    const k = next[j]!;
    next[i] = k;
    if (k >= 0) {
      prev[k] = i;
      const rk = ranks.get(sym[i]!, sym[k]!);
      if (rk >= 0) heap.push(rk, i);
    }
    const p = prev[i]!;
    if (p >= 0) {
      const rp = ranks.get(sym[p]!, sym[i]!);
      if (rp >= 0) heap.push(rp, p);
    }
  }
  const out: number[] = [];
  for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!);
  return out;
}

/** Binary min-heap of (rank, position) pairs, ordered by rank then position. */
class MinHeap {
  private ranks: Int32Array;
  private pos: Int32Array;
  size = 0;

  constructor(capacity: number) {
    this.ranks = new Int32Array(Math.max(16, capacity));
    this.pos = new Int32Array(Math.max(16, capacity));
  }

  private less(a: number, b: number): boolean {
    const ra = this.ranks[a]!;
    const rb = this.ranks[b]!;
    return ra < rb || (ra === rb && this.pos[a]! < this.pos[b]!);
  }

  private swap(a: number, b: number): void {
    const r = this.ranks[a]!;
    const p = this.pos[a]!;
    this.ranks[a] = this.ranks[b]!;
    this.pos[a] = this.pos[b]!;
    this.ranks[b] = r;
    this.pos[b] = p;
  }

  push(rank: number, position: number): void {
    if (this.size === this.ranks.length) {
      const ranks = new Int32Array(this.size * 2);
      const pos = new Int32Array(this.size * 2);
      ranks.set(this.ranks);
      pos.set(this.pos);
      this.ranks = ranks;
      this.pos = pos;
    }
    let i = this.size++;
    this.ranks[i] = rank;
    this.pos[i] = position;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  topRank(): number {
    return this.ranks[0]!;
  }

  /** Removes the minimum and returns its position. */
  pop(): number {
    const top = this.pos[0]!;
    const last = --this.size;
    if (last > 0) {
      this.ranks[0] = this.ranks[last]!;
      this.pos[0] = this.pos[last]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= last) break;
        const m = l + 1 < last && this.less(l + 1, l) ? l + 1 : l;
        if (!this.less(m, i)) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

/**
 * The plain reference for both paths: rescan the whole piece for the lowest-ranked pair after
 * every merge. Quadratic; used only by tests.
 */
export function applyMergesReference(symbols: readonly number[], ranks: PairRanks, results: Int32Array): number[] {
  const sym = symbols.slice();
  for (;;) {
    let best = NONE;
    let at = -1;
    for (let i = 0; i + 1 < sym.length; i++) {
      const r = ranks.get(sym[i]!, sym[i + 1]!);
      if (r >= 0 && r < best) {
        best = r;
        at = i;
      }
    }
    if (at < 0) return sym;
    sym.splice(at, 2, results[best]!);
  }
}

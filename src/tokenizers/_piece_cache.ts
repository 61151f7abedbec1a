/**
 * The encode cache: pre-token string -> token ids, looked up by a slice of the input text
 * *without* creating the slice. Most pre-tokens of real text are cache hits, and a `Map<string,
 * ...>` lookup would first allocate the substring and hash it through V8's generic path: that
 * costs more than the rest of encode() together. Here the hash is computed over the text range
 * and the candidate key is compared in place, so a hit allocates nothing.
 *
 * Bounded: when `maxEntries` keys are stored the table is emptied at the next insert. That is
 * cruder than LRU, but costs nothing per hit, and frequent words come back within a few
 * kilobytes of text.
 */
export class PieceCache {
  private keys: Array<string | undefined>;
  /** The id when the piece is a single token, else -1 and the ids are in `multi`. */
  private single: Int32Array;
  private multi: Array<number[] | undefined>;
  private readonly mask: number;
  private readonly maxEntries: number;
  private size = 0;

  constructor(maxEntries: number) {
    this.maxEntries = Math.max(1, maxEntries);
    let cap = 16;
    while (cap < this.maxEntries * 2) cap *= 2; // load factor <= 1/2 keeps probe runs short
    this.mask = cap - 1;
    this.keys = new Array<string | undefined>(cap).fill(undefined);
    this.single = new Int32Array(cap);
    this.multi = new Array<number[] | undefined>(cap).fill(undefined);
  }

  /** Slot of text[i, j) (>= 0), or -1 when absent. */
  find(text: string, i: number, j: number): number {
    const len = j - i;
    let h = rangeHash(text, i, j) & this.mask;
    for (;;) {
      const key = this.keys[h];
      if (key === undefined) return -1;
      if (key.length === len && sameChars(key, text, i, len)) return h;
      h = (h + 1) & this.mask;
    }
  }

  /** Pushes the ids stored in `slot` onto `out`. */
  emit(slot: number, out: number[]): void {
    const id = this.single[slot]!;
    if (id >= 0) {
      out.push(id);
      return;
    }
    const ids = this.multi[slot]!;
    for (let k = 0; k < ids.length; k++) out.push(ids[k]!);
  }

  /** Stores the ids of `piece` (which must be absent). */
  insert(piece: string, ids: number[]): void {
    if (this.size >= this.maxEntries) {
      this.keys.fill(undefined);
      this.multi.fill(undefined);
      this.size = 0;
    }
    let h = rangeHash(piece, 0, piece.length) & this.mask;
    while (this.keys[h] !== undefined) h = (h + 1) & this.mask;
    this.keys[h] = piece;
    if (ids.length === 1) {
      this.single[h] = ids[0]!;
    } else {
      this.single[h] = -1;
      this.multi[h] = ids;
    }
    this.size++;
  }
}

/** FNV-1a over UTF-16 units, with a final avalanche so the low bits (the slot) mix well. */
function rangeHash(text: string, i: number, j: number): number {
  let h = 0x811c9dc5;
  for (let k = i; k < j; k++) h = Math.imul(h ^ text.charCodeAt(k), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  return (h ^ (h >>> 13)) >>> 0;
}

function sameChars(key: string, text: string, i: number, len: number): boolean {
  for (let q = 0; q < len; q++) if (key.charCodeAt(q) !== text.charCodeAt(i + q)) return false;
  return true;
}

/**
 * Counter-based shuffling: a keyed pseudo-random permutation of [0, n) that maps any index in
 * O(1) time and memory, with no state to carry between calls. The order of window starts in an
 * epoch is `perm.at(0), perm.at(1), ...`, a pure function of (seed, epoch, position), so a
 * loader can jump to any position (resume, another data-parallel rank) without replaying.
 *
 * Construction: a 6-round balanced Feistel network over 2k bits (4^k >= n) with a murmur3
 * finalizer as round function, keyed by (seed, epoch, round); "cycle walking" re-applies it
 * until the value falls below n, which keeps it a bijection on [0, n) (expected < 4 steps).
 */

/** murmur3's 32-bit finalizer: a fast bijective mixer with full avalanche. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hashes a list of 32-bit words into one (order matters). */
export function hashWords(words: readonly number[]): number {
  let h = 0x9e3779b9;
  for (const w of words) h = fmix32((h ^ fmix32(w >>> 0)) + 0x7f4a7c15);
  return h;
}

/** Splits a non-negative safe integer into [low 32 bits, high 21 bits]. */
export function splitU53(x: number): [number, number] {
  return [x % 2 ** 32 >>> 0, Math.floor(x / 2 ** 32) >>> 0];
}

const ROUNDS = 6;

/** A keyed permutation of [0, n). */
export class IndexPermutation {
  readonly n: number;
  private readonly halfBits: number;
  private readonly half: number; // 2^halfBits
  private readonly mask: number;
  private readonly keys: number[];

  /** `key`: any list of 32-bit words, e.g. [seedLo, seedHi, epoch]. */
  constructor(n: number, key: readonly number[]) {
    if (!Number.isSafeInteger(n) || n < 1 || n > 2 ** 52) throw new RangeError(`IndexPermutation: n must be an integer in [1, 2^52], got ${n}`);
    this.n = n;
    let bits = 1;
    while (4 ** bits < n) bits++;
    this.halfBits = bits;
    this.half = 2 ** bits;
    this.mask = this.half - 1;
    this.keys = Array.from({ length: ROUNDS }, (_, r) => hashWords([...key, r]));
  }

  /** The image of `i` (0 <= i < n). */
  at(i: number): number {
    if (!(i >= 0 && i < this.n && Number.isInteger(i))) throw new RangeError(`IndexPermutation.at: index ${i} is outside [0, ${this.n})`);
    let x = i;
    do x = this.encrypt(x);
    while (x >= this.n);
    return x;
  }

  private encrypt(x: number): number {
    let left = Math.floor(x / this.half);
    let right = x % this.half;
    for (let r = 0; r < ROUNDS; r++) {
      const f = fmix32(right ^ this.keys[r]) & this.mask;
      const next = (left ^ f) >>> 0;
      left = right;
      right = next;
    }
    return left * this.half + right;
  }
}

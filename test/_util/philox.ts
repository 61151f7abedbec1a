/**
 * Philox4x32-10 in plain JavaScript (BigInt products), mirroring native/src/random.cc, so tests
 * can check Megalith's random streams value by value rather than only statistically.
 *   uniform / dropout: position i uses word (i % 4) of block (i / 4)
 *   normal:            position i uses block (i / 2); Box-Muller, cos for even i, sin for odd i
 */

const M0 = 0xd2511f53n, M1 = 0xcd9e8d57n, MASK = 0xffffffffn;

/** The four 32-bit words of Philox4x32-10 at counter `ctr` (a 64-bit block index) for `seed`. */
export function philox(ctr: number, seed: number): [number, number, number, number] {
  const c = BigInt(ctr), s = BigInt(seed);
  let c0 = c & MASK, c1 = (c >> 32n) & MASK, c2 = 0n, c3 = 0n;
  let k0 = s & MASK, k1 = (s >> 32n) & MASK;
  for (let r = 0; r < 10; r++) {
    const p0 = M0 * c0, p1 = M1 * c2;
    const n0 = (p1 >> 32n) ^ c1 ^ k0;
    const n1 = p1 & MASK;
    const n2 = (p0 >> 32n) ^ c3 ^ k1;
    const n3 = p0 & MASK;
    [c0, c1, c2, c3] = [n0, n1, n2, n3];
    k0 = (k0 + 0x9e3779b9n) & MASK;
    k1 = (k1 + 0xbb67ae85n) & MASK;
  }
  return [Number(c0), Number(c1), Number(c2), Number(c3)];
}

/** 24 random bits -> [0, 1), exactly representable in float32. */
export const toUnit = (w: number): number => (w >>> 8) / 16777216;

/** The uniform value at stream position `pos`. */
export function uniformAt(seed: number, pos: number): number {
  return toUnit(philox(Math.floor(pos / 4), seed)[pos % 4]!);
}

/** The standard-normal value at stream position `pos` (float64; Megalith rounds it to float32). */
export function normalAt(seed: number, pos: number): number {
  const r = philox(Math.floor(pos / 2), seed);
  const u1 = ((r[0] >>> 8) + 1) / 16777216;
  const u2 = (r[1] >>> 8) / 16777216;
  const rad = Math.sqrt(-2 * Math.log(u1));
  const th = 2 * Math.PI * u2;
  return pos % 2 === 1 ? rad * Math.sin(th) : rad * Math.cos(th);
}

/** Whether dropout with probability p keeps stream position `pos`. */
export function dropoutKeeps(seed: number, pos: number, p: number): boolean {
  return uniformAt(seed, pos) >= Math.fround(p);
}

import { test } from "node:test";
import assert from "node:assert/strict";
import { applyMerges, applyMergesReference, PairRanks } from "../../src/tokenizers/_merge.js";
import { rng } from "./_helpers.js";

/** A random merge table over an alphabet of 4 symbols, like a small trained BPE. */
function randomTable(seed: number, merges: number) {
  const next = rng(seed);
  const pairs: Array<[number, number]> = [];
  const seen = new Set<string>();
  let vocab = 4;
  while (pairs.length < merges) {
    const a = Math.floor(next() * vocab);
    const b = Math.floor(next() * vocab);
    if (seen.has(`${a},${b}`)) continue;
    seen.add(`${a},${b}`);
    pairs.push([a, b]);
    vocab++;
  }
  const results = Int32Array.from(pairs, (_, r) => 4 + r);
  return { ranks: new PairRanks(pairs), results, next };
}

test("`applyMerges()` equals the quadratic reference on short and long pieces", () => {
  for (let seed = 1; seed <= 5; seed++) {
    const { ranks, results, next } = randomTable(seed, 60);
    for (const length of [0, 1, 2, 3, 7, 40, 64, 65, 100, 1000]) {
      const symbols = Array.from({ length }, () => Math.floor(next() * 4));
      const expected = applyMergesReference(symbols, ranks, results);
      assert.deepEqual(applyMerges(Int32Array.from(symbols), length, ranks, results), expected, `seed ${seed} length ${length}`);
    }
  }
});

test("`applyMerges()` merges the leftmost of equal pairs first", () => {
  const ranks = new PairRanks([[0, 0]]);
  const results = Int32Array.of(1);
  assert.deepEqual(applyMerges(Int32Array.of(0, 0, 0), 3, ranks, results), [1, 0]);
  const long = new Int32Array(201); // 201 zeros: 100 merged pairs, then a lone 0
  assert.deepEqual(applyMerges(long, 201, ranks, results), [...Array<number>(100).fill(1), 0]);
});

test("`PairRanks.get()` returns -1 for pairs that are not merges", () => {
  const ranks = new PairRanks([[1, 2], [2, 1], [70000, 3]]);
  assert.equal(ranks.get(1, 2), 0);
  assert.equal(ranks.get(2, 1), 1);
  assert.equal(ranks.get(70000, 3), 2);
  assert.equal(ranks.get(1, 1), -1);
  assert.equal(ranks.get(3, 70000), -1);
});

// The KV block manager without tensors: allocation, refcounts, prefix caching, LRU eviction,
// copy-on-write, lookahead slots, and a seeded fuzz that also checks the data a fake K/V pool
// would hold (a prefix hit must point at blocks holding exactly those tokens).
import { test } from "node:test";
import assert from "node:assert/strict";
import { BlockManager, blocksForBudget, kvBlockBytes } from "../../src/inference/kv_cache/index.js";

const range = (n: number, start = 0) => Array.from({ length: n }, (_, i) => start + i);

/** mulberry32: a small seeded PRNG; rnd(n) is an integer in [0, n). */
function rng(seed: number) {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n);
  };
}

test("`blocksForBudget()` divides the budget by 2 x layers x kv heads x head dim x block size x dtype bytes", () => {
  assert.equal(kvBlockBytes({ nLayer: 12, nKvHeads: 12, headDim: 64 }), 2 * 12 * 12 * 64 * 16 * 4);
  assert.equal(kvBlockBytes({ nLayer: 2, nKvHeads: 1, headDim: 8, blockSize: 4, dtypeBytes: 2 }), 2 * 2 * 8 * 4 * 2);
  assert.equal(blocksForBudget(256 * 2 ** 20, { nLayer: 12, nKvHeads: 12, headDim: 64 }), 227);
  assert.equal(blocksForBudget(1000, { nLayer: 12, nKvHeads: 12, headDim: 64 }), 0);
  assert.throws(() => kvBlockBytes({ nLayer: 0, nKvHeads: 1, headDim: 8 }), /nLayer must be a positive integer, got 0/);
});

test("`allocate()` gives a sequence the blocks its tokens need and `free()` returns them", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const a = bm.allocate("a", range(10))!;
  assert.equal(a.blockTable.length, 3);
  assert.equal(a.numCachedTokens, 0);
  assert.equal(a.numSlots, 10);
  assert.deepEqual(bm.usage(), { used: 3, free: 5, cached: 0, total: 8, fraction: 3 / 8 });
  // A chunked prefill: slots for the first 5 of 12 tokens only.
  const b = bm.allocate("b", range(12, 100), 5)!;
  assert.deepEqual([b.blockTable.length, b.numSlots], [2, 5]);
  bm.checkInvariants();
  assert.equal(bm.free("a"), true);
  assert.equal(bm.free("a"), false, "freeing twice is a no-op");
  // a's two full blocks stay cached; its partial block is free.
  assert.deepEqual(bm.usage(), { used: 2, free: 4, cached: 2, total: 8, fraction: 2 / 8 });
  assert.throws(() => bm.allocate("b", [1]), /sequence 'b' already has a block table/);
  assert.throws(() => bm.appendSlots("zz", [1]), /unknown sequence 'zz'/);
  bm.checkInvariants();
});

test("`allocate()` reuses cached full prefix blocks, never a partial block, and always computes the last token", () => {
  const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
  const a = bm.allocate("a", range(10))!;  // blocks: [0..3] [4..7] full, [8, 9] partial
  bm.free("a");
  // Same first 8 tokens, then a different tail: both full blocks are hits.
  const b = bm.allocate("b", [...range(8), 99, 98, 97])!;
  assert.equal(b.numCachedTokens, 8);
  assert.deepEqual(b.blockTable.slice(0, 2), a.blockTable.slice(0, 2));
  // The same 10 tokens again: the partial third block was never cached.
  const c = bm.allocate("c", range(10))!;
  assert.equal(c.numCachedTokens, 8);
  assert.notEqual(c.blockTable[2], a.blockTable[2]);
  // Exactly the two cached blocks: the last block is recomputed so the last token has logits.
  const d = bm.allocate("d", range(8))!;
  assert.equal(d.numCachedTokens, 4);
  // A different first block: no hit even though later tokens agree.
  assert.equal(bm.allocate("e", [42, ...range(9, 1)])!.numCachedTokens, 0);
  bm.checkInvariants();
  // Blocks held by three sequences at once are shared, not copied.
  assert.equal(bm.usage().used, 2 + 1 + 1 + 1 + 3);  // a's two full blocks shared by b, c (and d: one), plus new tails
  assert.deepEqual(bm.prefixCacheStats(), { queryTokens: 10 + 11 + 10 + 8 + 10, hitTokens: 8 + 8 + 4, hitRate: 20 / 49, evictedBlocks: 0 });
  // Without prefix caching nothing is shared.
  const off = new BlockManager({ numBlocks: 8, blockSize: 4, enablePrefixCaching: false });
  off.allocate("a", range(10));
  off.free("a");
  assert.equal(off.allocate("b", range(10))!.numCachedTokens, 0);
  assert.deepEqual(off.usage(), { used: 3, free: 5, cached: 0, total: 8, fraction: 3 / 8 });
});

test("`allocate()` uses free blocks first, then evicts the least recently released cached block, tail before head", () => {
  const bm = new BlockManager({ numBlocks: 4, blockSize: 2 });
  // probe: how many tokens of `prefix` are cached (maxNewTokens 0 takes no new block).
  const probe = (prefix: number[]) => {
    const n = bm.allocate("probe", [...prefix, 0], 0)!.numCachedTokens;
    bm.free("probe");  // a hit makes those blocks the most recently released
    return n;
  };
  for (const [i, p] of [[1, 1], [2, 2], [3, 3]].entries()) {
    bm.allocate(`p${i}`, p);  // one full block each, registered
    bm.free(`p${i}`);
  }
  assert.deepEqual(bm.usage(), { used: 0, free: 1, cached: 3, total: 4, fraction: 0 });
  bm.allocate("n0", [7, 7]);  // takes the free block: nothing evicted
  assert.equal(bm.prefixCacheStats().evictedBlocks, 0);
  assert.equal(probe([1, 1]), 2);  // LRU order now [2, 2], [3, 3], [1, 1]
  bm.allocate("n1", [8, 8]);  // evicts [2, 2]
  assert.deepEqual([probe([2, 2]), probe([3, 3]), probe([1, 1])], [0, 2, 2]);
  assert.equal(bm.prefixCacheStats().evictedBlocks, 1);
  bm.checkInvariants();
  // A freed table is released last block first, so a prefix loses its tail before its head.
  const two = new BlockManager({ numBlocks: 2, blockSize: 2 });
  two.allocate("a", [1, 2, 3, 4]);
  two.free("a");
  two.allocate("b", [9, 9]);
  two.free("b");
  assert.equal(two.allocate("c", [1, 2, 3, 4, 5], 0)!.numCachedTokens, 2);
  two.checkInvariants();
});

test("`fork()` shares every block and `appendSlots()` copies a shared partial last block before writing", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const parent = bm.allocate("p", range(6))!.blockTable;  // one full block + 2 tokens
  bm.fork("p", "c1");
  bm.fork("p", "c2");
  assert.deepEqual(bm.blockTable("c1"), parent);
  assert.equal(bm.usage().used, 2, "forks take no block");
  bm.checkInvariants();
  // The parent appends into the partial block shared three ways: it gets a copy.
  const r1 = bm.appendSlots("p", [100])!;
  const pTable = bm.blockTable("p");
  assert.deepEqual(r1.copies, [[parent[1], pTable[1]]]);
  assert.equal(pTable[0], parent[0], "the full block stays shared");
  // c1 still shares it with c2: another copy. Then c2 holds it alone and writes in place.
  assert.equal(bm.appendSlots("c1", [101])!.copies.length, 1);
  assert.deepEqual(bm.appendSlots("c2", [102])!.copies, []);
  assert.equal(bm.blockTable("c2")[1], parent[1]);
  bm.checkInvariants();
  // A copy needs a free block: with none left, appendSlots fails and changes nothing.
  const full = new BlockManager({ numBlocks: 2, blockSize: 4, enablePrefixCaching: false });
  full.allocate("p", range(6));
  full.fork("p", "c");
  assert.equal(full.canAppendSlots("p", 1), false);
  assert.equal(full.appendSlots("p", [7]), null);
  assert.equal(full.numTokens("p"), 6);
  full.checkInvariants();
  full.free("c");
  assert.deepEqual(full.appendSlots("p", [7])!.copies, [], "alone again: written in place");
  for (const id of ["p", "c1", "c2"]) bm.free(id);
  assert.equal(bm.usage().used, 0);
  bm.checkInvariants();
});

test("`appendSlots()` registers a block once it is full, and `free({keepCached: false})` drops it", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  bm.allocate("a", range(3));
  bm.appendSlots("a", [3]);  // block 0 is full now
  bm.appendSlots("a", [4]);
  assert.equal(bm.allocate("b", range(6))!.numCachedTokens, 4, "a live block is shared");
  bm.free("b");
  bm.free("a", { keepCached: false });  // e.g. the step that wrote it failed
  assert.equal(bm.allocate("c", range(6))!.numCachedTokens, 0);
  bm.checkInvariants();
});

test("`appendSlots()` lookahead slots get blocks but never enter the prefix cache until confirmed", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  bm.allocate("a", range(3));
  bm.appendSlots("a", [3], 6);  // confirmed 4 tokens, slots for 10
  assert.equal(bm.numTokens("a"), 4);
  assert.equal(bm.blockTable("a").length, 3);
  // Confirm 4 accepted drafts: they land in the spare blocks, nothing new is taken.
  const used = bm.usage().used;
  assert.deepEqual(bm.appendSlots("a", [4, 5, 6, 7])!.copies, []);
  assert.equal(bm.usage().used, used);
  bm.checkInvariants();
  bm.free("a");  // two full blocks cached, the spare (lookahead-only) block freed
  assert.deepEqual(bm.usage(), { used: 0, free: 6, cached: 2, total: 8, fraction: 0 });
  assert.equal(bm.allocate("b", range(9))!.numCachedTokens, 8);
  bm.checkInvariants();
});

test("`BlockManager` invariants and the K/V it points at hold over 1,000 seeded random operations", () => {
  const bs = 4, numBlocks = 40;
  const rnd = rng(Number(process.env.SIM_SEED ?? 20240531));  // SIM_SEED=n runs another workload
  const bm = new BlockManager({ numBlocks, blockSize: bs });
  // A fake K/V pool: the token id written in each slot (-1 never written, < -1 a draft).
  const pool = new Int32Array(numBlocks * bs).fill(-1);
  const live = new Map<string, number[]>();  // each sequence's confirmed tokens
  const prefixes = [range(9, 7), range(13, 50), [1, 1, 1, 1, 2, 2, 2, 2]];
  const slot = (id: string, p: number) => bm.blockTable(id)[Math.floor(p / bs)]! * bs + (p % bs);
  const write = (id: string, from: number, toks: number[]) => toks.forEach((t, k) => (pool[slot(id, from + k)] = t));
  const copy = (copies: Array<[number, number]>) => {
    for (const [s, d] of copies) pool.copyWithin(d * bs, s * bs, (s + 1) * bs);
  };
  let nextId = 0, hits = 0, copies = 0, failures = 0;
  for (let op = 0; op < 1000; op++) {
    const ids = [...live.keys()];
    const id = ids[rnd(Math.max(1, ids.length))];
    const kind = rnd(10);
    if (!id || kind < 3) {
      // allocate: sometimes a shared prefix, then random tokens; sometimes a chunk only
      const toks = [...(rnd(2) ? prefixes[rnd(prefixes.length)]! : []), ...range(1 + rnd(10)).map(() => rnd(4))];
      const newId = `s${nextId++}`;
      const a = bm.allocate(newId, toks, rnd(3) ? Infinity : rnd(6));
      if (!a) { failures++; continue; }
      hits += a.numCachedTokens;
      for (let p = 0; p < a.numCachedTokens; p++) assert.equal(pool[slot(newId, p)], toks[p], `op ${op}: a prefix hit must hold the prefix's tokens`);
      write(newId, a.numCachedTokens, toks.slice(a.numCachedTokens, a.numSlots));
      live.set(newId, toks.slice(0, a.numSlots));
    } else if (kind < 6) {
      // append tokens (maybe with lookahead slots that get draft garbage)
      const toks = range(1 + rnd(5)).map(() => rnd(4));
      const look = rnd(4) === 0 ? 1 + rnd(5) : 0;
      const res = bm.appendSlots(id, toks, look);
      if (!res) { failures++; continue; }
      copies += res.copies.length;
      copy(res.copies);
      const held = live.get(id)!;
      write(id, held.length, toks);
      held.push(...toks);
      for (let k = 0; k < look; k++) pool[slot(id, held.length + k)] = -2 - k;
    } else if (kind < 7) {
      const child = `s${nextId++}`;
      bm.fork(id, child);
      live.set(child, [...live.get(id)!]);
    } else {
      bm.free(id, { keepCached: rnd(8) !== 0 });
      live.delete(id);
    }
    bm.checkInvariants();
    for (const [sid, toks] of live) toks.forEach((t, p) => assert.equal(pool[slot(sid, p)], t, `op ${op}: '${sid}' position ${p}`));
  }
  // The workload exercised what it is meant to.
  assert.ok(hits > 0 && copies > 0 && failures > 0 && bm.prefixCacheStats().evictedBlocks > 0, JSON.stringify({ hits, copies, failures, ...bm.prefixCacheStats() }));
});

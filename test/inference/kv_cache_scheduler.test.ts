// Bookkeeping without tensors: block pool, prefix cache, LRU eviction, scheduler budgets,
// chunked prefill, preemption and recompute, bounded queue, abort.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BlockManager, Scheduler } from "../../src/inference/index.js";

const range = (n: number, start = 0) => Array.from({ length: n }, (_, i) => start + i);

test("`BlockManager` shares full prefix blocks, never partial ones, and evicts least recently freed first", () => {
  const bm = new BlockManager({ numBlocks: 6, blockSize: 4 });
  const a = range(10);  // 2 full blocks + 2 tokens
  assert.equal(bm.startSequence("a", a), 0);
  assert.ok(bm.ensure("a", a, 10));
  assert.equal(bm.blockTable("a").length, 3);
  bm.freeSequence("a");
  assert.deepEqual(bm.usage(), { used: 0, free: 4, cached: 2, total: 6, fraction: 0 });
  // Same first 8 tokens, different tail: both full blocks come from the cache.
  const b = [...range(8), 99, 98, 97];
  assert.equal(bm.startSequence("b", b), 8);
  assert.ok(bm.ensure("b", b, b.length));
  bm.checkInvariants();
  assert.equal(bm.prefixCacheStats().hitTokens, 8);
  bm.freeSequence("b");
  // Fill the pool with unrelated sequences: cached blocks are evicted, oldest first.
  const c = range(24, 500);
  bm.startSequence("c", c);
  assert.ok(bm.ensure("c", c, 24));
  assert.equal(bm.usage().used, 6);
  assert.equal(bm.ensure("c", [...c, 1], 25), false, "no block left");
  bm.freeSequence("c");
  assert.equal(bm.startSequence("d", b), 0, "the old prefix was evicted");
  bm.checkInvariants();
});

test("`BlockManager` invariants hold over a seeded random workload", () => {
  let s = 12345;
  const rnd = (n: number) => ((s = (s * 1103515245 + 12345) % 2 ** 31) % n);
  const bm = new BlockManager({ numBlocks: 40, blockSize: 4 });
  const live = new Map<string, number[]>();
  for (let op = 0; op < 1000; op++) {
    const id = `s${rnd(12)}`;
    if (live.has(id) && rnd(3) === 0) {
      bm.freeSequence(id);
      live.delete(id);
    } else if (live.has(id)) {
      const toks = live.get(id)!;
      toks.push(rnd(5));
      if (!bm.ensure(id, toks, toks.length)) toks.pop();
    } else {
      const toks = range(1 + rnd(20)).map(() => rnd(3));
      bm.startSequence(id, toks);
      if (bm.ensure(id, toks, toks.length)) live.set(id, toks);
      else bm.freeSequence(id);
    }
    bm.checkInvariants();
  }
});

test("`Scheduler` keeps to the token budget, runs decodes first and chunks long prompts", () => {
  const sch = new Scheduler(new BlockManager({ numBlocks: 64, blockSize: 4, enablePrefixCaching: false }), { maxNumBatchedTokens: 10 });
  sch.addRequest("a", range(3, 1));
  let out = sch.schedule();
  assert.deepEqual(out.scheduled.map((s) => [s.requestId, s.tokenIds.length, s.sample]), [["a", 3, true]]);
  sch.update(out, new Map([["a", 7]]));
  sch.addRequest("long", range(25, 100));
  out = sch.schedule();
  assert.deepEqual(out.scheduled.map((s) => [s.requestId, s.tokenIds.length, s.startPosition, s.sample]), [["a", 1, 3, true], ["long", 9, 0, false]]);
  assert.equal(out.numBatchedTokens, 10);
  sch.update(out, new Map([["a", 8]]));
  out = sch.schedule();
  assert.deepEqual(out.scheduled.map((s) => [s.requestId, s.tokenIds.length, s.startPosition]), [["a", 1, 4], ["long", 9, 9]]);
  sch.update(out, new Map([["a", 9]]));
  out = sch.schedule();
  assert.deepEqual(out.scheduled.map((s) => [s.requestId, s.tokenIds.length, s.sample]), [["a", 1, true], ["long", 7, true]]);
});

test("`Scheduler` preempts the newest request when blocks run out, and recomputes it later", () => {
  const bm = new BlockManager({ numBlocks: 4, blockSize: 4, enablePrefixCaching: false });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 64 });
  sch.addRequest("old", range(4));
  sch.addRequest("new", range(4, 50));
  let out = sch.schedule();
  assert.equal(out.scheduled.length, 2);
  const outputs = new Map<string, number[]>([["old", []], ["new", []]]);
  for (let step = 0; step < 6; step++) {
    const sampled = new Map(out.scheduled.filter((s) => s.sample).map((s) => [s.requestId, 1000 + step]));
    for (const [id, t] of sampled) outputs.get(id)!.push(t);
    sch.update(out, sampled);
    out = sch.schedule();
    if (out.preempted.length) break;
  }
  assert.deepEqual(out.preempted, ["new"]);
  assert.equal(sch.get("new")!.numComputed, 0);
  assert.ok(sch.get("new")!.outputTokens.length > 0, "generated tokens are kept for recompute");
  sch.finish("old");
  out = sch.schedule();
  const n = out.scheduled.find((s) => s.requestId === "new")!;
  assert.equal(n.startPosition, 0);
  assert.equal(n.tokenIds.length, 4 + sch.get("new")!.outputTokens.length, "prompt + generated recomputed");
  bm.checkInvariants();
});

test("`Scheduler` refuses beyond its waiting bound and frees aborted requests at once", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const sch = new Scheduler(bm, { maxWaiting: 2 });
  assert.ok(sch.addRequest("a", [1, 2]));
  assert.ok(sch.addRequest("b", [1, 2]));
  assert.equal(sch.addRequest("c", [1, 2]), false);
  sch.schedule();
  assert.ok(bm.usage().used > 0);
  sch.finish("a");
  sch.finish("b");
  assert.equal(bm.usage().used, 0);
  assert.equal(sch.hasWork(), false);
});

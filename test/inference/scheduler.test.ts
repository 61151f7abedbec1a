// The scheduler without tensors: token budget, decodes before prompt chunks, chunked prefill,
// preemption of the newest and its recompute, bounded queue, abort, stop conditions, forks,
// draft tokens, and a simulated engine loop whose fake model reads its "K/V" through the block
// tables, so every request's output must equal what it produces alone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BlockManager } from "../../src/inference/kv_cache/index.js";
import { Scheduler, type SchedulerOutput } from "../../src/inference/scheduler/index.js";

const range = (n: number, start = 0) => Array.from({ length: n }, (_, i) => start + i);
const shape = (out: SchedulerOutput) => out.scheduled.map((s) => [s.requestId, s.numTokens, s.startPosition, s.samplesThisStep]);
/** Samples token `t` for every request that samples in `out`. */
const sampleAll = (out: SchedulerOutput, t = 7) => new Map(out.scheduled.filter((s) => s.samplesThisStep).map((s) => [s.requestId, [t]]));

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

test("`schedule()` keeps to the token budget and gives decodes their token before prompt chunks", () => {
  const sch = new Scheduler(new BlockManager({ numBlocks: 64, blockSize: 4 }), { maxNumBatchedTokens: 10, maxNumSeqs: 4 });
  sch.addRequest("long", range(30, 100));
  sch.addRequest("short", range(3, 1));
  let out = sch.schedule();
  // The older long prompt takes the whole budget; the short one waits (FCFS admission).
  assert.deepEqual(shape(out), [["long", 10, 0, false]]);
  sch.updateFromOutput(out, new Map());
  out = sch.schedule();
  assert.deepEqual(shape(out), [["long", 10, 10, false]]);
  sch.updateFromOutput(out, new Map());
  out = sch.schedule();
  assert.deepEqual(shape(out), [["long", 10, 20, true]]);
  sch.updateFromOutput(out, sampleAll(out));
  out = sch.schedule();
  assert.deepEqual(shape(out), [["long", 1, 30, true], ["short", 3, 0, true]]);
  sch.updateFromOutput(out, sampleAll(out));
  // A newer prompt arrives while two requests decode: decodes first, the prompt gets the rest.
  sch.addRequest("newer", range(20, 200));
  out = sch.schedule();
  assert.deepEqual(shape(out), [["long", 1, 31, true], ["short", 1, 3, true], ["newer", 8, 0, false]]);
  assert.equal(out.numBatchedTokens, 10);
  assert.deepEqual(out.scheduled.map((s) => s.isPrefillChunk), [false, false, true]);
  sch.updateFromOutput(out, sampleAll(out));
  out = sch.schedule();
  assert.deepEqual(shape(out), [["long", 1, 32, true], ["short", 1, 4, true], ["newer", 8, 8, false]]);
  assert.ok(out.numBatchedTokens <= 10);
  sch.checkInvariants();
});

test("`schedule()` splits a long prompt across steps (chunked prefill), growing its block table", () => {
  const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 6, maxNumSeqs: 2 });
  const prompt = range(15, 10);
  sch.addRequest("r", prompt);
  const steps: Array<[number, number, boolean, number]> = [];
  for (;;) {
    const out = sch.schedule();
    const s = out.scheduled[0]!;
    assert.deepEqual(s.tokenIds, prompt.slice(s.startPosition, s.startPosition + s.numTokens));
    assert.ok(s.blockTable.length * 4 >= s.startPosition + s.numTokens, "the table covers every position fed");
    steps.push([s.startPosition, s.numTokens, s.samplesThisStep, s.blockTable.length]);
    if (!s.samplesThisStep) assert.throws(() => sch.updateFromOutput(out, new Map([["r", [1]]])), /computes a prompt chunk and does not sample/);
    sch.updateFromOutput(out, sampleAll(out));  // the rejected call left the step unapplied
    if (s.samplesThisStep) break;
  }
  assert.deepEqual(steps, [[0, 6, false, 2], [6, 6, false, 3], [12, 3, true, 4]]);
  assert.deepEqual(sch.get("r")!.outputTokens, [7]);
  const dec = sch.schedule().scheduled[0]!;
  assert.deepEqual([dec.startPosition, dec.tokenIds, dec.isPrefillChunk], [15, [7], false]);
});

test("`schedule()` preempts the newest running request when the cache is full and recomputes it later", () => {
  const bm = new BlockManager({ numBlocks: 4, blockSize: 4, enablePrefixCaching: false });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 64, maxNumSeqs: 4 });
  sch.addRequest("old", range(4));
  sch.addRequest("new", range(4, 50));
  let out = sch.schedule();
  assert.equal(out.scheduled.length, 2);
  let step = 0;
  while (!out.preempted.length) {
    sch.updateFromOutput(out, sampleAll(out, 1000 + step++));
    out = sch.schedule();
  }
  // Each holds 2 blocks (5..8 tokens); "old" needs a third: "new" is preempted, "old" goes on.
  assert.deepEqual(out.preempted, ["new"]);
  assert.deepEqual(out.scheduled.map((s) => s.requestId), ["old"]);
  const victim = sch.get("new")!;
  assert.deepEqual([victim.status, victim.numComputed, victim.numPreemptions], ["waiting", 0, 1]);
  const generated = [...victim.outputTokens];
  assert.ok(generated.length > 0, "generated tokens are kept");
  assert.equal(sch.preemptions, 1);
  sch.checkInvariants();
  sch.updateFromOutput(out, sampleAll(out, 2000));
  sch.finish("old", "stop");
  out = sch.schedule();
  const n = out.scheduled.find((s) => s.requestId === "new")!;
  assert.deepEqual(out.finished, [{ requestId: "old", reason: "stop" }]);
  assert.deepEqual([n.startPosition, n.isPrefillChunk, n.samplesThisStep], [0, true, true]);
  assert.deepEqual(n.tokenIds, [...range(4, 50), ...generated], "prompt + generated tokens are recomputed");
  sch.checkInvariants();
});

test("a preempted request's recompute starts from its blocks that survive in the prefix cache", () => {
  const bm = new BlockManager({ numBlocks: 6, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 64, maxNumSeqs: 4 });
  sch.addRequest("old", range(8));
  sch.addRequest("new", range(8, 100));
  let out = sch.schedule();
  while (!out.preempted.length) {
    sch.updateFromOutput(out, sampleAll(out));
    out = sch.schedule();
  }
  sch.updateFromOutput(out, sampleAll(out));
  sch.finish("old", "stop");  // "old"'s blocks go to the cache too, but the pool has room now
  out = sch.schedule();
  const n = out.scheduled.find((s) => s.requestId === "new")!;
  assert.ok(n.startPosition >= 8, `recompute starts at the cached prefix (got ${n.startPosition})`);
  assert.equal(n.startPosition % 4, 0);
});

test("a request that outgrows the whole cache on its own finishes with \"length\" instead of preempting itself forever", () => {
  const bm = new BlockManager({ numBlocks: 2, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 8, maxNumSeqs: 2 });
  sch.addRequest("big", range(6));
  let out = sch.schedule();
  for (let i = 0; i < 3; i++) {
    sch.updateFromOutput(out, sampleAll(out));
    out = sch.schedule();
  }
  // 6 prompt + 3 generated tokens need a third block: none exists.
  assert.deepEqual([out.scheduled, out.preempted, out.finished, out.numBatchedTokens], [[], [], [{ requestId: "big", reason: "length" }], 0]);
  assert.equal(bm.usage().used, 0);
  assert.equal(sch.hasWork(), false);
});

test("`addRequest()` refuses beyond the waiting bound with a reason, and rejects impossible requests", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const sch = new Scheduler(bm, { maxWaiting: 2, maxNumSeqs: 1, maxNumBatchedTokens: 8, maxModelLen: 20 });
  assert.deepEqual(sch.addRequest("a", [1, 2]), { accepted: true });
  assert.deepEqual(sch.addRequest("b", [1, 2]), { accepted: true });
  const r = sch.addRequest("c", [1, 2]);
  assert.equal(r.accepted, false);
  assert.ok(!r.accepted && r.reason === "queue_full" && /waiting queue is full \(2 requests\)/.test(r.message));
  assert.equal(sch.stats().rejections.queue_full, 1);
  sch.schedule();  // "a" runs (maxNumSeqs 1), "b" still waits, one place frees up
  assert.deepEqual([sch.numRunning, sch.numWaiting], [1, 1]);
  assert.deepEqual(sch.addRequest("c", [1, 2]), { accepted: true });
  assert.throws(() => sch.addRequest("a", [1]), /request id 'a' is already queued or running/);
  assert.throws(() => sch.addRequest("d", []), /empty prompt/);
  assert.throws(() => sch.addRequest("d", [1, -3]), /prompt token -3/);
  assert.throws(() => sch.addRequest("d", range(20)), /prompt of 20 tokens but the context is 20/);
  assert.throws(() => new Scheduler(bm, { maxNumBatchedTokens: 4, maxNumSeqs: 8 }), /must be >= maxNumSeqs/);
  assert.throws(() => new Scheduler(bm, { maxModelLen: 64 }), /fit in the KV cache \(8 blocks x 4 = 32 tokens\)/);
});

test("`abort()` frees a request's blocks at once and the next output reports it", () => {
  const bm = new BlockManager({ numBlocks: 8, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 8, maxNumSeqs: 4 });
  sch.addRequest("a", range(6));
  sch.addRequest("b", range(6, 30));
  sch.addRequest("w", range(5, 60));  // still waiting after the first step
  const out = sch.schedule();
  assert.ok(bm.usage().used > 0);
  assert.equal(sch.abort("a"), true);
  assert.equal(sch.abort("w"), true);
  assert.equal(sch.abort("nope"), false);
  assert.equal(bm.usage().used, bm.blocksFor(2), "only b's blocks are held");
  // Applying the step skips the aborted request.
  assert.deepEqual(sch.updateFromOutput(out, new Map()).outputs, []);
  sch.finish("b", "error");
  assert.equal(bm.usage().used, 0);
  const next = sch.schedule();
  assert.deepEqual(next.finished, [{ requestId: "a", reason: "abort" }, { requestId: "w", reason: "abort" }, { requestId: "b", reason: "error" }]);
  assert.equal(sch.hasWork(), false);
  sch.checkInvariants();
});

test("`updateFromOutput()` appends tokens, stops on stop ids, maxTokens and the context, and rejects stale outputs", () => {
  const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 16, maxNumSeqs: 4, maxModelLen: 10 });
  sch.addRequest("stop", [1, 2], { stopTokenIds: [99] });
  sch.addRequest("max", [1, 2], { maxTokens: 2 });
  sch.addRequest("ctx", range(8));
  let out = sch.schedule();
  let res = sch.updateFromOutput(out, new Map([["stop", [5]], ["max", [5]], ["ctx", [5]]]));
  assert.deepEqual(res.outputs.map((o) => o.finishReason), [null, null, null]);
  assert.throws(() => sch.updateFromOutput(out, new Map()), /step 1 is not the latest unapplied/);
  out = sch.schedule();
  assert.throws(() => sch.updateFromOutput(out, new Map([["ghost", [1]]])), /sampled tokens for 'ghost'/);
  res = sch.updateFromOutput(out, new Map([["stop", [99, 4]], ["max", [6]], ["ctx", [6]]]));
  assert.deepEqual(res.outputs, [
    { requestId: "stop", newTokenIds: [99], finishReason: "stop", numAcceptedDraftTokens: 0 },
    { requestId: "max", newTokenIds: [6], finishReason: "length", numAcceptedDraftTokens: 0 },
    { requestId: "ctx", newTokenIds: [6], finishReason: "length", numAcceptedDraftTokens: 0 },
  ]);
  assert.equal(bm.usage().used, 0, "finished requests' blocks are freed");
  assert.deepEqual(sch.stats().finished, { stop: 1, length: 2, abort: 0, error: 0 });
  // A sampling request given no token recomputes its last token next step.
  sch.addRequest("r", [1, 2, 3]);
  out = sch.schedule();
  sch.updateFromOutput(out, new Map());
  assert.deepEqual(shape(sch.schedule()), [["r", 1, 2, true]]);
});

test("`fork()` shares the parent's blocks (n > 1) and the shared partial block is copied on write", () => {
  const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 16, maxNumSeqs: 4 });
  sch.addRequest("p", range(6), { maxTokens: 3 });
  let out = sch.schedule();
  // n = 3: three tokens sampled from p's logits; two children fork before the step is applied.
  assert.throws(() => sch.fork("p", "p#1"), /not yet applied; fork it there only when it samples without drafts, with the child's lastToken/);
  assert.equal(sch.fork("p", "p#1", { lastToken: 51 }), null);
  assert.equal(sch.fork("p", "p#2", { lastToken: 52, stopTokenIds: [52] }), "stop", "a child whose first token stops finishes at once");
  sch.updateFromOutput(out, new Map([["p", [50]]]));
  assert.throws(() => sch.fork("p", "p#3", { lastToken: 53 }), /lastToken is for forking in the step where 'p' samples/);
  assert.deepEqual([sch.get("p#1")!.outputTokens, sch.get("p#1")!.numComputed], [[51], 6]);
  assert.equal(bm.usage().used, 2, "the child shares the prompt's two blocks");
  out = sch.schedule();
  assert.deepEqual(out.scheduled.map((s) => [s.requestId, s.tokenIds, s.startPosition]), [["p", [50], 6], ["p#1", [51], 6]]);
  assert.equal(out.blockCopies.length, 1, "the first writer copies the shared partial block; the second writes in place");
  const [src, dst] = out.blockCopies[0]!;
  assert.equal(out.scheduled[0]!.blockTable[1], dst);
  assert.equal(out.scheduled[1]!.blockTable[1], src);
  assert.equal(out.scheduled[0]!.blockTable[0], out.scheduled[1]!.blockTable[0], "the full block stays shared");
  assert.deepEqual(out.finished, [{ requestId: "p#2", reason: "stop" }]);
  sch.checkInvariants();
});

test("draft tokens are fed after the newest token and only the accepted ones keep their K/V", () => {
  const bm = new BlockManager({ numBlocks: 16, blockSize: 4 });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 16, maxNumSeqs: 4 });
  sch.addRequest("r", range(5), { maxTokens: 10 });
  let out = sch.schedule();
  sch.updateFromOutput(out, new Map([["r", [20]]]));
  sch.setDraftTokens("r", [21, 22, 23]);
  out = sch.schedule();
  const s = out.scheduled[0]!;
  assert.deepEqual([s.tokenIds, s.startPosition, s.numDraftTokens, s.samplesThisStep], [[20, 21, 22, 23], 5, 3, true]);
  assert.equal(out.numBatchedTokens, 4);
  // The model agrees with 21 and 22, then says 30 instead of 23.
  const res = sch.updateFromOutput(out, new Map([["r", [21, 22, 30]]]));
  assert.equal(res.outputs[0]!.numAcceptedDraftTokens, 2);
  const r = sch.get("r")!;
  assert.deepEqual([r.outputTokens, r.numComputed], [[20, 21, 22, 30], 8]);
  assert.equal(bm.numTokens("r"), 8, "accepted drafts are confirmed in their slots; the rejected one is not");
  out = sch.schedule();
  assert.deepEqual(shape(out), [["r", 1, 8, true]]);
  sch.checkInvariants();
});

/**
 * A simulated engine: the fake model's next token is a hash of the tokens it reads from a fake
 * K/V pool through the block table (so a wrong table, a missed copy or a stale cached block
 * changes the output), and every request's output must equal what it produces alone.
 */
test("a simulated engine loop runs 50 random requests to completion, each output equal to its output alone", () => {
  const V = 40, STOP = 0, bs = 4, numBlocks = 24, maxModelLen = 64;
  const rnd = rng(Number(process.env.SIM_SEED ?? 7));  // SIM_SEED=n runs another workload
  const next = (toks: ArrayLike<number>) => {
    let h = 2166136261;
    for (let i = 0; i < toks.length; i++) h = Math.imul(h ^ (toks[i]! + 1), 16777619);
    return (h >>> 0) % V;
  };
  const bm = new BlockManager({ numBlocks, blockSize: bs });
  const sch = new Scheduler(bm, { maxNumBatchedTokens: 16, maxNumSeqs: 6, maxWaiting: 64, maxModelLen });
  const kvToken = new Int32Array(numBlocks * bs).fill(-1);
  const kvPos = new Int32Array(numBlocks * bs).fill(-1);

  interface Spec { id: string; prompt: number[]; maxTokens: number; arriveAt: number; firstToken?: (t: number) => number; forkOf?: string }
  const prefixes = [range(9, 1), range(6, 20)];
  const specs: Spec[] = [];
  for (let i = 0; i < 50; i++) {
    const prompt = [...(rnd(2) ? prefixes[rnd(2)]! : []), ...range(1 + rnd(14)).map(() => 1 + rnd(V - 1))];
    specs.push({ id: `r${i}`, prompt, maxTokens: 1 + rnd(20), arriveAt: rnd(60) });
  }
  // Five of them ask for n = 2: a second choice forked after the first token, whose first token differs.
  for (const i of [3, 11, 19, 27, 35]) specs.push({ ...specs[i]!, id: `r${i}#1`, firstToken: (t) => (t + 1) % V, forkOf: `r${i}` });
  /** The output a request produces alone: greedy decoding of `next` over its own tokens. */
  const alone = (s: Spec) => {
    const toks = [...s.prompt], out: number[] = [];
    for (;;) {
      let t = next(toks);
      if (out.length === 0 && s.firstToken) t = s.firstToken(t);
      toks.push(t);
      out.push(t);
      if (t === STOP || out.length >= s.maxTokens || toks.length >= maxModelLen) return out;
    }
  };
  const outputs = new Map<string, number[]>();
  const aborted = new Set<string>();
  const forks = specs.filter((s) => s.forkOf);
  let draftsProposed = 0, draftsAccepted = 0;
  for (let step = 0; step < 2000 && (sch.hasWork() || specs.some((s) => s.arriveAt >= step)); step++) {
    for (const s of specs) if (s.arriveAt === step && !s.forkOf) assert.equal(sch.addRequest(s.id, s.prompt, { maxTokens: s.maxTokens, stopTokenIds: [STOP] }).accepted, true);
    if (step % 37 === 36) {
      // A client disconnects.
      const live = specs.filter((s) => sch.get(s.id));
      const victim = live[rnd(live.length)];
      if (victim && sch.abort(victim.id)) aborted.add(victim.id);
      for (const f of forks) if (f.forkOf === victim?.id && !outputs.has(f.id)) aborted.add(f.id);  // never forked
    }
    const out = sch.schedule();
    assert.ok(out.numBatchedTokens <= 16, `step ${step}: ${out.numBatchedTokens} tokens`);
    assert.equal(out.numBatchedTokens, out.scheduled.reduce((a, s) => a + s.numTokens, 0));
    assert.ok(sch.numRunning <= 6 + forks.length);
    // The fake runner: copies first, then every fed token's K/V, then the sampled rows.
    for (const [src, dst] of out.blockCopies) {
      kvToken.copyWithin(dst * bs, src * bs, (src + 1) * bs);
      kvPos.copyWithin(dst * bs, src * bs, (src + 1) * bs);
    }
    const slot = (table: number[], p: number) => table[Math.floor(p / bs)]! * bs + (p % bs);
    for (const s of out.scheduled) {
      s.tokenIds.forEach((t, k) => {
        kvToken[slot(s.blockTable, s.startPosition + k)] = t;
        kvPos[slot(s.blockTable, s.startPosition + k)] = s.startPosition + k;
      });
    }
    const sampled = new Map<string, number[]>();
    for (const s of out.scheduled) {
      if (!s.samplesThisStep) continue;
      const read = (upTo: number) => range(upTo + 1).map((p) => {
        assert.equal(kvPos[slot(s.blockTable, p)], p, `step ${step}: '${s.requestId}' reads a stale slot at position ${p}`);
        return kvToken[slot(s.blockTable, p)]!;
      });
      const last = s.startPosition + s.numTokens - 1 - s.numDraftTokens;
      const toks: number[] = [];
      for (let i = 0; i <= s.numDraftTokens; i++) {
        const t = next(read(last + i));
        toks.push(t);
        if (i < s.numDraftTokens && t !== s.tokenIds[s.numTokens - s.numDraftTokens + i]) break;
      }
      sampled.set(s.requestId, toks);
      // n = 2: the second choice forks off at the parent's first token, with its own token.
      const child = forks.find((f) => f.forkOf === s.requestId);
      if (child && sch.get(s.requestId)!.outputTokens.length === 0) {
        const first = child.firstToken!(toks[0]!);
        const reason = sch.fork(s.requestId, child.id, { lastToken: first });
        outputs.set(child.id, [first]);
        assert.equal(reason !== null, first === STOP || child.maxTokens === 1);
      }
    }
    const { outputs: ups } = sch.updateFromOutput(out, sampled);
    for (const u of ups) {
      outputs.set(u.requestId, [...(outputs.get(u.requestId) ?? []), ...u.newTokenIds]);
      draftsAccepted += u.numAcceptedDraftTokens;
    }
    // Draft tokens for some decoding requests: the true continuation, sometimes corrupted.
    for (const s of specs) {
      const r = sch.get(s.id);
      if (!r || r.status !== "running" || !r.outputTokens.length || r.numComputed !== r.promptTokens.length + r.outputTokens.length - 1 || rnd(3)) continue;
      const truth = alone(s).slice(r.outputTokens.length, r.outputTokens.length + 1 + rnd(4));
      if (truth.length && rnd(2)) truth[rnd(truth.length)] = (truth[0]! + 3) % V;
      draftsProposed += truth.length;
      sch.setDraftTokens(s.id, truth);
    }
    sch.checkInvariants();
  }
  assert.equal(sch.hasWork(), false, "every request finished");
  assert.equal(bm.usage().used, 0, "every block is released");
  for (const s of specs) {
    const got = outputs.get(s.id) ?? [];
    const want = alone(s);
    if (aborted.has(s.id)) assert.deepEqual(got, want.slice(0, got.length), `${s.id} (aborted) is a prefix of its output alone`);
    else assert.deepEqual(got, want, `${s.id} equals its output alone`);
  }
  // The run exercised what it is meant to.
  const st = sch.stats();
  assert.ok(st.preemptions > 0, "some requests were preempted");
  assert.ok(bm.prefixCacheStats().hitTokens > 0, "some prefixes were cached");
  assert.ok(aborted.size > 0 && draftsProposed > 0 && draftsAccepted > 0, JSON.stringify({ aborted: aborted.size, draftsProposed, draftsAccepted }));
});

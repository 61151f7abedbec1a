// Speculative decoding: draft-model and n-gram drafts leave greedy outputs unchanged, the
// acceptance rule keeps the target's distribution (a statistical check over fresh seeds),
// seeded sampled requests are reproducible in any batch, and rejected drafts roll the draft
// model's KV cache back (long runs, preemption, abort: both caches return to their start).
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT } from "../../src/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { tensor, withScope } from "../../src/tensor/index.js";
import { Engine, type EngineOptions, type GenerationRequest } from "../../src/inference/index.js";
import { DEFAULT_SAMPLING, drawToken, processedProbs, sampleFromProbs, toProbs, tokenDistribution, type SamplingParams } from "../../src/inference/sample/index.js";
import { DraftModel, acceptDraft, acceptOneHot, streamUniform } from "../../src/inference/spec/index.js";
import type { Tokenizer } from "../../src/tokenizers/index.js";

const V = 97;
const CTX = 160;
const rnd = (n: number) => Math.floor(Math.random() * n);

/** One CJK character per id: decoding never yields U+FFFD, so every step streams its tokens. */
const tok: Tokenizer = {
  name: "chars", vocabSize: V, eotToken: V - 1,
  encode: (t) => [...t].map((c) => c.codePointAt(0)! - 0x4e00),
  decode: (ids) => Array.from(ids, (i) => String.fromCodePoint(0x4e00 + i)).join(""),
  decodeBytes: (ids) => new TextEncoder().encode(Array.from(ids, (i) => String.fromCodePoint(0x4e00 + i)).join("")),
  idToToken: (i) => String.fromCodePoint(0x4e00 + i),
  tokenToId: (t) => t.codePointAt(0)! - 0x4e00,
  save: () => {
    throw new Error("not needed");
  },
};

/** A tiny random GPT with weights scaled up so its distributions are far from uniform. */
function tinyGpt(seed: number, o: { nLayer?: number; nEmbd?: number } = {}): GPT {
  const m = new GPT({ nLayer: o.nLayer ?? 2, nHead: 2, nEmbd: o.nEmbd ?? 32, blockSize: CTX, vocabSize: V }, { seed });
  noGrad(() => {
    for (const [name, p] of m.namedParameters()) if (!name.includes("ln") && name.endsWith("weight")) p.mul_(10);
  });
  return m;
}

const sampling = (o: Partial<SamplingParams> = {}): SamplingParams => ({ ...DEFAULT_SAMPLING, ...o });
const randomPrompt = (n: number) => Array.from({ length: n }, () => rnd(V));

/** Runs one request to the end; returns its token ids. */
async function run(e: Engine, promptTokens: number[], sp: SamplingParams, maxTokens: number): Promise<number[]> {
  const req: GenerationRequest = { requestId: `r${Math.random()}`, promptTokens, sampling: sp, maxTokens, stop: [], stopTokenIds: [], n: 1 };
  const ids: number[] = [];
  for await (const ev of e.submit(req)) {
    if (ev.type === "delta") ids.push(...ev.tokenIds);
    if (ev.type === "finish") assert.notEqual(ev.reason, "error", ev.error);
  }
  return ids;
}

function engine(model: GPT, o: EngineOptions = {}): Engine {
  return new Engine(model, tok, { kvCacheBytes: 4 * 2 ** 20, blockSize: 8, ...o });
}

function checkDrained(e: Engine, label: string): void {
  assert.equal(e.blocks.usage().used, 0, `${label}: target KV blocks still held`);
  e.blocks.checkInvariants();
  if (e.drafter) {
    assert.equal(e.drafter.blocks.usage().used, 0, `${label}: draft KV blocks still held`);
    e.drafter.blocks.checkInvariants();
  }
}

test("draft-model speculation gives exactly the non-speculative greedy tokens (another model, and the target itself)", async () => {
  const seed = rnd(1e6);
  const target = tinyGpt(seed);
  const other = tinyGpt(seed + 1, { nLayer: 1, nEmbd: 16 });
  const prompts = Array.from({ length: 4 }, (_, i) => randomPrompt(5 + 7 * i));
  const sps = [sampling({ temperature: 0 }), sampling({ temperature: 0, repetitionPenalty: 1.5, presencePenalty: 0.5 })];
  const plain = engine(target);
  const want = await Promise.all(prompts.flatMap((p) => sps.map((sp) => run(plain, p, sp, 40))));
  for (const [name, draftModel] of [["another model", other], ["the target itself", target]] as const) {
    const spec = engine(target, { speculative: { method: "draft", numTokens: 4, draftModel } });
    const got = await Promise.all(prompts.flatMap((p) => sps.map((sp) => run(spec, p, sp, 40))));
    got.forEach((g, i) => assert.deepEqual(g, want[i], `${name}, request ${i} (model seed ${seed})`));
    const st = spec.stats();
    assert.ok(st.speculativeProposed! > 0, `${name}: no drafts proposed`);
    if (draftModel === target) {
      assert.equal(st.speculativeAccepted, st.speculativeProposed, "a self-draft is always accepted");
      assert.ok(st.steps < plain.stats().steps / 2, `${name}: fewer target steps (${st.steps} vs ${plain.stats().steps})`);
    } else assert.ok(st.speculativeAccepted! < st.speculativeProposed!, `${name}: a different random model should see rejections`);
    checkDrained(spec, name);
    await spec.shutdown();
  }
  await plain.shutdown();
});

/** Total variation between an empirical histogram and a distribution. */
function tv(counts: number[], p: ArrayLike<number>, n: number): number {
  let s = 0;
  for (let i = 0; i < counts.length; i++) s += Math.abs(counts[i]! / n - p[i]!);
  return s / 2;
}

test("acceptDraft() and acceptOneHot() emit tokens distributed as the target's processed distribution (20k seeds)", () => {
  const N = 20_000;
  const W = 8;  // a small vocabulary
  const base = rnd(1e9);
  const logits = () => Float32Array.from({ length: W }, () => 3 * (Math.random() - 0.5));
  // The request's transforms apply to both: top-k cuts some tokens out of p or q entirely.
  const sp = sampling({ temperature: 0.8, topK: 6 });
  const p = processedProbs(logits(), sp, [], []);
  const q = processedProbs(logits(), sp, [], []);
  // Draft model: x ~ q, then the rule.
  const counts = new Array<number>(W).fill(0);
  let accepted = 0;
  for (let s = base; s < base + N; s++) {
    const x = sampleFromProbs(q, streamUniform(s, "draft", 0));
    const v = acceptDraft(p, q, x, streamUniform(s, "accept", 0), streamUniform(s, "residual", 0));
    counts[v.token]++;
    if (v.accepted) accepted++;
  }
  const overlap = Array.from(p, (pi, i) => Math.min(pi, q[i]!)).reduce((a, b) => a + b, 0);
  assert.ok(tv(counts, p, N) < 0.02, `draft q: TV ${tv(counts, p, N)} (p ${[...p].map((x) => x.toFixed(3))}, q ${[...q].map((x) => x.toFixed(3))}, seeds from ${base})`);
  assert.ok(Math.abs(accepted / N - overlap) < 0.02, `acceptance ${accepted / N} vs sum(min(p, q)) ${overlap}`);
  // One-hot q (an n-gram draft): accept with probability p(x), else p without x.
  const d = tokenDistribution(logits(), sp, [], []);
  const pd = toProbs(d);
  const x = d.ids![rnd(d.ids!.length)]!;  // a draft from p's support
  const counts1 = new Array<number>(W).fill(0);
  let accepted1 = 0;
  for (let s = base; s < base + N; s++) {
    const v = acceptOneHot(d, x, streamUniform(s, "sample", 0));
    counts1[v.token]++;
    if (v.accepted) accepted1++;
    else assert.notEqual(v.token, x, "a rejected draft is never emitted");
  }
  assert.ok(tv(counts1, pd, N) < 0.02, `one-hot q: TV ${tv(counts1, pd, N)} (p ${[...pd].map((v) => v.toFixed(3))}, seeds from ${base})`);
  assert.ok(Math.abs(accepted1 / N - pd[x]!) < 0.02, `acceptance ${accepted1 / N} vs p(x) ${pd[x]}`);
  // And the emitted token is the plain draw at that position: n-gram drafts never change a seeded output.
  for (let s = base; s < base + 200; s++) assert.equal(acceptOneHot(d, x, streamUniform(s, "sample", 0)).token, drawToken(d, streamUniform(s, "sample", 0)));
});

test("seeded sampled requests give the same tokens alone and in a crowd with speculation on (draft and n-gram)", async () => {
  const seed = rnd(1e6);
  const target = tinyGpt(seed);
  const draftModel = tinyGpt(seed + 1, { nLayer: 1, nEmbd: 16 });
  const prompt = randomPrompt(9);
  const sp = sampling({ temperature: 0.7, topP: 0.95, seed: rnd(1e6) });
  const crowd = (e: Engine) => Array.from({ length: 6 }, (_, i) => run(e, randomPrompt(3 + 5 * i), sampling({ temperature: 0.9, seed: rnd(1e6) }), 20 + 5 * i));
  const plain = engine(target);
  const plainAlone = await run(plain, prompt, sp, 40);
  await plain.shutdown();
  for (const spec of [{ method: "draft" as const, numTokens: 3, draftModel }, { method: "ngram" as const, numTokens: 3, ngramMax: 2 }]) {
    const e = engine(target, { speculative: spec });
    const alone = await run(e, prompt, sp, 40);
    const all = await Promise.all([run(e, prompt, sp, 40), ...crowd(e), run(e, prompt, sp, 40)]);
    const [a, b] = [all[0], all[all.length - 1]];
    assert.deepEqual(a, alone, `${spec.method}: in a crowd (model seed ${seed}, request seed ${sp.seed})`);
    assert.deepEqual(b, alone, `${spec.method}: in a crowd, arriving later`);
    // One-hot (n-gram) verification draws with the plain stream: the very tokens of no speculation.
    if (spec.method === "ngram") assert.deepEqual(alone, plainAlone, "n-gram speculation leaves a seeded sample unchanged");
    assert.ok(e.stats().speculativeProposed! > 0, `${spec.method}: no drafts proposed`);
    checkDrained(e, spec.method);
    await e.shutdown();
  }
});

test("rejected drafts roll the draft cache back: long runs, preemption and abort leave both caches as they started", async () => {
  const seed = rnd(1e6);
  const target = tinyGpt(seed);
  const weak = tinyGpt(seed + 7, { nLayer: 1, nEmbd: 16 });
  const spec = { method: "draft" as const, numTokens: 4, draftModel: weak };
  const prompts = Array.from({ length: 5 }, (_, i) => randomPrompt(4 + 3 * i));
  const greedy = sampling({ temperature: 0, frequencyPenalty: 0.3 });

  // Long greedy runs crossing many blocks (blockSize 8): identical to no speculation.
  const plain = engine(target);
  const want = await Promise.all(prompts.map((p) => run(plain, p, greedy, 120)));
  const e = engine(target, { speculative: spec });
  const got = await Promise.all(prompts.map((p) => run(e, p, greedy, 120)));
  got.forEach((g, i) => assert.deepEqual(g, want[i], `greedy request ${i} (model seed ${seed})`));
  let st = e.stats();
  assert.ok(st.speculativeAccepted! < st.speculativeProposed!, `a weak draft gets rejected (${st.speculativeAccepted}/${st.speculativeProposed})`);
  checkDrained(e, "greedy");

  // Sampled: counters consistent, every token accounted for, caches drained.
  const before = { ...e.stats() };
  const sampled = await Promise.all(prompts.map((p, i) => run(e, p, sampling({ temperature: 0.8, seed: rnd(1e6) + i }), 60)));
  st = e.stats();
  const proposed = st.speculativeProposed! - before.speculativeProposed!;
  const accepted = st.speculativeAccepted! - before.speculativeAccepted!;
  assert.ok(proposed > 0 && accepted > 0 && accepted < proposed, `sampled: accepted ${accepted} of ${proposed}`);
  assert.equal(st.generationTokens - before.generationTokens, sampled.reduce((n, s) => n + s.length, 0));
  sampled.forEach((s) => assert.equal(s.length, 60));
  // Each verification emits its accepted drafts plus one token, so the target needed at least
  // (tokens - accepted) sampling steps.
  assert.ok(st.steps - before.steps >= Math.max(...sampled.map((s) => s.length)) - accepted);
  checkDrained(e, "sampled");
  await e.shutdown();

  // A cache for ~2 full contexts: the 5 requests preempt each other and recompute.
  const blockBytes = 2 * 2 * 32 * 8 * 4;
  const small = engine(target, { speculative: spec, kvCacheBytes: 45 * blockBytes });
  const smallPlain = engine(target, { kvCacheBytes: 45 * blockBytes });
  const [gotSmall, wantSmall] = await Promise.all([
    Promise.all(prompts.map((p) => run(small, p, greedy, 100))),
    Promise.all(prompts.map((p) => run(smallPlain, p, greedy, 100))),
  ]);
  assert.ok(small.stats().preemptions > 0, "the small cache preempts");
  gotSmall.forEach((g, i) => assert.deepEqual(g, want[i]!.slice(0, 100), `preempted greedy request ${i}`));
  wantSmall.forEach((g, i) => assert.deepEqual(g, want[i]!.slice(0, 100)));
  checkDrained(small, "preemption");

  // Abort mid-stream: every block of both caches comes back.
  const ctrl = new AbortController();
  const events = small.submit({ requestId: "abort-me", promptTokens: prompts[4]!, sampling: sampling({ temperature: 0.8, seed: 3 }), maxTokens: 100, stop: [], stopTokenIds: [], n: 1 }, ctrl.signal);
  let deltas = 0;
  let reason = "";
  for await (const ev of events) {
    if (ev.type === "delta" && ++deltas === 3) {
      assert.ok(small.blocks.usage().used > 0 && small.drafter!.blocks.usage().used > 0, "both caches are in use mid-stream");
      ctrl.abort();
    }
    if (ev.type === "finish") reason = ev.reason;
  }
  assert.equal(reason, "abort");
  checkDrained(small, "abort");
  await small.shutdown();
  await smallPlain.shutdown();
});

/** The model's next-token logits after `ids`, by a plain full forward (no paged cache). */
function lastLogits(m: GPT, ids: readonly number[]): Float32Array {
  return noGrad(() => withScope(() => {
    const x = tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "int32" });
    return m.forward(x).logits.select(1, ids.length - 1).data() as Float32Array;  // (V)
  }));
}

test("DraftModel.propose() after rejected drafts proposes what a full forward over the accepted history gives", () => {
  const seed = rnd(1e6);
  const model = tinyGpt(seed, { nLayer: 1, nEmbd: 16 });
  const drafter = new DraftModel(model, { numBlocks: 64, blockSize: 4 });
  for (const sp of [sampling({ temperature: 0 }), sampling({ temperature: 0.8, seed: rnd(1e6) })]) {
    const history = randomPrompt(6);
    const promptLength = history.length;
    for (let round = 0; round < 25; round++) {
      const k = 1 + (round % 4);
      const got = drafter.propose([{ id: "s", tokens: [...history], promptLength, k, sampling: sp }]).get("s")!;
      // Reference: each draft from a full forward over history + the drafts before it.
      const want: number[] = [];
      for (let i = 0; i < k; i++) {
        const out = [...history.slice(promptLength), ...want];
        const logits = lastLogits(model, [...history, ...want]);
        const d = tokenDistribution(logits, sp, history.slice(0, promptLength), out);
        want.push(sp.temperature === 0 ? d.ids![0]! : drawToken(d, streamUniform(sp.seed, "draft", out.length)));
        const q = got.probs[i];
        if (q) toProbs(d).forEach((x, t) => assert.ok(Math.abs(x - q[t]!) < 1e-4, `round ${round}, q[${i}][${t}]: ${q[t]} vs ${x}`));
      }
      assert.deepEqual(got.tokens, want, `round ${round}, temperature ${sp.temperature} (model seed ${seed})`);
      // The target accepts a random prefix of the drafts (all of them at times), then emits a token of its own.
      const accepted = round % 3 === 0 ? k : rnd(k + 1);
      history.push(...got.tokens.slice(0, accepted), rnd(V));
    }
    drafter.free("s");
    assert.equal(drafter.blocks.usage().used, 0);
    drafter.blocks.checkInvariants();
  }
  drafter.dispose();
});

test("speculative options are checked: vocabulary mismatch, missing draft model, bad numTokens", () => {
  const target = tinyGpt(1);
  const other = new GPT({ nLayer: 1, nHead: 2, nEmbd: 16, blockSize: CTX, vocabSize: V + 3 }, { seed: 2 });
  assert.throws(() => engine(target, { speculative: { method: "draft", numTokens: 2, draftModel: other } }), /draft model's vocabulary has 100 tokens but the target model's has 97/);
  assert.throws(() => engine(target, { speculative: { method: "draft", numTokens: 2 } }), /needs speculative.draftModel/);
  assert.throws(() => engine(target, { speculative: { numTokens: 0 } }), /numTokens must be a positive integer, got 0/);
  assert.throws(() => engine(target, { speculative: { method: "medusa" as "draft", numTokens: 2 } }), /method must be "ngram" or "draft", got "medusa"/);
});

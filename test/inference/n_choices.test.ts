// n > 1: the choices of one request share every prompt KV block (the partial last one
// included) after one prefill, each samples its own seeded stream (seed + i) exactly as a
// separate request with that seed would, usage counts the prompt once, and finishing or
// aborting the request returns every block.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT } from "../../src/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { Engine, type EngineEvent, type GenerationRequest } from "../../src/inference/index.js";
import { DEFAULT_SAMPLING, type SamplingParams } from "../../src/inference/sample/index.js";
import type { Tokenizer } from "../../src/tokenizers/index.js";

const V = 97;
const BS = 8;
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

function tinyGpt(seed: number): GPT {
  const m = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 128, vocabSize: V }, { seed });
  noGrad(() => {
    for (const [name, p] of m.namedParameters()) if (!name.includes("ln") && name.endsWith("weight")) p.mul_(10);
  });
  return m;
}

const engine = (m: GPT) => new Engine(m, tok, { kvCacheBytes: 4 * 2 ** 20, blockSize: BS });
const sampling = (o: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...o });
const request = (promptTokens: number[], sp: SamplingParams, n: number, maxTokens: number): GenerationRequest =>
  ({ requestId: `r${Math.random()}`, promptTokens, sampling: sp, maxTokens, stop: [], stopTokenIds: [], n });

/** Drains a request's events: token ids per choice, finish reasons, usage. */
async function collect(events: AsyncIterable<EngineEvent>, n: number) {
  const ids: number[][] = Array.from({ length: n }, () => []);
  const reasons: string[] = new Array(n).fill("");
  let usage = { promptTokens: -1, completionTokens: -1 };
  for await (const ev of events) {
    if (ev.type === "delta") ids[ev.index]!.push(...ev.tokenIds);
    else if (ev.type === "finish") reasons[ev.index] = ev.reason;
    else usage = ev.usage;
  }
  return { ids, reasons, usage };
}

test("n=3 computes the prompt once, shares all its blocks, and each choice equals a separate request with seed s+i", async () => {
  const model = tinyGpt(rnd(1e6));
  const prompt = Array.from({ length: 3 * BS + 1 + rnd(BS - 1) }, () => rnd(V));  // a partial last block
  const seed = rnd(1e6);
  const sp = sampling({ temperature: 0.9, topK: 40, seed });

  // One request alone: blocks after its prefill step.
  const single = engine(model);
  const one = single.submit(request(prompt, sp, 1, 12));
  single.step();
  const blocksOne = single.blocks.usage().used;
  assert.equal(blocksOne, Math.ceil(prompt.length / BS));
  await collect(one, 1);
  await single.shutdown();

  const e = engine(model);
  const three = e.submit(request(prompt, sp, 3, 12));
  e.step();  // prefill + first tokens + forks, before the loop's first step
  assert.equal(e.scheduler.numRunning, 3, "the choices run after one prefill");
  assert.equal(e.blocks.usage().used, blocksOne, "the choices share every prompt block");
  e.blocks.checkInvariants();
  const got = await collect(three, 3);
  assert.deepEqual(got.reasons, ["length", "length", "length"]);
  assert.deepEqual(got.usage, { promptTokens: prompt.length, completionTokens: 36 }, "usage counts the prompt once");
  assert.equal(e.stats().promptTokens, prompt.length);
  assert.equal(e.blocks.usage().used, 0, "every block returns");
  e.blocks.checkInvariants();
  assert.ok(got.ids[0]!.join() !== got.ids[1]!.join() && got.ids[1]!.join() !== got.ids[2]!.join() && got.ids[0]!.join() !== got.ids[2]!.join(), "different seeds give different choices");
  for (let i = 0; i < 3; i++) {
    const alone = await collect(e.submit(request(prompt, sampling({ temperature: 0.9, topK: 40, seed: seed + i }), 1, 12)), 1);
    assert.deepEqual(got.ids[i], alone.ids[0], `choice ${i} equals a request with seed ${seed + i}`);
  }
  // Greedy choices are all the same text.
  const greedy = await collect(e.submit(request(prompt, sampling({ temperature: 0 }), 2, 10)), 2);
  assert.deepEqual(greedy.ids[0], greedy.ids[1]);
  assert.equal(e.blocks.usage().used, 0);
  await e.shutdown();
});

test("aborting an n=3 request frees every choice, before and after the fork", async () => {
  const model = tinyGpt(rnd(1e6));
  const e = engine(model);
  const prompt = Array.from({ length: 2 * BS + 3 }, () => rnd(V));
  // Mid-stream.
  const ctrl = new AbortController();
  const events = e.submit(request(prompt, sampling({ temperature: 1, seed: rnd(1e6) }), 3, 80), ctrl.signal);
  const reasons: string[] = new Array(3).fill("");
  let deltas = 0;
  for await (const ev of events) {
    if (ev.type === "delta" && ++deltas === 7) {
      assert.equal(e.scheduler.numRunning, 3);
      ctrl.abort();
    }
    if (ev.type === "finish") reasons[ev.index] = ev.reason;
  }
  assert.deepEqual(reasons, ["abort", "abort", "abort"]);
  assert.equal(e.blocks.usage().used, 0);
  e.blocks.checkInvariants();
  // Before the prompt is computed (the choices never forked).
  const early = new AbortController();
  const pending = e.submit(request(prompt, sampling({ temperature: 1, seed: 5 }), 3, 80), early.signal);
  early.abort();
  const got = await collect(pending, 3);
  assert.deepEqual(got.reasons, ["abort", "abort", "abort"]);
  assert.deepEqual(got.ids, [[], [], []]);
  assert.equal(e.blocks.usage().used, 0);
  assert.equal(e.scheduler.numRunning + e.scheduler.numWaiting, 0);
  e.blocks.checkInvariants();
  await e.shutdown();
});

test("n=2 with n-gram speculation: each choice still equals its separate seeded request", async () => {
  const model = tinyGpt(rnd(1e6));
  const e = new Engine(model, tok, { kvCacheBytes: 4 * 2 ** 20, blockSize: BS, speculative: { numTokens: 3, ngramMax: 2 } });
  const base = Array.from({ length: 6 }, () => rnd(V));
  const prompt = [...base, ...base, ...base];  // repetitive: the lookup finds drafts
  const seed = rnd(1e6);
  const got = await collect(e.submit(request(prompt, sampling({ temperature: 0.5, seed }), 2, 30)), 2);
  for (let i = 0; i < 2; i++) {
    const alone = await collect(e.submit(request(prompt, sampling({ temperature: 0.5, seed: seed + i }), 1, 30)), 1);
    assert.deepEqual(got.ids[i], alone.ids[0], `choice ${i}`);
  }
  assert.ok(e.stats().speculativeProposed! > 0);
  assert.equal(e.blocks.usage().used, 0);
  e.blocks.checkInvariants();
  await e.shutdown();
});

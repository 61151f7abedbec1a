// Serving and sampling mixture-of-experts models: the paged runner and generate() run MoE layers
// dropless, so continuous batching gives each request the tokens it gets alone (a capacity limit
// would make a request depend on its batch neighbours); eval mode without that switch uses the
// eval capacity factor; int8 and bf16 serving work on expert weights; config.json and
// model.safetensors use the documented Mixtral-like names and round-trip.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { GPT, generate, loadTokenizer, noGrad, randn, tensor } from "../../src/index.js";
import { MoE, Int8Linear, setMoEDropless } from "../../src/nn/index.js";
import { Engine } from "../../src/inference/index.js";
import { quantizeModelInt8, dequantizeModel } from "../../src/inference/quant/index.js";
import { createServer } from "../../src/serve/index.js";

const tok = loadTokenizer("gpt2");

/**
 * A small top-2 MoE GPT whose eval capacity factor (0.5) would drop a quarter or more of the
 * routing choices of any batch. Routers scaled up so routing is decisive and uneven (a freshly
 * initialised router sends tokens almost uniformly at random), and experts with weights large
 * enough that a dropped choice changes the next token (at GPT-2's 0.02 init the residual
 * stream barely sees the MLPs).
 */
function moeModel(seed = 3): GPT {
  const model = new GPT({
    nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 96, vocabSize: 50304,
    moe: { numExperts: 8, topK: 2, capacityFactor: 1.0, evalCapacityFactor: 0.5 },
  }, { seed });
  noGrad(() => {
    for (const m of moeLayers(model)) {
      m.gate.weight.mul_(40);
      for (const e of m.experts) for (const p of e.parameters()) p.mul_(15);
    }
  });
  return model;
}

/** The largest dropped fraction any MoE layer reports while `fn` runs (forward hooks). */
async function maxDropped(model: GPT, fn: () => Promise<void>): Promise<number> {
  let most = 0;
  const handles = moeLayers(model).map((m) => m.registerForwardHook(() => { most = Math.max(most, m.lastStats!.droppedFraction); }));
  try {
    await fn();
  } finally {
    for (const remove of handles) remove();
  }
  return most;
}

function moeLayers(model: GPT): MoE[] {
  return model.h.map((b) => b.mlp).filter((m): m is MoE => m instanceof MoE);
}

const PROMPTS = Array.from({ length: 8 }, (_, i) => `Request ${i}: the ${["jury", "city", "river", "house"][i % 4]} said${" that".repeat(i % 3)}`);

async function serveAndCompare(model: GPT, label: string): Promise<void> {
  const alone = PROMPTS.map((p) => tok.decode([...generate(model, tok.encode(p), { maxNewTokens: 10, temperature: 0, stopTokens: [tok.eotToken] })].filter((t) => t !== tok.eotToken)));
  const engine = new Engine(model, tok, { modelName: "moe", kvCacheBytes: 8 * 2 ** 20, blockSize: 16, maxNumBatchedTokens: 64 });
  const app = createServer({ engine });
  try {
    await app.listen({ port: 0, host: "127.0.0.1" });
    const client = new OpenAI({ apiKey: "none", baseURL: `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1` });
    let batched: OpenAI.Completion[] = [];
    const dropped = await maxDropped(model, async () => {
      batched = await Promise.all(PROMPTS.map((p) => client.completions.create({ model: "moe", prompt: p, max_tokens: 10, temperature: 0 })));
    });
    batched.forEach((r, i) => assert.equal(r.choices[0]!.text, alone[i], `${label}: request ${i}`));
    assert.ok(engine.stats().steps < PROMPTS.length * 10, `${label}: requests shared steps (${engine.stats().steps} steps)`);
    assert.equal(dropped, 0, `${label}: the runner drops nothing`);
  } finally {
    await app.close();
    await engine.shutdown();
  }
}

test("Engine continuous batching of an MoE model gives each request the greedy tokens of generate() alone", async () => {
  const model = moeModel();
  await serveAndCompare(model, "float32");
  // The texts differ between prompts, so the comparison above is not of one repeated token.
  const texts = new Set(PROMPTS.map((p) => tok.decode([...generate(model, tok.encode(p), { maxNewTokens: 10, temperature: 0 })])));
  assert.ok(texts.size > 1, "different prompts give different continuations");
});

test("MoE.forward() in eval mode uses evalCapacityFactor, and setMoEDropless() drops nothing with the same outputs as an unbounded capacity", () => {
  const model = moeModel(5);
  const moe = moeLayers(model)[0]!;
  const x = randn([3, 16, 32], { seed: 11 });                                   // (B, T, C): N = 48 tokens
  const N = 48, E = 8, k = 2;
  noGrad(() => {
    moe.train();
    moe.forward(x).dispose();
    assert.equal(moe.lastStats!.capacity, Math.ceil((1.0 * N * k) / E), "training: capacity_factor");
    moe.eval();
    moe.forward(x).dispose();
    assert.equal(moe.lastStats!.capacity, Math.ceil((0.5 * N * k) / E), "eval: eval_capacity_factor");
    assert.ok(moe.lastStats!.droppedFraction > 0, "eval capacity factor 0.5 drops choices");

    const restore = setMoEDropless(model, true);
    const y = moe.forward(x).data() as Float32Array;
    const s = moe.lastStats!;
    assert.equal(s.droppedFraction, 0);
    const busiest = Math.max(...s.expertFraction.map((f) => Math.round(f * N * k)));
    assert.equal(s.capacity, busiest, "dropless capacity is the busiest expert's load");
    restore();
    assert.equal(moe.dropless, false, "restore() puts the previous setting back");
    const unbounded = new MoE({ nEmbd: 32, numExperts: E, topK: k, evalCapacityFactor: Infinity });
    unbounded.eval();
    unbounded.loadStateDict(moe.stateDict());
    const ref = unbounded.forward(x).data() as Float32Array;
    let err = 0;
    for (let i = 0; i < y.length; i++) err = Math.max(err, Math.abs(y[i]! - ref[i]!));
    assert.ok(err < 1e-6, `dropless vs capacity Infinity: max abs diff ${err}`);
    moe.forward(x).dispose();
    assert.equal(moe.lastStats!.capacity, Math.ceil((0.5 * N * k) / E), "eval losses use evalCapacityFactor again");
    // Training ignores the switch: dropless is an inference setting.
    setMoEDropless(model, true);
    moe.train();
    moe.forward(x).dispose();
    assert.equal(moe.lastStats!.capacity, Math.ceil((1.0 * N * k) / E));
  });
});

test("quantizeModelInt8() swaps every expert's projections (not the router) and serves an MoE model under continuous batching", async () => {
  const model = moeModel(7);
  const ids = tok.encode("The jury said that the city of Atlanta");
  const idx = tensor(Int32Array.from(ids), { shape: [1, ids.length], dtype: "int32" });
  setMoEDropless(model, true);
  model.eval();
  const f32 = noGrad(() => model.forward(idx).logits.data() as Float32Array);
  const s = quantizeModelInt8(model);
  assert.equal(s.linears, 2 * (2 + 2 * 8), "2 attention projections + 2 per expert, per block");
  for (const m of moeLayers(model)) {
    assert.ok(m.experts.every((e) => e.c_fc instanceof Int8Linear && e.c_proj instanceof Int8Linear));
    assert.ok(!(m.gate instanceof Int8Linear), "the router stays float32");
  }
  const q = noGrad(() => model.forward(idx).logits.data() as Float32Array);
  let num = 0, den = 0;
  for (let i = 0; i < q.length; i++) {
    num = Math.max(num, Math.abs(q[i]! - f32[i]!));
    den = Math.max(den, Math.abs(f32[i]!));
  }
  assert.ok(num / den < 0.05, `int8 logits within 5% of float32 (got ${(num / den).toExponential(2)})`);
  await serveAndCompare(model, "int8");
  dequantizeModel(model);
  const back = noGrad(() => model.forward(idx).logits.data() as Float32Array);
  assert.deepEqual(back, f32, "dequantizeModel restores the float32 experts exactly");
});

test("an MoE model serves in bfloat16 with continuous batching equal to generate() alone", async () => {
  const model = moeModel(9);
  model.to("bfloat16");
  await serveAndCompare(model, "bfloat16");
});

test("savePretrained() writes Mixtral-like MoE names and config fields that GPT.fromPretrained() reads back to the same logits", async () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-moe-"));
  try {
    const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 97, moe: { numExperts: 4, topK: 2, every: 2, evalCapacityFactor: 1.5 } }, { seed: 4 });
    noGrad(() => { for (const p of model.parameters()) p.copy_(randn(p.shape, { seed: p.numel + 17 }).mul(0.1)); });
    await model.savePretrained(dir);
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    assert.equal(cfg.num_local_experts, 4);
    assert.equal(cfg.num_experts_per_tok, 2);
    assert.equal(cfg.moe_layer_frequency, 2);
    assert.equal(cfg.moe_eval_capacity_factor, 1.5);
    const raw = readFileSync(join(dir, "model.safetensors"));
    const header = JSON.parse(raw.subarray(8, 8 + Number(raw.readBigUInt64LE(0))).toString("utf8")) as Record<string, { shape: number[] }>;
    assert.ok("h.0.mlp.c_fc.weight" in header, "block 0 is dense (moe_layer_frequency 2)");
    assert.deepEqual(header["h.1.mlp.gate.weight"]!.shape, [4, 32], "router [experts, C]");
    for (let j = 0; j < 4; j++) {
      assert.deepEqual(header[`h.1.mlp.experts.${j}.c_fc.weight`]!.shape, [128, 32], "nn.Linear layout [out, in]");
      assert.deepEqual(header[`h.1.mlp.experts.${j}.c_proj.weight`]!.shape, [32, 128]);
      assert.deepEqual(header[`h.1.mlp.experts.${j}.c_fc.bias`]!.shape, [128]);
    }
    const back = await GPT.fromPretrained(dir);
    assert.deepEqual(back.config.moe, model.config.moe);
    const idx = tensor(Int32Array.from([5, 9, 1, 44, 3, 70, 2, 8]), { shape: [1, 8], dtype: "int32" });
    model.eval();
    back.eval();
    const a = noGrad(() => model.forward(idx).logits.data() as Float32Array);
    const b = noGrad(() => back.forward(idx).logits.data() as Float32Array);
    assert.deepEqual(b, a);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

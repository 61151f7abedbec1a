// The layout enumeration and ranking: impossible layouts are refused with a reason, every
// listed layout is valid, layouts that fit rank above those that do not, and the parameter count
// is GPT-2's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { validateConfig, type TrainConfig } from "../../src/train/config.js";
import {
  BUILTIN_PROFILES, checkLayout, cpuProfile, gptParameters, memoryTrafficBytes, trafficParts, plan, predict, rankPredictions, stageParameters,
  type HardwareProfile, type Layout,
} from "../../src/plan/index.js";

function config(model: Record<string, unknown> = {}, train: Record<string, unknown> = {}): TrainConfig {
  return validateConfig({
    out_dir: "runs/x",
    model: { n_layer: 4, n_head: 4, n_embd: 64, block_size: 64, vocab_size: 1024, ...model },
    train: { max_steps: 1, micro_batch_size: 4, grad_accum_steps: 4, ...train },
  });
}
const base: Layout = { dp: 1, tp: 1, pp: 1, sp: false, zero: 0, recompute: "none", schedule: "1f1b", virtualStages: 1, microBatchSize: 4, microBatches: 4 };
const a100 = BUILTIN_PROFILES["a100-80g"]!;

test("gptParameters() counts GPT-2 small's 124,439,808 parameters", () => {
  const c = config({ n_layer: 12, n_head: 12, n_embd: 768, block_size: 1024, vocab_size: 50257 });
  assert.equal(gptParameters(c), 124_439_808);
  assert.equal(stageParameters(c, { tp: 1, pp: 1 }, 0), 124_439_808);
});

test("checkLayout() refuses impossible layouts and says why", () => {
  const c = config({ n_head: 2, n_layer: 3 });
  assert.equal(checkLayout(c, base, 1), null);
  assert.match(checkLayout(c, { ...base, tp: 4 }, 4)!, /n_head \(2\) is not divisible by tp \(4\)/);
  assert.match(checkLayout(c, { ...base, pp: 2 }, 2)!, /n_layer \(3\) is not divisible/);
  assert.match(checkLayout(c, { ...base, sp: true }, 1)!, /needs tp > 1/);
  assert.match(checkLayout(c, { ...base, dp: 2 }, 4)!, /not the 4 ranks/);
  const c4 = config();
  assert.match(checkLayout(c4, { ...base, dp: 2, pp: 2, zero: 2 }, 4)!, /ZeRO-2 cannot combine with pipeline/);
  assert.equal(checkLayout(c4, { ...base, dp: 2, pp: 2, zero: 1 }, 4), null);
  assert.match(checkLayout(c4, { ...base, pp: 2, schedule: "interleaved", virtualStages: 2, microBatches: 3 }, 2)!, /divisible by pp/);
});

test("plan() lists only valid layouts on the world size and refuses the rest with reasons", () => {
  const c = config();
  const p = plan(c, 4, a100);
  assert.ok(p.layouts.length > 0 && p.refused.length > 0);
  for (const x of p.layouts) {
    assert.equal(checkLayout(c, x.layout, 4), null);
    assert.equal(x.layout.dp * x.layout.tp * x.layout.pp, 4);
    assert.equal(x.layout.dp * x.layout.microBatches * x.layout.microBatchSize, 16, "the global batch stays the config's");
  }
  for (const r of p.refused) assert.ok(r.reason.length > 0);
  assert.ok(p.layouts.some((x) => x.layout.zero === 3) && p.layouts.some((x) => x.layout.pp === 2) && p.layouts.some((x) => x.layout.sp));
  assert.ok(p.explanation[0]!.startsWith("first choice:"));
});

test("predict(): ZeRO shards model state, sequence parallelism and recomputation shrink activations, the bubble follows the schedule", () => {
  const c = config();
  const mem = (l: Partial<Layout>): number => predict(c, { ...base, ...l }, a100).memory.total;
  const dp4 = { dp: 4, microBatches: 1 };
  assert.ok(mem({ ...dp4, zero: 0 }) > mem({ ...dp4, zero: 1 }) && mem({ ...dp4, zero: 1 }) > mem({ ...dp4, zero: 2 }) && mem({ ...dp4, zero: 2 }) > mem({ ...dp4, zero: 3 }));
  const act = (l: Partial<Layout>): number => predict(c, { ...base, ...l }, a100).memory.activations;
  assert.ok(act({ tp: 2 }) > act({ tp: 2, sp: true }));
  assert.ok(act({}) > act({ recompute: "selective" }) && act({ recompute: "selective" }) > act({ recompute: "full" }));
  const pp = predict(c, { ...base, pp: 2, schedule: "gpipe" }, a100);
  assert.equal(pp.bubble, 1 / 4);
  assert.ok(pp.memory.activations > predict(c, { ...base, pp: 2, schedule: "1f1b" }, a100).memory.activations, "GPipe holds all m micro-batches");
  const full = predict(c, { ...base, recompute: "full" }, a100);
  assert.ok(full.flops.hardware > full.flops.model);
  const dp = predict(c, { ...base, dp: 2, microBatches: 2 }, a100);
  assert.ok(dp.comm_bytes.dp_all_reduce > 0 && dp.step_time.communication > 0 && dp.mfu > 0 && dp.mfu < 1);
});

test("rankPredictions() puts a layout that fits above a faster one that does not", () => {
  const c = config();
  // Memory per rank between the smallest and largest prediction: some fit, some do not.
  const probe = plan(c, 4, a100).layouts.map((x) => x.memory.total).sort((a, b) => a - b);
  const tight: HardwareProfile = { ...a100, memoryBytes: probe[Math.floor(probe.length / 2)]! };
  const p = plan(c, 4, tight);
  const firstMiss = p.layouts.findIndex((x) => !x.fits);
  assert.ok(firstMiss > 0, "some layouts fit and some do not");
  assert.ok(p.layouts.slice(firstMiss).every((x) => !x.fits), "every layout that fits comes first");
  const fast = { ...p.layouts[firstMiss]!, step_time: { compute: 0, communication: 0, total: 1e-9 } };
  assert.equal(rankPredictions([fast, p.layouts[0]!])[0], p.layouts[0]);
  for (let i = 1; i < firstMiss; i++) assert.ok(p.layouts[i - 1]!.step_time.total <= p.layouts[i]!.step_time.total);
});

test("cpuProfile() splits the calibrated machine between its ranks", () => {
  const rec = { version: 1 as const, measured_at: "2025-01-01T00:00:00Z", cpu: "x", threads: 2, memory_bytes: 8e9, gemm_flops: { float32: 2e11 }, gemm_shapes: [], memory_bandwidth: 2e10, collectives: null };
  const hw = cpuProfile(rec, "float32", 4);
  assert.equal(hw.achievableFlops, 5e10);
  assert.equal(hw.memoryBytes, 2e9);
  assert.ok(hw.assumed.some((a) => a.includes("collectives not calibrated")));
});

test("cpuProfile() uses measured collectives per kind, and predict() times each kind at its own bandwidth", () => {
  const kinds = {
    all_reduce: { latency_s: 1e-5, bandwidth: 1e9 }, reduce_scatter: { latency_s: 2e-5, bandwidth: 5e8 },
    all_gather: { latency_s: 1e-5, bandwidth: 1e9 }, send_recv: { latency_s: 1e-5, bandwidth: 2e9 },
  };
  const rec = { version: 1 as const, measured_at: "2025-01-01T00:00:00Z", cpu: "x", threads: 2, memory_bytes: 8e9, gemm_flops: { float32: 2e11 }, gemm_shapes: [], memory_bandwidth: 2e10, collectives: { ranks: 2, small_bytes: 4096, large_bytes: 2 ** 23, kinds } };
  const hw = cpuProfile(rec, "float32", 2);
  assert.deepEqual(hw.collectives, kinds);
  assert.equal(hw.intraNodeBandwidth, 1e9);
  assert.ok(!hw.assumed.some((a) => a.includes("not calibrated")));
  const c = config();
  const z1 = predict(c, { ...base, dp: 2, zero: 1, microBatches: 2 }, hw);
  const want = z1.comm_bytes.dp_reduce_scatter / 5e8 + z1.comm_bytes.dp_all_gather / 1e9;
  assert.ok(z1.step_time.communication >= want && z1.step_time.communication < want + 1e-3, `communication ${z1.step_time.communication} vs bytes/bandwidth ${want}`);
});

test("predict() counts this runtime's memory: 4/4/8 bytes per parameter under bf16, ZeRO shards at the allocator's size, no masks", () => {
  const c = config({ n_embd: 256, block_size: 128, vocab_size: 4096, n_layer: 4 }, { micro_batch_size: 2 });
  const psi = gptParameters(c);
  const l: Layout = { ...base, microBatchSize: 2 };
  const fp32 = predict(c, l, a100).memory;
  const bf16 = predict(config({ n_embd: 256, block_size: 128, vocab_size: 4096, n_layer: 4 }, { micro_batch_size: 2, precision: "bf16" }), l, a100).memory;
  // The fp32 parameters are the master weights: autocast only casts them per matmul.
  for (const m of [fp32, bf16]) assert.deepEqual([m.parameters, m.gradients, m.optimizer], [4 * psi, 4 * psi, 8 * psi]);
  // ... and those 16-bit casts (2 bytes per layer weight and the head) are saved for backward.
  const sbh = 128 * 2 * 256, sbV = 128 * 2 * 4096;
  const layers = 4 * 12 * 256 * 256 + 4096 * 256;
  assert.equal(fp32.activations, 4 * sbh * 80 + 2 * (4 * sbh * (1 + 4096 / 256)) + 4 * sbV);
  assert.equal(bf16.activations, 4 * sbh * 40 + 4 * sbh * (1 + 4096 / 256) + 2 * sbV + 2 * layers);
  // tp2: the composed vocab-parallel cross-entropy keeps 2 more fp32 values per local logit.
  const tp2 = predict(c, { ...l, tp: 2 }, a100).memory;
  const tpLayer = sbh * (2 * (10 + 12 + 5 * 2 / 2) - 2 * (2 + 1));
  assert.equal(tp2.activations, 4 * tpLayer + 2 * (4 * sbh / 2) * (1 + 4096 / 256) + 4 * sbV / 2 + 2 * 4 * sbV / 2);
  // pp2 stage 0 (1F1B, 2 micro-batches in flight of 2 layers each) has no head: its peak is a
  // layer's backward, one layer's activation gradients beside what is stored.
  const pp0 = predict(c, { ...l, pp: 2 }, a100, 0).memory;
  assert.equal(pp0.activations, 2 * 2 * sbh * 80 + sbh * 80);
  // ZeRO-3 on 2 ranks: 2,120,448 floats per shard, one 9 MiB buffer per state (8 steps per power of two).
  const z3 = predict(c, { ...l, dp: 2, zero: 3, microBatches: 2 }, a100).memory;
  assert.equal(psi, 4_240_896);
  assert.deepEqual([z3.parameters, z3.gradients, z3.optimizer], [9 * 2 ** 20, 9 * 2 ** 20, 18 * 2 ** 20]);
});

test("memoryTrafficBytes() counts 4 passes over each micro-batch's activations (5 over the blocks' with full recomputation) and AdamW's 28 bytes per shard parameter", () => {
  const c = config();
  const psi = gptParameters(c);
  const none = trafficParts(c, base), full = trafficParts(c, { ...base, recompute: "full" });
  assert.equal(memoryTrafficBytes(c, base), none.layers + none.head + none.optimizer);
  const acts = (none.layers + none.head) / 4;
  assert.ok(none.layers > 0 && none.head > 0);
  assert.equal(none.optimizer, 28 * psi);
  assert.equal(full.layers, (5 / 4) * none.layers);
  assert.equal(full.head, none.head, "the head is not recomputed");
  assert.equal(memoryTrafficBytes(c, { ...base, dp: 2, zero: 1, microBatches: 2 }), 2 * (acts / 4) * 4 + 14 * psi);
  // and predict() spends it at the profile's memory bandwidth
  const slow = { ...a100, memoryBandwidth: a100.memoryBandwidth / 10 };
  assert.ok(predict(c, base, slow).step_time.compute > predict(c, base, a100).step_time.compute);
});

test("predict() with parallel.offload=disk counts one streamed chunk of optimizer state instead of the moments", () => {
  const model = { n_embd: 256, block_size: 128, vocab_size: 4096, n_layer: 4 };
  const psi = gptParameters(config(model));
  const offloaded = (parallel: Record<string, unknown>) => validateConfig({ ...config(model), parallel: { offload: "disk", ...parallel } });
  for (const l of [base, { ...base, dp: 2, zero: 2 as const, microBatches: 2 }]) {
    const mem = predict(config(model), l, a100).memory, disk = predict(offloaded({ offload_chunk_mb: 1 }), l, a100).memory;
    assert.equal(disk.optimizer, 2 ** 20, `dp${l.dp} zero${l.zero}`);
    assert.ok(mem.optimizer >= (8 * psi) / l.dp, `dp${l.dp} zero${l.zero}: in memory ${mem.optimizer}`);
    assert.equal(mem.total - disk.total, mem.optimizer - 2 ** 20, "the rest is unchanged");
  }
  // A chunk larger than the moments: the moments themselves (the offload file holds no more).
  assert.equal(predict(offloaded({ offload_chunk_mb: 64 }), base, a100).memory.optimizer, 8 * psi);
});

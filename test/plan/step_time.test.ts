// The step-time model's calibrated parts (GEMM table by shape and thread count, the non-GEMM
// rate, the per-op cost, measured collectives), the trainer's planner line and plan_* fields,
// the memory warning, the MFU peak from a profile, and `megalith plan --calibrate` without
// mpirun. No timing assertions: measured rates are checked for being positive and used.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig, type TrainConfig } from "../../src/train/config.js";
import {
  cpuProfile, forwardBackwardOps, gemmRate, gemmSeconds, modelGemmShapes, opsPerStep, predict, trafficParts, writeCalibration,
  type CalibrationRecord, type Layout,
} from "../../src/plan/index.js";
import { calibrate } from "../../src/plan/calibrate.js";
import { measureCollectives } from "../../src/cli/plan.js";
import { memoryWarning, planFields, planLine, predictRun, runLayout } from "../../src/train/_plan_check.js";
import { plannerPeakFlops, peakFlopsKey } from "../../src/train/peak_flops.js";
import { Trainer } from "../../src/train/trainer.js";
import { tempDir, tinyConfig, tinyData, readMetrics } from "../train/_helpers.js";

function config(model: Record<string, unknown> = {}, train: Record<string, unknown> = {}, parallel: Record<string, unknown> = {}): TrainConfig {
  return validateConfig({
    out_dir: "runs/x",
    model: { n_layer: 4, n_head: 4, n_embd: 64, block_size: 32, vocab_size: 512, ...model },
    train: { max_steps: 1, micro_batch_size: 2, grad_accum_steps: 2, ...train },
    parallel,
  });
}
const base: Layout = { dp: 1, tp: 1, pp: 1, sp: false, zero: 0, recompute: "none", schedule: "1f1b", virtualStages: 1, microBatchSize: 2, microBatches: 2 };

/** A record with tables: 1-thread rates half the 2-thread ones, so the lookups are visible. */
function record(): CalibrationRecord {
  const c = config();
  const table: NonNullable<CalibrationRecord["gemm_table"]> = [];
  for (const threads of [2, 1]) {
    for (const [i, mkn] of [...modelGemmShapes(c), ...modelGemmShapes(c, { tp: 2, microBatchSize: 2 })].entries()) {
      table.push({ dtype: "float32", threads, mkn, flops: (threads === 2 ? 4e10 : 2e10) * (1 + i / 10) });
    }
  }
  return {
    version: 1, measured_at: "2026-12-07T00:00:00.000Z", cpu: "test-cpu", threads: 2, memory_bytes: 16 * 2 ** 30,
    gemm_flops: { float32: 5e10 }, gemm_shapes: [], memory_bandwidth: 2e10, collectives: null,
    gemm_table: table,
    non_gemm: [{ dtype: "float32", threads: 2, bandwidth: 4e9, head_bandwidth: 1e9, step_s: 0.01, model: { n_embd: 64, n_head: 4, block_size: 32, vocab_size: 512, micro_batch_size: 2 } },
      { dtype: "float32", threads: 1, bandwidth: 3e9, step_s: 0.02, model: { n_embd: 64, n_head: 4, block_size: 32, vocab_size: 512, micro_batch_size: 2 } }],
    op_overhead_s: 5e-6,
  };
}

test("modelGemmShapes() lists a block's four products and the head, split by tp", () => {
  const c = config();
  assert.deepEqual(modelGemmShapes(c), [[64, 64, 192], [64, 64, 64], [64, 64, 256], [64, 256, 64], [64, 64, 512]]);
  assert.deepEqual(modelGemmShapes(c, { tp: 2, microBatchSize: 4 }), [[128, 64, 96], [128, 32, 64], [128, 64, 128], [128, 128, 64], [128, 64, 256]]);
});

test("cpuProfile() gives each rank the tables measured at its own thread count", () => {
  const rec = record();
  const one = cpuProfile(rec, "float32", 1), two = cpuProfile(rec, "float32", 2);
  const qkv = modelGemmShapes(config())[0]!;
  assert.equal(gemmRate(one, qkv), 4e10, "1 process: the 2-thread rate");
  assert.equal(gemmRate(two, qkv), 2e10, "2 ranks on 2 threads: each the 1-thread rate");
  assert.deepEqual([one.elementwiseBandwidth, two.elementwiseBandwidth, one.opOverhead], [4e9, 3e9, 5e-6]);
  assert.deepEqual([one.headBandwidth, two.headBandwidth], [1e9, undefined], "the head's rate where measured");
  // 4 ranks on 2 threads: 1 thread each, sharing the cores 2 to 1.
  const four = cpuProfile(rec, "float32", 4);
  assert.equal(gemmRate(four, qkv), 1e10);
  assert.equal(four.opOverhead, 1e-5);
  // bf16 has no table here: the float32 one stands in; an old record (no tables) has none.
  assert.equal(gemmRate(cpuProfile(rec, "bfloat16", 1), qkv), 4e10);
  const old = cpuProfile({ ...rec, gemm_table: undefined, non_gemm: undefined, op_overhead_s: undefined }, "float32", 2);
  assert.equal(gemmRate(old, qkv), 2.5e10, "no table: the achievable rate (gemm_flops / ranks)");
  assert.equal(old.elementwiseBandwidth, undefined);
});

test("gemmRate() takes the nearest measured shape; gemmSeconds() weighs each product by its FLOPs", () => {
  const hw = cpuProfile(record(), "float32", 1);
  const shapes = modelGemmShapes(config());
  assert.equal(gemmRate(hw, [70, 60, 200]), gemmRate(hw, shapes[0]!), "near qkv");
  const F = 1e9;
  const secs = gemmSeconds(config(), base, hw, F);
  const w = shapes.map((m, i) => 2 * m[0] * m[1] * m[2] * (i === 4 ? 1 : 4));
  const expect = F * w.reduce((a, wi, i) => a + wi / gemmRate(hw, shapes[i]!), 0) / w.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(secs / expect - 1) < 1e-12, `${secs} vs ${expect}`);
});

test("predict() adds the non-GEMM traffic at the measured rate and the per-op cost", () => {
  const rec = record();
  const c = config();
  const withOps = predict(c, base, cpuProfile(rec, "float32", 1));
  const noOps = predict(c, base, cpuProfile({ ...rec, op_overhead_s: 0 }, "float32", 1));
  assert.ok(Math.abs(withOps.step_time.compute - noOps.step_time.compute - opsPerStep(c, base) * 5e-6) < 1e-12);
  assert.ok(opsPerStep(c, base) > forwardBackwardOps(c, base), "AdamW's ops on top");
  assert.ok(forwardBackwardOps(c, { ...base, recompute: "full" }) > forwardBackwardOps(c, { ...base, recompute: "selective" }));
  const slowKernels = predict(c, base, cpuProfile({ ...rec, non_gemm: rec.non_gemm!.map((r) => ({ ...r, bandwidth: r.bandwidth / 2 })) }, "float32", 1));
  const t = trafficParts(c, base);
  assert.ok(Math.abs(slowKernels.step_time.compute - withOps.step_time.compute - (t.layers + t.optimizer) / 4e9) < 1e-12, "blocks and AdamW at the block rate");
  const slowHead = predict(c, base, cpuProfile({ ...rec, non_gemm: rec.non_gemm!.map((r) => ({ ...r, head_bandwidth: 5e8 })) }, "float32", 1));
  assert.ok(Math.abs(slowHead.step_time.compute - withOps.step_time.compute - (t.head / 5e8 - t.head / 1e9)) < 1e-12, "the head at its own rate");
});

test("trafficParts() adds the composed vocab-parallel cross-entropy's z, exp(z) and one-hot under tp", () => {
  const c = config();
  const one = trafficParts(c, base), two = trafficParts(c, { ...base, tp: 2 });
  const logitsPerRank = (32 * 2 * 512) / 2;
  // The head's own activations shrink with tp (the logits split); the composed loss adds 4 passes x 3 fp32 values per local logit per micro-batch.
  const tp2Fused = trafficParts({ ...c }, { ...base, tp: 2 }).head - 4 * 2 * 3 * 4 * logitsPerRank;
  assert.ok(tp2Fused > 0 && tp2Fused < one.head);
  assert.ok(two.head > tp2Fused);
});

test("predict() charges measured collectives: dp all-reduce time grows with their latency", () => {
  const rec = record();
  const c = config({}, {}, { dp: 2 });
  const l: Layout = { ...base, dp: 2, microBatches: 1 };
  const kinds = (lat: number) => ({ all_reduce: { latency_s: lat, bandwidth: 1e9 }, reduce_scatter: { latency_s: lat, bandwidth: 1e9 }, all_gather: { latency_s: lat, bandwidth: 1e9 }, send_recv: { latency_s: lat, bandwidth: 1e9 } });
  const fast = predict(c, l, cpuProfile({ ...rec, collectives: { ranks: 2, small_bytes: 4096, large_bytes: 2 ** 23, kinds: kinds(1e-5) } }, "float32", 2));
  const slow = predict(c, l, cpuProfile({ ...rec, collectives: { ranks: 2, small_bytes: 4096, large_bytes: 2 ** 23, kinds: kinds(1e-3) } }, "float32", 2));
  assert.ok(fast.step_time.communication > 0 && slow.step_time.communication > fast.step_time.communication);
});

test("calibrate() measures GEMM, non-GEMM and per-op tables at a model's shapes and thread counts", { timeout: 120_000 }, () => {
  const c = config({ n_layer: 2, n_embd: 32, n_head: 2, block_size: 16, vocab_size: 128 });
  const rec = calibrate({ shapes: [[64, 64, 64]], dtypes: ["float32"], budgetMs: 5, copyBytes: 2 ** 20, config: c, threads: [1], tableBudgetMs: 5 });
  const shapes = [...modelGemmShapes(c), ...modelGemmShapes(c, { tp: 2, microBatchSize: 2 })].map((s) => s.join("x"));
  for (const s of shapes) assert.ok(rec.gemm_table!.some((r) => r.threads === 1 && r.mkn.join("x") === s && r.flops > 0), s);
  assert.equal(rec.non_gemm!.length, 1);
  assert.ok(rec.non_gemm![0]!.bandwidth > 0 && rec.non_gemm![0]!.step_s > 0);
  assert.deepEqual(rec.non_gemm![0]!.model, { n_embd: 32, n_head: 2, block_size: 16, vocab_size: 128, micro_batch_size: 2, n_layer: [1, 2] });
  assert.ok(rec.non_gemm![0]!.head_bandwidth! > 0 && rec.non_gemm![0]!.steps_s!.length === 2);
  assert.ok(rec.op_overhead_s! > 0);
  const p = predict(c, base, cpuProfile(rec, "float32", 1));
  assert.ok(Number.isFinite(p.step_time.total) && p.step_time.total > 0);
});

test("measureCollectives() skips with a reason when mpirun cannot run", () => {
  const missing = measureCollectives(2, 5, (() => ({ error: Object.assign(new Error("spawn mpirun ENOENT"), { code: "ENOENT" }), status: null, stdout: "", stderr: "" })) as never);
  assert.equal(missing.collectives, null);
  assert.match(missing.why, /mpirun not found/);
  const failed = measureCollectives(2, 5, (() => ({ status: 1, stdout: "", stderr: "ORTE error\nsomething broke" })) as never);
  assert.equal(failed.collectives, null);
  assert.match(failed.why, /exited with 1: .*something broke/);
  const kinds = { all_reduce: { latency_s: 1e-5, bandwidth: 1e9 }, reduce_scatter: { latency_s: 1e-5, bandwidth: 1e9 }, all_gather: { latency_s: 1e-5, bandwidth: 1e9 }, send_recv: { latency_s: 1e-5, bandwidth: 1e9 } };
  const ok = measureCollectives(2, 5, (() => ({ status: 0, stdout: `[1,1]<stdout>:noise\n[1,0]<stdout>:${JSON.stringify({ ranks: 2, small_bytes: 4096, large_bytes: 8, kinds })}\n`, stderr: "" })) as never);
  assert.deepEqual(ok.collectives?.kinds, kinds);
});

test("measureCollectives() measures every kind in a real 2-rank mpirun job", { timeout: 120_000 }, (t) => {
  const r = measureCollectives(2, 100);
  if (!r.collectives && /mpirun not found/.test(r.why)) return t.skip(r.why);
  assert.ok(r.collectives, r.why);
  assert.equal(r.collectives.ranks, 2);
  for (const [kind, k] of Object.entries(r.collectives.kinds)) assert.ok(k.latency_s > 0 && k.bandwidth > 0 && Number.isFinite(k.bandwidth), `${kind}: ${JSON.stringify(k)}`);
});

test("predictRun() models GPT language-model runs only; memoryWarning() compares the ranks' peak with what is available", () => {
  const c = config();
  const p = predictRun(c, record())!;
  assert.deepEqual(p.layout, runLayout(c));
  assert.ok(p.stepSeconds! > 0 && p.busiestBytes > 0);
  assert.equal(predictRun(c, null)!.stepSeconds, null, "no calibration: memory only");
  assert.equal(predictRun(config({ type: "bert" }), record()), null);
  assert.equal(runLayout(config({}, { activation_checkpointing: true })).recompute, "full");
  assert.equal(memoryWarning(p, 1, p.busiestBytes + 1), null);
  assert.match(memoryWarning(p, 2, p.busiestBytes * 1.5)!, /predicts a peak of .* over the 2 ranks/);
  const line = planLine(p, { mem_params_mb: 1, mem_grads_mb: 1, mem_optimizer_mb: 2, mem_act_peak_mb: 3, step_ms: 40 });
  assert.match(line, /^plan: measured\/predicted .*params 1\.0\/.*step 40\/\d+ ms/);
});

test("plannerPeakFlops() reads the calibrated GEMM peak for this CPU, threads and dtype", () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-peakprof-"));
  try {
    const file = join(dir, "profile.json");
    const key = peakFlopsKey("float32");
    assert.equal(plannerPeakFlops(key, file), null, "no profile");
    writeCalibration({ ...record(), cpu: key.cpu, threads: key.threads, gemm_table: [{ dtype: "float32", threads: key.threads, mkn: [8, 8, 8], flops: 7e10 }] }, file);
    assert.equal(plannerPeakFlops(key, file), 7e10);
    assert.equal(plannerPeakFlops({ ...key, cpu: "another CPU" }, file), null);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Trainer: the first step's metrics row carries the planner's plan_* prediction beside the measurement", { timeout: 120_000 }, async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const old = process.env.MEGALITH_PLAN_PROFILE;
  process.env.MEGALITH_PLAN_PROFILE = join(dir, "..", `no-profile-${process.pid}.json`);
  try {
    const c = tinyConfig(dir, data.dir, { train: { max_steps: 2, peak_flops: 1e9 } });
    const tr = new Trainer(c, { log: false });
    await tr.setup();
    await tr.run();
    const rows = readMetrics(dir).filter((r) => r.split === undefined);
    const expect = planFields(predictRun(c, null)!);
    assert.deepEqual(Object.fromEntries(Object.keys(expect).map((k) => [k, rows[0]![k]])), expect);
    assert.equal(rows[0]!.plan_step_ms, undefined, "no calibration: no step-time prediction");
    assert.equal(rows[1]!.plan_params_mb, undefined, "only the first step");
    for (const r of rows) assert.ok((r.step_cpu_ms as number) > 0, "every step reports its CPU time");
    // The parameters are predicted exactly (the planner counts what the allocator holds).
    assert.ok(Math.abs((rows[0]!.plan_params_mb as number) - (rows[0]!.mem_params_mb as number)) < 0.01, JSON.stringify(rows[0]));
  } finally {
    if (old === undefined) delete process.env.MEGALITH_PLAN_PROFILE;
    else process.env.MEGALITH_PLAN_PROFILE = old;
  }
});

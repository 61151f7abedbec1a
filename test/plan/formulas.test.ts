// The planner's formulas against the papers' own numbers: ZeRO Figure 1, Korthikanti et al.'s
// Table 2, PTD-P's end-to-end training-time estimates, and the bubble. Pure arithmetic.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FP32_ADAM, activationLayerBytes, activationLayerBytesAt, allocatedBytes, dropoutMaskBytes, inFlightMicroBatches, iterationFlops, modelStateBytes,
  pipelineBubble, ringBytes, trainingTimeSeconds,
} from "../../src/plan/index.js";
import { simulatePipeline } from "../../src/parallel/pipeline/schedules.js";

const within = (got: number, want: number, rel: number, what: string): void =>
  assert.ok(Math.abs(got - want) <= rel * Math.abs(want), `${what}: got ${got}, want ${want} within ${rel * 100}%`);

test("modelStateBytes() reproduces ZeRO Figure 1 (Ψ = 7.5B, K = 12, N_d = 64)", () => {
  const psi = 7.5e9, nd = 64;
  const paper = [120, 31.4, 16.6, 1.9];  // GB per device: baseline, P_os, P_os+g, P_os+g+p
  const exact = [16 * psi, 4 * psi + (12 * psi) / nd, 2 * psi + (14 * psi) / nd, (16 * psi) / nd];
  for (const stage of [0, 1, 2, 3] as const) {
    const gb = modelStateBytes(psi, stage, nd).total / 1e9;
    assert.equal(gb * 1e9, exact[stage], `stage ${stage} is the closed form`);
    // The figure prints one decimal: 1.875 GB appears as 1.9 (1.3% from the rounded figure,
    // exact to the paper's formula); the other three are within 1% of the printed numbers.
    assert.equal(Math.round(gb * 10) / 10, paper[stage], `stage ${stage} rounds to the figure's ${paper[stage]} GB`);
    if (stage < 3) within(gb, paper[stage]!, 0.01, `stage ${stage}`);
  }
});

test("modelStateBytes() in fp32 is 4Ψ + 4Ψ + 8Ψ, sharded the same way", () => {
  const m = modelStateBytes(1000, 2, 4, FP32_ADAM);
  assert.deepEqual(m, { parameters: 4000, gradients: 1000, optimizer: 2000, total: 7000 });
  assert.equal(modelStateBytes(1000, 0, 4, FP32_ADAM).total, 16000);
  assert.equal(modelStateBytes(1000, 3, 4, FP32_ADAM).total, 4000);
});

test("activationLayerBytes() matches Korthikanti et al. Table 2 for GPT-3 175B (s=2048, b=1, h=12288, a=96, t=8)", () => {
  const g = { s: 2048, b: 1, h: 12288, a: 96 };
  const sbh = 2048 * 12288;
  const t = 8;
  assert.equal((5 * g.a * g.s) / g.h, 80, "the paper's 5as/h = 80 for GPT-3: attention dominates");
  const rows: Array<[string, number, number]> = [
    ["no parallelism sbh(34 + 5as/h)", activationLayerBytes(g), sbh * (34 + 80)],
    ["tensor parallel sbh(10 + 24/t + 5as/ht)", activationLayerBytes({ ...g, t }), sbh * (10 + 24 / t + 80 / t)],
    ["tensor + sequence parallel sbh(34/t + 5as/ht)", activationLayerBytes({ ...g, t, sp: true }), sbh * (34 / t + 80 / t)],
    ["tensor parallel + selective sbh(10 + 24/t)", activationLayerBytes({ ...g, t }, "selective"), sbh * (10 + 24 / t)],
    ["tensor + sequence + selective sbh(34/t)", activationLayerBytes({ ...g, t, sp: true }, "selective"), (sbh * 34) / t],
    ["full recomputation 2sbh", activationLayerBytes({ ...g, t }, "full"), 2 * sbh],
  ];
  for (const [what, got, want] of rows) within(got, want, 1e-12, what);
  // Worked numbers: 2.87 GB per layer without parallelism, 0.359 GB with TP+SP, 0.107 GB adding selective recomputation.
  within(activationLayerBytes(g) / 1e9, 2.869, 0.001, "no parallelism, GB");
  within(activationLayerBytes({ ...g, t, sp: true }) / 1e9, 0.3586, 0.001, "TP+SP, GB");
  within(activationLayerBytes({ ...g, t, sp: true }, "selective") / 1e9, 0.10695, 0.001, "TP+SP+selective, GB");
  // fp32 activations double the paper's 16-bit count, less the masks we never store (2sbh + as²b).
  assert.equal(activationLayerBytesAt(g, "none", 4), 2 * activationLayerBytes(g) - 2 * (2 * sbh + g.a * g.s * g.s * g.b));
});

test("activationLayerBytesAt() keeps no dropout masks: fp32 is sbh(64 + 8as/h), selective sbh·64, full 4sbh", () => {
  const g = { s: 128, b: 2, h: 256, a: 4 };
  const sbh = 128 * 2 * 256, as_h = (4 * 128) / 256;
  assert.equal(dropoutMaskBytes(g), 2 * sbh + 4 * 128 * 128 * 2);
  assert.equal(activationLayerBytesAt(g, "none", 4), sbh * (64 + 8 * as_h));
  assert.equal(activationLayerBytesAt(g, "selective", 4), sbh * 64);
  assert.equal(activationLayerBytesAt(g, "full", 4), 4 * sbh);
  // Tensor parallel: the two sbh masks stay replicated, the attention mask is split.
  assert.equal(activationLayerBytesAt({ ...g, t: 2 }, "none", 4), 2 * sbh * (10 + 12 + (5 * as_h) / 2) - 2 * (2 * sbh + sbh * as_h / 2));
  assert.equal(activationLayerBytesAt(g, "none", 2), sbh * (32 + 4 * as_h));
});

test("allocatedBytes() rounds like the native allocator: 64 B granules to 4 KiB, then 8 steps per power of two", () => {
  assert.equal(allocatedBytes(1), 64);
  assert.equal(allocatedBytes(4096), 4096);
  assert.equal(allocatedBytes(4097), 4608);  // p = 4096, step 512
  assert.equal(allocatedBytes(786432), 786432);  // 256 x 768 floats: already a step
  assert.equal(allocatedBytes(8_481_792), 9 * 2 ** 20);  // a ZeRO shard of 2,120,448 floats
});

test("trainingTimeSeconds() reproduces PTD-P's end-to-end estimates (8TP/nX)", () => {
  const day = 86400;
  within(trainingTimeSeconds(300e9, 175e9, 1024, 140e12) / day, 34, 0.05, "GPT-3 175B, 300B tokens, 1024 GPUs at 140 TFLOP/s");
  within(trainingTimeSeconds(450e9, 1.008e12, 3072, 163e12) / day, 84, 0.05, "1T model, 450B tokens, 3072 GPUs at 163 TFLOP/s");
});

test("iterationFlops() is PTD-P's 96Bslh²(1 + s/6h + V/16lh) with full recomputation, 72 and V/12lh without", () => {
  const s = { B: 1536, s: 2048, l: 96, h: 12288, V: 51200 };
  const full = 96 * s.B * s.s * s.l * s.h ** 2 * (1 + s.s / (6 * s.h) + s.V / (16 * s.l * s.h));
  within(iterationFlops(s, "full"), full, 1e-12, "full");
  within(iterationFlops(s, "none"), 72 * s.B * s.s * s.l * s.h ** 2 * (1 + s.s / (6 * s.h) + s.V / (12 * s.l * s.h)), 1e-12, "none");
  // Without the logit layer, full recomputation is exactly 4/3 of the model FLOPs (4 passes vs 3).
  const noV = { ...s, V: 0 };
  within(iterationFlops(noV, "full") / iterationFlops(noV, "none"), 4 / 3, 1e-12, "full / none");
  const sel = iterationFlops(s, "selective");
  assert.ok(sel > iterationFlops(s, "none") && sel < iterationFlops(s, "full"), "selective recomputes only the attention core");
});

test("pipelineBubble() is (p-1)/m, and (p-1)/(m·v) interleaved", () => {
  assert.equal(pipelineBubble("1f1b", 1, 8), 0);
  assert.equal(pipelineBubble("gpipe", 4, 8), 3 / 8);
  assert.equal(pipelineBubble("1f1b", 4, 8), 3 / 8);
  assert.equal(pipelineBubble("interleaved", 4, 8, 2), 3 / 16);
  assert.equal(pipelineBubble("1f1b", 8, 64), 7 / 64);
});

test("inFlightMicroBatches() agrees with the schedule simulator's peak in-flight count", () => {
  const cases: Array<["gpipe" | "1f1b" | "interleaved", number, number, number]> = [
    ["gpipe", 4, 8, 1], ["1f1b", 4, 8, 1], ["1f1b", 4, 2, 1], ["1f1b", 2, 6, 1], ["interleaved", 4, 8, 2], ["interleaved", 2, 4, 3],
  ];
  for (const [sched, p, m, v] of cases) {
    const sim = simulatePipeline(sched, { stages: p, microBatches: m, virtualStages: sched === "interleaved" ? v : undefined });
    for (let stage = 0; stage < p; stage++) {
      assert.equal(inFlightMicroBatches(sched, p, m, stage, v), sim.maxInFlight[stage], `${sched} p=${p} m=${m} v=${v} stage ${stage}`);
    }
  }
});

test("ringBytes() uses the ring volumes: all-reduce 2(N-1)/N, reduce-scatter and all-gather (N-1)/N", () => {
  assert.equal(ringBytes("all_reduce", 1000, 4), 1500);
  assert.equal(ringBytes("reduce_scatter", 1000, 4), 750);
  assert.equal(ringBytes("all_gather", 1000, 4), 750);
  assert.equal(ringBytes("all_reduce", 1000, 1), 0);
  assert.equal(ringBytes("send_recv", 1000, 2), 1000);
});

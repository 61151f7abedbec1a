// Offloaded fp32 master weights (parallel.offload "disk" with train.precision bf16): the
// parameters stay resident in bfloat16, the masters live in the offload file beside m and v,
// and each step updates the masters with the same AdamW kernel and writes their rounding into
// the parameters. Checked: the optimizer alone against AdamW on fp32 copies (bit-exact); a
// training run against the same bf16 run in memory (what is and is not bit-identical, stated
// below); checkpoints and final/ hold the fp32 masters; resume continues bit-exactly; the peak
// resident memory falls by ~12 bytes per parameter.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Trainer } from "../../src/train/trainer.js";
import { AdamW, OffloadedAdamW } from "../../src/optim/index.js";
import { readSafetensors } from "../../src/checkpoint/index.js";
import { memoryStats, randn, resetPeakMemory, type Tensor } from "../../src/tensor/index.js";
import { tinyData, tinyConfig, trainLosses, readMetrics } from "./_helpers.js";

const SHAPES: number[][] = [[37, 11], [11], [5, 3, 7], [64, 9]];
const f32 = (t: Tensor) => Buffer.from((t.to("float32").data() as Float32Array).buffer).toString("base64");

let root = "";
let dataDir = "";
before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-offload-master-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  dataDir = (await tinyData()).dir;
});

test("`OffloadedAdamW` with masterDtype keeps bf16 parameters and updates fp32 masters in the file bit-exactly like AdamW", async () => {
  const ref = SHAPES.map((s, i) => randn(s, { seed: 11 + i }).keep());
  const params = SHAPES.map((s, i) => randn(s, { seed: 11 + i }).keep());
  const ram = new AdamW(ref, { lr: 1e-2, weightDecay: 0.1 });
  // 100-byte chunks (8 elements): every tensor is cut by chunk boundaries.
  const off = new OffloadedAdamW(params, { lr: 1e-2, weightDecay: 0.1 }, { path: join(root, "unit.bin"), chunkBytes: 100, masterDtype: "bfloat16" });
  assert.ok(params.every((p) => p.dtype === "bfloat16"), "the resident parameters are bfloat16");
  assert.equal(off.file.fields, 3);
  for (let s = 0; s < 3; s++) {
    params.forEach((p, i) => {
      const g = randn(p.shape, { seed: 500 + 7 * s + i });
      p.grad = g.to("bfloat16").keep();  // the gradient a bf16 parameter gets
      ref[i]!.grad = g.to("bfloat16").keep();  // AdamW widens it in the same kernel
      g.dispose();
    });
    await off.step({ gradScale: 0.7 });
    ram.step({ gradScale: 0.7 });
    off.zeroGrad();
    ram.zeroGrad();
    params.forEach((p, i) => assert.equal(f32(p), f32(ref[i]!.to("bfloat16")), `step ${s}: parameter ${i} is the rounded master`));
  }
  await off.withMasterParams(() => {
    params.forEach((p, i) => {
      assert.equal(p.dtype, "float32");
      assert.equal(f32(p), f32(ref[i]!), `parameter ${i}'s master is AdamW's fp32 parameter`);
    });
  });
  assert.ok(params.every((p) => p.dtype === "bfloat16"), "bf16 again after withMasterParams");
  const a = off.stateDict(), b = ram.stateDict();
  a.moments!.exp_avg_sq.forEach((t, i) => assert.equal(f32(t), f32(b.moments!.exp_avg_sq[i]!)));
  off.close();
});

interface Run { losses: number[]; peakMb: number; paramsMb: number; gradsMb: number; trainer: Trainer; out: string }
const runs: Run[] = [];
const PATCH = { train: { max_steps: 6, precision: "bf16", peak_flops: 1e12 }, optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, decay_steps: 40 }, checkpoint: { interval: 3, keep: 2 } };
// A wider model than the other train tests so the ~10 KiB chunk is small beside 12 B/param.
const MODEL = { n_layer: 2, n_head: 2, n_embd: 64, block_size: 32 };

async function train(out: string, parallel: Record<string, unknown>, resume = false): Promise<Run> {
  const before = memoryStats();
  resetPeakMemory();
  const trainer = new Trainer(tinyConfig(out, dataDir, { ...PATCH, model: MODEL, parallel }), { log: false, resume });
  await trainer.setup();
  await trainer.run();
  const rows = readMetrics(out).filter((m) => m.split === undefined);
  const last = rows[rows.length - 1]!;
  runs.push({
    losses: trainLosses(out).map((m) => m.loss), trainer, out,
    peakMb: (last.mem_peak_mb as number) - before.liveTotal / 2 ** 20,
    paramsMb: (last.mem_params_mb as number) - before.live.params / 2 ** 20, gradsMb: (last.mem_grads_mb as number) - before.live.grads / 2 ** 20,
  });
  return runs[runs.length - 1]!;
}

test("`Trainer` bf16 with parallel.offload=disk keeps bf16 parameters, fp32 masters on disk: losses, checkpoints, final/, resume and ~12 B/param less peak memory", async () => {
  const chunkMb = 0.01;
  const mem = await train(join(root, "mem"), {});
  const off = await train(join(root, "disk"), { offload: "disk", offload_chunk_mb: chunkMb });
  const opt = off.trainer.optimizer;
  assert.ok(opt instanceof OffloadedAdamW && opt.masterDtype === "bfloat16");
  assert.ok(off.trainer.model.parameters().every((p) => p.dtype === "bfloat16"), "resident parameters are bf16");
  const psi = mem.trainer.model.numParameters();
  // Step 1 computes with the same bf16 weights (autocast rounds the fp32 ones at use; layer-norm
  // weights and biases start at exactly representable 1 and 0), so its loss is bit-identical.
  // Later steps differ: gradients are now bf16 tensors (layer-norm, bias and embedding
  // gradients were fp32 before) and the layer-norm parameters compute from their bf16 rounding.
  assert.equal(off.losses.length, 6);
  assert.equal(off.losses[0], mem.losses[0], "step 1's loss is bit-identical");
  off.losses.forEach((l, i) => assert.ok(Math.abs(l - mem.losses[i]!) < 5e-4 * mem.losses[i]!, `step ${i + 1}: offloaded ${l} vs in memory ${mem.losses[i]} (0.05% tolerance; ~6e-5 measured)`));
  // Checkpoints and final/ hold the fp32 masters, read back from the file.
  const masters: string[] = [];
  let wteMaster = "";
  await off.trainer.parallel.withFullParams(() => off.trainer.model.namedParameters().forEach(([name, p]) => {
    masters.push(f32(p));
    if (name.endsWith("wte.weight")) wteMaster = f32(p);
  }));
  assert.ok(wteMaster, "the model has a token embedding");
  for (const dir of [join(off.out, "ckpt-000006"), join(off.out, "final")]) {
    const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
    const name = [...tensors.keys()].find((k) => k.endsWith("wte.weight"));
    const wte = tensors.get(name ?? "");
    assert.ok(wte, `${dir}: has the token embedding (${[...tensors.keys()].slice(0, 4).join(", ")})`);
    assert.equal(wte.dtype, "F32", `${dir}: fp32 weights`);
    assert.equal(Buffer.from(wte.data).toString("base64"), wteMaster, `${dir}: the token embedding is the fp32 master`);
  }
  // Resume from the step-3 checkpoint: the masters go back into the file, their rounding into
  // the parameters, and steps 4-6 repeat bit-exactly.
  const again = join(root, "resumed");
  cpSync(off.out, again, { recursive: true });
  rmSync(join(again, "ckpt-000006"), { recursive: true });
  rmSync(join(again, "final"), { recursive: true, force: true });
  const resumed = await train(again, { offload: "disk", offload_chunk_mb: chunkMb }, true);
  assert.deepEqual(resumed.losses, off.losses, "resumed losses");
  const weights: string[] = [];
  await resumed.trainer.parallel.withFullParams(() => resumed.trainer.model.parameters().forEach((p) => weights.push(f32(p))));
  assert.deepEqual(weights, masters, "resumed masters");
  // Peak resident memory falls by the offloaded bytes: fp32 params -> bf16 (2 B), fp32 grads ->
  // bf16 (2 B), m and v (8 B): 12 B per parameter, less the chunk.
  assert.ok(Math.abs(mem.paramsMb - off.paramsMb - 2 * psi / 2 ** 20) < 0.05 * mem.paramsMb, `params ${mem.paramsMb} -> ${off.paramsMb} MiB`);
  assert.ok(Math.abs(mem.gradsMb - off.gradsMb - 2 * psi / 2 ** 20) < 0.05 * mem.gradsMb, `grads ${mem.gradsMb} -> ${off.gradsMb} MiB`);
  const saved = mem.peakMb - off.peakMb, want = 12 * psi / 2 ** 20;
  assert.ok(Math.abs(saved - want) < 0.1 * want, `the peak falls by ${saved.toFixed(4)} MiB for ${psi} parameters (${(saved * 2 ** 20 / psi).toFixed(2)} B/param), want ~${want.toFixed(4)} MiB (12 B/param)`);
  assert.ok(readdirSync(join(off.out, "offload")).includes("adamw-moments-rank00000.bin"));
});

test("`Trainer` refuses bf16 master offload under ZeRO, naming the layout", async () => {
  const t = new Trainer(tinyConfig(join(root, "zero1"), dataDir, { ...PATCH, parallel: { offload: "disk", zero: 1 } }), { log: false });
  await assert.rejects(t.setup(), /offloading the fp32 master weights .* one process and parallel\.zero 0 only, got zero=1/);
});

// Mixed precision in the trainer (train.precision): bf16 and fp16 track the fp32 loss curve,
// fp16's dynamic loss scaling skips an overflowing step and halves the scale, and resume is
// bit-exact in bf16 as in fp32.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Trainer } from "../../src/train/trainer.js";
import { tempDir, tinyConfig, tinyData, trainLosses, readMetrics } from "./_helpers.js";

const STEPS = 40;
const PATCH = { train: { max_steps: STEPS, micro_batch_size: 8 }, optimizer: { lr: 3e-3, warmup_steps: 4 } };

async function run(outDir: string, dataDir: string, precision: string, extra: Record<string, Record<string, unknown>> = {}, resume = false): Promise<Trainer> {
  const patch = { ...PATCH, ...extra, train: { ...PATCH.train, precision, ...(extra.train ?? {}) } };
  const t = new Trainer(tinyConfig(outDir, dataDir, patch), { resume, log: false });
  await t.setup();
  await t.run();
  return t;
}

/** Mean of the last k logged losses (one step's loss is noisy; the curve's end is not). */
function tail(losses: Array<{ loss: number }>, k = 5): number {
  const xs = losses.slice(-k).map((l) => l.loss);
  return xs.reduce((s, x) => s + x, 0) / xs.length;
}

test("`train.precision` bf16 and fp16 track the fp32 loss curve: final loss within 2% after the same steps", async (t) => {
  const data = await tinyData();
  const runs: Record<string, Array<{ step: number; loss: number }>> = {};
  for (const p of ["fp32", "bf16", "fp16"]) {
    const dir = tempDir(t);
    await run(dir, data.dir, p);
    runs[p] = trainLosses(dir);
    // fp16 may skip a step or two while its loss scale settles; the others skip none.
    assert.ok(runs[p]!.length >= (p === "fp16" ? STEPS - 3 : STEPS), `${p}: ${runs[p]!.length} of ${STEPS} steps trained`);
  }
  const f32 = tail(runs.fp32!);
  assert.ok(f32 < runs.fp32![0]!.loss * 0.8, `fp32 loss falls (${runs.fp32![0]!.loss} -> ${f32})`);
  for (const p of ["bf16", "fp16"]) {
    const rel = Math.abs(tail(runs[p]!) - f32) / f32;
    assert.ok(rel < 0.02, `${p}: final loss ${tail(runs[p]!).toFixed(4)} vs fp32 ${f32.toFixed(4)} (${(rel * 100).toFixed(2)}% apart, limit 2%)`);
    // Not the same numbers: the low precision really ran.
    assert.notDeepEqual(runs[p]!.map((l) => l.loss), runs.fp32!.map((l) => l.loss), `${p} computed exactly like fp32: autocast did not apply`);
  }
});

test("fp16 dynamic loss scaling: an overflowing step is skipped and the scale halved; metrics report scale and skipped steps", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  // 2^120 overflows float16's range (65504) in the first backward for certain.
  const initial = 2 ** 120;
  const tr = await run(dir, data.dir, "fp16", { train: { max_steps: 6, loss_scale: { initial, growth_interval: 2000 } } });
  const lines = readMetrics(dir).filter((m) => m.split === undefined);
  const first = lines[0]!;
  assert.equal(first.skipped, true, "step 1 overflowed and was skipped");
  assert.equal(first.loss_scale, initial / 2, "the scale halved after the overflow");
  const trained = lines.filter((m) => m.skipped === undefined);
  assert.ok(lines.every((m) => typeof m.loss_scale === "number"), "every step line carries loss_scale");
  const last = lines[lines.length - 1]!;
  assert.ok((last.skipped_steps as number) >= 1, "skipped_steps counts the overflows");
  assert.ok((last.loss_scale as number) < initial, "the scale came down");
  void trained;
  void tr;
});

test("fp16 growth: after growth_interval finite steps the scale doubles", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  await run(dir, data.dir, "fp16", { train: { max_steps: 6, loss_scale: { initial: 256, growth_interval: 2 } } });
  const scales = readMetrics(dir).filter((m) => m.split === undefined).map((m) => m.loss_scale);
  assert.deepEqual(scales, [256, 512, 512, 1024, 1024, 2048]);
});

test("resume in bf16 is bit-exact: 12 steps straight === 6 + resume + 6", async (t) => {
  const data = await tinyData();
  const a = tempDir(t), b = tempDir(t);
  const extra = { train: { max_steps: 12 }, optimizer: { lr: 3e-3, warmup_steps: 2, decay_steps: 12 }, model: { dropout: 0.1 } };
  await run(a, data.dir, "bf16", extra);
  await run(b, data.dir, "bf16", { ...extra, train: { max_steps: 6 }, checkpoint: { interval: 6, keep: 2 } });
  await run(b, data.dir, "bf16", extra, true);
  const la = trainLosses(a), lb = trainLosses(b);
  assert.equal(lb.length, 12);
  for (let i = 0; i < 12; i++) assert.ok(la[i]!.loss === lb[i]!.loss, `step ${i + 1}: ${la[i]!.loss} !== ${lb[i]!.loss}`);
});

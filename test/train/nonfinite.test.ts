// Non-finite steps: a step whose loss or gradient norm is NaN/Inf is skipped (nothing updated,
// gradients dropped), recorded in metrics.jsonl as {step, skipped: true, reason}, and
// `train.max_nonfinite_steps` consecutive skips stop the run with an error that says so.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MegalithError } from "../../src/core/errors.js";
import { Trainer } from "../../src/train/trainer.js";
import type { GPT } from "../../src/models/index.js";
import type { Tensor } from "../../src/tensor/index.js";
import { tempDir, tinyConfig, tinyData, readMetrics } from "./_helpers.js";

type Patch = Parameters<typeof tinyConfig>[2];

async function makeTrainer(outDir: string, patch: Patch = {}): Promise<Trainer> {
  const data = await tinyData();
  const tr = new Trainer(tinyConfig(outDir, data.dir, patch), { log: false });
  await tr.setup();
  return tr;
}

/** Makes the loss NaN (so its gradients are too) on the optimizer steps in `steps`. */
function injectNaNLoss(tr: Trainer, steps: (step: number) => boolean): void {
  const forward = (tr.model as GPT).forward.bind(tr.model);
  (tr.model as GPT).forward = (idx: Tensor, targets?: Tensor | null, kv?: Parameters<typeof forward>[2]) => {
    const out = forward(idx, targets, kv);
    if (!out.loss || !steps(tr.step)) return out;
    return { logits: out.logits, loss: out.loss.mul(Number.NaN) };
  };
}

/** Keeps the loss finite but makes one parameter's gradient +Inf on the steps in `steps`. */
function injectInfGrad(tr: Trainer, steps: (step: number) => boolean): void {
  const forward = (tr.model as GPT).forward.bind(tr.model);
  const victim = tr.model.parameters()[3]!;
  (tr.model as GPT).forward = (idx: Tensor, targets?: Tensor | null, kv?: Parameters<typeof forward>[2]) => {
    const out = forward(idx, targets, kv);
    if (!out.loss || !steps(tr.step)) return out;
    const loss = out.loss;
    const backward = loss.backward.bind(loss);
    loss.backward = (g?: Tensor) => {
      backward(g);
      victim.grad!.fill_(Number.POSITIVE_INFINITY);
    };
    return out;
  };
}

const snapshot = (tr: Trainer) => tr.model.parameters().map((p) => Float32Array.from(p.data() as Float32Array));

test("`Trainer.trainStep` skips a NaN-loss step: nothing is updated and the next step trains normally", async (t) => {
  const tr = await makeTrainer(tempDir(t), { train: { max_steps: 4 } });
  injectNaNLoss(tr, (s) => s === 1);
  const m0 = await tr.trainStep();
  assert.ok(!("skipped" in m0));
  const before = snapshot(tr);
  const adamSteps = (tr.optimizer as { stepCount: number }).stepCount;
  const m1 = await tr.trainStep();
  assert.deepEqual(m1, { step: 1, skipped: true, reason: "loss is NaN" });
  assert.equal(tr.step, 2, "a skipped step still advances the step counter (and the schedule)");
  assert.equal((tr.optimizer as { stepCount: number }).stepCount, adamSteps, "AdamW did not step");
  assert.deepEqual(snapshot(tr), before, "parameters unchanged");
  for (const p of tr.model.parameters()) assert.ok(p.grad === null || (p.grad.data() as Float32Array).every((x) => x === 0), "gradients dropped");
  const m2 = await tr.trainStep();
  assert.ok(!("skipped" in m2) && Number.isFinite(m2.loss) && Number.isFinite(m2.grad_norm));
  assert.equal(m2.lr, tr.lrAt(2));
  assert.ok(snapshot(tr).some((p, i) => p.some((x, j) => x !== before[i]![j])), "the good step updates parameters");
});

test("`Trainer.trainStep` skips a step whose loss is finite but whose gradient is not", async (t) => {
  const tr = await makeTrainer(tempDir(t), { train: { max_steps: 3 } });
  injectInfGrad(tr, (s) => s === 0);
  const before = snapshot(tr);
  assert.deepEqual(await tr.trainStep(), { step: 0, skipped: true, reason: "gradient norm is Infinity" });
  assert.deepEqual(snapshot(tr), before);
  const m = await tr.trainStep();
  assert.ok(!("skipped" in m) && Number.isFinite(m.grad_norm));
});

test("`Trainer.run` reports skipped steps in metrics.jsonl and finishes when they are not consecutive enough", async (t) => {
  const dir = tempDir(t);
  const tr = await makeTrainer(dir, { train: { max_steps: 8, max_nonfinite_steps: 3, grad_accum_steps: 2 } });
  const bad = new Set([1, 2, 4, 5]); // never 3 in a row: the counter resets after a good step
  injectNaNLoss(tr, (s) => bad.has(s));
  const { finalLoss } = await tr.run();
  assert.ok(Number.isFinite(finalLoss));
  const lines = readMetrics(dir).filter((m) => m.split === undefined);
  assert.deepEqual(lines.map((m) => m.step), [0, 1, 2, 3, 4, 5, 6, 7]);
  for (const m of lines) {
    if (bad.has(m.step as number)) assert.deepEqual(m, { step: m.step, skipped: true, reason: "loss is NaN" });
    else assert.ok(m.skipped === undefined && Number.isFinite(m.loss as number), `step ${m.step}: ${JSON.stringify(m)}`);
  }
  // The final model exists and the final eval is finite (skipped steps did not poison weights).
  const val = readMetrics(dir).find((m) => m.split === "val");
  assert.ok(Number.isFinite(val?.loss as number));
});

test("`Trainer.run` stops after max_nonfinite_steps consecutive non-finite steps with a clear error", async (t) => {
  const dir = tempDir(t);
  const tr = await makeTrainer(dir, { train: { max_steps: 20, max_nonfinite_steps: 3 } });
  injectNaNLoss(tr, (s) => s >= 2);
  await assert.rejects(tr.run(), (e: unknown) => {
    assert.ok(e instanceof MegalithError);
    assert.equal(e.code, "nonfinite");
    assert.match(e.message, /training stopped: 3 consecutive steps had non-finite values \(last: loss is NaN at step 4\)/);
    assert.match(e.message, /Lower optimizer\.lr/);
    return true;
  });
  const lines = readMetrics(dir);
  assert.deepEqual(lines.filter((m) => m.skipped).map((m) => m.step).slice(0, 2), [2, 3]);
  assert.ok(lines.slice(0, 2).every((m) => Number.isFinite(m.loss as number)));
});

test("`Trainer.run` with an absurd learning rate (1e10) skips non-finite steps then stops", async (t) => {
  const dir = tempDir(t);
  const tr = await makeTrainer(dir, { train: { max_steps: 20, max_nonfinite_steps: 2 }, optimizer: { lr: 1e10, warmup_steps: 0 } });
  await assert.rejects(tr.run(), /consecutive steps had non-finite values/);
  const lines = readMetrics(dir);
  assert.ok(Number.isFinite(lines[0]!.loss as number), "step 0 runs with the initial weights");
  const skipped = lines.filter((m) => m.skipped === true);
  assert.ok(skipped.length >= 1, JSON.stringify(lines));
  assert.match(skipped[0]!.reason as string, /(loss|gradient norm) is (NaN|-?Infinity)/);
});

test("`Trainer.run` records the step that stops the run in metrics.jsonl", async (t) => {
  const dir = tempDir(t);
  const tr = await makeTrainer(dir, { train: { max_steps: 20, max_nonfinite_steps: 3 } });
  injectNaNLoss(tr, (s) => s >= 2);
  await assert.rejects(tr.run(), /3 consecutive steps/);
  assert.deepEqual(readMetrics(dir).filter((m) => m.skipped).map((m) => m.step), [2, 3, 4]);
});

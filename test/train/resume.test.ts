// Resuming is bit-exact: a run interrupted at a checkpoint and continued by a fresh Trainer
// logs the same losses (===) and ends with the same parameters as a run that never stopped.
// Dropout > 0 exercises the RNG restore, grad_accum_steps 2 the loader position, and a cosine
// schedule with warmup (decay_steps pinned so both runs share it) the step counter.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Trainer } from "../../src/train/trainer.js";
import { findLatestCheckpoint } from "../../src/checkpoint/index.js";
import { tempDir, tinyConfig, tinyData, trainLosses, readMetrics } from "./_helpers.js";

const PATCH = {
  model: { dropout: 0.1 },
  train: { grad_accum_steps: 2, max_steps: 20 },
  optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 4, decay_steps: 20 },
  eval: { interval: 5, batches: 2 },
};

async function train(outDir: string, dataDir: string, maxSteps: number, opts: { resume?: boolean; checkpointInterval?: number } = {}): Promise<Trainer> {
  const cfg = tinyConfig(outDir, dataDir, { ...PATCH, train: { ...PATCH.train, max_steps: maxSteps }, checkpoint: { interval: opts.checkpointInterval ?? 0, keep: 2 } });
  const t = new Trainer(cfg, { resume: opts.resume ?? false, log: false });
  await t.setup();
  await t.run();
  return t;
}

function paramBytes(t: Trainer): Map<string, Float32Array> {
  return new Map(t.model.namedParameters().map(([n, p]) => [n, Float32Array.from(p.data() as Float32Array)]));
}

function assertSameParams(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [n, x] of a) {
    const y = b.get(n)!;
    assert.equal(x.length, y.length, n);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) assert.fail(`parameter ${n}[${i}]: ${x[i]} !== ${y[i]}`);
  }
}

test("`Trainer` resumes bit-exactly: 20 steps straight === 10 steps + resume + 10 steps", async (t) => {
  const data = await tinyData();
  const straightDir = tempDir(t), splitDir = tempDir(t);
  const straight = await train(straightDir, data.dir, 20);

  const first = await train(splitDir, data.dir, 10);
  assert.equal(first.step, 10);
  const latest = await findLatestCheckpoint(splitDir);
  assert.equal(latest?.step, 10, "the first half leaves ckpt-000010");
  const resumed = new Trainer(tinyConfig(splitDir, data.dir, PATCH), { resume: true, log: false });
  await resumed.setup();
  assert.equal(resumed.step, 10, "setup() restores the step");
  await resumed.run();

  const a = trainLosses(straightDir), b = trainLosses(splitDir);
  assert.equal(a.length, 20);
  assert.deepEqual(b.map((m) => m.step), a.map((m) => m.step));
  for (let i = 0; i < 20; i++) assert.ok(a[i]!.loss === b[i]!.loss, `step ${i}: loss ${a[i]!.loss} !== ${b[i]!.loss}`);
  // The learning rates logged match too (same schedule position).
  const lrA = readMetrics(straightDir).filter((m) => m.lr !== undefined).map((m) => m.lr);
  const lrB = readMetrics(splitDir).filter((m) => m.lr !== undefined).map((m) => m.lr);
  assert.deepEqual(lrB, lrA);
  // Evaluation (no dropout, no RNG draws) at steps 5 and 15 agrees as well.
  const evalAt = (dir: string, s: number) => readMetrics(dir).find((m) => m.split === "val" && m.step === s)?.loss;
  for (const s of [5, 15, 20]) assert.equal(evalAt(splitDir, s), evalAt(straightDir, s), `val loss at step ${s}`);

  assertSameParams(paramBytes(straight), paramBytes(resumed));
  // The final HF directories hold byte-identical weights.
  assert.ok(readFileSync(join(straightDir, "final", "model.safetensors")).equals(readFileSync(join(splitDir, "final", "model.safetensors"))));
  assert.equal(resumed.tokensSeen, straight.tokensSeen);
});

test("`Trainer` resumes bit-exactly from a mid-run checkpoint after a crash", async (t) => {
  // A 12-step run checkpoints at 6 and 12. Pretend it crashed just after step 8: drop the
  // step-12 checkpoint and the metrics after step 8 is logged, then resume and compare.
  const data = await tinyData();
  const dir = tempDir(t);
  const full = await train(dir, data.dir, 12, { checkpointInterval: 6 });
  const want = trainLosses(dir);
  const fullParams = paramBytes(full);
  rmSync(join(dir, "ckpt-000012"), { recursive: true });
  rmSync(join(dir, "final"), { recursive: true });
  const kept = readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n").filter((l) => {
    const m = JSON.parse(l) as { step: number };
    return m.step <= 8;
  });
  writeFileSync(join(dir, "metrics.jsonl"), kept.join("\n") + "\n");

  const resumed = await train(dir, data.dir, 12, { resume: true, checkpointInterval: 6 });
  const got = trainLosses(dir);
  // Steps 6..8 were re-run after the resume from step 6; --resume cut metrics.jsonl back to
  // step 6 first, so each step is logged once, with the uninterrupted run's values.
  const rerun = got.filter((m) => m.step >= 6);
  assert.deepEqual(got.map((m) => m.step), Array.from({ length: 12 }, (_, i) => i));
  assert.deepEqual(rerun.map((m) => m.step), [6, 7, 8, 9, 10, 11]);
  for (const m of rerun) {
    const ref = want.find((w) => w.step === m.step)!;
    assert.ok(m.loss === ref.loss, `step ${m.step}: ${m.loss} !== ${ref.loss}`);
  }
  assertSameParams(fullParams, paramBytes(resumed));
});

test("`Trainer` with resume and no checkpoint starts from step 0", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const tr = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 2 } }), { resume: true, log: false });
  await tr.setup();
  assert.equal(tr.step, 0);
  await tr.run();
  assert.deepEqual(trainLosses(dir).map((m) => m.step), [0, 1]);
});

// The trainer's run directory and resume guards, in process: a used out_dir is refused unless
// --resume or --overwrite; --resume cuts metrics.jsonl back to the checkpoint; a changed config
// is reported, and refused where it breaks a bit-exact continuation; a model too large for the
// machine is refused before anything is allocated; final/ is replaced whole.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ValueError } from "../../src/core/errors.js";
import { Trainer, type TrainerOptions } from "../../src/train/trainer.js";
import { checkMemoryBudget, checkResumeConfig, gptParameterCount, previousRun, truncateMetrics } from "../../src/train/_run_dir.js";
import { tempDir, tinyConfig, tinyData, readMetrics, trainLosses } from "./_helpers.js";

type Patch = Parameters<typeof tinyConfig>[2];

async function train(outDir: string, dataDir: string, patch: Patch, opts: TrainerOptions = {}): Promise<Trainer> {
  const t = new Trainer(tinyConfig(outDir, dataDir, patch), { log: false, ...opts });
  await t.setup();
  await t.run();
  return t;
}

test("`Trainer.setup` refuses an out_dir holding a previous run unless --resume or --overwrite", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  writeFileSync(join(dir, "notes.txt"), "mine");
  assert.equal(previousRun(dir), null, "a file of the user's is not a run");
  await train(dir, data.dir, { train: { max_steps: 4 }, checkpoint: { interval: 2, keep: 5 } });
  assert.match(previousRun(dir)!.summary, /^metrics\.jsonl \(\d+ rows\), 2 checkpoints \(newest ckpt-000004\), final\/$/);

  const again = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 3 } }), { log: false });
  await assert.rejects(again.setup(), (e: unknown) => e instanceof ValueError &&
    /out_dir .* already holds a run \(metrics\.jsonl .*ckpt-000004.*final\/\)\. Pass --resume to continue it, or --overwrite to delete it/.test(e.message));
  assert.throws(() => new Trainer(tinyConfig(dir, data.dir), { resume: true, overwrite: true }), /--resume and --overwrite contradict/);

  // --overwrite deletes the old run (not the user's file) and starts from step 0.
  await train(dir, data.dir, { train: { max_steps: 3 }, checkpoint: { interval: 0, keep: 5 } }, { overwrite: true });
  assert.deepEqual(readdirSync(dir).sort(), ["ckpt-000003", "final", "metrics.jsonl", "notes.txt"]);
  assert.deepEqual(trainLosses(dir).map((m) => m.step), [0, 1, 2]);
});

test("pruning keeps the checkpoint just saved even when out_dir holds higher steps of another run", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  // An old run got to step 8 (keep 5); a new run resumes from its step 4 after the newer ones
  // are set aside... here simply: the old run's ckpt-000006/8 stay, the new run saves ckpt-000005.
  await train(dir, data.dir, { train: { max_steps: 8 }, checkpoint: { interval: 2, keep: 5 } });
  rmSync(join(dir, "final"), { recursive: true });
  rmSync(join(dir, "metrics.jsonl"));
  // Resume from 4 by hiding 6 and 8 for a moment (as a resume that skipped them as damaged would).
  const { renameSync } = await import("node:fs");
  for (const s of ["ckpt-000006", "ckpt-000008"]) renameSync(join(dir, s), join(dir, `hidden-${s}`));
  const resumed = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 5 }, checkpoint: { interval: 0, keep: 1 }, optimizer: { decay_steps: 8 } }), { log: false, resume: true, allowConfigChange: true });
  await resumed.setup();
  for (const s of ["ckpt-000006", "ckpt-000008"]) renameSync(join(dir, `hidden-${s}`), join(dir, s));
  await resumed.run();
  const left = readdirSync(dir).filter((n) => n.startsWith("ckpt-")).sort();
  assert.ok(left.includes("ckpt-000005"), `the checkpoint just saved was pruned: ${left.join(" ")}`);
  assert.ok(!left.includes("ckpt-000004") && !left.includes("ckpt-000002"), `keep=1 among this run's steps: ${left.join(" ")}`);
  assert.ok(left.includes("ckpt-000006") && left.includes("ckpt-000008"), "higher steps are not this run's to delete");
});

test("`--resume` truncates metrics.jsonl to the resumed step: every step and eval logged once", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const patch: Patch = { train: { max_steps: 10 }, eval: { interval: 3, batches: 1 }, checkpoint: { interval: 5, keep: 3 }, optimizer: { decay_steps: 10 } };
  await train(dir, data.dir, patch);
  const full = readMetrics(dir);
  // Crash after step 10 was logged but before ckpt-000010 committed: resume from 5.
  rmSync(join(dir, "ckpt-000010"), { recursive: true });
  writeFileSync(join(dir, "metrics.jsonl"), readFileSync(join(dir, "metrics.jsonl"), "utf8") + '{"step": 11, "loss": 1.0, "tor');
  await train(dir, data.dir, patch, { resume: true });
  const after = readMetrics(dir);
  const trainSteps = after.filter((m) => m.split === undefined).map((m) => m.step);
  assert.deepEqual(trainSteps, Array.from({ length: 10 }, (_, i) => i));
  assert.deepEqual(after.filter((m) => m.split === "val").map((m) => m.step), [3, 6, 9, 10]);
  // Bit-exact resume: the rewritten rows equal the first run's.
  const loss = (ms: typeof full) => ms.filter((m) => m.split === undefined).map((m) => m.loss);
  assert.deepEqual(loss(after), loss(full));
});

test("`truncateMetrics` keeps training rows below the step, eval rows at or below it, and drops a torn line", (t) => {
  const dir = tempDir(t);
  const f = join(dir, "metrics.jsonl");
  const rows = [{ step: 0, loss: 1 }, { step: 1, loss: 1 }, { step: 2, split: "val", loss: 1 }, { step: 2, loss: 1 }, { step: 2, skipped: true, reason: "x" }, { step: 3, split: "val", loss: 1 }];
  writeFileSync(f, rows.map((r) => JSON.stringify(r)).join("\n") + "\n{\"step\": 3, \"lo");
  assert.equal(truncateMetrics(f, 2), 4);
  assert.deepEqual(readMetrics(dir), rows.slice(0, 3));
  assert.equal(truncateMetrics(f, 2), 0, "idempotent");
  assert.equal(truncateMetrics(join(dir, "none.jsonl"), 2), 0);
});

test("`checkResumeConfig` warns about every difference and refuses those that break bit-exact resume", async () => {
  const data = await tinyData();
  const saved = tinyConfig("runs/a", data.dir);
  const lines: string[] = [];
  const check = (patch: Patch, allow = false, base = saved) => {
    lines.length = 0;
    checkResumeConfig(JSON.parse(JSON.stringify(base)), tinyConfig("runs/b", data.dir, patch), { allow, say: (l) => lines.push(l), checkpoint: "runs/a/ckpt-000005" });
  };
  // Layout, logging and cadence: warnings only.
  check({ parallel: { bucket_mb: 5 }, eval: { interval: 7 }, train: { log_interval: 3, activation_checkpointing: true } });
  assert.ok(lines.some((l) => /resume: warning: out_dir differs from the checkpoint's: "runs\/a" -> "runs\/b"$/.test(l)), lines.join("\n"));
  assert.ok(lines.some((l) => /parallel\.bucket_mb differs .*: 25 -> 5$/.test(l)));
  assert.ok(lines.some((l) => /eval\.interval differs/.test(l)) && lines.some((l) => /train\.log_interval differs/.test(l)));
  // The same global batch over another layout is a layout change.
  check({ train: { micro_batch_size: 2 }, parallel: { dp: 2 } });
  // Refused: each named with the reason.
  const refused = (patch: Patch, re: RegExp) => assert.throws(() => check(patch), (e: unknown) => e instanceof ValueError && re.test(e.message) && /--allow-config-change/.test(e.message));
  refused({ optimizer: { lr: 1e-3 } }, /optimizer\.lr: 0\.003 -> 0\.001: the optimizer's update or learning-rate schedule changes/);
  refused({ train: { max_steps: 20 } }, /train\.max_steps: 10 -> 20: the cosine schedule decays over train\.max_steps/);
  refused({ train: { micro_batch_size: 8 } }, /train\.micro_batch_size: 4 -> 8: the global batch changes from 128 to 256 tokens per step/);
  refused({ train: { seed: 1 } }, /train\.seed: 1337 -> 1: the seed fixes the data order/);
  refused({ model: { n_layer: 3 } }, /model\.n_layer: 2 -> 3: the model differs/);
  refused({ data: { source: "brown" } }, /data\.source: .* -> "brown": the data differs/);
  // With a pinned decay_steps, max_steps is free.
  check({ train: { max_steps: 20 }, optimizer: { decay_steps: 10 } }, false, tinyConfig("runs/a", data.dir, { optimizer: { decay_steps: 10 } }));
  assert.ok(lines.some((l) => /train\.max_steps differs .*: 10 -> 20$/.test(l)));
  // --allow-config-change: warned, not refused.
  check({ optimizer: { lr: 1e-3 } }, true);
  assert.ok(lines.some((l) => /optimizer\.lr differs from the checkpoint's: 0\.003 -> 0\.001 \(the optimizer's update/.test(l)));
});

test("`Trainer` resume with a changed learning rate is refused before loading; allowed with allowConfigChange", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  await train(dir, data.dir, { train: { max_steps: 3 } });
  const r = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 3 }, optimizer: { lr: 1e-2 } }), { log: false, resume: true });
  await assert.rejects(r.setup(), /optimizer\.lr: 0\.003 -> 0\.01/);
  const ok = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 3 }, optimizer: { lr: 1e-2 } }), { log: false, resume: true, allowConfigChange: true });
  await ok.setup();
  assert.equal(ok.step, 3);
});

test("`checkMemoryBudget` refuses parameters + gradients + AdamW state + activations beyond available memory, with the numbers", async () => {
  const data = await tinyData();
  const huge = tinyConfig("runs/x", data.dir, { model: { n_layer: 100000, n_embd: 64, n_head: 2 } });
  assert.equal(gptParameterCount(huge.model), 320 * 64 + 32 * 64 + 100000 * (12 * 64 * 64 + 13 * 64) + 2 * 64);
  // MoE: every 2nd of 4 blocks holds 4 expert MLPs (8C^2 + 5C each) and a C x 4 router.
  const dense = gptParameterCount(tinyConfig("runs/x", data.dir, { model: { n_layer: 4 } }).model);
  const moe = tinyConfig("runs/x", data.dir, { model: { n_layer: 4, moe: { num_experts: 4, top_k: 1, every: 2 } } });
  assert.equal(gptParameterCount(moe.model), dense + 2 * (3 * (8 * 32 * 32 + 5 * 32) + 32 * 4));
  assert.throws(() => checkMemoryBudget(huge, 1, 8 * 2 ** 30), (e: unknown) => e instanceof ValueError &&
    /model\.n_layer=100000, n_embd=64, vocab_size=320, block_size=32 make 4998\.4M parameters; training them needs at least \d+\.\d GiB \(per rank: weights, gradients and AdamW state 74\.5 GiB, 16 bytes per parameter; activations of a micro-batch \d+\.\d GiB\), but only 8\.0 GiB of .* is available\. Shrink the model/.test(e.message));
  // ZeRO-3 over 4 ranks on 4 machines needs a quarter of the state per rank; on one machine, all of it.
  const sharded = tinyConfig("runs/x", data.dir, { model: { n_layer: 100000, n_embd: 64, n_head: 2 }, parallel: { dp: 4, zero: 3 }, train: { activation_checkpointing: true } });
  checkMemoryBudget(sharded, 1, 22 * 2 ** 30);
  assert.throws(() => checkMemoryBudget(sharded, 4, 22 * 2 ** 30), /over the 4 ranks on this machine/);
  checkMemoryBudget(tinyConfig("runs/x", data.dir));
});

test("`Trainer.setup` refuses a model far too large before allocating it", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  const t0 = Date.now();
  // 1M layers: ~800 GB of state, beyond any machine this runs on.
  const tr = new Trainer(tinyConfig(dir, data.dir, { model: { n_layer: 1_000_000, n_embd: 64 } }), { log: false });
  await assert.rejects(tr.setup(), /the model is too large for this machine/);
  assert.ok(Date.now() - t0 < 10_000, "refused at once");
  assert.equal(tr.model, undefined, "no model was built");
});

test("final/ is replaced whole: a second export leaves no temp or old directories behind", async (t) => {
  const data = await tinyData();
  const dir = tempDir(t);
  await train(dir, data.dir, { train: { max_steps: 2 } });
  const first = readFileSync(join(dir, "final", "model.safetensors"));
  await train(dir, data.dir, { train: { max_steps: 4 }, optimizer: { decay_steps: 2 } }, { resume: true, allowConfigChange: true });
  assert.ok(!readFileSync(join(dir, "final", "model.safetensors")).equals(first), "final/ holds the newer model");
  assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith("final")), ["final"]);
  assert.ok(existsSync(join(dir, "final", "generation_config.json")));
});

// Damaged and interrupted checkpoints never get loaded: `findLatestCheckpoint` (sizes only by
// default, sha256 with `checksums`) skips them, and `Trainer` resume (which verifies checksums)
// falls back to the newest complete one and continues from it bit-exactly.
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, cpSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, truncateSync, writeSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Trainer } from "../../src/train/trainer.js";
import { findLatestCheckpoint, verifyCheckpointDir } from "../../src/checkpoint/index.js";
import { tempDir, tinyConfig, tinyData, trainLosses } from "./_helpers.js";

const CKPT = { checkpoint: { interval: 2, keep: 3 } };

/** A 6-step run with checkpoints at steps 2, 4 and 6 (all kept); returns its dir and losses. */
async function baseline(t: import("node:test").TestContext): Promise<{ dir: string; losses: Array<{ step: number; loss: number }> }> {
  const data = await tinyData();
  const dir = tempDir(t);
  const tr = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 6 }, model: { dropout: 0.1 }, ...CKPT }), { log: false });
  await tr.setup();
  await tr.run();
  return { dir, losses: trainLosses(dir) };
}

/** A copy of the run's checkpoints (no metrics, no final dir) in a fresh out_dir. */
function copyCheckpoints(t: import("node:test").TestContext, from: string, steps: number[]): string {
  const dir = tempDir(t);
  for (const s of steps) {
    const name = `ckpt-${String(s).padStart(6, "0")}`;
    cpSync(join(from, name), join(dir, name), { recursive: true });
  }
  return dir;
}

function flipByte(file: string, at: number): void {
  const fd = openSync(file, "r+");
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    b[0] ^= 0x01;
    writeSync(fd, b, 0, 1, at);
  } finally {
    closeSync(fd);
  }
}

async function resumeStep(outDir: string, maxSteps = 6): Promise<Trainer> {
  const data = await tinyData();
  // A longer max_steps moves the cosine schedule: allowed here, where only which checkpoint loads matters.
  const tr = new Trainer(tinyConfig(outDir, data.dir, { train: { max_steps: maxSteps }, model: { dropout: 0.1 }, ...CKPT }), { resume: true, log: false, allowConfigChange: maxSteps !== 6 });
  await tr.setup();
  return tr;
}

test("a baseline run keeps complete checkpoints at steps 2, 4 and 6", async (t) => {
  const { dir } = await baseline(t);
  for (const s of [2, 4, 6]) {
    const m = await verifyCheckpointDir(join(dir, `ckpt-00000${s}`), { checksums: true });
    assert.equal(m.step, s);
    assert.deepEqual(m.files.map((f) => f.path).sort(), ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]);
  }
});

test("`findLatestCheckpoint` skips a bit-flipped model.safetensors only with checksums; `Trainer` resume falls back to the previous one", async (t) => {
  const { dir: base, losses } = await baseline(t);
  const dir = copyCheckpoints(t, base, [2, 4, 6]);
  const file = join(dir, "ckpt-000006", "model.safetensors");
  flipByte(file, statSync(file).size - 3); // inside the tensor data: same size, wrong sha256

  // Sizes only (the default) cannot see a same-size corruption.
  assert.equal((await findLatestCheckpoint(dir))?.step, 6);
  const skipped: Array<[string, string]> = [];
  const latest = await findLatestCheckpoint(dir, { checksums: true, onSkip: (d, e) => skipped.push([d, e.message]) });
  assert.equal(latest?.step, 4);
  assert.equal(skipped.length, 1);
  assert.equal(skipped[0]![0], join(dir, "ckpt-000006"));
  assert.match(skipped[0]![1], /ckpt-000006\/model\.safetensors: sha256 .* \(the file is corrupted\)/);

  // Trainer verifies checksums: it resumes from step 4, and steps 4, 5 replay exactly.
  const tr = await resumeStep(dir);
  assert.equal(tr.step, 4);
  await tr.run();
  const got = trainLosses(dir);
  assert.deepEqual(got.map((m) => m.step), [4, 5]);
  for (const m of got) assert.ok(m.loss === losses[m.step]!.loss, `step ${m.step}: ${m.loss} !== ${losses[m.step]!.loss}`);
  // The new step-6 save replaced the damaged directory with a complete one.
  assert.equal((await verifyCheckpointDir(join(dir, "ckpt-000006"), { checksums: true })).step, 6);
});

test("a truncated model.safetensors is skipped even without checksums, naming the file", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [4, 6]);
  const file = join(dir, "ckpt-000006", "model.safetensors");
  truncateSync(file, statSync(file).size - 100);
  const reasons: string[] = [];
  assert.equal((await findLatestCheckpoint(dir, { onSkip: (_d, e) => reasons.push(e.message) }))?.step, 4);
  assert.match(reasons[0]!, /ckpt-000006\/model\.safetensors: size \d+ != \d+ in manifest\.json \(truncated/);
  assert.equal((await resumeStep(dir)).step, 4);
});

test("a checkpoint without manifest.json is skipped; the message says the save was interrupted", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [4, 6]);
  rmSync(join(dir, "ckpt-000006", "manifest.json"));
  await assert.rejects(verifyCheckpointDir(join(dir, "ckpt-000006")), /ckpt-000006: manifest\.json missing — the save was interrupted/);
  assert.equal((await findLatestCheckpoint(dir))?.step, 4);
  assert.equal((await resumeStep(dir)).step, 4);
});

test("a damaged manifest.json (bad JSON) is skipped", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [4, 6]);
  const m = join(dir, "ckpt-000006", "manifest.json");
  writeFileSync(m, readFileSync(m, "utf8").slice(0, 50));
  const reasons: string[] = [];
  assert.equal((await findLatestCheckpoint(dir, { onSkip: (_d, e) => reasons.push(e.message) }))?.step, 4);
  assert.match(reasons[0]!, /manifest\.json: not valid JSON/);
});

test("`Trainer` resume with only a damaged checkpoint refuses to start, naming it (never loads it, never restarts silently)", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [6]);
  flipByte(join(dir, "ckpt-000006", "optimizer.safetensors"), 200);
  assert.equal(await findLatestCheckpoint(dir, { checksums: true }), null);
  await assert.rejects(resumeStep(dir), /holds 1 checkpoint\(s\) but none is complete.*ckpt-000006\/optimizer/);
});

test("`Trainer` resume reports which damaged checkpoint it skipped", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [6]);
  flipByte(join(dir, "ckpt-000006", "model.safetensors"), 200);
  const data = await tinyData();
  const written: string[] = [];
  const orig = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string | Uint8Array) => (written.push(String(s)), true)) as typeof process.stderr.write;
  let err: unknown = null;
  try {
    const tr = new Trainer(tinyConfig(dir, data.dir, { train: { max_steps: 6 }, ...CKPT }), { resume: true, log: true });
    await tr.setup();
  } catch (e) {
    err = e;
  } finally {
    process.stderr.write = orig;
  }
  // Either refusing (an error naming the file) or a log line naming it would be acceptable.
  const text = err ? String((err as Error).message) : written.join("");
  assert.match(text, /ckpt-000006\/model\.safetensors/);
});

test("an interrupted save (a leftover .tmp- dir) leaves the previous checkpoint loadable", async (t) => {
  const { dir: base, losses } = await baseline(t);
  const dir = copyCheckpoints(t, base, [2, 4]);
  // A crash while writing step 6: files half written, no manifest, still under the temp name.
  const tmp = join(dir, "ckpt-000006.tmp-999999-deadbeef");
  cpSync(join(base, "ckpt-000006"), tmp, { recursive: true });
  rmSync(join(tmp, "manifest.json"));
  truncateSync(join(tmp, "model.safetensors"), 64);
  // Even a complete-looking temp dir is never loaded.
  const tmp2 = join(dir, "ckpt-000008.tmp-999999-cafe");
  cpSync(join(base, "ckpt-000006"), tmp2, { recursive: true });
  assert.equal((await findLatestCheckpoint(dir, { checksums: true }))?.step, 4);
  const tr = await resumeStep(dir);
  assert.equal(tr.step, 4);
  await tr.run();
  const got = trainLosses(dir);
  for (const m of got) assert.ok(m.loss === losses[m.step]!.loss, `step ${m.step}`);
  assert.equal((await findLatestCheckpoint(dir, { checksums: true }))?.step, 6);
});

test("a crash mid-replace (ckpt-N moved to .old-, new ckpt-N incomplete) loads the .old- copy", async (t) => {
  const { dir: base } = await baseline(t);
  const dir = copyCheckpoints(t, base, [4, 6]);
  renameSync(join(dir, "ckpt-000006"), join(dir, "ckpt-000006.old-1-ab"));
  mkdirSync(join(dir, "ckpt-000006"));
  writeFileSync(join(dir, "ckpt-000006", "model.safetensors"), "partial");
  const latest = await findLatestCheckpoint(dir, { checksums: true });
  assert.equal(latest?.step, 6);
  assert.equal(latest?.dir, join(dir, "ckpt-000006.old-1-ab"));
  const tr = await resumeStep(dir, 8);
  assert.equal(tr.step, 6);
});

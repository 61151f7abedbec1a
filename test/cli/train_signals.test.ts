// `megalith train` stopped by signals, as a scheduler or a user at a terminal stops it: real
// child processes of bin/megalith.js, signalled once a few steps are in metrics.jsonl.
// SIGINT / SIGTERM: the step finishes, a checkpoint is saved at the step reached, the message
// says where and how to resume, the exit code is 130 / 143, and --resume continues to the same
// losses (===) as a run that was never interrupted. A second signal ends the process at once;
// SIGKILL in the middle of a save leaves the previous checkpoint loadable.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findLatestCheckpoint } from "../../src/checkpoint/index.js";
import { Trainer } from "../../src/train/trainer.js";
import { tinyData, tinyRawConfig, tinyConfig, trainLosses } from "../train/_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

// decay_steps pinned: the schedule does not depend on max_steps, so a run stopped early and
// resumed with a smaller max_steps follows the same learning rates (and --resume accepts it).
const PATCH = { train: { max_steps: 100_000, log_interval: 1000 }, optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, decay_steps: 40 }, model: { dropout: 0.1 } };

let root = "";
let configFile = "";
let dataDir = "";

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-signals-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  dataDir = (await tinyData()).dir;
  configFile = join(root, "config.json");
  writeFileSync(configFile, JSON.stringify(tinyRawConfig("placeholder-out", dataDir, PATCH), null, 2));
});

interface Run {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startTrain(outDir: string, ...extra: string[]): Run {
  const child = spawn(process.execPath, [BIN, "train", "--config", configFile, "--set", `out_dir=${outDir}`, ...extra], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  child.stdout!.resume();
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return { child, stderr: () => err, exit };
}

/** Resolves once `cond()` holds, polling every 10 ms; fails after `ms`. */
async function waitFor(cond: () => boolean, ms: number, what: () => string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting: ${what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function trainRows(outDir: string): number {
  const f = join(outDir, "metrics.jsonl");
  if (!existsSync(f)) return 0;
  return readFileSync(f, "utf8").split("\n").filter((l) => l.includes('"loss"') && !l.includes('"split"')).length;
}

/** Losses of an uninterrupted in-process run of `steps` steps with the same config. */
async function straightLosses(steps: number): Promise<number[]> {
  const dir = mkdtempSync(join(root, "straight-"));
  const t = new Trainer(tinyConfig(dir, dataDir, { ...PATCH, train: { ...PATCH.train, max_steps: steps } }), { log: false });
  await t.setup();
  await t.run();
  return trainLosses(dir).map((m) => m.loss);
}

for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  test(`${signal} during \`megalith train\` saves the step reached, says how to resume, exits ${code}; --resume continues bit-exactly`, async () => {
    const out = join(root, `run-${signal}`);
    const run = startTrain(out);
    await waitFor(() => trainRows(out) >= 3, 40_000, run.stderr);
    run.child.kill(signal);
    const ended = await run.exit;
    const err = run.stderr();
    assert.equal(ended.code, code, err);
    const m = /stopped by (\w+) after step (\d+); checkpoint saved in (\S+)/.exec(err);
    assert.ok(m, `no stop message:\n${err}`);
    assert.equal(m[1], signal);
    const step = Number(m[2]);
    assert.ok(step >= 3, err);
    assert.equal(m[3], join(out, `ckpt-${String(step).padStart(6, "0")}`));
    assert.match(err, new RegExp(`${signal} received: finishing step \\d+, then saving a checkpoint`));
    // The exact command to resume: the same arguments plus --resume.
    assert.ok(err.includes(`resume with: megalith train --config ${configFile} --set out_dir=${out} --resume`), err);
    assert.doesNotMatch(err, /^\s+at .+[:(]\d+/m);
    const latest = await findLatestCheckpoint(out, { checksums: true });
    assert.equal(latest?.step, step, "the newest complete checkpoint is the step reached");
    assert.equal(trainRows(out), step, "metrics.jsonl holds exactly the steps done");

    // Resume for 3 more steps: the whole curve equals an uninterrupted run's.
    const resumed = startTrain(out, "train.max_steps=" + (step + 3), "--resume");
    const r = await resumed.exit;
    assert.equal(r.code, 0, resumed.stderr());
    const got = trainLosses(out);
    assert.deepEqual(got.map((x) => x.step), Array.from({ length: step + 3 }, (_, i) => i));
    const want = await straightLosses(step + 3);
    got.forEach((x, i) => assert.ok(x.loss === want[i], `step ${i}: resumed ${x.loss} !== uninterrupted ${want[i]}`));
  });
}

test("a second SIGINT ends `megalith train` at once; the newest complete checkpoint stays loadable", async () => {
  const out = join(root, "run-twice");
  // A wider model (~13M parameters): its save takes long enough for the second signal to land in it.
  const wide = ["model.n_embd=512", "model.n_layer=4", "checkpoint.interval=2", "checkpoint.keep=5"];
  const run = startTrain(out, ...wide);
  await waitFor(() => existsSync(join(out, "ckpt-000002", "manifest.json")) && trainRows(out) >= 3, 40_000, run.stderr);
  run.child.kill("SIGINT");
  await waitFor(() => run.stderr().includes("SIGINT received"), 20_000, run.stderr);
  run.child.kill("SIGINT");
  const ended = await run.exit;
  // The handlers are gone after the first signal: the default action ends the process.
  assert.equal(ended.signal, "SIGINT", `exit ${JSON.stringify(ended)}: ${run.stderr()}`);
  assert.doesNotMatch(run.stderr(), /stopped by SIGINT/);
  const latest = await findLatestCheckpoint(out, { checksums: true });
  assert.ok(latest && latest.step >= 2, `latest: ${latest?.dir}`);
  const resumed = startTrain(out, ...wide, `train.max_steps=${latest.step + 1}`, "--resume");
  assert.equal((await resumed.exit).code, 0, resumed.stderr());
  assert.match(resumed.stderr(), new RegExp(`resume: continuing from .*ckpt-${String(latest.step).padStart(6, "0")}`));
});

test("SIGKILL in the middle of a checkpoint save leaves the previous checkpoint loadable and resumable", async () => {
  const out = join(root, "run-kill");
  // A save every step, so one is nearly always in progress; kill as soon as a temp dir shows.
  const run = startTrain(out, "checkpoint.interval=1", "checkpoint.keep=3");
  await waitFor(() => existsSync(join(out, "ckpt-000003", "manifest.json")), 40_000, run.stderr);
  const saving = () => {
    try {
      return readdirSync(out).some((n) => /^ckpt-\d+\.tmp-/.test(n));
    } catch {
      return false;
    }
  };
  await waitFor(saving, 20_000, run.stderr);
  run.child.kill("SIGKILL");
  const ended = await run.exit;
  assert.equal(ended.signal, "SIGKILL");
  const latest = await findLatestCheckpoint(out, { checksums: true });
  assert.ok(latest && latest.step >= 3, `latest: ${latest?.dir}`);
  const resumed = startTrain(out, `train.max_steps=${latest.step + 1}`, "--resume");
  const r = await resumed.exit;
  assert.equal(r.code, 0, resumed.stderr());
  assert.match(resumed.stderr(), new RegExp(`resume: continuing from .*ckpt-${String(latest.step).padStart(6, "0")} \\(step ${latest.step}\\)`));
  // The killed save's temp dir is never loaded; a later prune removes it (its pid is gone).
  assert.ok(existsSync(join(out, `ckpt-${String(latest.step + 1).padStart(6, "0")}`, "manifest.json")));
});

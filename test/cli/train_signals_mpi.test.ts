// SIGINT to `megalith launch -n 2 -- train` (data parallel, ZeRO-1: every rank writes its own
// optimizer shard): both ranks stop after the same step and save it together, launch exits 130
// with the command that resumes, and the checkpoint resumes in one process on the curve of a
// run that was never interrupted.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findLatestCheckpoint } from "../../src/checkpoint/index.js";
import { Trainer } from "../../src/train/trainer.js";
import { tinyData, tinyRawConfig, tinyConfig, trainLosses } from "../train/_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
const skip = spawnSync("mpirun", ["--version"]).status !== 0 ? "mpirun is not installed" : false;
const PATCH = { train: { max_steps: 100_000, log_interval: 1000 }, optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, decay_steps: 40 } };

/** Layouts of two ranks: each rank writes its own optimizer shard (ZeRO-1), or the tp shards are gathered into logical files. */
const LAYOUTS = [
  { name: "dp=2 ZeRO-1", sets: ["parallel.dp=2", "parallel.zero=1", "train.micro_batch_size=2"], files: ["optimizer-rank00000-of-00002.safetensors", "optimizer-rank00001-of-00002.safetensors"], changed: /parallel\.dp differs from the checkpoint's: 2 -> 1$/m },
  { name: "tp=2", sets: ["parallel.tp=2"], files: ["optimizer.safetensors", "model.safetensors"], changed: /parallel\.tp differs from the checkpoint's: 2 -> 1$/m },
];

for (const layout of LAYOUTS) test(`SIGINT to \`megalith launch -n 2 -- train\` at ${layout.name}: every rank saves the same step, launch exits 130, the run resumes in one process`, { skip, timeout: 120_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), "megalith-signals-mpi-"));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const data = await tinyData();
  const config = join(root, "config.json");
  writeFileSync(config, JSON.stringify(tinyRawConfig("placeholder", data.dir, PATCH)));
  const out = join(root, "run");
  const args = ["launch", "-n", "2", "--", "train", "--config", config, "--set", `out_dir=${out}`, ...layout.sets];
  const job = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1", MEGALITH_COLLECTIVE_TIMEOUT_S: "60" }, stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  job.stdout.on("data", (d) => (text += d));
  job.stderr.on("data", (d) => (text += d));
  const exited = new Promise<number | null>((resolve) => job.on("exit", (code) => resolve(code)));
  const rows = () => (existsSync(join(out, "metrics.jsonl")) ? readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter((l) => l.includes('"loss"')).length : 0);
  const t0 = Date.now();
  while (rows() < 3) {
    assert.ok(Date.now() - t0 < 90_000, `no progress in 90 s:\n${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  job.kill("SIGINT");
  const code = await exited;
  assert.equal(code, 130, text);
  const m = /stopped by SIGINT after step (\d+); checkpoint saved in (\S+)/.exec(text);
  assert.ok(m, `no stop message:\n${text}`);
  const step = Number(m[1]);
  assert.ok(text.includes(`resume with: megalith launch -n 2 -- train --config ${config} --set out_dir=${out} ${layout.sets.join(" ")} --resume`), text);
  assert.doesNotMatch(text, /aborting the job|MPI_ABORT/);
  // Both ranks saved the same step (the manifest sealed every rank's files, or the gather joined them).
  const latest = await findLatestCheckpoint(out, { checksums: true });
  assert.equal(latest?.step, step);
  const files = readdirSync(latest!.dir);
  for (const f of layout.files) assert.ok(files.includes(f), files.join(" "));
  assert.equal(trainLosses(out).length, step, "metrics.jsonl holds the steps done");

  // Resume in one process (the same global batch: 4 x 1 vs 2 x 2) and compare with a straight run.
  const resumed = spawnSync(process.execPath, [BIN, "train", "--config", config, "--set", `out_dir=${out}`, `train.max_steps=${step + 2}`, "--resume"], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, encoding: "utf8", timeout: 60_000,
  });
  assert.equal(resumed.status, 0, resumed.stderr);
  assert.match(resumed.stderr, layout.changed);
  const straightDir = join(root, "straight");
  const tr = new Trainer(tinyConfig(straightDir, data.dir, { ...PATCH, train: { ...PATCH.train, max_steps: step + 2 } }), { log: false });
  await tr.setup();
  await tr.run();
  const want = trainLosses(straightDir), got = trainLosses(out);
  assert.deepEqual(got.map((x) => x.step), want.map((x) => x.step));
  // Two ranks sum in another order: the curve agrees to float32 rounding.
  got.forEach((x, i) => assert.ok(Math.abs(x.loss - want[i]!.loss) <= 1e-5 * Math.abs(want[i]!.loss), `step ${i}: ${x.loss} vs ${want[i]!.loss}`));
});

// Sharded checkpoints load into other layouts, and a killed rank ends a training job cleanly.
//  - Save at dp=4 ZeRO-3 (every rank writes its shard), resume at dp=2 ZeRO-1 and in a single
//    process: the loss curve continues as if uninterrupted.
//  - Kill one rank of a dp=2 ZeRO-2 run mid-training: the job exits non-zero naming the rank
//    within bounded time, and the last complete checkpoint still loads and trains on.
// Runs real ranks under mpirun (skipped where Open MPI is missing).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareData, loadTokenizer, findLatestCheckpoint } from "../../src/index.js";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const skip = haveMpi ? false : "mpirun or the MPI addon is not available";
const bin = "bin/megalith.js";

/** Loss per step (the last line for a step wins: a resumed run appends). */
function losses(dir: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const l of readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n")) {
    const m = JSON.parse(l);
    if (m.split === undefined && !m.skipped) out.set(m.step, m.loss);
  }
  return out;
}

async function setup(root: string, steps: number): Promise<string> {
  const data = join(root, "data");
  const docs = Array.from({ length: 50 }, (_, i) => `Line ${i} says the ${["cat", "dog", "bird"][i % 3]} ate ${i} seeds today. `.repeat(6));
  await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2", inputs: [{ name: "gen", documents: docs }], outDir: data, valFraction: 0.1, progress: false });
  const cfg = {
    out_dir: "x", model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 50304 }, data: { source: data },
    train: { max_steps: steps, micro_batch_size: 4, seed: 5, log_interval: 100 }, optimizer: { lr: 3e-3, warmup_steps: 2, decay_steps: 10 },
    eval: { interval: 0, batches: 1 }, checkpoint: { interval: 4, keep: 5 },
  };
  const file = join(root, "cfg.json");
  writeFileSync(file, JSON.stringify(cfg));
  return file;
}

function train(file: string, np: number, sets: string[], extra: string[] = []) {
  const args = ["train", "--config", file, "--set", ...sets, ...extra];
  const r = np === 1
    ? spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 240_000 })
    : spawnSync("mpirun", mpirunArgs(np, args, undefined, bin), { encoding: "utf8", timeout: 240_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" } });
  assert.equal(r.status, 0, `${sets.join(" ")}: ${r.stderr}`);
}

test("a dp=4 ZeRO-3 checkpoint (one shard file per rank) resumes at dp=2 ZeRO-1 and in a single process on the uninterrupted curve", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-zero-ckpt-"));
  try {
    const file = await setup(root, 8);
    train(file, 1, [`out_dir=${join(root, "single")}`]);
    const zero3 = join(root, "dp4_zero3");
    train(file, 4, [`out_dir=${zero3}`, "parallel.dp=4", "parallel.zero=3", "train.micro_batch_size=1"]);
    const ckpt = join(zero3, "ckpt-000004");
    const files = readdirSync(ckpt).sort();
    for (let r = 0; r < 4; r++) assert.ok(files.includes(`optimizer-rank0000${r}-of-00004.safetensors`), files.join(" "));
    assert.ok(files.includes("zero_layout.json") && files.includes("manifest.json"), files.join(" "));
    const ref = losses(join(root, "single"));
    for (const [name, np, sets] of [
      ["dp2_zero1", 2, ["parallel.dp=2", "parallel.zero=1", "train.micro_batch_size=2"]],
      ["single_resumed", 1, []],
    ] as const) {
      const dir = join(root, name);
      cpSync(ckpt, join(dir, "ckpt-000004"), { recursive: true });
      train(file, np, [`out_dir=${dir}`, ...sets], ["--resume"]);
      const got = losses(dir);
      assert.deepEqual([...got.keys()], [4, 5, 6, 7], `${name} trained steps`);
      for (const [step, loss] of got) {
        assert.ok(Math.abs(loss - ref.get(step)!) <= 1e-5 * Math.abs(ref.get(step)!), `${name} step ${step}: ${loss} vs uninterrupted ${ref.get(step)}`);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** Pids of this job's rank processes, by their OMPI_COMM_WORLD_RANK. */
function rankPids(marker: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmd.includes(marker) || !cmd.includes("train")) continue;
      const env = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
      const rank = env.find((e) => e.startsWith("OMPI_COMM_WORLD_RANK="));
      if (rank) out.set(Number(rank.split("=")[1]), Number(pid));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

test("killing one rank of a dp=2 ZeRO-2 run ends the job non-zero, naming the rank, in bounded time; the last checkpoint still loads", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-kill-"));
  try {
    const file = await setup(root, 400);
    const out = join(root, "run");
    const job = spawn(process.execPath, [bin, "launch", "-n", "2", "--", "train", "--config", file, "--set", `out_dir=${out}`, "parallel.dp=2", "parallel.zero=2", "train.micro_batch_size=2", "checkpoint.interval=2"], {
      env: { ...process.env, MEGALITH_COLLECTIVE_TIMEOUT_S: "20" }, stdio: ["ignore", "pipe", "pipe"],
    });
    let text = "";
    job.stdout.on("data", (d) => (text += d));
    job.stderr.on("data", (d) => (text += d));
    const exited = new Promise<number | null>((resolve) => job.on("exit", (code) => resolve(code)));
    // Wait for a few steps and a committed checkpoint, then SIGKILL rank 1.
    const t0 = Date.now();
    while (!(existsSync(join(out, "ckpt-000004", "manifest.json")) && existsSync(join(out, "metrics.jsonl")) && losses(out).size >= 6)) {
      assert.ok(Date.now() - t0 < 120_000, `no progress in 120 s: ${text}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const pids = rankPids(out);
    assert.ok(pids.has(1), `rank 1 not found among ${JSON.stringify([...pids])}`);
    const killedAt = Date.now();
    process.kill(pids.get(1)!, "SIGKILL");
    const timer = setTimeout(() => job.kill("SIGKILL"), 90_000);
    const code = await exited;
    clearTimeout(timer);
    const took = (Date.now() - killedAt) / 1000;
    assert.notEqual(code, 0, text);
    assert.ok(took < 60, `the job took ${took} s to end after the kill`);
    assert.match(text, /rank 1 .*(exited on signal 9|killed)/i, text);
    for (const pid of rankPids(out).values()) assert.fail(`rank process ${pid} outlived the job`);
    // The newest complete checkpoint loads and training continues from it in one process.
    const latest = await findLatestCheckpoint(out, { checksums: true });
    assert.ok(latest && latest.step >= 4, `latest checkpoint: ${latest?.dir}`);
    train(file, 1, [`out_dir=${out}`, `train.max_steps=${latest.step + 2}`], ["--resume"]);
    assert.ok(losses(out).has(latest.step + 1));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

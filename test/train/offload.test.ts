// parallel.offload "disk" end to end: a training run whose AdamW moments stream from a scratch
// file logs the same losses (===) and ends with the same weights as the in-memory run, in fp32
// plain and under ZeRO-1 (bf16 offloads the fp32 masters too: test/train/offload_master.test.ts);
// its checkpoints hold the same optimizer bytes; the
// optimizer's resident memory falls to one chunk; and a `megalith train` process killed with
// SIGKILL at an arbitrary point (the offload file half-updated) resumes from its last checkpoint
// to the losses of a run that was never interrupted.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Trainer } from "../../src/train/trainer.js";
import { validateConfig } from "../../src/train/config.js";
import { findLatestCheckpoint } from "../../src/checkpoint/index.js";
import { OffloadedAdamW } from "../../src/optim/index.js";
import { ShardedAdamW } from "../../src/parallel/index.js";
import { memoryStats, resetPeakMemory } from "../../src/tensor/index.js";
import { tinyData, tinyConfig, tinyRawConfig, trainLosses, readMetrics } from "./_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
// ~10 KiB chunks (1310 elements): every parameter matrix spans chunk boundaries.
const CHUNK_MB = 0.01;
const PATCH = { train: { max_steps: 6 }, optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, decay_steps: 40 }, checkpoint: { interval: 3, keep: 2 } };

let root = "";
let dataDir = "";
before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-offload-train-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  dataDir = (await tinyData()).dir;
});

/**
 * `memOptimizerMb`: this run's optimizer state in the allocator when its gradients are complete;
 * `peakMb`: its peak allocator bytes over the run (metrics.jsonl's mem_peak_mb, less
 * what the earlier runs of this process still hold).
 */
interface Run { losses: number[]; weights: string[]; memOptimizerMb: number; peakMb: number; trainer: Trainer; out: string }
/** Every run stays referenced, so no finalizer frees an earlier run's tensors during a later one's measurement. */
const runs: Run[] = [];

async function train(name: string, parallel: Record<string, unknown>, trainPatch: Record<string, unknown> = {}): Promise<Run> {
  const out = join(root, name);
  // metrics.jsonl reports the process's allocator; the earlier runs' trainers are still alive here.
  const before = memoryStats();
  resetPeakMemory();
  // peak_flops given: no GEMM measurement (and its buffers) in setup, inside the measured peak.
  const cfg = tinyConfig(out, dataDir, { ...PATCH, train: { ...PATCH.train, peak_flops: 1e12, ...trainPatch }, parallel });
  const trainer = new Trainer(cfg, { log: false });
  await trainer.setup();
  await trainer.run();
  const rows = readMetrics(out).filter((m) => m.split === undefined);
  runs.push({
    losses: trainLosses(out).map((m) => m.loss), weights: trainer.model.parameters().map((p) => Buffer.from((p.data() as Float32Array).buffer).toString("base64")),
    memOptimizerMb: (rows[rows.length - 1]!.mem_optimizer_mb as number) - before.live.optimizer / 2 ** 20,
    // The last row: the run's peak, its checkpoint at step 3 included (an offloaded save reads the
    // moments into host arrays, no tensors), over what was live before it.
    peakMb: (rows[rows.length - 1]!.mem_peak_mb as number) - before.liveTotal / 2 ** 20, trainer, out,
  });
  return runs[runs.length - 1]!;
}

const ckptFile = (out: string, f: string) => readFileSync(join(out, "ckpt-000006", f));

test("`Trainer` with parallel.offload=disk logs the same losses and weights as in memory (fp32, ZeRO-1), with the same checkpoint bytes and one chunk of resident optimizer state", async () => {
  const offload = { offload: "disk", offload_chunk_mb: CHUNK_MB };
  const variants: Array<[string, Record<string, unknown>, Record<string, unknown>, string]> = [
    ["fp32", {}, {}, "optimizer.safetensors"],
    ["zero1", { zero: 1 }, {}, "optimizer-rank00000-of-00001.safetensors"],
  ];
  for (const [name, parallel, trainPatch, optFile] of variants) {
    const mem = await train(`${name}-mem`, parallel, trainPatch);
    const off = await train(`${name}-disk`, { ...parallel, ...offload }, trainPatch);
    const opt = off.trainer.optimizer;
    assert.ok(opt instanceof OffloadedAdamW || (opt instanceof ShardedAdamW && opt.offloaded !== null), `${name}: the optimizer is offloaded`);
    assert.equal(mem.losses.length, 6);
    assert.deepEqual(off.losses, mem.losses, `${name}: losses`);
    assert.ok(new Set(mem.losses).size > 1, "the loss changes over the run");
    assert.deepEqual(off.weights, mem.weights, `${name}: final weights`);
    assert.ok(ckptFile(off.out, optFile).equals(ckptFile(mem.out, optFile)), `${name}: ${optFile} is byte-identical`);
    // The run's moments (8 bytes per parameter) leave memory; one chunk stays.
    const psi = mem.trainer.model.numParameters();
    const chunkMb = CHUNK_MB;
    assert.ok(mem.memOptimizerMb * 2 ** 20 >= 8 * psi, `${name}: in memory ${mem.memOptimizerMb} MiB for ${psi} parameters`);
    assert.ok(Math.abs(off.memOptimizerMb - chunkMb) < 0.1 * chunkMb, `${name}: offloaded ${off.memOptimizerMb} MiB resident, chunk ${chunkMb} MiB`);
    const saved = mem.peakMb - off.peakMb, want = mem.memOptimizerMb - chunkMb;
    assert.ok(Math.abs(saved - want) < 0.1 * want, `${name}: the peak falls by ${saved.toFixed(4)} MiB, the offloaded moments less a chunk are ${want.toFixed(4)} MiB`);
    assert.ok(existsSync(join(off.out, "offload", "adamw-moments-rank00000.bin")), `${name}: the scratch file is in <out_dir>/offload`);
  }
});

test("validateConfig() refuses parallel.offload=disk with tensor or pipeline parallelism, naming parallel.offload", () => {
  const raw = tinyRawConfig(join(root, "bad"), dataDir, { parallel: { offload: "disk", tp: 2 } });
  assert.throws(() => validateConfig(raw), /parallel\.offload: "disk" offloads the optimizer of data-parallel and ZeRO layouts only; it does not combine with parallel\.tp=2/);
  const pp = tinyRawConfig(join(root, "bad"), dataDir, { parallel: { offload: "disk", pp: 2 } });
  assert.throws(() => validateConfig(pp), /parallel\.offload: .*parallel\.pp=2/);
  assert.equal(validateConfig(tinyRawConfig(join(root, "ok"), dataDir)).parallel.offload, "none");
});

test("`megalith train` with parallel.offload=disk killed by SIGKILL resumes from its last checkpoint to the losses of an uninterrupted run", async () => {
  const steps = 12;
  const patch = { ...PATCH, train: { max_steps: steps, log_interval: 1000 }, checkpoint: { interval: 2, keep: 2 }, parallel: { offload: "disk", offload_chunk_mb: CHUNK_MB } };
  const configFile = join(root, "kill.json");
  writeFileSync(configFile, JSON.stringify(tinyRawConfig("placeholder", dataDir, patch)));
  const out = join(root, "killed");
  const start = (...extra: string[]) => {
    const child = spawn(process.execPath, [BIN, "train", "--config", configFile, "--set", `out_dir=${out}`, ...extra], {
      env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d) => (err += d));
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on("exit", (code, signal) => r({ code, signal })));
    return { child, exit, stderr: () => err };
  };
  const rows = () => (existsSync(join(out, "metrics.jsonl")) ? readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter((l) => l.includes('"loss"')).length : 0);
  const run = start();
  const t0 = Date.now();
  // Past the first checkpoint (step 2) and into the steps after it.
  while (rows() < 5) {
    if (Date.now() - t0 > 60_000) assert.fail(`no progress: ${run.stderr()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  run.child.kill("SIGKILL");
  assert.equal((await run.exit).signal, "SIGKILL");
  const latest = await findLatestCheckpoint(out, { checksums: true });
  assert.ok(latest && latest.step >= 2 && latest.step < steps, `latest checkpoint: ${latest?.dir} (${readdirSync(out).join(", ")})`);
  const resumed = start("--resume");
  const r = await resumed.exit;
  assert.equal(r.code, 0, resumed.stderr());
  assert.match(resumed.stderr(), new RegExp(`resume: continuing from .*ckpt-${String(latest.step).padStart(6, "0")}`));
  // The uninterrupted reference, in memory: offload changes no bits.
  const ref = join(root, "straight");
  const trainer = new Trainer(validateConfig({ ...tinyRawConfig(ref, dataDir, { ...patch, parallel: {} }) }), { log: false });
  await trainer.setup();
  await trainer.run();
  const want = trainLosses(ref), got = trainLosses(out);
  assert.deepEqual(got.map((m) => m.step), want.map((m) => m.step));
  assert.deepEqual(got.map((m) => m.loss), want.map((m) => m.loss));
});

/**
 * `npm run bench -- plan [--steps N] [--only NAME,...] [--recalibrate]`: the planner against this machine
 * (issue 13's "against this machine" check). For each of ten layouts of one small GPT
 * (4 layers x 256 wide, 4 heads, block 128, vocab 4096; global batch 8 sequences = 1,024 tokens,
 * held fixed) it runs `megalith train` for a few steps, reads the measured memory per category
 * and the median step time from metrics.jsonl, and puts the planner's prediction for that exact
 * layout (`predict()` in src/plan/planner.ts, on the calibrated `cpu-this` profile) beside them.
 *
 * Targets: memory per category within 10%, step time within 25%, and the planner's first
 * choice among these layouts measured fastest or within 10% of the fastest.
 *
 * Calibration: the cached `megalith plan --calibrate` record when it was taken at this bench's
 * model (its non-GEMM rate's shape) and has collectives, else `megalith plan --calibrate --config`
 * for this model, i.e. calibrate() in this process (GEMM tables at this model's products with 2
 * threads and with 1, the non-GEMM rate from a one-block step, the per-op cost) and the
 * collectives from a 2-rank mpirun job (measureCollectives), written to the calibration file.
 * --recalibrate forces it. Each layout is predicted on cpuProfile(record, dtype, ranks): one
 * process with the 2-thread tables, each of 2 ranks with the 1-thread ones.
 *
 * Step time: the median after warm-up, as the check asks, and the fastest step beside it: this
 * machine's 2 cores are shared with other jobs (load1 per row), and the calibration is best-of,
 * i.e. an undisturbed machine, so under load the median measures the neighbours as much as us.
 *
 * Jobs: 2-rank layouts run under mpirun (mpirunArgs, MEGALITH_NUM_THREADS=1 per rank: the 2
 * ranks share this machine's 2 cores); 1-process layouts run with 2 threads, so every job uses
 * both cores and the profile (GEMM rate measured with 2 threads, divided by ranks) applies to all.
 * Each job is stopped once its last step is logged (the final checkpoint measures nothing here).
 *
 * Measured memory: mem_params_mb / mem_grads_mb / mem_optimizer_mb (live when the gradients are
 * complete) and mem_act_peak_mb (the step's activation peak) from the allocator, rank 0's
 * metrics.jsonl. For pp=2 the trainer logs rank 0 = stage 0, so the prediction shown is stage 0's.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../src/cli/launch.js";
import { measureCollectives } from "../src/cli/plan.js";
import { validateConfig, type TrainConfig } from "../src/train/config.js";
import {
  calibrationFile, cpuProfile, describeLayout, predict, readCalibration, writeCalibration,
  type CalibrationRecord, type Layout, type Prediction,
} from "../src/plan/index.js";
import type { BenchResult } from "./main.js";

const BIN = "bin/megalith.js";
const WARMUP = 2;
const MEM_TOL = 0.10, TIME_TOL = 0.25, CHOICE_TOL = 0.10;
const MODEL = { n_layer: 4, n_head: 4, n_embd: 256, block_size: 128, vocab_size: 4096, dropout: 0.0 };
/** Global batch: 4 micro-batches of 2 sequences (dp=2: 2 per rank). */
const MICRO_BATCH = 2, MICRO_BATCHES = 4;

/** One measured layout: how to run it and the planner's Layout it is. */
interface BenchLayout {
  name: string;
  ranks: number;
  /** MEGALITH_NUM_THREADS per rank. */
  threads: number;
  /** `--set` overrides on the base config. */
  sets: string[];
  /** The planner's description of the same layout. */
  plan: Partial<Layout>;
}

const DP2 = ["parallel.dp=2", `train.grad_accum_steps=${MICRO_BATCHES / 2}`];
const LAYOUTS: BenchLayout[] = [
  { name: "1 process", ranks: 1, threads: 2, sets: [], plan: {} },
  { name: "dp2 zero0", ranks: 2, threads: 1, sets: [...DP2, "parallel.zero=0"], plan: { dp: 2, zero: 0, microBatches: 2 } },
  { name: "dp2 zero1", ranks: 2, threads: 1, sets: [...DP2, "parallel.zero=1"], plan: { dp: 2, zero: 1, microBatches: 2 } },
  { name: "dp2 zero2", ranks: 2, threads: 1, sets: [...DP2, "parallel.zero=2"], plan: { dp: 2, zero: 2, microBatches: 2 } },
  { name: "dp2 zero3", ranks: 2, threads: 1, sets: [...DP2, "parallel.zero=3"], plan: { dp: 2, zero: 3, microBatches: 2 } },
  { name: "tp2", ranks: 2, threads: 1, sets: ["parallel.tp=2"], plan: { tp: 2 } },
  { name: "pp2 1f1b", ranks: 2, threads: 1, sets: ["parallel.pp=2", "parallel.pp_schedule=1f1b"], plan: { pp: 2, schedule: "1f1b" } },
  { name: "recompute full", ranks: 1, threads: 2, sets: ["train.activation_checkpointing=full"], plan: { recompute: "full" } },
  { name: "recompute selective", ranks: 1, threads: 2, sets: ["train.activation_checkpointing=selective"], plan: { recompute: "selective" } },
  { name: "bf16", ranks: 1, threads: 2, sets: ["train.precision=bf16"], plan: { }, },
];

/** The planner's Layout for a bench layout (defaults: one process, b=2, m=4). */
function planLayout(l: BenchLayout): Layout {
  return { dp: 1, tp: 1, pp: 1, sp: false, zero: 0, recompute: "none", schedule: "1f1b", virtualStages: 1, microBatchSize: MICRO_BATCH, microBatches: MICRO_BATCHES, ...l.plan };
}

/** The validated config of a layout (the planner reads precision, bucket size, reduce dtype). */
function layoutConfig(raw: Record<string, unknown>, l: BenchLayout): TrainConfig {
  const c = JSON.parse(JSON.stringify(raw)) as Record<string, Record<string, unknown>>;
  for (const s of l.sets) {
    const [k, v] = s.split("=") as [string, string];
    const [sec, key] = k.split(".") as [string, string];
    c[sec] ??= {};
    c[sec]![key] = /^\d+$/.test(v) ? Number(v) : v === "true" ? true : v === "false" ? false : v;
  }
  return validateConfig(c);
}

// ---- calibration -------------------------------------------------------------------------------

/** Whether a record holds the step-time tables for this bench's model, and collectives. */
function fitsBench(rec: CalibrationRecord | null): rec is CalibrationRecord {
  const m = rec?.non_gemm?.[0]?.model;
  return !!rec?.collectives && !!m && Array.isArray(m.n_layer) && m.n_embd === MODEL.n_embd && m.block_size === MODEL.block_size && m.vocab_size === MODEL.vocab_size && m.micro_batch_size === MICRO_BATCH;
}

async function calibration(force: boolean, base: TrainConfig): Promise<{ rec: CalibrationRecord; source: string }> {
  const cached = force ? null : readCalibration();
  if (fitsBench(cached)) return { rec: cached, source: `cached ${calibrationFile()}` };
  console.error("plan bench: calibrating at this model's shapes (megalith plan --calibrate --config, in-process) and collectives (2-rank mpirun)...");
  const { calibrate } = await import("../src/plan/calibrate.js");
  const rec = calibrate({ config: base });
  const coll = measureCollectives(2);
  rec.collectives = coll.collectives;
  if (!coll.collectives) rec.collectives_skipped = coll.why;
  writeCalibration(rec);
  return { rec, source: `measured now, written to ${calibrationFile()}${coll.collectives ? "" : ` (collectives skipped: ${coll.why})`}` };
}

// ---- running a layout --------------------------------------------------------------------------

interface Metric { step: number; step_ms: number; step_cpu_ms?: number; mem_params_mb: number; mem_grads_mb: number; mem_optimizer_mb: number; mem_act_peak_mb: number; mem_peak_mb: number }

function readMetrics(file: string): Metric[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).flatMap((l) => {
    try {
      const m = JSON.parse(l);
      return typeof m.step_ms === "number" && m.split === undefined ? [m as Metric] : [];
    } catch {
      return [];
    }
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Runs the layout until `steps` steps are logged, then stops it (SIGTERM to the process this started). */
async function runJob(l: BenchLayout, cfg: string, out: string, steps: number, timeoutS: number): Promise<Metric[]> {
  const args = ["train", "--config", cfg, "--set", `out_dir=${out}`, `train.max_steps=${steps}`, ...l.sets];
  const env = { ...process.env, MEGALITH_NUM_THREADS: String(l.threads) };
  const child: ChildProcess = l.ranks === 1
    ? spawn(process.execPath, [BIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] })
    : spawn("mpirun", mpirunArgs(l.ranks, args, undefined, BIN), { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (d: Buffer) => { log = (log + d.toString()).slice(-8000); };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((c) => { exitCode = c; });
  const file = join(out, "metrics.jsonl");
  const t0 = Date.now();
  while (readMetrics(file).length < steps) {
    if (exitCode !== undefined) throw new Error(`plan bench: ${l.name} exited with code ${exitCode} before ${steps} steps:\n${log}`);
    if (Date.now() - t0 > timeoutS * 1000) {
      child.kill("SIGTERM");
      await exited;
      throw new Error(`plan bench: ${l.name} did not finish ${steps} steps in ${timeoutS} s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  if (exitCode === undefined) {
    child.kill("SIGTERM");
    await exited;
  }
  return readMetrics(file);
}

// ---- comparison --------------------------------------------------------------------------------

const MiB = 2 ** 20;
const CATS = [["params", "parameters", "mem_params_mb"], ["grads", "gradients", "mem_grads_mb"], ["optimizer", "optimizer", "mem_optimizer_mb"], ["act", "activations", "mem_act_peak_mb"]] as const;
const err = (pred: number, meas: number) => (meas === 0 ? (pred === 0 ? 0 : Infinity) : pred / meas - 1);
const pct = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)}%` : "inf");

export async function run(args: string[]): Promise<BenchResult> {
  const opt = (name: string, dflt: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || dflt : dflt);
  const steps = opt("--steps", 7), timeoutS = opt("--timeout", 120);
  // --threads1: every rank single-threaded (1-process layouts too), so that rank 0's CPU time
  // per step estimates its step on idle cores however loaded the shared cores are.
  const threads1 = args.includes("--threads1");
  process.env.MEGALITH_FROM_SOURCE = "1";
  process.env.MEGALITH_NUM_THREADS ??= "2";
  const started = Date.now();
  const loadStart = loadavg().map((x) => +x.toFixed(2));
  const dir = mkdtempSync(join(tmpdir(), "megalith-planbench-"));
  try {
    console.error("plan bench: a 512-token BPE tokenizer and the Brown corpus...");
    const tok = join(dir, "tokenizer.json"), data = join(dir, "data");
    for (const cmd of [["tokenizer", "train", "--vocab-size", "512", "--brown", "--out", tok, "--quiet"], ["prepare", "--input", "brown", "--tokenizer", tok, "--out", data, "--no-progress"]]) {
      const r = spawnSync(process.execPath, [BIN, ...cmd], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`plan bench: megalith ${cmd[0]} failed: ${r.stderr}`);
    }
    const raw = {
      out_dir: join(dir, "run"), model: MODEL, data: { source: data },
      train: { micro_batch_size: MICRO_BATCH, grad_accum_steps: MICRO_BATCHES, seed: 1337, grad_clip: 1.0, log_interval: 1, max_steps: steps },
      optimizer: { lr: 6e-4, warmup_steps: 2 }, eval: { interval: 0, batches: 1 }, checkpoint: { interval: 0, keep: 1 },
    };
    const cfg = join(dir, "config.json");
    writeFileSync(cfg, JSON.stringify(raw, null, 2));
    const { rec: cached, source } = await calibration(args.includes("--recalibrate"), layoutConfig(raw, LAYOUTS[0]!));
    // A 1-process layout run with 1 thread is predicted from the 1-thread tables.
    const profileRec = (l: BenchLayout) => (threads1 && l.ranks === 1 ? { ...cached, threads: 1 } : cached);
    const only = args.includes("--only") ? (args[args.indexOf("--only") + 1] ?? "").split(",") : null;
    const layouts = LAYOUTS.filter((l) => !only || only.includes(l.name)).map((l) => (threads1 ? { ...l, threads: 1 } : l));
    const rows: BenchResult["rows"] = [];
    const preds = new Map<string, Prediction>();
    const measuredMs = new Map<string, number>();
    const cpuMs = new Map<string, number>();
    for (const [i, l] of layouts.entries()) {
      const c = layoutConfig(raw, l);
      const dtype = c.train.precision === "bf16" ? "bfloat16" : "float32";
      const p = predict(c, planLayout(l), cpuProfile(profileRec(l), dtype, l.ranks));
      // Rank 0 logs: for pp it is stage 0, whatever stage the planner found the most loaded.
      const mem = l.plan.pp && l.plan.pp > 1 ? predict(c, planLayout(l), cpuProfile(profileRec(l), dtype, l.ranks), 0).memory : p.memory;
      preds.set(l.name, p);
      console.error(`plan bench: [${i + 1}/${layouts.length}] ${l.name} (${describeLayout(planLayout(l))}), ${steps} steps...`);
      const ms = await runJob(l, cfg, join(dir, l.name.replace(/\W+/g, "_")), steps, timeoutS);
      const steady = ms.slice(WARMUP);
      const last = ms[ms.length - 1]!;
      const stepMs = median(steady.map((m) => m.step_ms));
      measuredMs.set(l.name, stepMs);
      // Rank 0's CPU time per step over its threads: a 1-thread rank's idle-core step; for more
      // threads a lower bound (serial parts leave a thread idle).
      const cpuStep = median(steady.map((m) => m.step_cpu_ms ?? NaN)) / l.threads;
      cpuMs.set(l.name, cpuStep);
      const row: BenchResult["rows"][number] = { name: l.name };
      let memOk = true;
      for (const [short, key, metric] of CATS) {
        const pr = mem[key] / MiB, me = metric === "mem_act_peak_mb" ? Math.max(...steady.map((m) => m[metric])) : last[metric];
        const e = err(pr, me);
        if (!(Math.abs(e) <= MEM_TOL)) memOk = false;
        row[`${short}_pred_mb`] = +pr.toFixed(2);
        row[`${short}_meas_mb`] = +me.toFixed(2);
        row[`${short}_err`] = pct(e);
      }
      const predMs = p.step_time.total * 1000;
      const te = err(predMs, stepMs);
      Object.assign(row, {
        step_pred_ms: +predMs.toFixed(0), pred_compute_ms: +(p.step_time.compute * 1000).toFixed(0), pred_comm_ms: +(p.step_time.communication * 1000).toFixed(0),
        step_meas_ms: +stepMs.toFixed(0), step_err: pct(te),
        mem_ok: memOk, time_ok: Math.abs(te) <= TIME_TOL, peak_meas_mb: +last.mem_peak_mb.toFixed(1),
        step_cpu_ms: +cpuStep.toFixed(0), step_err_vs_cpu: pct(err(predMs, cpuStep)),
        // CPU time leaves out waiting (the bubble, a peer's lateness): compare the busy part too.
        pred_busy_ms: +((p.step_time.compute / (1 + p.bubble)) * 1000).toFixed(0), busy_err_vs_cpu: pct(err((p.step_time.compute / (1 + p.bubble)) * 1000, cpuStep)), time_ok_cpu: Math.abs(err(predMs, cpuStep)) <= TIME_TOL, threads: l.threads,
        step_min_ms: +Math.min(...steady.map((m) => m.step_ms)).toFixed(0), step_err_vs_min: pct(err(predMs, Math.min(...steady.map((m) => m.step_ms)))),
        load1: +loadavg()[0]!.toFixed(1),
      });
      rows.push(row);
      console.error(`  measured ${stepMs.toFixed(0)} ms, cpu ${cpuStep.toFixed(0)} ms (predicted ${predMs.toFixed(0)}: ${pct(te)}, ${pct(err(predMs, cpuStep))} vs cpu); ` +
        CATS.map(([s]) => `${s} ${row[`${s}_meas_mb`]}/${row[`${s}_pred_mb`]} MiB`).join(", ") + ` (load ${loadavg()[0]!.toFixed(1)})`);
    }
    // The planner's first choice among the measured layouts: fits first, then predicted time.
    const ranked = [...preds.entries()].sort((x, y) => Number(y[1].fits) - Number(x[1].fits) || x[1].step_time.total - y[1].step_time.total);
    const first = ranked[0]![0];
    const fastest = [...measuredMs.entries()].sort((x, y) => x[1] - y[1])[0]!;
    const choiceGap = measuredMs.get(first)! / fastest[1] - 1;
    const fastestCpu = [...cpuMs.entries()].sort((x, y) => x[1] - y[1])[0]!;
    const summary = {
      planner_first_choice: first, measured_fastest: fastest[0], first_choice_vs_fastest: pct(choiceGap), choice_ok: choiceGap <= CHOICE_TOL,
      memory_within_10pct: `${rows.filter((r) => r.mem_ok).length}/${rows.length}`, step_within_25pct: `${rows.filter((r) => r.time_ok).length}/${rows.length}`,
      step_within_25pct_of_cpu: `${rows.filter((r) => r.time_ok_cpu).length}/${rows.length}`,
      measured_fastest_by_cpu: fastestCpu[0], first_choice_vs_fastest_by_cpu: pct(cpuMs.get(first)! / fastestCpu[1] - 1),
      threads_per_rank: threads1 ? 1 : "1-process layouts 2, 2-rank layouts 1",
    };
    console.error(`plan bench: ${JSON.stringify(summary)}`);
    return {
      suite: "plan",
      env: {
        cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, node: process.version,
        commit: spawnSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout?.trim() || "unknown",
        model: `gpt ${MODEL.n_layer}L/${MODEL.n_head}H/${MODEL.n_embd}, T=${MODEL.block_size}, vocab ${MODEL.vocab_size}, dropout 0`,
        global_batch: `${MICRO_BATCHES} micro-batches x ${MICRO_BATCH} x ${MODEL.block_size} tokens (dp2: 2 per rank; pp2: m=4)`,
        steps, warmup_steps: WARMUP, calibration: source, calibration_record: cached,
        step_model: "calibrated cpu-this: GEMMs at the table's rate for each of this model's products (2-thread table for 1 process, 1-thread for each of 2 ranks) + non-GEMM traffic at the rate measured from a one-block step + ops x per-op cost, x (1 + bubble), + collectives (measured latency and bandwidth per kind)",
        step_min: "step_min_ms: the fastest step after warm-up, the least disturbed by other jobs on the shared cores (load1: the 1-minute load average after the layout); the calibration is best-of, i.e. an undisturbed machine",
        launch: "2 ranks: mpirun (mpirunArgs), MEGALITH_NUM_THREADS=1 per rank; 1 process: 2 threads",
        measured: "rank 0's metrics.jsonl: params/grads/optimizer when the gradients are complete (last step), activation peak (max over steps after warm-up), median step_ms after warm-up",
        tolerances: { memory: MEM_TOL, step_time: TIME_TOL, first_choice: CHOICE_TOL },
        summary,
        loadavg_start: loadStart, loadavg_end: loadavg().map((x) => +x.toFixed(2)),
        elapsed_s: Math.round((Date.now() - started) / 1000),
      },
      rows,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}


/**
 * `npm run bench -- parallel [--steps N] [--only NAME,...]`: training step time and tokens/s of one GPT (6L/6H/384,
 * T=256, the config bench/train.ts and bench/precision.ts use) under each parallel layout of
 * `megalith train`: one process, dp=2, tp=2, tp=2 with sequence parallelism, and pp=2 with the
 * GPipe, 1F1B and interleaved (v=2) schedules; plus, from the same runs' traces, the share of
 * each rank's step spent computing, communicating and otherwise.
 *
 * Every layout is a real job on a prepared data dir (the Brown corpus, GPT-2 tokenizer):
 * `megalith train` as 2 mpirun ranks (mpirunArgs, 1 compute thread per rank: 2 ranks share this
 * machine's 2 cores), or as 1 process with 2 threads, and with 1 thread for a per-core figure.
 * All see the same global batch per step: 4 micro-batches of 1 x 256 tokens (dp=2: 2 per
 * rank), so the pipelines run m=4 micro-batches, and every layout starts from the same seed and
 * trains on the same samples: the losses after the last step must agree (fp32, ~1e-5).
 *
 * Step time and tokens/s are the medians of metrics.jsonl over the steps after 2 warm-up steps
 * (medians because other jobs share these cores). The trace (train.trace, all steps) is
 * recorded in the same run: a few hundred events per step, which costs nothing measurable.
 * Once the last step's metrics and the trace files are written the job is stopped: the
 * end-of-run checkpoint and final model (~20 s per job here) measure nothing this bench reports.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../src/cli/launch.js";
import { analyzeTrace, rankTracePath, MAIN_TID, COMM_TID, type TraceEvent } from "../src/core/trace.js";
import type { BenchResult } from "./main.js";

const BIN = "bin/megalith.js";
const WARMUP = 2;
/** Losses of a layout and the single process may differ by this much (fp32 reduction order). */
const LOSS_TOL = 1e-5;
const CAVEAT = "2 cores: tensor parallel ranks share the cores of one process, so TP cannot show a speed-up here; the numbers show its overhead";

/** The model of bench/train.ts ("gpt 6L/6H/384, T=256"); its B=8 is halved to 4 sequences per
 *  step so eight layouts fit in a few minutes on 2 shared cores. */
const MODEL = { n_layer: 6, n_head: 6, n_embd: 384, block_size: 256, vocab_size: 50304, dropout: 0.0 };
const MICRO_BATCH = 1, MICRO_BATCHES = 4;

interface Layout {
  name: string;
  /** mpirun ranks (1: a plain process). */
  ranks: number;
  /** MEGALITH_NUM_THREADS per rank. */
  threads: number;
  /** `--set` overrides on top of the base config. */
  sets: string[];
}

/** The layouts, as data. dp=2 halves the accumulation so the global batch stays 4 micro-batches. */
const LAYOUTS: Layout[] = [
  { name: "1 process, 2 threads", ranks: 1, threads: 2, sets: [] },
  { name: "1 process, 1 thread", ranks: 1, threads: 1, sets: [] },
  { name: "dp=2", ranks: 2, threads: 1, sets: ["parallel.dp=2", `train.grad_accum_steps=${MICRO_BATCHES / 2}`] },
  { name: "tp=2", ranks: 2, threads: 1, sets: ["parallel.tp=2"] },
  { name: "tp=2 sp", ranks: 2, threads: 1, sets: ["parallel.tp=2", "parallel.sp=true"] },
  { name: "pp=2 gpipe", ranks: 2, threads: 1, sets: ["parallel.pp=2", "parallel.pp_schedule=gpipe"] },
  { name: "pp=2 1f1b", ranks: 2, threads: 1, sets: ["parallel.pp=2", "parallel.pp_schedule=1f1b"] },
  // 6 layers do not split into 2 x 2 equal chunks: [2,1,1,2] gives each rank 3 layers, as in
  // the other pipelines (chunk k runs on rank k % 2).
  { name: "pp=2 interleaved v=2", ranks: 2, threads: 1, sets: ["parallel.pp=2", "parallel.pp_schedule=interleaved", "parallel.pp_virtual_stages=2", "parallel.pp_layers=[2,1,1,2]"] },
];
const BASELINE = LAYOUTS[0]!.name;

// ---- trace analysis ------------------------------------------------------------------------------

type Interval = [number, number];
const COMPUTE_CATS = new Set(["forward", "backward", "optimizer"]);
const COMM_CATS = new Set(["send", "recv", "allreduce", "allgather", "reducescatter", "broadcast", "alltoall", "barrier"]);

/** Sorted, disjoint union of intervals. */
function union(xs: Interval[]): Interval[] {
  const s = xs.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Interval[] = [];
  for (const [a, b] of s) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** a minus b, both sorted and disjoint. */
function subtract(a: Interval[], b: Interval[]): Interval[] {
  const out: Interval[] = [];
  let j = 0;
  for (const [lo, hi] of a) {
    let cur = lo;
    while (j < b.length && b[j]![1] <= cur) j++;
    for (let k = j; k < b.length && b[k]![0] < hi; k++) {
      if (b[k]![0] > cur) out.push([cur, b[k]![0]]);
      cur = Math.max(cur, b[k]![1]);
    }
    if (cur < hi) out.push([cur, hi]);
  }
  return out;
}

/** Length of a sorted, disjoint set clipped to [lo, hi). */
function lengthIn(xs: Interval[], lo: number, hi: number): number {
  let t = 0;
  for (const [a, b] of xs) t += Math.max(0, Math.min(b, hi) - Math.max(a, lo));
  return t;
}

interface RankBreakdown { rank: number; steps: number; step_ms: number; compute: number; comm: number; other: number; idle_fraction: number }

/**
 * One rank's step split three ways, over the steps after `skip` (mark to next mark, the last
 * step ending at the rank's last event, as analyzeTrace() measures them):
 *  - comm: the main thread inside a blocking collective (tid 0 spans, including the tensor
 *    parallel all-reduces nested in forward/backward), or waiting for an asynchronous call:
 *    a pipeline receive is awaited as soon as it is issued, so its wait runs from the issue
 *    (the event's start minus args.queued_ms) to its end; other asynchronous calls (data
 *    parallel gradient buckets, pipeline sends) count where they run while the main thread
 *    is not computing, which is when it waits for them.
 *  - compute: forward, backward and optimizer spans on tid 0, less the communication in them.
 *  - other: the rest (data loading, gradient norm, loss bookkeeping, JavaScript in between).
 */
function breakdown(events: TraceEvent[], rank: number, skip: number): Omit<RankBreakdown, "idle_fraction"> {
  const mine = events.filter((e) => e.pid === rank && e.ph !== "M");
  const marks = mine.filter((e) => e.ph === "i" && e.cat === "step").map((e) => e.ts).sort((a, b) => a - b);
  let end = -Infinity;
  for (const e of mine) end = Math.max(end, e.ts + (e.dur ?? 0));
  const spans = mine.filter((e) => e.ph === "X");
  const iv = (e: TraceEvent): Interval => [e.ts, e.ts + (e.dur ?? 0)];
  const blocking = union(spans.filter((e) => e.tid === MAIN_TID && COMM_CATS.has(e.cat)).map(iv));
  const compute = subtract(union(spans.filter((e) => e.tid === MAIN_TID && COMPUTE_CATS.has(e.cat)).map(iv)), blocking);
  const asyncWaits = union(spans.filter((e) => e.tid === COMM_TID && COMM_CATS.has(e.cat)).map((e) => {
    const queuedUs = e.cat === "recv" ? Number(e.args?.queued_ms ?? 0) * 1000 : 0;
    return [e.ts - queuedUs, e.ts + (e.dur ?? 0)] as Interval;
  }));
  const comm = union([...blocking, ...subtract(asyncWaits, compute)]);
  const bounds = [...marks, end];
  let steps = 0, stepUs = 0, computeUs = 0, commUs = 0;
  for (let i = skip; i < marks.length; i++) {
    const lo = bounds[i]!, hi = bounds[i + 1]!;
    if (hi <= lo) continue;
    steps++;
    stepUs += hi - lo;
    computeUs += lengthIn(compute, lo, hi);
    commUs += lengthIn(comm, lo, hi);
  }
  const frac = (x: number) => (stepUs > 0 ? +(x / stepUs).toFixed(3) : 0);
  return { rank, steps, step_ms: steps ? +(stepUs / steps / 1000).toFixed(0) : 0, compute: frac(computeUs), comm: frac(commUs), other: frac(stepUs - computeUs - commUs) };
}

function readEvents(file: string): TraceEvent[] {
  return (JSON.parse(readFileSync(file, "utf8")) as { traceEvents: TraceEvent[] }).traceEvents;
}

// ---- running a layout ----------------------------------------------------------------------------

interface Metric { step: number; loss: number; step_ms: number; tokens_per_s: number }

interface LayoutResult {
  stepMs: number;
  tokensPerS: number;
  loss: number;
  /** Per rank; null when a rank's trace is missing or holds no steps after warm-up. */
  ranks: RankBreakdown[] | null;
  traceNote?: string;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function readMetrics(file: string): Metric[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).flatMap((l) => {
    try {
      const m = JSON.parse(l);
      return typeof m.step_ms === "number" && m.split === undefined ? [m as Metric] : [];
    } catch {
      return [];  // a line being written
    }
  });
}

/** Starts the job, waits until `steps` steps are logged and every rank's trace is written, then
 *  stops it (SIGTERM to the process this started; mpirun forwards it to its ranks). */
async function runJob(layout: Layout, cfg: string, out: string, steps: number, timeoutS: number): Promise<Metric[]> {
  const trace = join(out, "trace.json");
  const args = ["train", "--config", cfg, "--set", `out_dir=${out}`, `train.max_steps=${steps}`, `train.trace=${trace}`, `train.trace_steps=${steps}`, ...layout.sets];
  const env = { ...process.env, MEGALITH_NUM_THREADS: String(layout.threads) };
  const child: ChildProcess = layout.ranks === 1
    ? spawn(process.execPath, [BIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] })
    : spawn("mpirun", mpirunArgs(layout.ranks, args, undefined, BIN), { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (d: Buffer) => { log = (log + d.toString()).slice(-8000); };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((c) => { exitCode = c; });
  const metricsFile = join(out, "metrics.jsonl");
  const done = () => readMetrics(metricsFile).length >= steps
    && Array.from({ length: layout.ranks }, (_, r) => existsSync(rankTracePath(trace, r))).every(Boolean);
  const t0 = Date.now();
  while (!done()) {
    if (exitCode !== undefined) throw new Error(`parallel bench: ${layout.name} exited with code ${exitCode} before ${steps} steps:\n${log}`);
    if (Date.now() - t0 > timeoutS * 1000) {
      child.kill("SIGTERM");
      await exited;
      throw new Error(`parallel bench: ${layout.name} did not finish ${steps} steps in ${timeoutS} s (raise --timeout):\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  if (exitCode === undefined) {
    child.kill("SIGTERM");
    await exited;
  }
  return readMetrics(metricsFile);
}

async function runLayout(layout: Layout, cfg: string, dir: string, steps: number, timeoutS: number): Promise<LayoutResult> {
  const out = join(dir, layout.name.replace(/\W+/g, "_"));
  const metrics = await runJob(layout, cfg, out, steps, timeoutS);
  const steady = metrics.slice(WARMUP, steps);
  const res: LayoutResult = {
    stepMs: median(steady.map((m) => m.step_ms)),
    tokensPerS: median(steady.map((m) => m.tokens_per_s)),
    loss: metrics[steps - 1]!.loss,
    ranks: null,
  };
  const trace = join(out, "trace.json");
  const events: TraceEvent[] = [];
  for (let r = 0; r < layout.ranks; r++) events.push(...readEvents(rankTracePath(trace, r)));
  const idle = analyzeTrace(events, { skipSteps: WARMUP });
  const ranks = idle.map((s) => ({ ...breakdown(events, s.rank, WARMUP), idle_fraction: +s.idleFraction.toFixed(3) }));
  if (ranks.length !== layout.ranks || ranks.some((r) => r.steps === 0)) {
    res.traceNote = `the trace holds ${ranks.length} of ${layout.ranks} ranks, steps after warm-up per rank: ${ranks.map((r) => r.steps).join(", ") || "none"}`;
  } else {
    res.ranks = ranks;
  }
  return res;
}

const mean = (xs: number[]) => +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3);

export async function run(args: string[]): Promise<BenchResult> {
  const opt = (name: string, dflt: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || dflt : dflt);
  const steps = opt("--steps", 8), timeoutS = opt("--timeout", 240);
  if (steps <= WARMUP) throw new Error(`parallel bench: --steps must exceed the ${WARMUP} warm-up steps, got ${steps}`);
  // Run the TypeScript sources (bin/megalith.js runs dist/ when it exists, which may be older
  // than the tree under test). Set here, not only in each job's env, so that mpirunFlags, which
  // forwards the MEGALITH_* variables it finds in process.env, passes them to every rank.
  process.env.MEGALITH_FROM_SOURCE = "1";
  process.env.MEGALITH_NUM_THREADS ??= "1";
  const loadStart = loadavg().map((x) => +x.toFixed(2));
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), "megalith-parallel-"));
  try {
    console.error("parallel bench: preparing the Brown corpus (gpt2 tokenizer)...");
    const data = join(dir, "data");
    const prep = spawnSync(process.execPath, [BIN, "prepare", "--input", "brown", "--tokenizer", "gpt2", "--out", data, "--no-progress"], { encoding: "utf8" });
    if (prep.status !== 0) throw new Error(`parallel bench: megalith prepare failed: ${prep.stderr}`);
    const cfg = join(dir, "config.json");
    writeFileSync(cfg, JSON.stringify({
      out_dir: join(dir, "run"), model: MODEL, data: { source: data },
      train: { micro_batch_size: MICRO_BATCH, grad_accum_steps: MICRO_BATCHES, seed: 1337, grad_clip: 1.0, log_interval: 1 },
      optimizer: { lr: 6e-4, warmup_steps: 2 },
      eval: { interval: 0, batches: 1 }, checkpoint: { interval: 0, keep: 1 },
    }, null, 2));
    // --only "tp=2,pp=2 1f1b": a subset (the single process always runs: losses are compared with it).
    const only = args.includes("--only") ? (args[args.indexOf("--only") + 1] ?? "").split(",") : null;
    const layouts = LAYOUTS.filter((l) => !only || l.name === BASELINE || only.includes(l.name));
    const results = new Map<string, LayoutResult>();
    for (const [i, layout] of layouts.entries()) {
      console.error(`parallel bench: [${i + 1}/${layouts.length}] ${layout.name} (${layout.ranks} rank${layout.ranks > 1 ? "s" : ""} x ${layout.threads} thread${layout.threads > 1 ? "s" : ""}), ${steps} steps...`);
      const t = Date.now();
      const r = await runLayout(layout, cfg, dir, steps, timeoutS);
      results.set(layout.name, r);
      const split = r.ranks ? `compute ${mean(r.ranks.map((x) => x.compute))} comm ${mean(r.ranks.map((x) => x.comm))} idle ${mean(r.ranks.map((x) => x.idle_fraction))}` : "no trace data";
      console.error(`  ${r.stepMs.toFixed(0)} ms/step, ${r.tokensPerS.toFixed(0)} tokens/s, loss ${r.loss.toFixed(6)}; ${split} (${((Date.now() - t) / 1000).toFixed(0)} s, load ${loadavg()[0]!.toFixed(1)})`);
    }
    const base = results.get(BASELINE)!;
    const oneThread = results.get("1 process, 1 thread");
    const warnings: string[] = [];
    // Two threads in one process should beat one; when they do not, other jobs hold the cores
    // and each layout's speed is mostly its share of them (a 2-rank job gets two scheduler shares).
    if (oneThread && base.tokensPerS < 1.1 * oneThread.tokensPerS) {
      warnings.push(`1 process with 2 threads ran ${(base.tokensPerS / oneThread.tokensPerS).toFixed(2)}x the tokens/s of 1 thread: the cores are busy with other work ` +
        `(load ${loadStart[0]} at the start), so the ratios between layouts reflect CPU share as much as parallel efficiency`);
    }
    const rows: BenchResult["rows"] = layouts.map((layout) => {
      const r = results.get(layout.name)!;
      const lossDiff = r.loss - base.loss;
      if (Math.abs(lossDiff) > LOSS_TOL) warnings.push(`${layout.name}: loss after step ${steps} is ${r.loss}, ${lossDiff.toExponential(2)} from the single process (${base.loss}); expected within ${LOSS_TOL}`);
      return {
        name: layout.name,
        ranks: layout.ranks,
        threads_per_rank: layout.threads,
        step_ms: +r.stepMs.toFixed(0),
        tokens_per_s: +r.tokensPerS.toFixed(1),
        vs_1_process: +(r.tokensPerS / base.tokensPerS).toFixed(2),
        // tokens/s per core used (ranks x threads) over the 1-thread process's: parallel efficiency per core.
        per_core_vs_1_thread: oneThread ? +(r.tokensPerS / (layout.ranks * layout.threads) / oneThread.tokensPerS).toFixed(2) : null,
        // Mean over ranks; env.per_rank has each rank's split (pipeline stages are not balanced).
        compute_fraction: r.ranks ? mean(r.ranks.map((x) => x.compute)) : null,
        comm_fraction: r.ranks ? mean(r.ranks.map((x) => x.comm)) : null,
        other_fraction: r.ranks ? mean(r.ranks.map((x) => x.other)) : null,
        idle_fraction: r.ranks ? mean(r.ranks.map((x) => x.idle_fraction)) : null,
        comm_by_rank: r.ranks ? r.ranks.map((x) => x.comm.toFixed(2)).join(" / ") : null,
        final_loss: +r.loss.toFixed(7),
        loss_diff: +lossDiff.toExponential(2),
        ...(r.traceNote ? { trace_null_reason: r.traceNote } : {}),
      };
    });
    for (const w of warnings) console.error(`parallel bench: WARNING ${w}`);
    console.error(`parallel bench: caveat: ${CAVEAT}`);
    const mpiVersion = /\(Open MPI\) ([\d.]+)/.exec(spawnSync("mpirun", ["--version"], { encoding: "utf8" }).stdout ?? "")?.[1];
    const mpi = mpiVersion ? `Open MPI ${mpiVersion}` : "unknown";
    const git = spawnSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout?.trim() || "unknown";
    return {
      suite: "parallel",
      env: {
        cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, node: process.version, mpi, commit: git,
        model: "gpt 6L/6H/384, T=256, vocab 50304 (bench/train.ts's config; 30.06M parameters)",
        global_batch: `${MICRO_BATCHES} micro-batches x ${MICRO_BATCH} x ${MODEL.block_size} tokens = ${MICRO_BATCHES * MICRO_BATCH * MODEL.block_size} tokens per step (dp=2: ${MICRO_BATCHES / 2} per rank; pipelines: m=${MICRO_BATCHES})`,
        data: "Brown corpus, gpt2 tokenizer (megalith prepare --input brown)",
        steps, warmup_steps: WARMUP, timing: "median step_ms / tokens_per_s of metrics.jsonl over the steps after warm-up",
        launch: "2 ranks: mpirun with mpirunArgs (src/cli/launch.ts), MEGALITH_NUM_THREADS=1 per rank; 1 process: MEGALITH_NUM_THREADS as in threads_per_rank; TypeScript sources (MEGALITH_FROM_SOURCE=1)",
        trace: "train.trace over every step of the same run, analysed from step 3 on; fractions are of the main thread's step time, mean over ranks (per_rank: each rank; comm_by_rank: rank 0 / rank 1). " +
          "comm = blocking collectives on tid 0 (incl. the tp all-reduces nested in forward/backward) + pipeline receive waits (tid 1, from issue to completion) + other async calls on tid 1 while the main thread is not computing; " +
          "compute = forward/backward/optimizer spans less the communication inside them; other = the rest (data, gradient norm, bookkeeping). " +
          "idle_fraction is analyzeTrace()'s 1 - (forward+backward)/step, which counts the tp all-reduces nested in forward/backward as compute and the optimizer as idle",
        layouts: Object.fromEntries(layouts.map((l) => [l.name, l.sets.join(" ")])),
        per_rank: Object.fromEntries(layouts.map((l) => [l.name, results.get(l.name)!.ranks])),
        loadavg_start: loadStart, loadavg_end: loadavg().map((x) => +x.toFixed(2)),
        elapsed_s: Math.round((Date.now() - started) / 1000),
        caveat: CAVEAT,
        notes: [
          "No PyTorch side by side: PyTorch has no tensor or pipeline parallelism on CPU here (its TP/PP APIs need CUDA devices / NCCL), so there is nothing equivalent to run.",
          "Other jobs share this machine's 2 cores (see loadavg): absolute times are noisy; compare layouts within one run.",
          "The end-of-run checkpoint and final model are not waited for: each job is stopped once its last step is logged and its trace written.",
          "pp=2 puts the token embedding and the first 3 layers on rank 0 and the last 3 layers with the 50304-wide LM head on rank 1, so rank 1 computes more; per_rank shows it.",
        ],
        warnings,
      },
      rows,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

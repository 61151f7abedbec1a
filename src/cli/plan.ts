/**
 * `megalith plan --config F --world N [--hardware NAME] [--json]`: every valid layout of a
 * training config on N ranks, with predicted memory per rank, bubble, communication, FLOPs, step
 * time and MFU, best first, and a few lines on the first choice. `--calibrate` measures this
 * machine for `--hardware cpu-this`: GEMM at transformer shapes (and, with --config, at that
 * config's own shapes) with all threads and with one, the elementwise kernels, and then the
 * collectives in a 2-rank job started the way `megalith launch` starts one (mpirun with
 * launch's flags, one thread per rank; this command with --collectives-worker on each rank).
 * Without mpirun, or when that job fails, the record keeps GEMM and memory and says why the
 * collectives were skipped (the planner then assumes them from the copy bandwidth).
 *
 *   megalith plan --config configs/tiny.json --world 4
 *   megalith plan --config configs/tiny.json --world 64 --hardware h100-80g --set model.n_layer=48 --json
 *   megalith plan --calibrate
 *
 * JSON (`--json`, one object; bytes, seconds, FLOPs): world; hardware (the profile: name,
 * peakFlops, achievableFlops, memoryBytes, bandwidths, latencies, assumed); model (parameters,
 * shape, global_batch, precision); layouts, best first, each { layout: {dp, tp, pp, sp, zero,
 * recompute, schedule, virtualStages, microBatchSize, microBatches}, memory: {parameters,
 * gradients, optimizer, activations, communication_buffers, total, stage}, fits, bubble,
 * comm_bytes: {dp_all_reduce, dp_reduce_scatter, dp_all_gather, tp_all_reduce, sp_all_gather,
 * sp_reduce_scatter, pp_send_recv}, flops: {model, hardware}, step_time: {compute,
 * communication, total}, mfu }; refused: [{layout, reason}]; explanation: [lines].
 */
import { Option, type Command } from "commander";
import { spawnSync } from "node:child_process";
import { ValueError } from "../core/errors.js";
import { loadConfig } from "../train/config.js";
import {
  calibrationFile, defaultHardwareName, describeLayout, formatSeconds, plan, resolveHardware, writeCalibration,
  type CollectiveCalibration, type Plan,
} from "../plan/index.js";
import { mpirunArgs } from "./launch.js";

const DTYPE = { fp32: "float32", bf16: "bfloat16", fp16: "float16" } as const;

/** The human table: fixed-width columns, the top `rows` layouts. */
export function planTable(p: Plan, rows: number): string {
  const head = ["#", "layout", "mem/rank", "fits", "bubble", "comm/step", "step", "MFU"];
  const body = p.layouts.slice(0, rows).map((x, i) => [
    String(i + 1), describeLayout(x.layout), `${(x.memory.total / 2 ** 30).toFixed(3)} GiB`, x.fits ? "yes" : "NO",
    `${(x.bubble * 100).toFixed(1)}%`, `${(Object.values(x.comm_bytes).reduce((a, b) => a + b, 0) / 1e6).toFixed(2)} MB`,
    formatSeconds(x.step_time.total), `${(x.mfu * 100).toFixed(1)}%`,
  ]);
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((r) => r[c]!.length)));
  const line = (r: string[]): string => r.map((v, c) => (c === 1 ? v.padEnd(widths[c]!) : v.padStart(widths[c]!))).join("  ").trimEnd();
  const m = p.model;
  return [
    `plan: ${(m.parameters / 1e6).toFixed(2)}M parameters (${m.n_layer} layers, h=${m.n_embd}, ${m.n_head} heads, s=${m.block_size}, V=${m.vocab_size}), global batch ${m.global_batch}, ${m.precision}, on ${p.world} ranks of ${p.hardware.name}`,
    `  ${p.hardware.description}; ${(p.hardware.memoryBytes / 2 ** 30).toFixed(1)} GiB and ${(p.hardware.achievableFlops / 1e12).toPrecision(3)} TFLOP/s achievable per rank`,
    `${p.layouts.length} valid layouts (${p.refused.length} refused: --json lists why), best first:`,
    "",
    line(head),
    ...body.map(line),
    ...(p.layouts.length > rows ? [`... ${p.layouts.length - rows} more (--rows N, or --json)`] : []),
    "",
    ...p.explanation,
  ].join("\n");
}

/** How `measureCollectives()` ended: the measurement, or null and why not. */
export interface CollectivesResult {
  collectives: CollectiveCalibration | null;
  /** Why the collectives were skipped (empty when measured). */
  why: string;
}

/**
 * Collective latency and bandwidth (`calibrateCollectives()`) from a `ranks`-process job on this
 * machine, started with the mpirun command line `megalith launch` uses (one thread per rank).
 * Never throws: without mpirun, or when the job fails or outlives `timeoutS`, the result is
 * null with the reason, so a calibration still saves its GEMM and memory figures.
 * @example
 * const { collectives, why } = measureCollectives(2); // a few seconds
 */
export function measureCollectives(ranks = 2, timeoutS = 90, run: typeof spawnSync = spawnSync): CollectivesResult {
  // The ranks run the code this process runs: the TypeScript sources when it does (tests,
  // `npm run bench`), where bin/megalith.js would otherwise prefer a compiled dist/.
  const fromSource = import.meta.url.endsWith(".ts") ? { MEGALITH_FROM_SOURCE: "1" } : {};
  const env = { ...process.env, ...fromSource, MEGALITH_NUM_THREADS: "1" };
  const r = run("mpirun", mpirunArgs(ranks, ["plan", "--collectives-worker"]), { encoding: "utf8", env, timeout: timeoutS * 1000, maxBuffer: 1 << 24 });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    return { collectives: null, why: code === "ENOENT" ? "mpirun not found; install Open MPI (apt-get install openmpi-bin libopenmpi-dev)" : code === "ETIMEDOUT" ? `the ${ranks}-rank job took over ${timeoutS} s` : `could not run mpirun: ${r.error.message}` };
  }
  if (r.status !== 0) return { collectives: null, why: `the ${ranks}-rank mpirun job exited with ${r.status ?? r.signal}: ${String(r.stderr).trim().split("\n").slice(-3).join(" / ").slice(0, 400)}` };
  // --tag-output prefixes each line with [job,rank]<stream>: rank 0 prints one JSON line.
  const line = String(r.stdout).split("\n").map((l) => l.replace(/^\[\d+,\d+\]<stdout>:/, "")).find((l) => l.startsWith("{"));
  if (!line) return { collectives: null, why: `the ${ranks}-rank job printed no measurement` };
  try {
    return { collectives: JSON.parse(line) as CollectiveCalibration, why: "" };
  } catch (e) {
    return { collectives: null, why: `unreadable measurement from the ${ranks}-rank job (${(e as Error).message})` };
  }
}

/** One rank of measureCollectives()'s job: every rank measures, rank 0 prints the JSON line. */
async function collectivesWorker(): Promise<void> {
  const { worldGroup } = await import("../parallel/index.js");
  const { calibrateCollectives } = await import("../plan/calibrate.js");
  const g = worldGroup();
  const c = calibrateCollectives(g);
  if (g.rank === 0) process.stdout.write(JSON.stringify(c) + "\n");
}

export function register(program: Command): void {
  program
    .command("plan")
    .description("rank the parallel layouts of a config on N ranks by predicted memory and step time")
    .option("--config <file>", "training config (JSON)")
    .option("--set <items...>", "dotted overrides, e.g. model.n_layer=48")
    .option("--world <n>", "ranks (GPUs or processes)", (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new ValueError(`--world must be a positive integer, got ${JSON.stringify(v)}`);
      return n;
    })
    .option("--hardware <name>", "a100-80g | h100-80g | cpu-this (default: cpu-this when calibrated, else a100-80g)")
    .option("--rows <n>", "table rows", (v) => Number(v), 15)
    .option("--json", "one JSON object (fields in src/cli/plan.ts)")
    .option("--calibrate", "measure this machine (GEMM, elementwise kernels, memory and collective bandwidth) for --hardware cpu-this and save it; with --config, GEMM at that model's shapes too")
    // Internal: what each rank of --calibrate's 2-rank mpirun job runs.
    .addOption(new Option("--collectives-worker").hideHelp())
    .action(async (o: { config?: string; set?: string[]; world?: number; hardware?: string; rows: number; json?: boolean; calibrate?: boolean; collectivesWorker?: boolean }) => {
      if (o.collectivesWorker) {
        await collectivesWorker();
        return;
      }
      if (o.calibrate) {
        // Imported here so that planning alone never loads the native backend.
        const { calibrate } = await import("../plan/calibrate.js");
        // With a config, the step-time tables are measured at that model's own shapes.
        const rec = calibrate({ config: o.config ? loadConfig(o.config, o.set ?? []) : null });
        const coll = measureCollectives(2);
        rec.collectives = coll.collectives;
        if (!coll.collectives) rec.collectives_skipped = coll.why;
        writeCalibration(rec);
        const said = coll.collectives
          ? `collectives (2 ranks): all-reduce ${(coll.collectives.kinds.all_reduce.bandwidth / 1e9).toFixed(2)} GB/s, ${(coll.collectives.kinds.all_reduce.latency_s * 1e6).toFixed(0)} us latency`
          : `collectives skipped (${coll.why})`;
        if (o.json) process.stdout.write(JSON.stringify(rec) + "\n");
        else process.stderr.write(`calibrated: GEMM ${Object.entries(rec.gemm_flops).map(([d, f]) => `${d} ${(f / 1e9).toFixed(0)} GFLOP/s`).join(", ")}; copy ${(rec.memory_bandwidth / 1e9).toFixed(1)} GB/s; ${said} -> ${calibrationFile()}\n`);
        // --config alone named the shapes to calibrate at; with --world it is also planned.
        if (!o.config || o.world === undefined) return;
      }
      if (!o.config) throw new ValueError("megalith plan needs --config FILE (or --calibrate alone)");
      if (o.world === undefined) throw new ValueError("megalith plan needs --world N: the ranks to plan for");
      const c = loadConfig(o.config, o.set ?? []);
      const hw = resolveHardware(o.hardware ?? defaultHardwareName(), DTYPE[c.train.precision], o.world);
      const p = plan(c, o.world, hw);
      process.stdout.write((o.json ? JSON.stringify(p) : planTable(p, o.rows)) + "\n");
    });
}

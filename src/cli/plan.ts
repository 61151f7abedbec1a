/**
 * `megalith plan --config F --world N [--hardware NAME] [--json]`: every valid layout of a
 * training config on N ranks, with predicted memory per rank, bubble, communication, FLOPs, step
 * time and MFU, best first, and a few lines on the first choice. `--calibrate` measures this
 * machine (GEMM at transformer shapes, copy bandwidth) for `--hardware cpu-this`.
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
import type { Command } from "commander";
import { ValueError } from "../core/errors.js";
import { loadConfig } from "../train/config.js";
import { calibrationFile, defaultHardwareName, describeLayout, formatSeconds, plan, resolveHardware, writeCalibration, type Plan } from "../plan/index.js";

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
    .option("--calibrate", "measure this machine (GEMM, memory bandwidth) for --hardware cpu-this and save it")
    .action(async (o: { config?: string; set?: string[]; world?: number; hardware?: string; rows: number; json?: boolean; calibrate?: boolean }) => {
      if (o.calibrate) {
        // Imported here so that planning alone never loads the native backend.
        const { calibrate } = await import("../plan/calibrate.js");
        const rec = calibrate();
        writeCalibration(rec);
        if (o.json) process.stdout.write(JSON.stringify(rec) + "\n");
        else process.stderr.write(`calibrated: GEMM ${Object.entries(rec.gemm_flops).map(([d, f]) => `${d} ${(f / 1e9).toFixed(0)} GFLOP/s`).join(", ")}; copy ${(rec.memory_bandwidth / 1e9).toFixed(1)} GB/s; collectives not measured -> ${calibrationFile()}\n`);
        if (!o.config) return;
      }
      if (!o.config) throw new ValueError("megalith plan needs --config FILE (or --calibrate alone)");
      if (o.world === undefined) throw new ValueError("megalith plan needs --world N: the ranks to plan for");
      const c = loadConfig(o.config, o.set ?? []);
      const hw = resolveHardware(o.hardware ?? defaultHardwareName(), DTYPE[c.train.precision], o.world);
      const p = plan(c, o.world, hw);
      process.stdout.write((o.json ? JSON.stringify(p) : planTable(p, o.rows)) + "\n");
    });
}

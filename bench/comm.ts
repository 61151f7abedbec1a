/**
 * `npm run bench -- comm [--np N]`: all-reduce / reduce-scatter / all-gather bandwidth through
 * Megalith beside the same MPI calls from a C program (bench/c/comm_ref.c), each an mpirun job
 * launched by this run; and training throughput at dp=1 vs dp=2 (1 thread per rank).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../src/cli/launch.js";
import type { BenchResult } from "./main.js";

type Sizes = { sizes: Array<{ bytes: number; allreduce_gbs: number; reducescatter_gbs: number; allgather_gbs: number }> };

/** mpirun --tag-output prefixes every line with [job,rank]<stream>: keep rank 0's JSON line. */
function rank0Json(out: string): Sizes {
  const line = out.split("\n").map((l) => l.replace(/^\[\d+,\d+\]<stdout>:/, "")).find((l) => l.startsWith("{"));
  if (!line) throw new Error(`no JSON in mpirun output: ${out.slice(0, 500)}`);
  return JSON.parse(line) as Sizes;
}

function mpiFlags(np: number): string[] {
  return mpirunArgs(np, [], undefined, "").slice(0, -2);
}

function trainTokensPerS(np: number, dir: string): number {
  const out = join(dir, `dp${np}`);
  const args = ["train", "--config", "configs/tiny.json", "--set", `out_dir=${out}`, "train.max_steps=12", `parallel.dp=${np}`, `train.micro_batch_size=${8 / np}`, "checkpoint.interval=0", "eval.interval=0", "eval.batches=1"];
  const env = { ...process.env, MEGALITH_NUM_THREADS: "1" };
  const r = np === 1 ? spawnSync(process.execPath, ["bin/megalith.js", ...args], { encoding: "utf8", env })
    : spawnSync("mpirun", mpirunArgs(np, args, undefined, "bin/megalith.js"), { encoding: "utf8", env });
  if (r.status !== 0) throw new Error(`training at dp=${np} failed: ${r.stderr}`);
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.tokens_per_s);
  const steady = lines.slice(2);  // skip warm-up steps
  return steady.reduce((s, m) => s + m.tokens_per_s, 0) / steady.length;
}

export async function run(args: string[]): Promise<BenchResult> {
  const np = Number(args[args.indexOf("--np") + 1] ?? 2) || 2;
  const dir = mkdtempSync(join(tmpdir(), "megalith-comm-"));
  const exe = join(dir, "comm_ref");
  execFileSync("mpicc", ["-O2", "-o", exe, "bench/c/comm_ref.c"]);
  const env = { ...process.env, MEGALITH_NUM_THREADS: "1" };
  console.error(`comm bench: ${np} ranks, C reference...`);
  const ref = rank0Json(execFileSync("mpirun", [...mpiFlags(np), exe], { encoding: "utf8", env }));
  console.error("comm bench: Megalith...");
  const meg = rank0Json(execFileSync("mpirun", [...mpiFlags(np), process.execPath, "--import", "tsx", "bench/_comm_worker.ts"], { encoding: "utf8", env }));
  const rows: BenchResult["rows"] = meg.sizes.map((m, i) => {
    const c = ref.sizes[i]!;
    return {
      name: `${m.bytes >= 2 ** 20 ? `${m.bytes / 2 ** 20} MiB` : `${m.bytes / 1024} KiB`}`,
      allreduce_gbs: +m.allreduce_gbs.toFixed(3), allreduce_c_gbs: +c.allreduce_gbs.toFixed(3), allreduce_ratio: +(m.allreduce_gbs / c.allreduce_gbs).toFixed(2),
      reducescatter_ratio: +(m.reducescatter_gbs / c.reducescatter_gbs).toFixed(2), allgather_ratio: +(m.allgather_gbs / c.allgather_gbs).toFixed(2),
    };
  });
  console.error("comm bench: training throughput dp=1 vs dp=2...");
  const t1 = trainTokensPerS(1, dir), t2 = trainTokensPerS(2, dir);
  rows.push({ name: "train tokens/s (configs/tiny.json, global batch 8x64, 1 thread/rank)", dp1: +t1.toFixed(0), dp2: +t2.toFixed(0), speedup: +(t2 / t1).toFixed(2) });
  writeFileSync(join(dir, "done"), "");
  return { suite: "comm", env: { ranks: np, transport: "Open MPI 4.1 (vader shared memory + tcp)" }, rows };
}

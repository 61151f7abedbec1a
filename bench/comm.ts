/**
 * `npm run bench -- comm [--np N] [--rounds R] [--skip-train]`: all-reduce / reduce-scatter /
 * all-gather bandwidth through Megalith beside the same MPI calls from a C program
 * (bench/c/comm_ref.c, compiled with mpicc here), 1 KiB to 64 MiB; and training throughput
 * at dp=1 vs dp=2 (1 thread per rank), and at dp=2 for each ZeRO stage with its memory per rank.
 *
 * Each measurement is its own mpirun job with the flags `megalith launch` uses (this file is
 * also the Megalith worker: run() starts `mpirun ... node bench/comm.ts --worker`). Megalith
 * and C jobs alternate for `rounds` rounds and each cell keeps its best, because this machine's
 * cores are shared with other work. Both sides time alike: per size, back-to-back calls
 * (about 16 MiB moved, at most 1000 calls), the slowest rank's time, best of 7 repetitions.
 * Bandwidth = buffer bytes / seconds per call (the full buffer: allReduce's, reduceScatter's
 * input, allGather's output).
 *
 * The reference is C with MPI_THREAD_MULTIPLE, the thread level Megalith needs for its
 * communication threads (ratio column, target >= 0.9). The "C single" columns show plain
 * MPI_Init, i.e. what thread safety itself costs inside Open MPI.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { mpirunFlags, mpirunArgs } from "../src/cli/launch.js";
import type { BenchResult } from "./main.js";

interface SizeRow { bytes: number; allreduce_gbs: number; reducescatter_gbs: number; allgather_gbs: number; allreduce_async_gbs?: number }
type Sizes = { sizes: SizeRow[] };
const OPS = ["allreduce", "reducescatter", "allgather"] as const;

/** mpirun --tag-output prefixes every line with [job,rank]<stream>: keep rank 0's JSON line. */
function rank0Json<T = Sizes>(out: string): T {
  const line = out.split("\n").map((l) => l.replace(/^\[\d+,\d+\]<stdout>:/, "")).find((l) => l.startsWith("{"));
  if (!line) throw new Error(`comm bench: no JSON in the mpirun output: ${out.slice(0, 500)}`);
  return JSON.parse(line) as T;
}

interface DdpTimes { fb: number; comm: number; waited: number; step: number }
interface DdpResult { ddp: { params: number; buckets: number; during: DdpTimes; after: DdpTimes } }

/** The best of several runs, cell by cell. */
function best(runs: Sizes[]): SizeRow[] {
  return runs[0]!.sizes.map((row, i) => {
    const out: SizeRow = { ...row };
    for (const k of Object.keys(row) as Array<keyof SizeRow>) if (k !== "bytes") out[k] = Math.max(...runs.map((r) => r.sizes[i]![k] ?? 0));
    return out;
  });
}

/** Steady-state tokens/s (median step) and per-rank memory (MiB, when gradients are complete) of configs/tiny.json. */
function trainRun(np: number, dir: string, zero = 0, extra: string[] = []): { tokensPerS: number; mem: { params: number; grads: number; optimizer: number } } {
  const out = join(dir, `dp${np}_zero${zero}${extra.length ? "_" + extra.join("_").replace(/\W+/g, "_") : ""}`);
  const args = ["train", "--config", "configs/tiny.json", "--set", `out_dir=${out}`, "train.max_steps=20", `parallel.dp=${np}`, `parallel.zero=${zero}`, `train.micro_batch_size=${8 / np}`, "checkpoint.interval=0", "eval.interval=0", "eval.batches=1", ...extra];
  const env = { ...process.env, MEGALITH_NUM_THREADS: "1" };
  const r = np === 1 ? spawnSync(process.execPath, ["bin/megalith.js", ...args], { encoding: "utf8", env })
    : spawnSync("mpirun", mpirunArgs(np, args, undefined, "bin/megalith.js"), { encoding: "utf8", env });
  if (r.status !== 0) throw new Error(`comm bench: training at dp=${np} failed: ${r.stderr}`);
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.tokens_per_s);
  // The median of the steps after warm-up: this machine's cores are shared, and a mean moves
  // with every step that another job slowed down.
  const steady = lines.slice(2).map((m) => m.tokens_per_s as number).sort((a, b) => a - b);
  const last = lines[lines.length - 1];
  return {
    tokensPerS: steady[Math.floor(steady.length / 2)]!,
    mem: { params: last.mem_params_mb, grads: last.mem_grads_mb, optimizer: last.mem_optimizer_mb },
  };
}

const fmtBytes = (b: number) => (b >= 2 ** 20 ? `${b / 2 ** 20} MiB` : `${b / 1024} KiB`);

export async function run(args: string[]): Promise<BenchResult> {
  const opt = (name: string, dflt: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || dflt : dflt);
  const np = opt("--np", 2), rounds = opt("--rounds", 2);
  const dir = mkdtempSync(join(tmpdir(), "megalith-comm-"));
  try {
    const exe = join(dir, "comm_ref");
    execFileSync("mpicc", ["-O2", "-o", exe, "bench/c/comm_ref.c"]);
    const env = { ...process.env, MEGALITH_NUM_THREADS: "1" };
    const job = (cmd: string[]) => rank0Json(execFileSync("mpirun", [...mpirunFlags(np), ...cmd], { encoding: "utf8", env, maxBuffer: 1 << 24 }));
    const meg: Sizes[] = [], cMulti: Sizes[] = [], cSingle: Sizes[] = [];
    for (let r = 0; r < rounds; r++) {
      console.error(`comm bench: ${np} ranks, round ${r + 1}/${rounds}: C (thread multiple, single), Megalith...`);
      cMulti.push(job([exe, "multiple"]));
      cSingle.push(job([exe, "single"]));
      meg.push(job([process.execPath, "--import", "tsx", fileURLToPath(import.meta.url), "--worker"]));
    }
    const m = best(meg), c = best(cMulti), s = best(cSingle);
    const rows: BenchResult["rows"] = m.map((row, i) => {
      const out: BenchResult["rows"][number] = { name: fmtBytes(row.bytes) };
      for (const op of OPS) {
        const k = `${op}_gbs` as const;
        out[`${op}_gbs`] = +row[k].toFixed(3);
        out[`${op}_c_gbs`] = +c[i]![k].toFixed(3);
        out[`${op}_ratio`] = +(row[k] / c[i]![k]).toFixed(2);
      }
      out.allreduce_async_gbs = +(row.allreduce_async_gbs ?? 0).toFixed(3);
      out.allreduce_c_single_gbs = +s[i]!.allreduce_gbs.toFixed(3);
      return out;
    });
    console.error("comm bench: per-call overhead on a 1-rank world...");
    const self = fileURLToPath(import.meta.url);
    let megNs = Infinity, cNs = Infinity;
    for (let r = 0; r < rounds; r++) {
      cNs = Math.min(cNs, rank0Json<{ ns: number }>(execFileSync("mpirun", [...mpirunFlags(1), exe, "overhead"], { encoding: "utf8", env })).ns);
      megNs = Math.min(megNs, rank0Json<{ ns: number }>(execFileSync("mpirun", [...mpirunFlags(1), process.execPath, "--import", "tsx", self, "--overhead"], { encoding: "utf8", env })).ns);
    }
    rows.push({ name: "1 KiB allReduce on a 1-rank world, ns per call (binding overhead = difference)", megalith_ns: +megNs.toFixed(0), c_ns: +cNs.toFixed(0), overhead_ns: +(megNs - cNs).toFixed(0) });
    console.error("comm bench: data-parallel overlap (GPT 4x128, dp=2, 1 MiB buckets)...");
    const d = rank0Json<DdpResult>(execFileSync("mpirun", [...mpirunFlags(2), process.execPath, "--import", "tsx", fileURLToPath(import.meta.url), "--ddp"], { encoding: "utf8", env })).ddp;
    for (const [mode, t] of [["during backward", d.during], ["after backward", d.after]] as const) {
      rows.push({
        name: `ddp dp=2, all-reduce ${mode} (${(d.params / 1e6).toFixed(2)}M params, ${d.buckets} buckets)`,
        fwd_bwd_ms: +t.fb.toFixed(1), comm_ms: +t.comm.toFixed(1), waited_ms: +t.waited.toFixed(1), step_ms: +t.step.toFixed(1),
        hidden_share: +Math.max(0, 1 - t.waited / t.comm).toFixed(2),
      });
    }
    if (!args.includes("--skip-train")) {
      console.error("comm bench: training throughput dp=1 vs dp=2...");
      const r1 = trainRun(1, dir), r2 = trainRun(2, dir);
      rows.push({ name: "train tokens/s (configs/tiny.json, global batch 8x64, 1 thread/rank)", dp1: +r1.tokensPerS.toFixed(0), dp2: +r2.tokensPerS.toFixed(0), speedup: +(r2.tokensPerS / r1.tokensPerS).toFixed(2) });
      console.error("comm bench: ZeRO stages at dp=2...");
      for (const [zero, extra] of [[0, []], [1, []], [2, []], [3, []], [3, ["parallel.zero3_prefetch=false"]]] as Array<[number, string[]]>) {
        const r = zero === 0 ? r2 : trainRun(2, dir, zero, extra);
        rows.push({
          name: `train dp=2 ZeRO-${zero}${extra.length ? ` (${extra.join(" ")})` : ""}: tokens/s and MiB per rank`, tokens_per_s: +r.tokensPerS.toFixed(0), vs_zero0: +(r.tokensPerS / r2.tokensPerS).toFixed(2),
          params_mb: +r.mem.params.toFixed(2), grads_mb: +r.mem.grads.toFixed(2), optimizer_mb: +r.mem.optimizer.toFixed(2),
        });
      }
    }
    const lib = /Open MPI v[\d.]+/.exec(execFileSync("mpirun", ["--version"], { encoding: "utf8" }))?.[0] ?? "Open MPI";
    return {
      suite: "comm",
      env: { ranks: np, rounds, transport: `${lib} (btl self,vader,tcp; yield when idle)`, reference: "bench/c/comm_ref.c with MPI_THREAD_MULTIPLE; *_c_single: MPI_Init", timing: "back-to-back calls, slowest rank, best of 7 x rounds" },
      rows,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The Megalith side, run on every rank by run(): the sizes and timing of comm_ref.c. */
async function worker(): Promise<void> {
  const { zeros, tensor } = await import("../src/index.js");
  const { worldGroup, allReduce, allReduceAsync, reduceScatter, allGather, barrier } = await import("../src/parallel/index.js");
  const g = worldGroup();
  // Seconds per call: the best of 7 repetitions (plus a warm-up), the slowest rank's time.
  const slowest = (dt: number) => {
    const t = tensor([dt]);
    allReduce(t, g, "max");
    const v = t.item();
    t.dispose();
    return v;
  };
  const bestOf = (iters: number, fn: () => void): number => {
    let b = Infinity;
    for (let r = 0; r < 8; r++) {
      barrier(g);
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) fn();
      const dt = slowest((performance.now() - t0) / 1000 / iters);
      if (r > 0) b = Math.min(b, dt);
    }
    return b;
  };
  const bestOfAsync = async (iters: number, fn: () => Promise<void>): Promise<number> => {
    let b = Infinity;
    for (let r = 0; r < 8; r++) {
      barrier(g);
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) await fn();
      const dt = slowest((performance.now() - t0) / 1000 / iters);
      if (r > 0) b = Math.min(b, dt);
    }
    return b;
  };
  const sizes: SizeRow[] = [];
  for (let bytes = 1024; bytes <= 64 * 2 ** 20; bytes *= 4) {
    const n = bytes / 4;
    const a = zeros([n]), part = zeros([n / g.size]), full = zeros([n]);
    const iters = Math.max(1, Math.min(1000, Math.floor((16 * 2 ** 20) / bytes)));
    const t1 = bestOf(iters, () => allReduce(a, g));
    const t2 = bestOf(iters, () => reduceScatter(a, part, g));
    const t3 = bestOf(iters, () => allGather(part, full, g));
    const t4 = await bestOfAsync(iters, () => allReduceAsync(a, g).wait());
    sizes.push({ bytes, allreduce_gbs: bytes / t1 / 1e9, reducescatter_gbs: bytes / t2 / 1e9, allgather_gbs: bytes / t3 / 1e9, allreduce_async_gbs: bytes / t4 / 1e9 });
    for (const t of [a, part, full]) t.dispose();
  }
  if (g.rank === 0) process.stdout.write(JSON.stringify({ sizes }) + "\n");
}

/**
 * Data-parallel overlap, run on every rank by run(): GPT steps with DataParallel (1 MiB
 * buckets), once reducing during backward (the default) and once only after it. Reports per
 * step: forward+backward, all-reduce time on the communication thread, the wait in
 * synchronize(), and the share of communication hidden behind backward (1 - wait / comm).
 */
async function ddpWorker(): Promise<void> {
  const { GPT, randint, withScope } = await import("../src/index.js");
  const { worldGroup, DataParallel, barrier } = await import("../src/parallel/index.js");
  const g = worldGroup();
  const model = new GPT({ nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 64, vocabSize: 4096 }, { seed: 1 });
  const params = model.parameters();
  const ddp = new DataParallel(params, g, { bucketBytes: 2 ** 20 });
  const B = 4, T = 64, steps = 8;
  const run = async (overlap: boolean) => {
    const acc = { fb: 0, comm: 0, waited: 0, step: 0 };
    for (let s = 0; s < steps + 1; s++) {
      for (const p of params) p.grad = null;
      barrier(g);
      const c0 = ddp.timings.commMs, w0 = ddp.timings.waitedMs;
      const t0 = performance.now();
      ddp.syncEnabled = overlap;
      withScope(() => {
        const x = randint(0, 4096, [B, T], { seed: 100 * s + g.rank }), y = randint(0, 4096, [B, T], { seed: 100 * s + 50 + g.rank });
        model.forward(x, y).loss!.backward();
      });
      const t1 = performance.now();
      await ddp.synchronize();
      const t2 = performance.now();
      if (s === 0) continue;  // warm-up
      acc.fb += t1 - t0;
      acc.comm += ddp.timings.commMs - c0;
      acc.waited += ddp.timings.waitedMs - w0;
      acc.step += t2 - t0;
    }
    for (const k of Object.keys(acc) as Array<keyof typeof acc>) acc[k] /= steps;
    return acc;
  };
  const after = await run(false), during = await run(true);
  if (g.rank === 0) {
    const nParams = params.reduce((n, p) => n + p.numel, 0);
    process.stdout.write(JSON.stringify({ ddp: { params: nParams, buckets: Math.ceil((nParams * 4) / 2 ** 20), during, after } }) + "\n");
  }
}

/**
 * The binding's own cost, run on a 1-rank world by run(): nanoseconds per 1 KiB all-reduce
 * issued through the addon's typed surface (the collectives API returns early at group size
 * 1, so this calls the layer under it), beside comm_ref.c's plain MPI_Allreduce. With no peer
 * to wait for, the difference is what Megalith adds per call.
 */
async function overheadWorker(): Promise<void> {
  const { zeros } = await import("../src/index.js");
  const { worldGroup } = await import("../src/parallel/index.js");
  const { mpi } = await import("../src/backend/mpi.js");
  const g = worldGroup();
  const a = zeros([256]);
  const n = 200_000;
  let bestNs = Infinity;
  for (let r = 0; r < 10; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) mpi.call("allReduce", g.handle, a, null, 256, "float32", 0, 0, [], 600);
    bestNs = Math.min(bestNs, ((performance.now() - t0) * 1e6) / n);
  }
  process.stdout.write(JSON.stringify({ ns: bestNs }) + "\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--worker")) await worker();
  if (process.argv.includes("--overhead")) await overheadWorker();
  if (process.argv.includes("--ddp")) await ddpWorker();
}

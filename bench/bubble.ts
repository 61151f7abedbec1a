/**
 * `npm run bench -- bubble [--steps N]`: the pipeline bubble measured from the trace, beside the
 * formulas of Narayanan et al. 2021: (p - 1) / m for GPipe and 1F1B, (p - 1) / (m v) for
 * interleaved 1F1B, at p = 2, m in {2, 4, 8}, with the compute of a micro-batch held constant
 * (the same micro-batch whatever m; an 8-layer GPT split evenly). Each case is a 2-rank mpirun
 * job (bench/_bubble_worker.ts) that traces a few pipeline steps.
 *
 * Bubble of a step = (makespan x p - the stages' compute) / the stages' compute, the makespan
 * running from the first stage's start of its "pipeline" span to the last stage's end (ranks
 * share one clock); the median over steps. It is a measurement, not a test: on 2 shared cores
 * the two stages run a few percent apart, and every percent of imbalance adds about half a
 * point of bubble at p = 2 (the faster stage waits for the slower one on every micro-batch),
 * so the rows also report each stage's median micro-batch time.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../src/cli/launch.js";
import { bubbleFraction, type PipelineScheduleName } from "../src/parallel/index.js";
import { rankTracePath, type TraceEvent } from "../src/core/trace.js";
import type { BenchResult } from "./main.js";

const CASES: Array<[PipelineScheduleName, number, number]> = [
  ["gpipe", 2, 1], ["gpipe", 4, 1], ["gpipe", 8, 1],
  ["1f1b", 2, 1], ["1f1b", 4, 1], ["1f1b", 8, 1],
  ["interleaved", 2, 2], ["interleaved", 4, 2], ["interleaved", 8, 2],
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Per step bubble (see the file comment) and each stage's median micro-batch compute (ms). */
function analyse(ranks: TraceEvent[][], m: number): { bubble: number; stageMs: number[] } {
  const spans = ranks.map((ev) => ev.filter((e) => e.ph === "X" && e.name === "pipeline" && e.tid === 0).sort((a, b) => a.ts - b.ts));
  const compute = ranks.map((ev) => ev.filter((e) => e.ph === "X" && e.tid === 0 && (e.cat === "forward" || e.cat === "backward")));
  const steps = Math.min(...spans.map((s) => s.length));
  const bubbles: number[] = [];
  const busyPerStage: number[][] = ranks.map(() => []);
  for (let i = 0; i < steps; i++) {
    const start = Math.min(...spans.map((s) => s[i]!.ts)), end = Math.max(...spans.map((s) => s[i]!.ts + s[i]!.dur!));
    const busy = spans.map((s, r) => {
      let b = 0;
      for (const c of compute[r]!) if (c.ts >= s[i]!.ts && c.ts + c.dur! <= s[i]!.ts + s[i]!.dur!) b += c.dur!;
      busyPerStage[r]!.push(b / m / 1000);
      return b;
    });
    const total = busy.reduce((a, b) => a + b, 0);
    bubbles.push(((end - start) * ranks.length - total) / total);
  }
  return { bubble: median(bubbles), stageMs: busyPerStage.map(median) };
}

export async function run(args: string[]): Promise<BenchResult> {
  const stepsArg = args.indexOf("--steps");
  const steps = stepsArg >= 0 ? Number(args[stepsArg + 1]) : 7;
  const root = mkdtempSync(join(tmpdir(), "megalith-bubble-"));
  const load0 = loadavg()[0]!;
  const rows: BenchResult["rows"] = [];
  try {
    for (const [schedule, m, v] of CASES) {
      const path = join(root, `${schedule}-${m}.json`);
      const t0 = performance.now();
      const r = spawnSync("mpirun", mpirunArgs(2, [schedule, String(m), String(v), path, String(steps)], undefined, "bench/_bubble_worker.ts", ["--import", "tsx"]), {
        encoding: "utf8", timeout: 600_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
      });
      if (r.status !== 0) throw new Error(`bubble bench: ${schedule} m=${m} failed: ${r.stderr}`);
      const ranks = [0, 1].map((rank) => (JSON.parse(readFileSync(rankTracePath(path, rank), "utf8")) as { traceEvents: TraceEvent[] }).traceEvents);
      const { bubble, stageMs } = analyse(ranks, m);
      const formula = bubbleFraction(schedule, { stages: 2, microBatches: m, virtualStages: v });
      const row = {
        name: `${schedule} p=2 m=${m}${v > 1 ? ` v=${v}` : ""}`, measured: +bubble.toFixed(3), formula: +formula.toFixed(3),
        points_apart: +((bubble - formula) * 100).toFixed(1), within_5_points: Math.abs(bubble - formula) <= 0.05,
        stage_ms_per_microbatch: stageMs.map((x) => +x.toFixed(1)),
      };
      rows.push(row);
      process.stderr.write(`bubble: ${row.name}: measured ${row.measured}, formula ${row.formula} (${row.points_apart} points; stages ${row.stage_ms_per_microbatch.join(" / ")} ms per micro-batch) in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return {
    suite: "bubble",
    env: {
      model: "GPT 8 layers x 384 wide, 4 heads, T=128, B=2, vocab 256; pp=2, 4 layers per stage (2 per chunk interleaved)",
      threads_per_rank: 1, traced_steps: steps, loadavg_start: load0, loadavg_end: loadavg()[0],
      definition: "(makespan x p - total stage compute) / total stage compute, median over steps; compute = forward + backward spans",
    },
    rows,
  };
}

/**
 * `npm run bench -- train [--quick]`: Megalith's full training step (forward, backward, AdamW)
 * beside PyTorch's on the same GPT config, same thread count, in one run. Prints the ratio,
 * each side's achieved GFLOP/s (model FLOPs: 6N + 12LTC per token), the fraction of the
 * measured sgemm peak, and Megalith's per-kernel profile.
 */
import { execFileSync } from "node:child_process";
import { GPT, AdamW, withScope, randint, memoryStats, backend } from "../src/index.js";
import { startProfile, stopProfile } from "../src/backend/profile.js";
import type { BenchResult } from "./main.js";

// What the user's environment had before Megalith chose a core type (the stock setup).
const stockCoretype = process.env.MEGALITH_STOCK_OPENBLAS_CORETYPE || undefined;

interface Cfg { name: string; L: number; H: number; C: number; T: number; V: number; B: number; steps: number }

const CONFIGS: Cfg[] = [
  { name: "gpt 6L/6H/384, T=256, B=8", L: 6, H: 6, C: 384, T: 256, V: 50304, B: 8, steps: 4 },
  { name: "gpt2-124M, T=512, B=4", L: 12, H: 12, C: 768, T: 512, V: 50304, B: 4, steps: 2 },
];

function sgemmPeak(): number {
  // 2048x768 @ 768x3072 through our matmul: the sustained sgemm rate of this machine.
  return withScope(() => {
    const a = randint(0, 3, [2048, 768]).to("float32"), b = randint(0, 3, [768, 3072]).to("float32");
    a.matmul(b);
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      a.matmul(b);
      best = Math.min(best, performance.now() - t0);
    }
    return (2 * 2048 * 768 * 3072) / (best / 1000);
  });
}

function megalithStep(c: Cfg): { stepS: number; profile: ReturnType<typeof stopProfile>; flopsPerStep: number; peakMiB: number } {
  const model = new GPT({ nLayer: c.L, nHead: c.H, nEmbd: c.C, blockSize: c.T, vocabSize: c.V });
  const opt = new AdamW(model.parameters(), { lr: 1e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
  const idx = randint(0, c.V, [c.B, c.T]).keep();
  const tgt = randint(0, c.V, [c.B, c.T]).keep();
  const step = () => withScope(() => {
    opt.zeroGrad();
    const { loss } = model.forward(idx, tgt);
    loss!.backward();
    opt.step();
  });
  step();  // warm-up: first-touch of every buffer, allocator cache filled
  let best = Infinity;
  let profile: ReturnType<typeof stopProfile> = [];
  for (let s = 0; s < c.steps; s++) {
    if (s === c.steps - 1) startProfile();
    const t0 = performance.now();
    step();
    const dt = (performance.now() - t0) / 1000;
    if (s === c.steps - 1) profile = stopProfile();
    else best = Math.min(best, dt);
  }
  if (!Number.isFinite(best)) best = profile.reduce((s, e) => s + e.ms, 0) / 1000;
  const flopsPerStep = model.flopsPerToken(c.T) * c.B * c.T;
  const peakMiB = memoryStats().peakTotal / 2 ** 20;
  opt.zeroGrad();
  return { stepS: best, profile, flopsPerStep, peakMiB };
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const threads = backend.numThreads();
  const peak = sgemmPeak();
  console.error(`train bench: ${threads} threads; measured sgemm peak ${(peak / 1e9).toFixed(1)} GFLOP/s`);
  const rows: BenchResult["rows"] = [];
  const profiles: Record<string, unknown> = {};
  for (const c of quick ? CONFIGS.slice(0, 1) : CONFIGS) {
    console.error(`${c.name}: Megalith...`);
    const m = megalithStep(c);
    // PyTorch twice: its stock setup (OpenBLAS picks its own kernels; on this CPU that is the
    // SSE3 "Prescott" fallback), and with the same OPENBLAS_CORETYPE Megalith chooses.
    const torchRun = (coretype: string | undefined) => {
      const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads) };
      if (coretype) env.OPENBLAS_CORETYPE = coretype;
      else delete env.OPENBLAS_CORETYPE;
      const out = execFileSync("/usr/bin/python3", ["scripts/torch_ref/bench_train.py", ...[c.L, c.H, c.C, c.T, c.V, c.B, c.steps, threads].map(String)], { encoding: "utf8", env });
      return JSON.parse(out) as { step_s: number; torch: string };
    };
    console.error(`${c.name}: PyTorch (stock)...`);
    const t = torchRun(stockCoretype);
    console.error(`${c.name}: PyTorch (OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE ?? "unset"})...`);
    const tuned = process.env.OPENBLAS_CORETYPE && process.env.OPENBLAS_CORETYPE !== stockCoretype ? torchRun(process.env.OPENBLAS_CORETYPE) : t;
    const total = m.profile.reduce((s, e) => s + e.ms, 0);
    profiles[c.name] = m.profile.slice(0, 12).map((e) => ({ ...e, ms: +e.ms.toFixed(1), share: +(e.ms / total).toFixed(3) }));
    rows.push({
      name: c.name,
      megalith_step_s: +m.stepS.toFixed(3),
      pytorch_step_s: +t.step_s.toFixed(3),
      speedup: +(t.step_s / m.stepS).toFixed(2),
      pytorch_same_blas_step_s: +tuned.step_s.toFixed(3),
      speedup_same_blas: +(tuned.step_s / m.stepS).toFixed(2),
      megalith_gflops: +(m.flopsPerStep / m.stepS / 1e9).toFixed(1),
      pytorch_gflops: +(m.flopsPerStep / t.step_s / 1e9).toFixed(1),
      megalith_of_sgemm_peak: +(m.flopsPerStep / m.stepS / peak).toFixed(3),
      megalith_peak_mem_mib: +m.peakMiB.toFixed(0),
    });
    console.error(`  top kernels: ${(profiles[c.name] as Array<{ kernel: string; share: number }>).slice(0, 6).map((e) => `${e.kernel} ${(e.share * 100).toFixed(0)}%`).join(", ")}`);
  }
  return { suite: "train", env: { threads, sgemmPeakGflops: +(peak / 1e9).toFixed(1), torch: "1.13 (Debian python3-torch)", profiles }, rows };
}

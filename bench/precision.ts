/**
 * `npm run bench -- precision [--quick]`: what bfloat16 buys on this machine, side by side in
 * one run.
 *  - GEMM: our bf16 GEMM (the backend's oneDNN path where the CPU has AVX512_BF16) against our
 *    fp32 GEMM at transformer shapes (the BF16 dot-product peak is 2x fp32 FMA; goal >= 1.7x).
 *  - Training step: train.precision bf16 vs fp32 on the 6L/384 and GPT-2 124M configs (goal
 *    >= 1.5x), and PyTorch 1.13 fp32 and torch.autocast("cpu", dtype=torch.bfloat16) with the
 *    same OPENBLAS_CORETYPE setting the train bench uses (goal: ahead).
 *  - Batch-1 decode: tokens/s of a GPT-2 124M-shaped model in bf16 vs fp32 (half the weight
 *    bytes per token, so twice the bandwidth limit).
 */
import { execFileSync } from "node:child_process";
import { GPT, AdamW, withScope, randint, randn, noGrad, memoryStats, resetPeakMemory, backend, type Tensor } from "../src/index.js";
import { PrecisionPolicy, type Precision } from "../src/train/precision.js";
import type { BenchResult } from "./main.js";

const SHAPES: Array<[number, number, number]> = [
  [2048, 768, 3072],   // MLP up-projection (B*T x C -> 4C)
  [2048, 3072, 768],   // MLP down-projection
  [2048, 768, 2304],   // fused QKV
  [2048, 768, 768],    // attention output projection
  [1024, 768, 50304],  // LM head
];

function timeBest(fn: () => void, reps: number): number {
  fn();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best / 1000;
}

function gemmRow(M: number, K: number, N: number): BenchResult["rows"][number] {
  return withScope(() => {
    const a = randn([M, K]).keep(), b = randn([K, N]).keep();
    const a16 = a.to("bfloat16"), b16 = b.to("bfloat16");
    const flops = 2 * M * N * K;
    const reps = flops > 5e10 ? 2 : 5;
    const f32 = timeBest(() => withScope(() => { a.matmul(b); }), reps);
    const bf16 = timeBest(() => withScope(() => { a16.matmul(b16); }), reps);
    // Accuracy beside speed: relative error of the bf16 product against fp32 on the same (bf16-rounded) operands.
    const ref = a16.to("float32").matmul(b16.to("float32")).data() as Float32Array;
    const got = a16.matmul(b16).to("float32").data() as Float32Array;
    let num = 0, den = 0;
    for (let i = 0; i < ref.length; i++) { num += (got[i]! - ref[i]!) ** 2; den += ref[i]! ** 2; }
    a.dispose(); b.dispose();
    return {
      name: `gemm ${M}x${K} @ ${K}x${N}`,
      fp32_gflops: +(flops / f32 / 1e9).toFixed(1),
      bf16_gflops: +(flops / bf16 / 1e9).toFixed(1),
      speedup: +(f32 / bf16).toFixed(2),
      bf16_rel_err: +Math.sqrt(num / den).toExponential(2),
    };
  });
}

interface Cfg { name: string; L: number; H: number; C: number; T: number; V: number; B: number; steps: number }
const CONFIGS: Cfg[] = [
  { name: "gpt 6L/6H/384, T=256, B=8", L: 6, H: 6, C: 384, T: 256, V: 50304, B: 8, steps: 3 },
  { name: "gpt2-124M, T=512, B=4", L: 12, H: 12, C: 768, T: 512, V: 50304, B: 4, steps: 2 },
];

function megalithStep(c: Cfg, precision: Precision): { stepS: number; peakActMiB: number } {
  const model = new GPT({ nLayer: c.L, nHead: c.H, nEmbd: c.C, blockSize: c.T, vocabSize: c.V });
  const opt = new AdamW(model.parameters(), { lr: 1e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
  const policy = new PrecisionPolicy(precision);
  const idx = randint(0, c.V, [c.B, c.T]).keep();
  const tgt = randint(0, c.V, [c.B, c.T]).keep();
  const step = () => withScope(() => {
    opt.zeroGrad();
    const { loss } = policy.forward(() => model.forward(idx, tgt));
    loss!.backward();
    opt.step();
  });
  step();
  resetPeakMemory();
  const stepS = timeBest(step, c.steps);
  const peakActMiB = memoryStats().peak.activations / 2 ** 20;
  opt.zeroGrad();
  for (const p of model.parameters()) p.dispose();
  idx.dispose(); tgt.dispose();
  return { stepS, peakActMiB };
}

function torchStep(c: Cfg, precision: "fp32" | "bf16", threads: number): number {
  const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads) };
  const out = execFileSync("/usr/bin/python3", ["scripts/torch_ref/bench_train.py", ...[c.L, c.H, c.C, c.T, c.V, c.B, c.steps, threads].map(String), precision], { encoding: "utf8", env });
  return (JSON.parse(out) as { step_s: number }).step_s;
}

/** Tokens/s of greedy batch-1 decoding with a KV cache, weights in `dtype`. */
function decode(dtype: "float32" | "bfloat16", tokens: number): { tokS: number; weightMiB: number } {
  const model = new GPT({ nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50304 });
  if (dtype !== "float32") model.to(dtype);
  model.eval();
  const weightMiB = model.parameters().reduce((s, p) => s + p.numel * (dtype === "float32" ? 4 : 2), 0) / 2 ** 20;
  return noGrad(() => {
    const kv = model.newKVCache();
    let next = 50;
    const t0 = performance.now();
    for (let i = 0; i < tokens; i++) {
      next = withScope(() => {
        const x: Tensor = randint(next, next + 1, [1, 1]);
        const { logits } = model.forward(x, null, kv);
        return (logits.to("float32").argmax(-1).data() as Int32Array)[0]!;
      });
      if (i === 1) { /* the first steps warm caches; keep them in the total: decode is long */ }
    }
    const s = (performance.now() - t0) / 1000;
    GPT.disposeKVCache(kv);
    for (const p of model.parameters()) p.dispose();
    return { tokS: tokens / s, weightMiB };
  });
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const threads = backend.numThreads();
  const info = backend.info();
  console.error(`precision bench: ${threads} threads, kernels ${info.kernels}, bf16 gemm ${info.gemmBf16}`);
  const rows: BenchResult["rows"] = [];
  for (const [M, K, N] of quick ? SHAPES.slice(0, 2) : SHAPES) {
    const r = gemmRow(M, K, N);
    console.error(`  ${r.name}: fp32 ${r.fp32_gflops} GFLOP/s, bf16 ${r.bf16_gflops} (${r.speedup}x)`);
    rows.push(r);
  }
  for (const c of quick ? CONFIGS.slice(0, 1) : CONFIGS) {
    console.error(`${c.name}: Megalith fp32, bf16; PyTorch fp32, autocast bf16...`);
    const m32 = megalithStep(c, "fp32");
    const m16 = megalithStep(c, "bf16");
    const t32 = torchStep(c, "fp32", threads);
    const t16 = torchStep(c, "bf16", threads);
    const tokens = c.B * c.T;
    rows.push({
      name: `train ${c.name}`,
      megalith_fp32_step_s: +m32.stepS.toFixed(3),
      megalith_bf16_step_s: +m16.stepS.toFixed(3),
      bf16_speedup: +(m32.stepS / m16.stepS).toFixed(2),
      pytorch_fp32_step_s: +t32.toFixed(3),
      pytorch_autocast_bf16_step_s: +t16.toFixed(3),
      megalith_bf16_vs_pytorch_bf16: +(t16 / m16.stepS).toFixed(2),
      megalith_bf16_tok_s: +(tokens / m16.stepS).toFixed(0),
      peak_activations_mib_fp32: +m32.peakActMiB.toFixed(1),
      peak_activations_mib_bf16: +m16.peakActMiB.toFixed(1),
      activation_ratio: +(m16.peakActMiB / m32.peakActMiB).toFixed(2),
    });
    console.error(`  fp32 ${m32.stepS.toFixed(2)} s, bf16 ${m16.stepS.toFixed(2)} s; PyTorch fp32 ${t32.toFixed(2)} s, autocast ${t16.toFixed(2)} s`);
  }
  const n = quick ? 8 : 32;
  const d32 = decode("float32", n);
  const d16 = decode("bfloat16", n);
  rows.push({
    name: "decode gpt2-124M batch 1",
    fp32_tok_s: +d32.tokS.toFixed(1),
    bf16_tok_s: +d16.tokS.toFixed(1),
    speedup: +(d16.tokS / d32.tokS).toFixed(2),
    fp32_weight_mib: +d32.weightMiB.toFixed(0),
    bf16_weight_mib: +d16.weightMiB.toFixed(0),
  });
  console.error(`decode: fp32 ${d32.tokS.toFixed(1)} tok/s, bf16 ${d16.tokS.toFixed(1)} tok/s`);
  return { suite: "precision", env: { threads, kernels: info.kernels, gemmBf16: info.gemmBf16, torch: "1.13 (Debian python3-torch)", openblasCoretype: process.env.OPENBLAS_CORETYPE ?? null }, rows };
}

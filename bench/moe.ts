/**
 * `npm run bench -- moe [--quick] [--steps N] [--routing-steps N] [--rounds R]`: the mixture of
 * experts (src/nn/moe.ts) against what it replaces, each beside its reference in the same run:
 *
 *  (a) grouped expert GEMM: the batched (E, S, C) @ (E, C, F) matmul the layer runs (and the
 *      same with the per-call stacking of the experts' weights), beside one dense GEMM of the
 *      same FLOPs, (E*S, C) @ (C, F); GFLOP/s, best of several calls.
 *  (b) train step tokens/s: an 8-expert top-2 GPT against the dense GPT with the same active
 *      parameters (same n_layer, n_embd; its MLP 8C wide = two 4C experts per token), trained
 *      step for step in one process (the two alternate, so both see the same load), on the
 *      Brown corpus with the demo's 4096-token BPE; median step after 2 warm-up steps.
 *  (c) all-to-all bandwidth: `allToAll` (src/parallel/collectives.ts) on 2 ranks launched with
 *      `megalith launch`'s mpirun flags, beside MPI_Alltoall called from C (bench/c/comm_ref.c
 *      alltoall), alternating, 16 KiB to 16 MiB, best of rounds.
 *  (d) loss at equal steps, MoE vs dense, from (b)'s runs: the last steps' training
 *      cross-entropy and the val loss on the same val batches.
 *  (e) routing: `megalith train` on the demo corpus (configs/demo.json with a smaller model),
 *      200 steps with aux_loss_coef 0.01 and with 0, at capacity_factor 1.25: max/mean expert
 *      load (num_experts x the largest expert's share of routing choices, 1 = balanced) and the
 *      dropped fraction over the last steps, from metrics.jsonl's MoE fields; plus a short run
 *      at capacity_factor = num_experts / top_k, which must drop nothing.
 *
 * Machine load (os.loadavg) is recorded before and after each section: this machine's 2 cores
 * are shared with other jobs, which moves absolute numbers (compare within a section).
 * Writes bench/results/moe-<date>.json (bench/main.ts also writes moe.json).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  GPT, AdamW, Expert, MoE, Linear, backend, cosineLr, noGrad, normal, randn, stack, tensor, withScope,
  TokenLoader, evalBatches, ensurePreparedBrown, brownCorpusDocuments, trainBpe, type Module, type Tensor, type Batch,
} from "../src/index.js";
import { mpirunFlags } from "../src/cli/launch.js";
import type { BenchResult } from "./main.js";

const BIN = "bin/megalith.js";
const E = 8, K = 2;
const load = () => loadavg().map((x) => +x.toFixed(2));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
const say = (msg: string) => process.stderr.write(`moe bench: ${msg}\n`);

// ---- (a) grouped expert GEMM vs one dense GEMM ---------------------------------------------------

/** Expert GEMM shapes: width C (expert hidden F = 4C) and S = ceil(1.25 N k / E) slots for N tokens. */
const GEMM_SHAPES = [
  { name: "C=192 (demo width), N=2048", C: 192, N: 2048 },
  { name: "C=384, N=2048", C: 384, N: 2048 },
  { name: "C=768, N=1024", C: 768, N: 1024 },
];

/** Best seconds per call of fn (one warm-up call; each call's tensors freed). */
function bestSeconds(reps: number, fn: () => void): number {
  withScope(fn);
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    withScope(fn);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

function gemmSection(quick: boolean): BenchResult["rows"] {
  const rows: BenchResult["rows"] = [];
  const reps = quick ? 3 : 7;
  for (const sh of quick ? GEMM_SHAPES.slice(0, 1) : GEMM_SHAPES) {
    const S = Math.ceil((1.25 * sh.N * K) / E), F = 4 * sh.C;
    // Up (C -> F) and down (F -> C) projections, as in every expert's MLP.
    for (const [dir, cin, cout] of [["up", sh.C, F], ["down", F, sh.C]] as const) {
      withScope(() => {
        const flops = 2 * E * S * cin * cout;
        const xg = randn([E, S, cin], { seed: 1 });                               // (E, S, Cin)
        const ws = Array.from({ length: E }, (_, j) => randn([cout, cin], { seed: 10 + j }).mul(0.02)); // E x (Cout, Cin), nn.Linear layout
        const wg = stack(ws).transpose(1, 2);                                     // (E, Cin, Cout), the layer's view
        const xd = xg.view([E * S, cin]);                                         // (E*S, Cin)
        const wd = randn([cout, cin], { seed: 3 }).mul(0.02).transpose(0, 1);     // (Cin, Cout)
        const grouped = bestSeconds(reps, () => { xg.matmul(wg); });
        const withStack = bestSeconds(reps, () => { xg.matmul(stack(ws).transpose(1, 2)); });
        const dense = bestSeconds(reps, () => { xd.matmul(wd); });
        rows.push({
          name: `(a) GEMM ${sh.name}, ${dir}: ${E} x (${S}x${cin} @ ${cin}x${cout}) vs ${E * S}x${cin} @ ${cin}x${cout}`,
          grouped_gflops: +(flops / grouped / 1e9).toFixed(1),
          grouped_incl_stack_gflops: +(flops / withStack / 1e9).toFixed(1),
          dense_gflops: +(flops / dense / 1e9).toFixed(1),
          grouped_vs_dense: +(dense / grouped).toFixed(2),
        });
      });
    }
  }
  return rows;
}

// ---- data: the demo's tokenizer and the Brown corpus ----------------------------------------------

interface DemoData { configFile: string; tokenizer: string; dir: string; vocabSize: number }

/** The demo's BPE vocabulary (learned once, as `megalith demo` does) and Brown prepared with it. */
async function demoData(): Promise<DemoData> {
  const configFile = "configs/demo.json";
  const cfg = JSON.parse(readFileSync(configFile, "utf8")) as { model: { vocab_size: number }; data: { tokenizer: string; cache_dir?: string } };
  const spec = cfg.data.tokenizer, V = cfg.model.vocab_size;
  if (!existsSync(spec)) {
    say(`learning the demo's ${V}-token BPE from Brown -> ${spec}`);
    const tok = await trainBpe({ texts: brownCorpusDocuments(), vocabSize: V, name: `brown-bpe-${V}` });
    mkdirSync(dirname(spec), { recursive: true });
    tok.save(spec);
  }
  const { dir } = await ensurePreparedBrown(cfg.data.cache_dir ?? ".cache/megalith/data", spec, { progress: false });
  return { configFile, tokenizer: spec, dir, vocabSize: V };
}

// ---- (b) + (d) MoE vs dense training ---------------------------------------------------------------

/** The demo's model (4 x 192, T=128, B=16) and optimizer settings. */
const TRAIN = { nLayer: 4, nHead: 4, nEmbd: 192, blockSize: 128, B: 16, lr: 3e-3, minLr: 3e-4, seed: 1337 };

interface Contender {
  name: string;
  model: GPT;
  opt: AdamW;
  loader: TokenLoader;
  stepMs: number[];
  /** Cross-entropy per step (MoE: without the router losses). */
  lmLoss: number[];
  params: number;
  activeParams: number;
}

/**
 * The dense model with the MoE's active parameters: GPT has no MLP-width option, so each
 * block's 4C MLP is swapped (setModule) for one 8C-wide MLP, i.e. an Expert(C, 8C), initialised
 * as GPT-2 initialises its MLP.
 */
function denseTwin(seed: number, vocabSize: number): GPT {
  const C = TRAIN.nEmbd;
  const model = new GPT({ nLayer: TRAIN.nLayer, nHead: TRAIN.nHead, nEmbd: C, blockSize: TRAIN.blockSize, vocabSize }, { seed });
  const projStd = 0.02 / Math.sqrt(2 * TRAIN.nLayer);
  model.h.forEach((b, i) => {
    const wide = new Expert(C, K * 4 * C, true);
    noGrad(() => {
      for (const [l, std] of [[wide.c_fc as Linear, 0.02], [wide.c_proj as Linear, projStd]] as const) {
        l.weight.copy_(normal(l.weight.shape, 0, std, { seed: seed + 1000 * i + (std === 0.02 ? 1 : 2) }));
        l.bias?.zero_();
      }
    });
    b.setModule("mlp", wide);
  });
  return model;
}

/** Parameters a token passes through: all but the experts it is not routed to (k of E). */
function activeParams(model: Module): number {
  let n = 0;
  for (const [name, p] of model.namedParameters()) n += /\.experts\.\d+\./.test(name) ? (p.numel * K) / E : p.numel;
  return n;
}

function batchTensors(b: Batch): { x: Tensor; y: Tensor } {
  const shape = [b.batchSize, b.blockSize];
  return { x: tensor(b.inputs, { shape, dtype: "int32" }), y: tensor(b.targets, { shape, dtype: "int32" }) };
}

/** One AdamW step with the demo's schedule and clipping; returns the cross-entropy. */
function trainStep(c: Contender, step: number, steps: number): number {
  return withScope(() => {
    const { x, y } = batchTensors(c.loader.nextBatch());                       // (B, T) each
    c.opt.zeroGrad();
    const out = c.model.forward(x, y);
    out.loss!.backward();
    const { clipCoef } = c.opt.gradNorm(1.0);
    const lr = cosineLr(step, { maxLr: TRAIN.lr, minLr: TRAIN.minLr, warmupSteps: Math.min(30, Math.ceil(steps / 4)), decaySteps: steps });
    c.opt.step({ lr, gradScale: clipCoef });
    return (out.lmLoss ?? out.loss!).item();
  });
}

/** Mean cross-entropy over the first `n` val batches (eval mode: the MoE at its eval capacity). */
function valLoss(c: Contender, dir: string, n: number): number {
  c.model.eval();
  let sum = 0, count = 0;
  noGrad(() => {
    for (const b of evalBatches({ dir, split: "val", blockSize: TRAIN.blockSize, microBatchSize: TRAIN.B, numBatches: n })) {
      sum += withScope(() => {
        const { x, y } = batchTensors(b);
        const out = c.model.forward(x, y);
        return (out.lmLoss ?? out.loss!).item();
      });
      count++;
    }
  });
  c.model.train();
  return sum / count;
}

function trainSection(data: DemoData, steps: number, valBatches: number): { rows: BenchResult["rows"]; env: Record<string, unknown> } {
  const make = (name: string, model: GPT): Contender => ({
    name, model, stepMs: [], lmLoss: [], params: model.numParameters(), activeParams: activeParams(model),
    opt: new AdamW(model.parameters(), { lr: TRAIN.lr, betas: [0.9, 0.95], weightDecay: 0.1 }),
    // The same seed: both models see the same batches in the same order.
    loader: new TokenLoader({ dir: data.dir, split: "train", blockSize: TRAIN.blockSize, microBatchSize: TRAIN.B, seed: TRAIN.seed }),
  });
  const dims = { nLayer: TRAIN.nLayer, nHead: TRAIN.nHead, nEmbd: TRAIN.nEmbd, blockSize: TRAIN.blockSize, vocabSize: data.vocabSize };
  const moe = make(`MoE ${E} experts top-${K}`, new GPT({ ...dims, moe: { numExperts: E, topK: K } }, { seed: TRAIN.seed }));
  const dense = make(`dense, MLP ${K * 4}C`, denseTwin(TRAIN.seed, data.vocabSize));
  const both = [moe, dense];
  const dropped: number[] = [];
  for (let s = 0; s < steps; s++) {
    // Alternate who goes first, so neither always follows the other's allocations.
    for (const c of s % 2 ? [dense, moe] : [moe, dense]) {
      const t0 = performance.now();
      c.lmLoss.push(trainStep(c, s, steps));
      c.stepMs.push(performance.now() - t0);
    }
    dropped.push(mean(moe.model.namedModules().flatMap(([, m]) => (m instanceof MoE && m.lastStats ? [m.lastStats.droppedFraction] : []))));
    if ((s + 1) % 10 === 0 || s === steps - 1) say(`(b) step ${s + 1}/${steps}: ${both.map((c) => `${c.name} ${c.lmLoss[s]!.toFixed(3)} in ${c.stepMs[s]!.toFixed(0)} ms`).join(", ")} (load ${loadavg()[0]!.toFixed(1)})`);
  }
  const tokens = TRAIN.B * TRAIN.blockSize, tail = Math.min(5, steps);
  const res = both.map((c) => {
    const ms = median(c.stepMs.slice(Math.min(2, steps - 1)));
    return { c, ms, tokPerS: (tokens / ms) * 1000, trainLoss: mean(c.lmLoss.slice(-tail)), val: valLoss(c, data.dir, valBatches) };
  });
  const [m, d] = res as [typeof res[0], typeof res[0]];
  const rows: BenchResult["rows"] = [
    {
      name: `(b) train tokens/s: ${moe.name} vs ${dense.name} (${TRAIN.nLayer}x${TRAIN.nEmbd}, T=${TRAIN.blockSize}, B=${TRAIN.B}, ${backend.numThreads()} threads)`,
      moe_tokens_per_s: +m.tokPerS.toFixed(0), dense_tokens_per_s: +d.tokPerS.toFixed(0), moe_vs_dense: +(m.tokPerS / d.tokPerS).toFixed(2),
      moe_step_ms: +m.ms.toFixed(0), dense_step_ms: +d.ms.toFixed(0),
      moe_params_m: +(moe.params / 1e6).toFixed(2), moe_active_params_m: +(moe.activeParams / 1e6).toFixed(2), dense_params_m: +(dense.params / 1e6).toFixed(2),
    },
    {
      name: `(d) loss after ${steps} steps (train: mean cross-entropy of the last ${tail} steps; val: ${valBatches} batches)`,
      moe_train_loss: +m.trainLoss.toFixed(4), dense_train_loss: +d.trainLoss.toFixed(4),
      moe_val_loss: +m.val.toFixed(4), dense_val_loss: +d.val.toFixed(4), val_diff: +(m.val - d.val).toFixed(4),
      moe_dropped_fraction_last: +mean(dropped.slice(-tail)).toFixed(4),
    },
  ];
  const env = {
    model: `${TRAIN.nLayer} layers x ${TRAIN.nEmbd}, ${TRAIN.nHead} heads, T=${TRAIN.blockSize}, B=${TRAIN.B} (the demo's); vocabulary ${data.vocabSize} (demo BPE)`,
    moe: `${E} experts of width 4C, top-${K}, capacity_factor 1.25, aux 0.01, z 0.001 (defaults); the grouped GEMM runs E x S = 1.25 N k slots, so 25% more expert FLOPs than the active ones`,
    dense: `MLP of width ${K * 4}C (Expert(C, ${K * 4}C) swapped in per block): the FLOPs and parameters of the ${K} experts a token uses`,
    optimizer: `AdamW lr ${TRAIN.lr} -> ${TRAIN.minLr} cosine, warmup min(30, steps/4), betas 0.9/0.95, wd 0.1, clip 1.0 (the demo's)`,
    steps, timing: "median step (forward, backward, clip, AdamW) after 2 warm-up steps; MoE and dense alternate step by step",
    moe_lm_loss: moe.lmLoss.map((x) => +x.toFixed(4)), dense_loss: dense.lmLoss.map((x) => +x.toFixed(4)),
    moe_step_ms: moe.stepMs.map((x) => +x.toFixed(0)), dense_step_ms: dense.stepMs.map((x) => +x.toFixed(0)),
  };
  for (const c of both) c.opt.zeroGrad();
  return { rows, env };
}

// ---- (c) all-to-all vs MPI_Alltoall from C -----------------------------------------------------------

interface A2ASizes { sizes: Array<{ bytes: number; alltoall_gbs: number }> }

/** mpirun --tag-output prefixes every line with [job,rank]<stream>: rank 0's JSON line. */
function rank0Json<T>(out: string): T {
  const line = out.split("\n").map((l) => l.replace(/^\[\d+,\d+\]<stdout>:/, "")).find((l) => l.startsWith("{"));
  if (!line) throw new Error(`moe bench: no JSON line in the mpirun output: ${out.slice(0, 500)}`);
  return JSON.parse(line) as T;
}

function allToAllSection(rounds: number, dir: string): { rows: BenchResult["rows"]; env: Record<string, unknown> } {
  const exe = join(dir, "comm_ref");
  execFileSync("mpicc", ["-O2", "-o", exe, "bench/c/comm_ref.c"]);
  const env = { ...process.env, MEGALITH_NUM_THREADS: "1" };
  const job = (cmd: string[]) => rank0Json<A2ASizes>(execFileSync("mpirun", [...mpirunFlags(2), ...cmd], { encoding: "utf8", env, maxBuffer: 1 << 24 }));
  const meg: A2ASizes[] = [], c: A2ASizes[] = [];
  for (let r = 0; r < rounds; r++) {
    say(`(c) all-to-all, 2 ranks, round ${r + 1}/${rounds}: C, then Megalith`);
    c.push(job([exe, "alltoall"]));
    meg.push(job([process.execPath, "--import", "tsx", fileURLToPath(import.meta.url), "--alltoall-worker"]));
  }
  const best = (runs: A2ASizes[], i: number) => Math.max(...runs.map((x) => x.sizes[i]!.alltoall_gbs));
  const rows = meg[0]!.sizes.map((s, i) => ({
    name: `(c) allToAll ${s.bytes >= 2 ** 20 ? `${s.bytes / 2 ** 20} MiB` : `${s.bytes / 1024} KiB`} per rank, 2 ranks`,
    megalith_gbs: +best(meg, i).toFixed(3), c_mpi_alltoall_gbs: +best(c, i).toFixed(3), ratio: +(best(meg, i) / best(c, i)).toFixed(2),
  }));
  const version = /\(Open MPI\) ([\d.]+)/.exec(execFileSync("mpirun", ["--version"], { encoding: "utf8" }))?.[1];
  const lib = version ? `Open MPI ${version}` : "Open MPI";
  return {
    rows,
    env: {
      transport: `${lib}, megalith launch's flags (btl self,vader,tcp; yield when idle), 1 thread per rank`,
      reference: "bench/c/comm_ref.c alltoall: MPI_Alltoall from C, MPI_THREAD_MULTIPLE",
      timing: "back-to-back calls (~16 MiB moved, at most 1000 calls), slowest rank, best of 7 x rounds; GB/s = the whole input buffer per call (half of it stays on the rank at 2 ranks)",
      moe_buffer: `a ${TRAIN.nLayer}x${TRAIN.nEmbd} MoE layer at N=2048 dispatches (E, S, C) = ${E}x${Math.ceil((1.25 * 2048 * K) / E)}x${TRAIN.nEmbd} float32 = ${((E * Math.ceil((1.25 * 2048 * K) / E) * TRAIN.nEmbd * 4) / 2 ** 20).toFixed(2)} MiB per all-to-all`,
    },
  };
}

/** The Megalith side of (c), on every rank: comm_ref.c's sizes and timing. */
async function allToAllWorker(): Promise<void> {
  const { zeros, tensor: mk } = await import("../src/index.js");
  const { worldGroup, allToAll, allReduce, barrier } = await import("../src/parallel/index.js");
  const g = worldGroup();
  // Correctness first: block j of rank r's input (value r * 1000 + j) must arrive as block r of rank j's output.
  const n0 = 4 * g.size;
  const src = mk(Float32Array.from({ length: n0 }, (_, i) => g.rank * 1000 + Math.floor(i / 4))), dst = zeros([n0]);
  allToAll(src, dst, g);
  const got = dst.data() as Float32Array;
  for (let i = 0; i < n0; i++) {
    const want = Math.floor(i / 4) * 1000 + g.rank;
    if (got[i] !== want) throw new Error(`moe bench: allToAll delivered ${got[i]} at element ${i} on rank ${g.rank}, expected ${want}`);
  }
  const slowest = (dt: number) => {
    const t = mk([dt]);
    allReduce(t, g, "max");
    const v = t.item();
    t.dispose();
    return v;
  };
  const sizes: A2ASizes["sizes"] = [];
  for (let bytes = 16 * 1024; bytes <= 16 * 2 ** 20; bytes *= 4) {
    const n = bytes / 4;
    const a = zeros([n]), b = zeros([n]);
    const iters = Math.max(1, Math.min(1000, Math.floor((16 * 2 ** 20) / bytes)));
    let best = Infinity;
    for (let r = 0; r < 8; r++) {
      barrier(g);
      const t0 = performance.now();
      for (let i = 0; i < iters; i++) allToAll(a, b, g);
      const dt = slowest((performance.now() - t0) / 1000 / iters);
      if (r > 0) best = Math.min(best, dt);  // the first repetition warms up
    }
    sizes.push({ bytes, alltoall_gbs: bytes / best / 1e9 });
    a.dispose();
    b.dispose();
  }
  if (g.rank === 0) process.stdout.write(JSON.stringify({ sizes }) + "\n");
}

// ---- (e) routing on the demo corpus -------------------------------------------------------------------

/** The routing runs' model: the demo's config, narrower and shallower so 200 steps take a minute or two. */
const ROUTING_MODEL = ["model.n_layer=2", "model.n_head=4", "model.n_embd=128"];

interface MoELine { step: number; lm_loss: number; tokens_per_s: number; moe: Array<{ layer: string; expert_fraction: number[]; dropped_fraction: number }> }

interface RoutingRun { label: string; sets: string[]; steps: number; lines: MoELine[]; seconds: number }

function trainRun(data: DemoData, dir: string, label: string, moe: Record<string, number>, steps: number): RoutingRun {
  const out = join(dir, label.replace(/\W+/g, "_"));
  const sets = [
    `out_dir=${out}`, ...ROUTING_MODEL, `model.moe=${JSON.stringify({ num_experts: E, top_k: K, ...moe })}`,
    `train.max_steps=${steps}`, "train.log_interval=50", "eval.interval=0", "eval.batches=1", "checkpoint.interval=0",
  ];
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [BIN, "train", "--config", data.configFile, "--overwrite", "--set", ...sets], {
    encoding: "utf8", env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`moe bench: megalith train (${label}) failed with code ${r.status}:\n${(r.stderr ?? "").slice(-4000)}`);
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as MoELine & { split?: string })
    .filter((m) => m.split === undefined && Array.isArray(m.moe));
  if (lines.length !== steps) throw new Error(`moe bench: ${label}: metrics.jsonl holds ${lines.length} MoE step lines, expected ${steps}`);
  return { label, sets, steps, lines, seconds: (Date.now() - t0) / 1000 };
}

/** num_experts x the largest expert's share: 1 when balanced, E when one expert gets every choice. */
const maxOverMean = (f: number[]) => f.length * Math.max(...f);

/** Per layer, over the steps in `lines`: mean max/mean load and mean dropped fraction. */
function routingSummary(lines: MoELine[]): { load: number; dropped: number; perLayer: Array<{ layer: string; max_over_mean: number; dropped_fraction: number }> } {
  const layers = lines[0]!.moe.map((l) => l.layer);
  const perLayer = layers.map((layer, k) => ({
    layer,
    max_over_mean: +mean(lines.map((m) => maxOverMean(m.moe[k]!.expert_fraction))).toFixed(3),
    dropped_fraction: +mean(lines.map((m) => m.moe[k]!.dropped_fraction)).toFixed(4),
  }));
  return { load: mean(perLayer.map((l) => l.max_over_mean)), dropped: mean(perLayer.map((l) => l.dropped_fraction)), perLayer };
}

function routingSection(data: DemoData, dir: string, steps: number, noDropSteps: number): { rows: BenchResult["rows"]; env: Record<string, unknown> } {
  const window = Math.max(1, Math.min(10, Math.floor(steps / 4)));
  const runs: RoutingRun[] = [];
  for (const aux of [0.01, 0]) {
    say(`(e) megalith train, demo corpus, ${steps} steps, aux_loss_coef ${aux}, capacity_factor 1.25 (load ${loadavg()[0]!.toFixed(1)})...`);
    const run = trainRun(data, dir, `aux ${aux}`, { capacity_factor: 1.25, aux_loss_coef: aux }, steps);
    runs.push(run);
    const end = routingSummary(run.lines.slice(-window));
    say(`  ${run.seconds.toFixed(0)} s: max/mean load ${end.load.toFixed(2)}, dropped ${(100 * end.dropped).toFixed(1)}% over the last ${window} steps, lm loss ${run.lines.at(-1)!.lm_loss.toFixed(3)}`);
  }
  say(`(e) ${noDropSteps} steps at capacity_factor = num_experts / top_k = ${E / K}...`);
  const noDrop = trainRun(data, dir, "no drop", { capacity_factor: E / K, aux_loss_coef: 0.01 }, noDropSteps);
  const noDropMax = Math.max(...noDrop.lines.flatMap((m) => m.moe.map((l) => l.dropped_fraction)));
  const rows: BenchResult["rows"] = runs.map((run) => {
    const start = routingSummary(run.lines.slice(0, window)), end = routingSummary(run.lines.slice(-window));
    return {
      name: `(e) routing, ${run.label.replace("aux", "aux_loss_coef")}, capacity_factor 1.25: ${run.steps} steps on the demo corpus`,
      max_over_mean_load_end: +end.load.toFixed(3), max_over_mean_load_start: +start.load.toFixed(3),
      dropped_fraction_end: +end.dropped.toFixed(4), dropped_fraction_start: +start.dropped.toFixed(4),
      lm_loss_end: +mean(run.lines.slice(-window).map((m) => m.lm_loss)).toFixed(4),
      tokens_per_s: +median(run.lines.slice(2).map((m) => m.tokens_per_s)).toFixed(0),
      seconds: +run.seconds.toFixed(0),
    };
  });
  rows.push({ name: `(e) routing, capacity_factor ${E / K} (= num_experts / top_k): ${noDropSteps} steps`, max_dropped_fraction: noDropMax, seconds: +noDrop.seconds.toFixed(0) });
  const [withAux, without] = runs.map((r) => routingSummary(r.lines.slice(-window)).load) as [number, number];
  return {
    rows,
    env: {
      command: `megalith train --config ${data.configFile} --set ${runs[0]!.sets.slice(1).map((x) => (/[{"]/.test(x) ? `'${x}'` : x)).join(" ")}`,
      model: `configs/demo.json with ${ROUTING_MODEL.join(" ")}: ${E} experts top-${K} in each block; demo BPE (${data.tokenizer}), Brown corpus`,
      measure: `max/mean load = num_experts x the largest expert_fraction of a layer (1 = balanced; ${E / K} = ${K} experts take every choice), from metrics.jsonl (before dropping); start/end: mean over the first/last ${window} steps and over layers`,
      aux_lowers_max_over_mean: withAux < without,
      per_layer_end: Object.fromEntries(runs.map((r) => [r.label, routingSummary(r.lines.slice(-window)).perLayer])),
      load_trajectory: Object.fromEntries(runs.map((r) => [r.label, r.lines.map((m) => +mean(m.moe.map((l) => maxOverMean(l.expert_fraction))).toFixed(3))])),
      dropped_trajectory: Object.fromEntries(runs.map((r) => [r.label, r.lines.map((m) => +mean(m.moe.map((l) => l.dropped_fraction)).toFixed(4))])),
    },
  };
}

// ---- the suite ----------------------------------------------------------------------------------------

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const opt = (name: string, dflt: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || dflt : dflt);
  const steps = opt("--steps", quick ? 6 : 40), routingSteps = opt("--routing-steps", quick ? 20 : 200), rounds = opt("--rounds", quick ? 1 : 2);
  process.env.MEGALITH_FROM_SOURCE = "1";
  const started = Date.now();
  const loads: Record<string, { start: number[]; end: number[] }> = {};
  const section = <T>(name: string, fn: () => T): T => {
    const start = load();
    const r = fn();
    loads[name] = { start, end: load() };
    return r;
  };
  const dir = mkdtempSync(join(tmpdir(), "megalith-moe-"));
  try {
    say(`${quick ? "quick, " : ""}${backend.numThreads()} threads, load ${load().join(" ")}`);
    say("(a) grouped expert GEMM vs one dense GEMM...");
    const gemm = section("a_gemm", () => gemmSection(quick));
    for (const r of gemm) say(`  ${r.name}: grouped ${r.grouped_gflops}, with stacking ${r.grouped_incl_stack_gflops}, dense ${r.dense_gflops} GFLOP/s`);
    const data = await demoData();
    say(`(b, d) ${steps} steps each, MoE and dense alternating...`);
    const train = section("b_d_train", () => trainSection(data, steps, quick ? 2 : 8));
    const a2a = section("c_alltoall", () => allToAllSection(rounds, dir));
    for (const r of a2a.rows) say(`  ${r.name}: Megalith ${r.megalith_gbs} GB/s, C ${r.c_mpi_alltoall_gbs} GB/s (${r.ratio})`);
    const routing = section("e_routing", () => routingSection(data, dir, routingSteps, quick ? 5 : 20));
    const rows = [...gemm, ...train.rows, ...a2a.rows, ...routing.rows];
    const git = spawnSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout?.trim() || "unknown";
    const result: BenchResult = {
      suite: "moe",
      env: {
        date: new Date().toISOString(), commit: git, cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, node: process.version,
        threads: backend.numThreads(), quick, elapsed_s: Math.round((Date.now() - started) / 1000),
        loadavg_by_section: loads,
        gemm: "best of 7 (quick: 3) calls after a warm-up; grouped = (E, S, Cin) @ stacked (E, Cout, Cin) weights seen transposed, as MoE.forward calls it; incl. stack = stacking the E expert weights in the call, as MoE.forward does each time; dense = (E*S, Cin) @ (Cout, Cin)^T",
        train: train.env, alltoall: a2a.env, routing: routing.env,
      },
      rows,
    };
    printSummary(result);
    const here = dirname(fileURLToPath(import.meta.url));
    mkdirSync(join(here, "results"), { recursive: true });
    const file = join(here, "results", `moe-${new Date().toISOString().slice(0, 10)}${quick ? "-quick" : ""}.json`);
    writeFileSync(file, JSON.stringify(result, null, 2) + "\n");
    say(`wrote ${file}`);
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function printSummary(r: BenchResult): void {
  const row = (prefix: string) => r.rows.filter((x) => x.name.startsWith(prefix));
  const lines = [`mixture of experts (${E} experts, top-${K}); load by section: ${JSON.stringify(r.env.loadavg_by_section)}`];
  for (const x of row("(a)")) lines.push(`  ${x.name}\n      grouped ${x.grouped_gflops} GFLOP/s (${x.grouped_incl_stack_gflops} with weight stacking) vs dense ${x.dense_gflops}: ${x.grouped_vs_dense}x`);
  for (const x of row("(b)")) lines.push(`  ${x.name}\n      MoE ${x.moe_tokens_per_s} tokens/s vs dense ${x.dense_tokens_per_s}: ${x.moe_vs_dense}x (params ${x.moe_params_m}M total, ${x.moe_active_params_m}M active, dense ${x.dense_params_m}M)`);
  for (const x of row("(d)")) lines.push(`  ${x.name}\n      train ${x.moe_train_loss} vs ${x.dense_train_loss}; val ${x.moe_val_loss} vs ${x.dense_val_loss} (MoE - dense ${x.val_diff})`);
  for (const x of row("(c)")) lines.push(`  ${x.name}: Megalith ${x.megalith_gbs} GB/s, MPI_Alltoall from C ${x.c_mpi_alltoall_gbs} (${x.ratio})`);
  for (const x of row("(e)")) {
    lines.push(x.max_dropped_fraction !== undefined ? `  ${x.name}: largest dropped fraction ${x.max_dropped_fraction}`
      : `  ${x.name}\n      max/mean load ${x.max_over_mean_load_start} -> ${x.max_over_mean_load_end}, dropped ${x.dropped_fraction_start} -> ${x.dropped_fraction_end}, lm loss ${x.lm_loss_end}`);
  }
  lines.push(`  aux_loss_coef 0.01 lowers max/mean load vs 0: ${(r.env.routing as { aux_lowers_max_over_mean: boolean }).aux_lowers_max_over_mean}`);
  process.stderr.write(lines.join("\n") + "\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes("--alltoall-worker")) await allToAllWorker();

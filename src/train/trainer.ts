/**
 * The training loop: data -> forward -> backward (with accumulation) -> clip -> optimizer ->
 * metrics -> eval -> checkpoint, resumable bit-exactly.
 *
 * The parallel layout is applied once, by `parallelize()`; the loop sees only its result: an
 * Optimizer, a GradSync for accumulation, and `withFullParams` around code that reads or writes
 * whole weights. It has no branch for DDP or any ZeRO stage.
 *
 * Each micro-step runs inside a tensor scope, so every activation and temporary of the step is
 * freed when it ends; parameters, gradients and optimizer state are kept. A step whose loss or
 * gradient norm is not finite is skipped (gradients dropped, nothing updated) and reported;
 * `train.max_nonfinite_steps` consecutive skips stop the run with a clear error.
 */
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MegalithError, ValueError } from "../core/errors.js";
import { availableBytes, checkMemoryBudget, checkResumeConfig, previousRun, clearPreviousRun, truncateMetrics } from "./_run_dir.js";

/** 1h02m / 3m05s style durations for the progress line. */
function fmtEta(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(r).padStart(2, "0")}s`;
}
import { getRngState, setRngState, manualSeed } from "../core/rng_state.js";
import { tensor, withScope, memoryStats, resetPeakMemory, type Tensor } from "../tensor/index.js";
import { PRECISION_DTYPE, PrecisionPolicy, type LossScalerState } from "./precision.js";
import { noGrad } from "../autograd/index.js";
import type { GPTOutput } from "../models/index.js";
import { cosineLr, type AdamWState, type HostArray, type HostOptimizerStateDict, type Optimizer, type OptimizerStateDict } from "../optim/index.js";
import {
  findLatestCheckpoint, pruneCheckpoints, checkpointDirName, writeSafetensors, saveCheckpointCollective, writeOptimizerFiles, writeDirAtomic,
  optimizerFileNames, readOptimizerMoments, type OptimizerFiles, type SaveGroup, type TensorRecord,
} from "../checkpoint/index.js";
import type { Tokenizer } from "../tokenizers/index.js";
import { type TrainConfig, worldSizeOf } from "./config.js";
import { createTask, type TrainTask, type TaskLoader } from "./tasks.js";
import { startTrace, stopTrace, traceStep, traceSpanAsync, tracing } from "../core/trace.js";
import {
  DeviceMesh, allReduce, barrier, broadcast, collectiveTimeoutS, parallelize, underMpi,
  type Parallelized, type ParallelModel, type ProcessGroup, type ZeroStage,
} from "../parallel/index.js";
import { saveLogicalCheckpoint, restoreLogical, isModelParallel } from "./_logical_checkpoint.js";
import { MoEMetrics, type MoEStepMetrics } from "./_moe_metrics.js";
import { resolvePeakFlops } from "./peak_flops.js";
import { memoryWarning, planFields, planLine, predictRun, type RunPrediction } from "./_plan_check.js";

/** One line of metrics.jsonl. */
export interface StepMetrics {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  flops_per_s: number;
  mfu: number;
  mem_live_mb: number;
  mem_peak_mb: number;
  /**
   * Live MiB per category when the step's gradients are complete (after their reduction, before
   * the optimizer step): parameters, gradients, optimizer state — what ZeRO's accounting counts.
   */
  mem_params_mb: number;
  mem_grads_mb: number;
  mem_optimizer_mb: number;
  /** Peak MiB of activations during this step (forward + backward), from the allocator. */
  mem_act_peak_mb: number;
  step_ms: number;
  /**
   * CPU time of this process during the step (user + system, all its threads), ms. On cores
   * shared with other jobs it is what their load does not inflate: for a 1-thread rank, about
   * its step time on idle cores (the plan bench compares predictions with it).
   */
  step_cpu_ms: number;
  /** fp16: the loss scale after this step, and the steps skipped for overflow so far. */
  loss_scale?: number;
  skipped_steps?: number;
  /** MoE models: the language-model loss, router losses and per-layer routing (see _moe_metrics.ts). */
  lm_loss?: number;
  aux_loss?: number;
  z_loss?: number;
  moe?: MoEStepMetrics["moe"];
  /**
   * The first step of a GPT language-model run: the planner's prediction for rank 0 (MiB per
   * category; ms per step when this machine is calibrated), beside the mem_* and step_ms above.
   */
  plan_params_mb?: number;
  plan_grads_mb?: number;
  plan_optimizer_mb?: number;
  plan_act_mb?: number;
  plan_step_ms?: number;
}

/** A step that changed nothing (non-finite values, or an fp16 overflow): one metrics.jsonl line. */
export interface SkippedStep {
  step: number;
  skipped: true;
  reason: string;
  loss_scale?: number;
  skipped_steps?: number;
}

/** The signals that stop a run gracefully: finish the step, save, exit 128 + signal number. */
export type StopSignal = "SIGINT" | "SIGTERM";

/** Signal numbers, which the ranks all-reduce (max) to agree on a stop. */
const SIGNAL_NUMBERS: Record<StopSignal, number> = { SIGINT: 2, SIGTERM: 15 };

/** How `Trainer.run()` ended early on a stop request. */
export interface StoppedRun {
  /** The signal that asked for the stop (under MPI: the highest-numbered one any rank got). */
  signal: StopSignal;
  /** Optimizer steps completed (the checkpoint's step). */
  step: number;
  /** The checkpoint to resume from; null when nothing was trained and none existed. */
  checkpoint: string | null;
}

export interface TrainerOptions {
  /** Continue from the newest complete checkpoint in out_dir. */
  resume?: boolean;
  /**
   * Start afresh in an out_dir that holds a previous run, deleting its checkpoints,
   * metrics.jsonl and final/ first. Default false: such an out_dir is refused unless resuming.
   */
  overwrite?: boolean;
  /**
   * Resume although the config differs from the checkpoint's in ways that break a bit-exact
   * continuation (schedule, batch, seed, model, data...). Default false: refused, naming them.
   */
  allowConfigChange?: boolean;
  /** model.init_from: follow a model.safetensors symlinked outside its directory (refused by default). */
  allowSymlinks?: boolean;
  /** Print progress (rank 0 only under MPI). Default true. */
  log?: boolean;
  /** Data-parallel rank/size (issue 4's launcher fills these). */
  rank?: number;
  worldSize?: number;
}

/** Trainer state saved in every checkpoint (trainer_state.json). */
interface TrainerState {
  step: number;
  rng: { seed: number; offset: number };
  /** The task's loader position (TokenLoaderState for language modelling). */
  loader: unknown;
  optimizer: AdamWState;
  config: TrainConfig;
  tokens_seen: number;
  /** fp16 only: the dynamic loss scaler. */
  loss_scaler?: LossScalerState;
}

export class Trainer {
  readonly config: TrainConfig;
  /** What is trained and on which batches: language modelling, MLM, classification, SFT (tasks/). */
  task!: TrainTask;
  /** The task's model (a GPT for language modelling and SFT; `trainer.model as GPT` there). */
  model!: ParallelModel;
  /** AdamW, or the sharded AdamW under ZeRO (whatever parallelize() built). */
  optimizer!: Optimizer;
  /** The model's parallel form: gradient sync, full-parameter access, the data-parallel group. */
  parallel!: Parallelized;
  /** train.precision: how the forward computes and how the loss is scaled. */
  precision!: PrecisionPolicy;
  /** Peak total bytes over the run (each step resets the allocator's peaks to measure its own). */
  private runPeakBytes = 0;
  step = 0;
  tokensSeen = 0;
  private readonly opts: Required<TrainerOptions>;
  /** Set by requestStop() (a signal handler); acted on at the next step boundary. */
  private stopRequest: StopSignal | null = null;
  /** The step of the newest checkpoint this process saved or resumed from (-1: none). */
  private lastCheckpoint = { step: -1, dir: "" };
  private consecutiveNonFinite = 0;
  /** The data-parallel group (a group of one in a single process). */
  private dpGroup: ProcessGroup = { rank: 0, size: 1, handle: -1 };
  /** Training FLOPs per token of the whole (logical) model, counted before any sharding. */
  private modelFlopsPerToken = 0;
  /** Router losses and expert loads of MoE models, per step (inactive for dense models). */
  private moeMetrics!: MoEMetrics;
  /** Peak FLOP/s MFU is against: train.peak_flops, or this machine's measured peak (peak_flops.ts). */
  private peakFlops = 0;
  /** The planner's prediction for this run (GPT language models; _plan_check.ts), shown after the first step. */
  private planPrediction: RunPrediction | null = null;

  constructor(config: TrainConfig, opts: TrainerOptions = {}) {
    this.config = config;
    this.opts = {
      resume: opts.resume ?? false, overwrite: opts.overwrite ?? false, allowConfigChange: opts.allowConfigChange ?? false, allowSymlinks: opts.allowSymlinks ?? false,
      log: opts.log ?? true, rank: opts.rank ?? 0, worldSize: opts.worldSize ?? 1,
    };
    if (this.opts.resume && this.opts.overwrite) throw new ValueError("--resume and --overwrite contradict each other: --resume continues the run in out_dir, --overwrite deletes it; pass one");
  }

  /**
   * Asks the run to stop gracefully: the current step finishes, a checkpoint is saved, and
   * `run()` returns `stopped`. Safe to call from a signal handler at any time. Under MPI every
   * rank learns of it at the next step boundary (an all-reduce), so all ranks stop after the
   * same step even when only some of them got the signal.
   * @example
   * process.once("SIGINT", () => trainer.requestStop("SIGINT"));
   */
  requestStop(signal: StopSignal): void {
    this.stopRequest ??= signal;
  }

  private get isMain(): boolean {
    return this.opts.rank === 0;
  }

  private say(msg: string): void {
    if (this.opts.log && this.isMain) process.stderr.write(`${msg}\n`);
  }

  /** Prepares data, builds (or loads) the model and optimizer, and restores a checkpoint if asked. */
  async setup(): Promise<void> {
    const c = this.config;
    // Parallel layout: the world (mpirun) must match the config's axes (dp x tp x pp).
    const pc = c.parallel, need = worldSizeOf(c);
    if (!underMpi() && need > 1) {
      const axes = (["dp", "tp", "pp"] as const).filter((a) => pc[a] > 1).map((a) => `parallel.${a}=${pc[a]}`).join(" x ");
      throw new ValueError(`${axes} needs ${need} ranks; start it with \`megalith launch -n ${need} -- train ...\` (or mpirun -np ${need})`);
    }
    // Expert parallelism splits the dp ranks into dp / ep x ep; all of them read their own data.
    const mesh = new DeviceMesh({ dp: pc.dp / pc.ep, ep: pc.ep, tp: pc.tp, pp: pc.pp });
    this.dpGroup = mesh.dataGroup();
    if (underMpi()) {
      this.opts.rank = mesh.world.rank;
      this.opts.worldSize = this.dpGroup.size;
    }
    if (c.train.trace) startTrace({ path: c.train.trace, rank: mesh.world.rank });
    // A used out_dir: continue it (--resume), clear it (--overwrite), or refuse. Appending a new
    // run to an old one mixes their metrics and lets pruning delete the new checkpoints.
    const previous = previousRun(c.out_dir);
    if (previous && !this.opts.resume) {
      if (!this.opts.overwrite) {
        throw new ValueError(`out_dir ${c.out_dir} already holds a run (${previous.summary}). Pass --resume to continue it, ` +
          "or --overwrite to delete it and start again (or choose another out_dir)");
      }
      if (this.isMain) {
        clearPreviousRun(c.out_dir, previous);
        this.say(`overwrite: deleted the previous run in ${c.out_dir} (${previous.summary})`);
      }
      if (underMpi()) barrier(mesh.world);
    }
    mkdirSync(c.out_dir, { recursive: true });
    this.task = await createTask(c, {
      say: (m) => this.say(m), rank: this.dpGroup.rank, dpSize: this.dpGroup.size, allowSymlinks: this.opts.allowSymlinks,
      beforeModel: () => {
        // Refuse a model that cannot fit before allocating it (V8 or the allocator would fail
        // half-way, without a useful message).
        const ranksHere = underMpi() ? Number(process.env.OMPI_COMM_WORLD_LOCAL_SIZE ?? 1) : 1;
        checkMemoryBudget(c, ranksHere);
        // The planner's fuller estimate warns (it may err high); only GPT language models.
        this.planPrediction = predictRun(c);
        const warning = this.planPrediction && memoryWarning(this.planPrediction, ranksHere, availableBytes());
        if (warning) this.say(warning);
        manualSeed(c.train.seed);
      },
    });
    this.model = this.task.model;
    const params = this.model.numParameters();
    this.modelFlopsPerToken = this.task.flopsPerToken;
    this.parallel = parallelize(this.model, mesh, {
      zero: c.parallel.zero as 0 | ZeroStage, zero3Prefetch: c.parallel.zero3_prefetch, bucketBytes: c.parallel.bucket_mb * 2 ** 20,
      reduceDtype: c.parallel.reduce_dtype === "bf16" ? "bfloat16" : "float32",
      activationCheckpointing: c.train.activation_checkpointing,
      optimizer: { lr: c.optimizer.lr, betas: c.optimizer.betas, eps: c.optimizer.eps, weightDecay: c.optimizer.weight_decay },
      sequenceParallel: pc.sp,
      pipeline: { schedule: pc.pp_schedule, virtualStages: pc.pp_schedule === "interleaved" ? pc.pp_virtual_stages : 1, layers: pc.pp_layers },
      ...(this.task.forwardBatch ? { forwardBatch: this.task.forwardBatch } : {}),
      ...(pc.offload === "disk" ? { offload: {
        dir: pc.offload_dir ?? join(c.out_dir, "offload"), chunkBytes: Math.round(pc.offload_chunk_mb * 2 ** 20),
        // Mixed precision: the fp32 master weights go to the file too; the parameters stay 16-bit.
        ...(c.train.precision !== "fp32" ? { masterDtype: PRECISION_DTYPE[c.train.precision] as "bfloat16" | "float16" } : {}),
      } } : {}),
    });
    this.optimizer = this.parallel.optimizer;
    this.moeMetrics = new MoEMetrics(this.model);
    const ls = c.train.loss_scale;
    this.precision = new PrecisionPolicy(c.train.precision, { initial: ls.initial, growthInterval: ls.growth_interval, growthFactor: ls.growth_factor, backoffFactor: ls.backoff_factor });
    const peak = resolvePeakFlops({ explicit: c.train.peak_flops, dtype: this.precision.computeDtype, processes: mesh.world.size });
    this.peakFlops = peak.flops;
    this.say(peak.describe);
    const trained = this.model.parameters().filter((p) => p.requiresGrad).reduce((a, p) => a + p.numel, 0);
    this.say(`model: ${this.task.describe()}${trained !== params ? ` (${trained.toLocaleString("en-US")} trainable, ${(100 * trained / params).toFixed(2)}%)` : ""}; ` +
      `global batch ${this.tokensPerStep()} tokens (${c.train.micro_batch_size} x ${this.task.tokensPerMicroBatch / c.train.micro_batch_size} x ${c.train.grad_accum_steps} accum x ${c.parallel.dp} dp)` +
      (this.parallel.applied.length ? `; ${mesh.toString()}: ${this.parallel.applied.join(", ")}` : ""));
    if (this.opts.resume) await this.restoreLatest();
  }

  /** The training data loader (the task's). */
  get loader(): TaskLoader {
    return this.task.loader;
  }

  /** The tokenizer of the data, written into model directories; null when unknown. */
  get tokenizer(): Tokenizer | null {
    return this.task?.tokenizer ?? null;
  }

  /** Token positions per optimizer step over all data-parallel ranks (the global batch). */
  tokensPerStep(): number {
    return this.task.tokensPerMicroBatch * this.config.train.grad_accum_steps * this.config.parallel.dp;
  }

  /** Learning rate at optimizer step `step` (0-based). */
  lrAt(step: number): number {
    const o = this.config.optimizer;
    return cosineLr(step, {
      maxLr: o.lr, minLr: o.min_lr ?? o.lr / 10, warmupSteps: o.warmup_steps, decaySteps: o.decay_steps ?? this.config.train.max_steps,
    });
  }

  /** One optimizer step (all micro-steps). Returns the metrics, or null when the step was skipped. */
  async trainStep(): Promise<StepMetrics | SkippedStep> {
    const c = this.config;
    const t0 = performance.now(), cpu0 = process.cpuUsage();
    this.runPeakBytes = Math.max(this.runPeakBytes, memoryStats().peakTotal);
    resetPeakMemory();
    const policy = this.precision;
    const lossScale = policy.lossScale;
    const accum = c.train.grad_accum_steps;
    const lr = this.lrAt(this.step);
    this.model.train();
    if (tracing()) traceStep(this.step);
    const batches = Array.from({ length: accum }, () => this.loader.nextBatch());
    // Scale so accumulated gradients are the mean over micro-batches, times the fp16 loss
    // scale (1 otherwise), which the optimizer step divides back out.
    this.moeMetrics.reset();
    const lossSum = await this.parallel.schedule.run(batches, {
      forward: (fn) => policy.forward(fn), lossFactor: lossScale / accum, activationDtype: policy.computeDtype,
      ...(this.moeMetrics.active ? { onOutput: (out) => this.moeMetrics.observe(out as GPTOutput) } : {}),
    });
    // Gradients are complete here: this is when ZeRO's per-stage accounting applies.
    const memAtGrads = memoryStats();
    let loss = lossSum / accum;
    if (this.dpGroup.size > 1) {
      // The logged loss is the global batch's: the mean over data-parallel ranks.
      const t = tensor([loss]);
      allReduce(t, this.dpGroup, "avg");
      loss = t.item();
      t.dispose();
    }
    const maxNorm = c.train.grad_clip > 0 ? c.train.grad_clip : Infinity;
    // The gradients carry the loss scale: clip against the scaled limit, report the true norm.
    const scaledNorm = await this.optimizer.gradNorm(maxNorm * lossScale);
    const norm = scaledNorm.norm / lossScale, clipCoef = scaledNorm.clipCoef;
    const stepNumber = this.step;
    const scaler = policy.scaler;
    if (scaler && Number.isFinite(loss) && !policy.stepAllowed(Number.isFinite(norm))) {
      // fp16 overflow: expected now and then while the scale finds its level; not an error.
      this.optimizer.zeroGrad();
      this.step++;
      return { step: stepNumber, skipped: true, reason: `fp16 gradient overflow at loss scale ${lossScale}`, loss_scale: scaler.scale, skipped_steps: scaler.skippedSteps };
    }
    if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
      this.optimizer.zeroGrad();
      this.consecutiveNonFinite++;
      this.step++;
      const reason = !Number.isFinite(loss) ? `loss is ${loss}` : `gradient norm is ${norm}`;
      if (this.consecutiveNonFinite >= c.train.max_nonfinite_steps) {
        if (this.isMain) appendFileSync(join(c.out_dir, "metrics.jsonl"), JSON.stringify({ step: stepNumber, skipped: true, reason }) + "\n");
        throw new MegalithError(
          `training stopped: ${this.consecutiveNonFinite} consecutive steps had non-finite values (last: ${reason} at step ${stepNumber}). ` +
            "Lower optimizer.lr, check the data, or resume from the last checkpoint.",
          "nonfinite",
        );
      }
      return { step: stepNumber, skipped: true, reason };
    }
    this.consecutiveNonFinite = 0;
    // Awaited: an offloaded optimizer (parallel.offload "disk") streams its state from disk.
    await traceSpanAsync("optimizer", "optimizer", async () => {
      await this.optimizer.step({ lr, gradScale: clipCoef / lossScale });
      this.optimizer.zeroGrad();
    });
    this.step++;
    const dt = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    // Token positions this step computed (fine-tuning batches are padded only to their longest row).
    const tokens = batches.reduce((a, b) => a + b.batchSize * b.blockSize, 0) * this.config.parallel.dp;
    this.tokensSeen += tokens;
    const flops = (this.modelFlopsPerToken * tokens) / dt;
    const mem = memoryStats();
    return {
      step: stepNumber, loss, lr, grad_norm: norm, tokens_per_s: tokens / dt, flops_per_s: flops,
      mfu: flops / this.peakFlops, mem_live_mb: mem.liveTotal / 2 ** 20, mem_peak_mb: Math.max(this.runPeakBytes, mem.peakTotal) / 2 ** 20, step_ms: dt * 1000,
      step_cpu_ms: (cpu.user + cpu.system) / 1000,
      mem_params_mb: memAtGrads.live.params / 2 ** 20, mem_grads_mb: memAtGrads.live.grads / 2 ** 20, mem_optimizer_mb: memAtGrads.live.optimizer / 2 ** 20,
      mem_act_peak_mb: mem.peak.activations / 2 ** 20,
      ...(scaler ? { loss_scale: scaler.scale, skipped_steps: scaler.skippedSteps } : {}),
      ...this.moeMetrics.summary(),
    };
  }

  /**
   * Whole validation batches available (0 when the val split is empty or shorter than one
   * window: `megalith prepare` on a single document sends nothing to val).
   */
  valBatchCount(): number {
    return this.task.valBatchCount();
  }

  /** Mean loss over `eval.batches` validation batches (NaN when the val split has none). A collective. */
  async evaluate(): Promise<number> {
    const c = this.config;
    this.model.eval();
    let sum = 0, n = 0;
    // A small validation split may hold fewer batches than eval.batches asks for: use what is there.
    const numBatches = Math.min(c.eval.batches, this.valBatchCount());
    if (numBatches === 0) return NaN;
    const fns = { forward: <T>(fn: () => T) => noGrad(() => this.precision.forward(fn)), activationDtype: this.precision.computeDtype };
    for (const b of this.task.evalBatches(numBatches)) {
      sum += await this.parallel.schedule.evalLoss(b, fns);
      n++;
    }
    this.model.train();
    return n ? sum / n : NaN;
  }

  /**
   * Whether to stop now, agreed by every rank: lets pending signal handlers run (a step may
   * never yield to the event loop otherwise), then, under MPI, all-reduces the highest signal
   * number over the world group. Every rank calls it at the same points of the loop.
   */
  private async stopAgreed(): Promise<boolean> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    let code = this.stopRequest ? SIGNAL_NUMBERS[this.stopRequest] : 0;
    const world = this.parallel.mesh.world;
    if (underMpi() && world.size > 1) {
      const t = tensor([code]);
      allReduce(t, world, "max");
      code = t.item();
      t.dispose();
    }
    if (code === 0) return false;
    this.stopRequest = code === SIGNAL_NUMBERS.SIGTERM ? "SIGTERM" : "SIGINT";
    return true;
  }

  /** Saves a checkpoint at the step reached (unless one exists for it) and describes the stop. */
  private async stopNow(): Promise<StoppedRun> {
    const signal = this.stopRequest!;
    let checkpoint: string | null = this.lastCheckpoint.step === this.step ? this.lastCheckpoint.dir : null;
    if (checkpoint === null && this.step > 0) checkpoint = await this.saveCheckpoint();
    return { signal, step: this.step, checkpoint };
  }

  /**
   * Runs until train.max_steps, with logging, eval and checkpoints. After `requestStop()` it
   * returns early with `stopped` set, once the step in progress is done and saved.
   */
  async run(): Promise<{ finalLoss: number; finalDir: string; stopped?: StoppedRun }> {
    const c = this.config;
    const metricsFile = join(c.out_dir, "metrics.jsonl");
    const startStep = this.step;
    const t0 = performance.now();
    let last: StepMetrics | null = null;
    const finalDir = join(c.out_dir, "final");
    while (this.step < c.train.max_steps) {
      if (await this.stopAgreed()) {
        if (tracing()) this.finishTrace();
        return { finalLoss: last?.loss ?? NaN, finalDir, stopped: await this.stopNow() };
      }
      const m = await this.trainStep();
      // The planner beside the measurement, once: the first step this process ran.
      const plan = !("skipped" in m) && this.planPrediction && this.isMain ? this.planPrediction : null;
      if (plan) this.planPrediction = null;
      if (this.isMain) appendFileSync(metricsFile, JSON.stringify(plan ? { ...m, ...planFields(plan) } : m) + "\n");
      if (plan && this.opts.log) this.say(planLine(plan, m as StepMetrics));
      if ("skipped" in m) {
        this.say(`step ${m.step}: skipped (${m.reason})`);
        continue;
      }
      last = m;
      if (this.isMain && this.opts.log && (m.step % c.train.log_interval === 0 || this.step === c.train.max_steps)) {
        const line = `step ${m.step + 1}/${c.train.max_steps} | loss ${m.loss.toFixed(4)} | lr ${m.lr.toExponential(2)} | ` +
          `norm ${m.grad_norm.toFixed(2)} | ${(m.tokens_per_s / 1000).toFixed(1)}k tok/s | ${(m.flops_per_s / 1e9).toFixed(1)} GFLOP/s | ` +
          `MFU ${(m.mfu * 100).toFixed(1)}% | mem ${m.mem_live_mb.toFixed(0)}/${m.mem_peak_mb.toFixed(0)} MiB (act ${m.mem_act_peak_mb.toFixed(0)})` +
          (m.loss_scale !== undefined ? ` | scale ${m.loss_scale} (${m.skipped_steps} skipped)` : "") +
          (m.aux_loss !== undefined ? ` | aux ${m.aux_loss.toFixed(3)} z ${m.z_loss!.toFixed(2)} dropped ${(100 * Math.max(...(m.moe ?? []).map((l) => l.dropped_fraction))).toFixed(1)}%` : "");
        const perStep = (performance.now() - t0) / 1000 / Math.max(1, this.step - startStep);
        process.stderr.write(`${line} | eta ${fmtEta(perStep * (c.train.max_steps - this.step))}\n`);
      }
      if (tracing() && this.step - startStep >= c.train.trace_steps) this.finishTrace();
      if (c.eval.interval > 0 && this.step % c.eval.interval === 0 && this.step < c.train.max_steps) await this.logEval(metricsFile);
      if (c.checkpoint.interval > 0 && this.step % c.checkpoint.interval === 0 && this.step < c.train.max_steps) await this.saveCheckpoint();
    }
    if (tracing()) this.finishTrace();
    // Save first: nothing after the last step may cost the run.
    if (this.lastCheckpoint.step !== this.step) await this.saveCheckpoint();
    await this.exportFinal(finalDir);
    // A stop asked for now skips only the closing evaluation: the run is complete and saved.
    if (await this.stopAgreed()) return { finalLoss: last?.loss ?? NaN, finalDir, stopped: await this.stopNow() };
    await this.logEval(metricsFile);
    this.say(`done: ${this.step} steps; final model in ${finalDir}`);
    return { finalLoss: last?.loss ?? NaN, finalDir };
  }

  /**
   * Writes the final HF model directory, atomically: into a temporary sibling that is renamed
   * to `dir` when complete, so `final/` is always the old model or the new one, whole. A
   * collective (sharded parameters are gathered); rank 0 writes.
   */
  private async exportFinal(dir: string): Promise<void> {
    if (isModelParallel(this.parallel)) {
      // The task writes its model directory from a logical copy gathered from the shards.
      if (!this.isMain) {
        await saveLogicalCheckpoint(this.parallel, this.task, { modelDir: dir, isMain: false });
        return;
      }
      await writeDirAtomic(dir, (tmp) => saveLogicalCheckpoint(this.parallel, this.task, { modelDir: tmp, isMain: true }));
      return;
    }
    await this.parallel.withFullParams(async () => {
      if (this.isMain) await writeDirAtomic(dir, (tmp) => this.saveModel(tmp));
    });
  }

  /** Writes this rank's trace file (the first train.trace_steps steps). */
  private finishTrace(): void {
    const file = stopTrace();
    if (file && this.isMain) this.say(`trace: ${file} (megalith launch merges the ranks' files into ${this.config.train.trace})`);
  }

  private async logEval(metricsFile: string): Promise<void> {
    if (this.valBatchCount() === 0) return;
    const loss = await this.evaluate();
    this.model.eval();
    const extras = this.task.evalExtras?.(loss) ?? {};
    this.model.train();
    if (!this.isMain) return;
    appendFileSync(metricsFile, JSON.stringify({ step: this.step, split: "val", loss, ...extras }) + "\n");
    const bpb = extras.val_bpb;
    const shown = Object.entries(extras).filter(([k, v]) => k !== "val_bpb" && typeof v === "number").map(([k, v]) => `${k} ${(v as number).toFixed(4)}`);
    this.say(`eval @ step ${this.step}: val loss ${loss.toFixed(4)}${typeof bpb === "number" ? ` (${bpb.toFixed(3)} bits/byte)` : ""}${shown.length ? ` | ${shown.join(" | ")}` : ""}`);
  }

  /**
   * Writes an HF directory: config.json, generation_config.json, model.safetensors and, when the
   * tokenizer is known, tokenizer.json, tokenizer_config.json and special_tokens_map.json.
   */
  async saveModel(dir: string): Promise<void> {
    await this.task.saveModelDir(dir);
  }

  /**
   * Saves model, optimizer state and trainer state as one atomic checkpoint directory, from
   * every rank (one path for every layout): the optimizer's state dict says what to write. In
   * the logical form (AdamW) rank 0 writes `optimizer.safetensors`; in the sharded form (ZeRO)
   * every rank writes its own `optimizer-rank00001-of-00004.safetensors` next to
   * `zero_layout.json`, so no rank holds full moments. Rank 0 writes the model (gathered where
   * it is sharded) and commits the manifest once every rank has written.
   */
  async saveCheckpoint(): Promise<string> {
    const c = this.config;
    const dir = join(c.out_dir, checkpointDirName(this.step));
    if (isModelParallel(this.parallel)) {
      // tp/pp: the shards are joined into the logical files one process would write.
      await saveCheckpointCollective(dir, this.saveGroup(this.parallel.mesh.world), async (tmp) => {
        await saveLogicalCheckpoint(this.parallel, this.task, { checkpointDir: tmp, isMain: this.isMain, trainerState: this.trainerState() });
      }, { step: this.step, kind: this.task.checkpointKind, dp: this.dpGroup.size, parallel: this.parallel.applied }, {
        expectFiles: ["model.safetensors", "trainer_state.json", "optimizer.safetensors"],
      });
      if (this.isMain) {
        await pruneCheckpoints(c.out_dir, c.checkpoint.keep, { current: this.step });
        this.say(`checkpoint: ${dir} (logical tensors gathered from ${this.parallel.mesh.toString()})`);
      }
      this.lastCheckpoint = { step: this.step, dir };
      return dir;
    }
    const { rank, size } = this.dpGroup;
    const names = this.model.namedParameters().filter(([, p]) => p.requiresGrad).map(([n]) => n);
    // Host copies of the moments: an offloaded optimizer reads them from its file (hostStateDict),
    // the others' tensors are copied; either way no tensor is allocated for the save.
    const sd = this.optimizer.hostStateDict?.() ?? this.optimizer.stateDict();
    const optFiles = optimizerFiles(sd, names), optState = sd.state;
    await saveCheckpointCollective(dir, this.saveGroup(), async (tmp) => {
      await this.parallel.withFullParams(async () => {
        if (this.isMain) await writeSafetensors(join(tmp, "model.safetensors"), this.task.records(), { format: "pt" });
      });
      await writeOptimizerFiles(tmp, optFiles, this.isMain);
      if (this.isMain) {
        writeFileSync(join(tmp, "config.json"), JSON.stringify(this.task.hfConfig(), null, 2) + "\n");
        writeFileSync(join(tmp, "trainer_state.json"), JSON.stringify(this.trainerState(optState), null, 2) + "\n");
      }
    }, { step: this.step, kind: this.task.checkpointKind, dp: size, parallel: this.parallel.applied }, {
      expectFiles: ["model.safetensors", "trainer_state.json", ...optimizerFileNames(optFiles)],
    });
    if (rank === 0) {
      // The step just saved is kept whatever else is in out_dir (see PruneOptions.current).
      await pruneCheckpoints(c.out_dir, c.checkpoint.keep, { current: this.step });
      this.say(`checkpoint: ${dir}${optFiles.kind === "sharded" ? ` (optimizer sharded over ${size} ranks)` : ""}`);
    }
    this.lastCheckpoint = { step: this.step, dir };
    return dir;
  }

  /** The data-parallel group as the checkpoint writer sees it (barriers, rank 0's numbers). */
  private saveGroup(g: ProcessGroup = this.dpGroup): SaveGroup {
    // Writing can take far longer than a collective should: give the barriers room.
    const slow = { timeoutS: Math.max(collectiveTimeoutS(), 3600) };
    return {
      rank: g.rank, size: g.size,
      barrier: () => barrier(g, slow),
      agree: (values) => {
        const t = tensor(values);
        broadcast(t, g, 0);
        const out = t.toArray() as number[];
        t.dispose();
        return out;
      },
    };
  }

  private trainerState(optimizer: AdamWState = this.optimizer.stateDict().state): TrainerState {
    return {
      step: this.step, rng: getRngState(), loader: this.loader.state(), optimizer, config: this.config, tokens_seen: this.tokensSeen,
      ...(this.precision.scaler ? { loss_scaler: this.precision.scaler.state() } : {}),
    };
  }

  /** Restores model, optimizer, RNG, data position and step from the newest complete checkpoint. */
  async restoreLatest(): Promise<boolean> {
    const skipped: string[] = [];
    const latest = await findLatestCheckpoint(this.config.out_dir, {
      checksums: true,
      onSkip: (dir, err) => {
        skipped.push(`${dir}: ${err.message}`);
        this.say(`resume: skipping ${dir}: ${err.message}`);
      },
    });
    if (!latest) {
      if (skipped.length) {
        throw new MegalithError(
          `--resume: ${this.config.out_dir} holds ${skipped.length} checkpoint(s) but none is complete, so the run cannot continue ` +
            `(${skipped.join("; ")}). Move them away to start from scratch.`,
          "checkpoint",
        );
      }
      this.say(`resume: no complete checkpoint in ${this.config.out_dir}; starting from scratch`);
      return false;
    }
    const state = JSON.parse(readFileSync(join(latest.dir, "trainer_state.json"), "utf8")) as TrainerState;
    // Every difference is reported; those that break a bit-exact continuation are refused
    // unless allowed (throws before anything is loaded).
    checkResumeConfig(state.config, this.config, { allow: this.opts.allowConfigChange, say: (m) => this.say(m), checkpoint: latest.dir });
    if (isModelParallel(this.parallel)) {
      await restoreLogical(this.parallel, this.task, latest.dir, state.optimizer);
      this.restoreRest(state, latest.dir);
      return true;
    }
    // Sharded parameters take what was loaded into the gathered ones as their new shards.
    await this.parallel.withFullParams(() => this.task.loadWeights(latest.dir), { writeBack: true });
    // Moments come back logical whatever layout saved them; each optimizer keeps what it holds.
    const params = this.model.namedParameters().filter(([, p]) => p.requiresGrad);
    const stored = await readOptimizerMoments(latest.dir, params.map(([n]) => n), params.map(([, p]) => p.numel));
    noGrad(() => {
      const moments = Object.fromEntries(Object.entries(stored).map(([k, xs]) => [k, xs.map((x, i) => tensor(x, { shape: params[i]![1].shape }))]));
      this.optimizer.loadStateDict({ state: state.optimizer, moments });
      for (const ts of Object.values(moments)) for (const t of ts) t.dispose();
    });
    this.restoreRest(state, latest.dir);
    return true;
  }

  /** Data position, RNG, step counters and the loss scaler from a checkpoint's trainer state. */
  private restoreRest(state: TrainerState, dir: string): void {
    this.loader.restore(state.loader);
    setRngState(state.rng);
    this.step = state.step;
    this.tokensSeen = state.tokens_seen;
    if (this.precision.scaler && state.loss_scaler) this.precision.scaler.load(state.loss_scaler);
    this.lastCheckpoint = { step: this.step, dir };
    // metrics.jsonl may run past the checkpoint (the run went on, then stopped or crashed):
    // drop those rows, which the resumed run logs again.
    if (this.isMain) {
      const dropped = truncateMetrics(join(this.config.out_dir, "metrics.jsonl"), this.step);
      if (dropped > 0) this.say(`resume: dropped ${dropped} metrics.jsonl row(s) logged after step ${this.step}`);
    }
    this.say(`resume: continuing from ${dir} (step ${this.step})`);
  }
}

/** A float32 tensor's bytes as a safetensors record (a copy). */
function toRecord(t: Tensor | HostArray): TensorRecord {
  const a = "numel" in t ? (t.data() as Float32Array) : t.data;  // a tensor is copied; a host array is already a copy
  return { dtype: "F32", shape: [...t.shape], data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) };
}

/** An optimizer state dict as checkpoint records, parameters named as in the model. */
function optimizerFiles(sd: OptimizerStateDict | HostOptimizerStateDict, names: readonly string[]): OptimizerFiles {
  if (sd.shard) {
    const { rank, size, layout, tensors } = sd.shard;
    return {
      kind: "sharded", rank, size,
      layout: { ...layout, units: layout.units.map((u) => ({ ...u, params: u.params.map((i) => names[i]!) })) },
      shard: Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, toRecord(t)])),
    };
  }
  const moments: Record<string, Record<string, TensorRecord>> = {};
  for (const [k, ts] of Object.entries<Array<Tensor | HostArray>>(sd.moments ?? {})) moments[k] = Object.fromEntries(ts.map((t, i) => [names[i]!, toRecord(t)]));
  return { kind: "logical", moments };
}

/**
 * The planner's prediction for the run the trainer is about to start, and its comparison with
 * what the run measures (issue 13: "train prints the planner's prediction beside the measured
 * value after the first step, warning when the prediction exceeds available RAM before it
 * allocates").
 *
 * Only a dense GPT language model is predicted: the planner's formulas model GPT blocks
 * (BERT, classification/SFT heads and MoE layers are not in them), so other runs get no line.
 * Memory is predicted for rank 0's pipeline stage (the rank that logs), and the warning uses
 * the most loaded stage times the ranks on this machine. Step time needs the calibrated
 * `cpu-this` profile (`megalith plan --calibrate`); without one only memory is predicted.
 */
import { cpuProfile, checkLayout, predict, readCalibration, type Layout, type Prediction } from "../plan/index.js";
import type { TrainConfig } from "./config.js";

/** What the planner says about this run. */
export interface RunPrediction {
  /** The planner's description of the run's layout. */
  layout: Layout;
  /** Rank 0's stage (what metrics.jsonl measures): memory by category, bytes. */
  rank0: Prediction["memory"];
  /** The most loaded stage's total, bytes per rank. */
  busiestBytes: number;
  /** Predicted seconds per step on the calibrated profile; null without a calibration. */
  stepSeconds: number | null;
}

const PRECISION_DTYPE = { fp32: "float32", bf16: "bfloat16", fp16: "float16" } as const;

/** The planner's Layout for a training config (micro-batches = the accumulation steps). */
export function runLayout(c: TrainConfig): Layout {
  const p = c.parallel, ac = c.train.activation_checkpointing;
  return {
    dp: p.dp, tp: p.tp, pp: p.pp, sp: p.sp, zero: p.zero as Layout["zero"],
    recompute: ac === true ? "full" : ac === false ? "none" : ac,
    schedule: p.pp > 1 ? p.pp_schedule : "1f1b", virtualStages: p.pp > 1 && p.pp_schedule === "interleaved" ? p.pp_virtual_stages : 1,
    microBatchSize: c.train.micro_batch_size, microBatches: c.train.grad_accum_steps,
  };
}

/**
 * The planner's prediction for `c`, or null when the planner does not model this run (not a
 * dense GPT language model, uneven pipeline stages, or a layout the planner refuses).
 * `profile` is the calibration record (default: the saved one, if any).
 * @example predictRun(config)?.rank0.activations
 */
export function predictRun(c: TrainConfig, profile = _readProfile()): RunPrediction | null {
  if (c.model.type !== "gpt" || c.finetune || c.model.moe || c.parallel.pp_layers) return null;
  const l = runLayout(c);
  const world = l.dp * l.tp * l.pp;
  if (checkLayout(c, l, world) !== null) return null;
  const dtype = PRECISION_DTYPE[c.train.precision];
  // Memory does not depend on the profile; without a calibration any profile serves for it.
  const hw = profile ? cpuProfile(profile, dtype, world) : null;
  const memHw = hw ?? { name: "none", description: "", peakFlops: 1, achievableFlops: 1, memoryBytes: Infinity, memoryBandwidth: 1, ranksPerNode: world, intraNodeBandwidth: 1, interNodeBandwidth: 1, intraNodeLatency: 0, interNodeLatency: 0, assumed: [] };
  const busiest = predict(c, l, memHw);
  return { layout: l, rank0: predict(c, l, memHw, 0).memory, busiestBytes: busiest.memory.total, stepSeconds: hw ? busiest.step_time.total : null };
}

/** The saved calibration, or null (none, or unreadable: the planner's CLI reports that). */
function _readProfile(): ReturnType<typeof readCalibration> {
  try {
    return readCalibration();
  } catch {
    return null;
  }
}

const mib = (bytes: number): number => bytes / 2 ** 20;
const gib = (bytes: number): string => `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 3 : 1)} GiB`;

/**
 * A warning when the predicted peak of every rank on this machine exceeds the memory available,
 * else null. Unlike checkMemoryBudget (a lower bound, which refuses), this is the planner's full
 * estimate, so it warns: the run may still fit when the estimate errs high.
 * @example memoryWarning(predictRun(c)!, 1, 2 ** 30)
 */
export function memoryWarning(p: RunPrediction, ranksOnMachine: number, available: number): string | null {
  const need = p.busiestBytes * Math.max(1, ranksOnMachine);
  if (need <= available) return null;
  return `warning: the planner predicts a peak of ${gib(need)}${ranksOnMachine > 1 ? ` over the ${ranksOnMachine} ranks on this machine` : ""} ` +
    `(${gib(p.busiestBytes)} per rank), more than the ${gib(available)} available; the run may be killed for memory. ` +
    "See `megalith plan --config ... --world N` for layouts that need less (ZeRO, recomputation, tp/pp).";
}

/** The `plan_*` fields of the first step's metrics.jsonl row: predicted MiB per category and ms per step. */
export function planFields(p: RunPrediction): Record<string, number> {
  const m = p.rank0;
  return {
    plan_params_mb: +mib(m.parameters).toFixed(3), plan_grads_mb: +mib(m.gradients).toFixed(3),
    plan_optimizer_mb: +mib(m.optimizer).toFixed(3), plan_act_mb: +mib(m.activations).toFixed(3),
    ...(p.stepSeconds !== null ? { plan_step_ms: +(p.stepSeconds * 1000).toFixed(1) } : {}),
  };
}

/** What the planner compares with: the first step's measured MiB per category and step time. */
export interface MeasuredStep {
  mem_params_mb: number;
  mem_grads_mb: number;
  mem_optimizer_mb: number;
  mem_act_peak_mb: number;
  step_ms: number;
}

/**
 * One line: measured / predicted per category, and the step time.
 * @example
 * planLine(p, m) // "plan vs measured (rank 0, MiB): params 16.2/16.2, grads ..., act 33.2/32.5; step 412 ms/350 ms predicted (first step, incl. warm-up)"
 */
export function planLine(p: RunPrediction, m: MeasuredStep): string {
  const pair = (meas: number, pred: number) => `${meas.toFixed(1)}/${mib(pred).toFixed(1)}`;
  const r = p.rank0;
  const step = p.stepSeconds !== null
    ? `step ${m.step_ms.toFixed(0)}/${(p.stepSeconds * 1000).toFixed(0)} ms (first step, incl. warm-up)`
    : `step ${m.step_ms.toFixed(0)} ms (not predicted: run megalith plan --calibrate)`;
  return `plan: measured/predicted (rank 0, MiB): params ${pair(m.mem_params_mb, r.parameters)}, grads ${pair(m.mem_grads_mb, r.gradients)}, ` +
    `optimizer ${pair(m.mem_optimizer_mb, r.optimizer)}, act ${pair(m.mem_act_peak_mb, r.activations)}; ${step}`;
}

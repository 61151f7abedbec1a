/**
 * parallelize(): turns a single-device GPT into its parallel form, applied from outside the
 * model (torchtitan's models/llama/parallelize.py), and returns what a train step needs.
 *
 * The stages, in order (each a function of the same context, so later issues add theirs to
 * the list without touching the others):
 *   1. tensor parallel            over the mesh's tp axis: module swaps that hold shards and
 *                                 communicate through autograd regions (tensor_parallel.ts),
 *                                 with sequence parallelism as an option (GPT); BERT's encoder
 *                                 layers the same way (tensor_parallel_bert.ts). It goes first because
 *                                 it changes which parameters exist on this rank; everything
 *                                 after shards what TP left.
 *   1b. expert parallel           over the ep axis: each MoE layer keeps E / ep experts and
 *                                 exchanges tokens by all-to-all (expert_parallel.ts). Like
 *                                 tensor parallelism it changes which parameters exist here.
 *   2. pipeline split             over the pp axis: this rank keeps its stage's blocks (and the
 *                                 embeddings / head where they belong), pipeline.ts.
 *   3. activation checkpointing   recompute each block's activations in backward. Before any
 *                                 sharding: FSDP's hooks see the replayed forward and keep the
 *                                 block gathered for the backward that follows it.
 *   4. data parallel              over the mesh's dp axis, one of
 *                                   zero 0: DDP (bucketed async all-reduce) around AdamW;
 *                                   zero 1/2: ShardedAdamW (optimizer state, + gradients);
 *                                   zero 3: FSDP units per block (parameters) + ShardedAdamW.
 *                                 Last, because it shards whatever the model ended up with.
 *                                 With ep > 1: experts over dp, the rest over dp x ep (DDP or ZeRO-1).
 * Then the step's schedule: a plain accumulation loop, or the pipeline schedule; and the
 * gradient norm's scope (a parameter split over tp counts on every tp rank, a replicated one
 * on one; an expert on every ep rank, a shared parameter on ep rank 0; the norm is summed
 * over tp, pp and ep).
 *
 * Why this file lives in parallel/ and not in models/gpt/: it builds DataParallel, FSDP and the
 * sharded optimizer, and models/ sits below parallel/ in the layer order (scripts/check-layers.mjs),
 * so a per-model parallelize there could only take those pieces as arguments. Here it imports
 * them and the model, and stays a readable list; a second model gets its own function here.
 *
 * At group size 1 every piece is the identity: the result is the model, a plain AdamW and a
 * GradSync that does nothing (unless ZeRO is asked for, which then runs with one shard).
 */
import { ValueError } from "../core/errors.js";
import { GPT, BertForPreTraining, BertForSequenceClassification, type ActivationCheckpointing } from "../models/index.js";
import type { Module } from "../nn/index.js";
import { join } from "node:path";
import { AdamW, OffloadedAdamW, type AdamWOptions, type Optimizer, type GradNormScope, type OffloadedAdamWOptions } from "../optim/index.js";
import type { Tensor } from "../tensor/index.js";
import type { ProcessGroup } from "./collectives.js";
import { DataParallel } from "./data_parallel.js";
import { FlatShards } from "./flat_shards.js";
import { FullyShardedUnits } from "./fsdp.js";
import { composeGradSync, type GradSync } from "./grad_sync.js";
import type { DeviceMesh } from "./mesh.js";
import { ShardedAdamW, sumOverGroup, type ZeroStage } from "./sharded_optimizer.js";
import { applyTensorParallel, type TensorParallelPlan } from "./tensor_parallel.js";
import { applyBertTensorParallel } from "./tensor_parallel_bert.js";
import { splitPipelineStages, PipelineSchedule, type PipelineOptions, type PipelineStagePlan } from "./pipeline.js";
import { PlainSchedule, type TrainSchedule, type BatchForward } from "./schedule.js";
import { applyExpertParallel, ExpertGradScale, ExpertShardedAdamW, type ExpertParallelPlan } from "./expert_parallel.js";

/**
 * A model other than GPT that parallelize() can wrap (BERT, a task head around an encoder): it
 * gets data parallelism, ZeRO and activation recomputation; BERT models (pretraining heads or a
 * classifier) also tensor parallelism (tensor_parallel_bert.ts); the pp and ep stages need GPT.
 */
export interface BlockModel extends Module {
  /** The transformer blocks, in order: ZeRO/FSDP units (everything else is the root unit). */
  readonly blocks: readonly Module[];
  /** What the blocks recompute in backward (the activation checkpointing stage sets it). */
  activationCheckpointing: ActivationCheckpointing;
}

/** What parallelize() takes: a GPT (every stage) or a BlockModel (data-parallel stages). */
export type ParallelModel = GPT | BlockModel;

/** The transformer blocks of a model: its FSDP/ZeRO units. */
function blocksOf(model: ParallelModel): readonly Module[] {
  return model instanceof GPT ? model.h : model.blocks;
}

/**
 * The parameters the optimizer updates: those that require gradients. Frozen ones (the base
 * weights under LoRA) get no gradient reduction and no optimizer state.
 */
function trainable(ps: readonly Tensor[]): Tensor[] {
  return ps.filter((p) => p.requiresGrad);
}

/** What to apply (the trainer builds it from `parallel.*` and `train.activation_checkpointing`). */
export interface ParallelizeConfig {
  /** 0: DDP; 1: shard AdamW's state; 2: + gradients; 3: + parameters. Default 0. */
  zero?: 0 | ZeroStage;
  /** ZeRO-3: prefetch the next unit's all-gather. Default true. */
  zero3Prefetch?: boolean;
  /** DDP bucket size in bytes. Default 25 MiB. */
  bucketBytes?: number;
  /** dtype of gradient reductions (DDP all-reduce, ZeRO reduce-scatter). Default "float32". */
  reduceDtype?: "float32" | "bfloat16";
  /** Recompute block activations in backward. Default: leave the model's setting. */
  activationCheckpointing?: boolean | "full" | "selective";
  /** The optimizer's hyperparameters. */
  optimizer?: AdamWOptions;
  /** Tensor parallelism (mesh tp > 1): shard the layernorm/dropout regions along the sequence. Default false. */
  sequenceParallel?: boolean;
  /** Pipeline parallelism (mesh pp > 1): schedule, virtual stages, layers per stage. */
  pipeline?: PipelineOptions;
  /**
   * Offload AdamW's moments to disk (ZeRO-Infinity, optim/offload.ts): each rank streams its
   * state (its shard under ZeRO) from a scratch file in `dir`. Data parallelism and ZeRO only.
   * Default: in memory. `masterDtype` (bf16 / fp16 training): the fp32 master weights go to the
   * file too and the parameters stay resident in that dtype (one process, ZeRO 0 only).
   */
  offload?: { dir: string; chunkBytes?: number; masterDtype?: "bfloat16" | "float16" };
  /** A micro-batch's forward and loss for models other than the GPT language model (see schedule.ts). */
  forwardBatch?: BatchForward;
}

/** What a train step needs from the parallel form of the model. */
export interface Parallelized<M extends ParallelModel = ParallelModel> {
  /** The model (the same object, with hooks where a stage needed them). */
  model: M;
  /** AdamW, or the sharded AdamW under ZeRO. */
  optimizer: Optimizer;
  /** The accumulation hooks: `beforeMicroStep(isLast)` / `afterBackward(isLast)`. */
  gradSync: GradSync;
  /** The data-parallel group (loss averaging, checkpoint barriers, the loader's rank): dp x ep with expert parallelism. */
  dpGroup: ProcessGroup;
  /**
   * Runs `fn` with every parameter materialised on this rank (ZeRO-3 gathers them; otherwise it
   * just runs `fn`). `writeBack`: what `fn` wrote into the parameters becomes the new shards.
   * A collective: every rank calls it.
   */
  withFullParams<T>(fn: () => T | Promise<T>, opts?: { writeBack?: boolean }): Promise<T>;
  /** ZeRO-3's FSDP units (gather counters), else null. */
  fsdp: FullyShardedUnits | null;
  /** The stages that changed something, in order, e.g. ["activation checkpointing", "ZeRO-2 (dp=2)"]. */
  applied: string[];
  /** How a step's micro-batches run: plain accumulation or a pipeline schedule. */
  schedule: TrainSchedule;
  /** Each local parameter's relation to its logical tensor (tensor parallelism). */
  tensorParallel: TensorParallelPlan;
  /** This rank's experts (expert parallelism; an empty set at ep = 1). */
  expertParallel: ExpertParallelPlan;
  /** This rank's pipeline stage (one stage holding everything when pp = 1). */
  pipeline: PipelineStagePlan | null;
  /** The mesh the layout was applied over. */
  mesh: DeviceMesh;
}

/** What the stages build up. */
interface Context {
  readonly model: ParallelModel;
  readonly mesh: DeviceMesh;
  readonly config: ParallelizeConfig;
  optimizer: Optimizer | null;
  gradSync: GradSync[];
  fsdp: FullyShardedUnits | null;
  applied: string[];
  tp: TensorParallelPlan | null;
  pp: PipelineStagePlan | null;
  ep: ExpertParallelPlan | null;
}

type Stage = (ctx: Context) => void;

/** Stage 1: tensor (and sequence) parallelism over the tp axis. */
const tensorParallel: Stage = (ctx) => {
  const g = ctx.mesh.group("tp");
  const sp = ctx.config.sequenceParallel ?? false;
  if (!(ctx.model instanceof GPT)) {
    const bert = ctx.model instanceof BertForPreTraining || ctx.model instanceof BertForSequenceClassification ? ctx.model : null;
    for (const axis of bert ? (["pp", "ep"] as const) : (["tp", "pp", "ep"] as const)) {
      if (ctx.mesh.sizes[axis] > 1) throw new ValueError(`parallelize: ${axis}=${ctx.mesh.sizes[axis]} needs a GPT model; ${ctx.model.constructor.name} runs with data parallelism and ZeRO (parallel.dp, parallel.zero)${bert ? " and tensor parallelism (parallel.tp)" : ""}`);
    }
    if (sp) throw new ValueError(`parallelize: sequence parallelism needs tp > 1 and a GPT model, got ${ctx.model.constructor.name}`);
    if (bert) {
      ctx.tp = applyBertTensorParallel(bert, g);
      if (g.size > 1) ctx.applied.push(`tensor parallel (tp=${g.size})`);
      return;
    }
    ctx.tp = { group: g, sequenceParallel: false, specs: new Map(ctx.model.namedParameters().map(([n]) => [n, { kind: "replicated" }])), paddedVocab: 0 };
    return;
  }
  ctx.tp = applyTensorParallel(ctx.model, g, { sequenceParallel: sp });
  if (g.size > 1) ctx.applied.push(`tensor parallel (tp=${g.size}${sp ? ", sequence parallel" : ""})`);
};

/** Stage 1b: expert parallelism over the ep axis. */
const expertParallel: Stage = (ctx) => {
  const g = ctx.mesh.group("ep");
  if (!(ctx.model instanceof GPT)) {
    ctx.ep = { group: g, expertParams: new Set(), layers: 0 };
    return;
  }
  if (g.size > 1 && (ctx.mesh.sizes.tp > 1 || ctx.mesh.sizes.pp > 1)) {
    throw new ValueError(`parallelize: expert parallelism (ep=${g.size}) does not combine with tp or pp yet (mesh ${ctx.mesh.toString()})`);
  }
  if (g.size > 1 && (ctx.config.zero ?? 0) >= 2) {
    throw new ValueError(`parallelize: expert parallelism (ep=${g.size}) runs with DDP or ZeRO-1, got zero ${ctx.config.zero}: stages 2 and 3 would need the experts' 1/ep gradient scale inside the sharded reduction; use zero 0 or 1`);
  }
  ctx.ep = applyExpertParallel(ctx.model, g);
  if (g.size > 1) {
    if (ctx.ep.layers === 0) throw new ValueError(`parallelize: ep=${g.size} but the model has no MoE layer to shard (model.moe is null)`);
    ctx.applied.push(`expert parallel (ep=${g.size}, ${ctx.ep.layers} MoE layers)`);
  }
};

/** Stage 2: the pipeline split over the pp axis. */
const pipelineSplit: Stage = (ctx) => {
  const g = ctx.mesh.group("pp");
  if (g.size === 1 || !(ctx.model instanceof GPT)) return;
  if ((ctx.config.zero ?? 0) >= 2) {
    throw new ValueError(`parallelize: ZeRO-${ctx.config.zero} reduce-scatters gradients on every micro-batch, which a pipeline schedule cannot combine with (as in DeepSpeed); use zero 0 or 1 with pp=${g.size}`);
  }
  ctx.pp = splitPipelineStages(ctx.model, g, ctx.config.pipeline);
  const pl = ctx.pp;
  ctx.applied.push(`pipeline (pp=${g.size}, ${pl.schedule}${pl.virtualStages > 1 ? `, v=${pl.virtualStages}` : ""}, layers ${pl.chunks.map((c) => `${c.layers[0]}-${c.layers[c.layers.length - 1]}`).join(" ")})`);
};

/** Stage 3. */
const activationCheckpointing: Stage = (ctx) => {
  if (ctx.config.activationCheckpointing !== undefined) ctx.model.activationCheckpointing = ctx.config.activationCheckpointing;
  const ac = ctx.model.activationCheckpointing;
  if (ac) ctx.applied.push(ac === "selective" ? "activation checkpointing (selective)" : "activation checkpointing");
};

/** Stage 4: DDP or ZeRO over the dp axis; builds the optimizer either way. */
const dataParallel: Stage = (ctx) => {
  const { model, config } = ctx;
  const zero = config.zero ?? 0;
  const experts = ctx.ep?.expertParams ?? new Set<Tensor>();
  const offload = offloadOptions(ctx);
  if (experts.size > 0) {
    // Expert parallelism (zero 0 or 1, checked in its stage): the shared parameters reduce
    // over dp x ep, the experts over dp, then the experts' 1/ep scale (expert_parallel.ts).
    const dpEp = ctx.mesh.dataGroup(), dp = ctx.mesh.group("dp");
    const gpt = model as GPT;  // experts exist only in GPT's MoE blocks
    const all = trainable(model.parameters());
    const shared = all.filter((p) => !experts.has(p)), mine = all.filter((p) => experts.has(p));
    if (zero === 0) {
      const opts = { ...(config.bucketBytes !== undefined ? { bucketBytes: config.bucketBytes } : {}), reduceDtype: config.reduceDtype ?? "float32" };
      ctx.gradSync.push(new DataParallel(shared, dpEp, opts));
      if (dp.size > 1) ctx.gradSync.push(new DataParallel(mine, dp, opts));
      ctx.optimizer = new AdamW(all, config.optimizer);
    } else {
      const opts = { stage: 1 as const, reduceDtype: config.reduceDtype ?? "float32" };
      const sharedOpt = new ShardedAdamW(new FlatShards(shared, dpEp, gpt.h.map((b) => b.parameters().filter((p) => !experts.has(p)))), config.optimizer, opts);
      const expertOpt = new ShardedAdamW(new FlatShards(mine, dp, gpt.h.map((b) => b.parameters().filter((p) => experts.has(p)))), config.optimizer, opts);
      // Distinct experts on every ep rank: their squared norms add over ep (the shared part's group is every rank).
      const ep = ctx.mesh.group("ep");
      expertOpt.normScope = { reduce: (sq) => sumOverGroup(sq, ep) };
      ctx.gradSync.push(sharedOpt, expertOpt);
      ctx.optimizer = new ExpertShardedAdamW(all, sharedOpt, expertOpt);
    }
    ctx.gradSync.push(new ExpertGradScale(experts, ctx.mesh.sizes.ep));
    ctx.applied.push(`${zero === 0 ? "DDP" : "ZeRO-1"} (shared over dp x ep=${dpEp.size}, experts over dp=${dp.size})`);
    return;
  }
  const group = ctx.mesh.group("dp");
  const params = trainable(model.parameters());
  if (zero === 0) {
    // DDP first: it makes every rank start from rank 0's weights.
    if (group.size > 1) {
      ctx.gradSync.push(new DataParallel(params, group, { ...(config.bucketBytes !== undefined ? { bucketBytes: config.bucketBytes } : {}), reduceDtype: config.reduceDtype ?? "float32" }));
      ctx.applied.push(`DDP (dp=${group.size})`);
    }
    ctx.optimizer = offload ? new OffloadedAdamW(params, config.optimizer ?? {}, offload) : new AdamW(params, config.optimizer);
    if (offload) ctx.applied.push(offload.masterDtype ? `fp32 master weights and optimizer state offloaded to disk (${offload.masterDtype} parameters)` : "optimizer state offloaded to disk");
    return;
  }
  if (![1, 2, 3].includes(zero)) throw new ValueError(`parallelize: zero must be 0, 1, 2 or 3, got ${String(zero)}`);
  // FSDP-style units: one per transformer block, the embeddings and final norm in the root.
  const blocks = blocksOf(model);
  const shards = new FlatShards(params, group, blocks.map((b) => trainable(b.parameters())));
  if (zero === 3) {
    if (params.length !== model.parameters().length) throw new ValueError("parallelize: ZeRO-3 shards every parameter; with frozen parameters (LoRA) use parallel.zero 0, 1 or 2");
    ctx.fsdp = new FullyShardedUnits(model, blocks, shards, { prefetch: config.zero3Prefetch ?? true });
  }
  const opt = new ShardedAdamW(shards, config.optimizer, {
    stage: zero, reduceDtype: config.reduceDtype ?? "float32", ...(ctx.fsdp ? { paramShard: ctx.fsdp.paramShard } : {}), ...(offload ? { offload } : {}),
  });
  ctx.optimizer = opt;
  // The optimizer's reduce-scatters first: FSDP's cleanup expects every unit reduced.
  ctx.gradSync.push(opt, ...(ctx.fsdp ? [ctx.fsdp] : []));
  ctx.applied.push(`ZeRO-${zero} (dp=${group.size}${offload ? ", optimizer state offloaded to disk" : ""})`);
};

/**
 * The offload file of this rank (`<dir>/adamw-moments-rank00000.bin`), or undefined without
 * offload. Refused with model parallelism: its optimizers (tp/pp logical checkpoints, ep's
 * split AdamW) keep their state in memory.
 */
function offloadOptions(ctx: Context): OffloadedAdamWOptions | undefined {
  const o = ctx.config.offload;
  if (!o) return undefined;
  const split = (["tp", "pp", "ep"] as const).filter((a) => ctx.mesh.sizes[a] > 1);
  if (split.length) throw new ValueError(`parallelize: parallel.offload "disk" works with data parallelism and ZeRO only, not with ${split.map((a) => `${a}=${ctx.mesh.sizes[a]}`).join(", ")}`);
  // Offloaded masters leave 16-bit parameters and gradients: DDP's bucketed all-reduce and
  // ZeRO's flat shards are written for float32 ones, so those layouts are refused, not guessed at.
  if (o.masterDtype && ((ctx.config.zero ?? 0) !== 0 || ctx.mesh.world.size > 1)) {
    throw new ValueError(`parallelize: offloading the fp32 master weights (parallel.offload "disk" with ${o.masterDtype} training) works with one process and parallel.zero 0 only, ` +
      `got zero=${ctx.config.zero ?? 0} on ${ctx.mesh.world.size} process(es); train in fp32 to offload the moments alone under DDP or ZeRO`);
  }
  const rank = String(ctx.mesh.world.rank).padStart(5, "0");
  return {
    path: join(o.dir, `adamw-moments-rank${rank}.bin`), ...(o.chunkBytes !== undefined ? { chunkBytes: o.chunkBytes } : {}),
    ...(o.masterDtype ? { masterDtype: o.masterDtype } : {}),
  };
}

/** The stages, in the order they apply. */
const STAGES: ReadonlyArray<readonly [string, Stage]> = [
  ["tensor parallel", tensorParallel],
  ["expert parallel", expertParallel],
  ["pipeline split", pipelineSplit],
  ["activation checkpointing", activationCheckpointing],
  ["data parallel", dataParallel],
];

/**
 * Applies the parallel layout of `mesh` and `config` to `model` (see the file comment for the
 * stages). A collective over the mesh: every rank calls it at the same point.
 * @example
 * const mesh = new DeviceMesh({ dp: 2 });
 * const { model, optimizer, gradSync } = parallelize(gpt, mesh, { zero: 2, optimizer: { lr: 6e-4 } });
 * gradSync.beforeMicroStep(true); model.forward(x, y).loss!.backward(); await gradSync.afterBackward(true);
 * optimizer.step({ gradScale: (await optimizer.gradNorm(1)).clipCoef }); optimizer.zeroGrad();
 */
export function parallelize<M extends ParallelModel>(model: M, mesh: DeviceMesh, config: ParallelizeConfig = {}): Parallelized<M> {
  const ctx: Context = { model, mesh, config, optimizer: null, gradSync: [], fsdp: null, applied: [], tp: null, pp: null, ep: null };
  for (const [, stage] of STAGES) stage(ctx);
  const fsdp = ctx.fsdp;
  const optimizer = ctx.optimizer ?? new AdamW(trainable(model.parameters()), config.optimizer);
  const gradSync = composeGradSync(ctx.gradSync);
  const tp = ctx.tp!;
  let schedule: TrainSchedule;
  if (ctx.pp) {
    if (config.forwardBatch) throw new ValueError("parallelize: a pipeline runs the GPT language model's own forward; a task forward (forwardBatch) needs pp=1");
    const pipe = new PipelineSchedule(model as GPT, mesh.group("pp"), gradSync, ctx.pp, tp.sequenceParallel ? tp.group.size : 1);
    schedule = pipe;
    setNormScope(optimizer, normScope(model, mesh, tp, (p) => pipe.countsForNorm(p), ctx.ep!.expertParams));
  } else {
    schedule = new PlainSchedule(model instanceof GPT ? model : null, gradSync, config.forwardBatch);
    setNormScope(optimizer, normScope(model, mesh, tp, () => true, ctx.ep!.expertParams));
  }
  return {
    model,
    optimizer,
    gradSync,
    dpGroup: mesh.dataGroup(),
    // Offloaded masters: whole-model reads and writes see (and set) the fp32 masters.
    withFullParams: async (fn, opts) => (fsdp ? await fsdp.withFullParams(fn, opts) : optimizer instanceof OffloadedAdamW ? await optimizer.withMasterParams(fn, opts) : await fn()),
    fsdp,
    applied: ctx.applied,
    schedule,
    tensorParallel: tp,
    pipeline: ctx.pp,
    expertParallel: ctx.ep!,
    mesh,
  };
}

/**
 * The gradient norm over model-parallel ranks: a tp-sharded parameter counts on every tp rank,
 * a replicated one on tp rank 0 only (the copies hold the same gradient), the pipeline says
 * which of its parameters count (not the last stage's tied-embedding copy), and the ranks'
 * sums are added over tp and then pp. Expert parallelism: each rank's experts are distinct, so
 * they count on every ep rank, and a shared parameter (the same gradient on every ep rank after
 * the reduction) on ep rank 0; summed over ep. Null when no model-parallel axis is split.
 */
function normScope(model: ParallelModel, mesh: DeviceMesh, tp: TensorParallelPlan, stageCounts: (p: Tensor) => boolean, experts: ReadonlySet<Tensor>): GradNormScope | null {
  const tpG = mesh.group("tp"), ppG = mesh.group("pp"), epG = mesh.group("ep");
  if (tpG.size === 1 && ppG.size === 1 && epG.size === 1) return null;
  const counted = model.namedParameters().map(([name, p]) => {
    const spec = tp.specs.get(name) ?? { kind: "replicated" };
    return (spec.kind !== "replicated" || tpG.rank === 0) && stageCounts(p) && (experts.has(p) || epG.rank === 0);
  });
  return { counted: (i) => counted[i] ?? true, reduce: (sq) => sumOverGroup(sumOverGroup(sumOverGroup(sq, tpG), ppG), epG) };
}

function setNormScope(opt: Optimizer, scope: GradNormScope | null): void {
  if (opt instanceof ExpertShardedAdamW) return;  // its parts got their scopes when it was built
  if (opt instanceof AdamW || opt instanceof ShardedAdamW || opt instanceof OffloadedAdamW) opt.normScope = scope;
  else if (scope) throw new ValueError("parallelize: the optimizer cannot take a model-parallel gradient norm scope");
}

/**
 * parallelize(): turns a single-device GPT into its parallel form, applied from outside the
 * model (torchtitan's models/llama/parallelize.py), and returns what a train step needs.
 *
 * The stages, in order (each a function of the same context, so later issues add theirs to
 * the list without touching the others):
 *   1. tensor parallel            slot: the identity until TP lands (needs mesh tp = 1 today).
 *                                 It goes first because it changes which parameters exist on
 *                                 this rank; everything after shards what TP left.
 *   2. activation checkpointing   recompute each block's activations in backward. Before any
 *                                 sharding: FSDP's hooks see the replayed forward and keep the
 *                                 block gathered for the backward that follows it.
 *   3. data parallel              over the mesh's dp axis, one of
 *                                   zero 0: DDP (bucketed async all-reduce) around AdamW;
 *                                   zero 1/2: ShardedAdamW (optimizer state, + gradients);
 *                                   zero 3: FSDP units per block (parameters) + ShardedAdamW.
 *                                 Last, because it shards whatever the model ended up with.
 * (Pipeline and expert parallelism will be stages of the same list.)
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
import type { GPT } from "../models/index.js";
import { AdamW, type AdamWOptions, type Optimizer } from "../optim/index.js";
import type { ProcessGroup } from "./collectives.js";
import { DataParallel } from "./data_parallel.js";
import { FlatShards } from "./flat_shards.js";
import { FullyShardedUnits } from "./fsdp.js";
import { composeGradSync, type GradSync } from "./grad_sync.js";
import type { DeviceMesh } from "./mesh.js";
import { ShardedAdamW, type ZeroStage } from "./sharded_optimizer.js";

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
}

/** What a train step needs from the parallel form of the model. */
export interface Parallelized {
  /** The model (the same object, with hooks where a stage needed them). */
  model: GPT;
  /** AdamW, or the sharded AdamW under ZeRO. */
  optimizer: Optimizer;
  /** The accumulation hooks: `beforeMicroStep(isLast)` / `afterBackward(isLast)`. */
  gradSync: GradSync;
  /** The data-parallel group (loss averaging, checkpoint barriers, the loader's rank). */
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
}

/** What the stages build up. */
interface Context {
  readonly model: GPT;
  readonly mesh: DeviceMesh;
  readonly config: ParallelizeConfig;
  optimizer: Optimizer | null;
  gradSync: GradSync[];
  fsdp: FullyShardedUnits | null;
  applied: string[];
}

type Stage = (ctx: Context) => void;

/** Stage 1, a slot for now: tensor parallelism is the next issue. */
const tensorParallel: Stage = (ctx) => {
  if (ctx.mesh.sizes.tp > 1) throw new ValueError(`parallelize: tensor parallelism (tp=${ctx.mesh.sizes.tp}) is not implemented yet; use tp=1`);
};

/** Stage 2. */
const activationCheckpointing: Stage = (ctx) => {
  if (ctx.config.activationCheckpointing !== undefined) ctx.model.activationCheckpointing = ctx.config.activationCheckpointing;
  const ac = ctx.model.activationCheckpointing;
  if (ac) ctx.applied.push(ac === "selective" ? "activation checkpointing (selective)" : "activation checkpointing");
};

/** Stage 3: DDP or ZeRO over the dp axis; builds the optimizer either way. */
const dataParallel: Stage = (ctx) => {
  const { model, config } = ctx;
  const group = ctx.mesh.group("dp");
  const zero = config.zero ?? 0;
  const params = model.parameters();
  if (zero === 0) {
    // DDP first: it makes every rank start from rank 0's weights.
    if (group.size > 1) {
      ctx.gradSync.push(new DataParallel(params, group, { ...(config.bucketBytes !== undefined ? { bucketBytes: config.bucketBytes } : {}), reduceDtype: config.reduceDtype ?? "float32" }));
      ctx.applied.push(`DDP (dp=${group.size})`);
    }
    ctx.optimizer = new AdamW(params, config.optimizer);
    return;
  }
  if (![1, 2, 3].includes(zero)) throw new ValueError(`parallelize: zero must be 0, 1, 2 or 3, got ${String(zero)}`);
  // FSDP-style units: one per transformer block, the embeddings and final norm in the root.
  const shards = new FlatShards(params, group, model.h.map((b) => b.parameters()));
  if (zero === 3) {
    ctx.fsdp = new FullyShardedUnits(model, model.h, shards, { prefetch: config.zero3Prefetch ?? true });
  }
  const opt = new ShardedAdamW(shards, config.optimizer, { stage: zero, reduceDtype: config.reduceDtype ?? "float32", ...(ctx.fsdp ? { paramShard: ctx.fsdp.paramShard } : {}) });
  ctx.optimizer = opt;
  // The optimizer's reduce-scatters first: FSDP's cleanup expects every unit reduced.
  ctx.gradSync.push(opt, ...(ctx.fsdp ? [ctx.fsdp] : []));
  ctx.applied.push(`ZeRO-${zero} (dp=${group.size})`);
};

/** The stages, in the order they apply. */
const STAGES: ReadonlyArray<readonly [string, Stage]> = [
  ["tensor parallel", tensorParallel],
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
export function parallelize(model: GPT, mesh: DeviceMesh, config: ParallelizeConfig = {}): Parallelized {
  const ctx: Context = { model, mesh, config, optimizer: null, gradSync: [], fsdp: null, applied: [] };
  for (const [, stage] of STAGES) stage(ctx);
  const fsdp = ctx.fsdp;
  return {
    model,
    optimizer: ctx.optimizer ?? new AdamW(model.parameters(), config.optimizer),
    gradSync: composeGradSync(ctx.gradSync),
    dpGroup: mesh.group("dp"),
    withFullParams: async (fn, opts) => (fsdp ? await fsdp.withFullParams(fn, opts) : await fn()),
    fsdp,
    applied: ctx.applied,
  };
}

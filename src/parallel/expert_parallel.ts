/**
 * Expert parallelism (GShard, DeepSpeed-MoE, Megatron): each MoE layer's E experts are split
 * over the mesh's ep axis, E / ep consecutive experts per rank, and replicated over dp. Tokens
 * go to the ranks holding their experts and come back by all-to-all, in forward and (as the
 * reverse all-to-all) in backward: `allToAllRegion`, the conjugate-pair op the layer's
 * `MoE.shardExperts` hook calls. Capacity stays per source rank (DeepSpeed): each rank sends
 * each expert at most ceil(cf * N_local * k / E) tokens.
 *
 * The exchange is asynchronous (`allToAllRegionStart`: `allToAllAsync` on the ep group's
 * communication thread, then `fence`): the layer starts it, does work that does not need the
 * tokens (stacking its experts' weights, the router losses: nn/moe.ts names the overlap point),
 * and only then waits. A forward is synchronous code, so the wait is a fence rather than an
 * await. The backward's reverse all-to-all has nothing to overlap with inside its node and
 * runs issue-then-fence too.
 *
 * Gradients (the data-parallel stage does the reducing; this file says which group):
 *   - shared parameters (attention, embeddings, routers): every rank of dp x ep holds them and
 *     read its own data, so they are averaged over `mesh.dataGroup()`;
 *   - expert parameters: only the dp ranks at the same ep coordinate hold them; their `.grad`
 *     already sums the contributions of the ep ranks' tokens (the all-to-all brought them), so
 *     the average over the global batch is the sum over dp divided by dp x ep: an average over
 *     `group("dp")`, then `ExpertGradScale`'s 1 / ep.
 *
 * Names stay logical: a rank's expert modules keep their global index (`h.1.mlp.experts.3`),
 * so checkpoints gather them by name (logical_state.ts) and loading picks this rank's own.
 *
 * ZeRO-1 (`ExpertShardedAdamW`): two sharded optimizers, the shared parameters' state sharded
 * over dp x ep and the experts' over dp, seen by the trainer as one Optimizer. Stage 1 files
 * the averaged gradient shards back into `.grad`, so the 1 / ep scale still applies there.
 *
 * At ep = 1 nothing changes: the layer keeps every expert and exchanges nothing.
 */
import { noGrad, recordNode } from "../autograd/index.js";
import { Tensor } from "../tensor/index.js";
import type { GPT } from "../models/index.js";
import { MoE } from "../nn/index.js";
import { clipCoefficient, type GradNormResult, type Optimizer, type OptimizerStateDict, type StepOptions } from "../optim/index.js";
import { allToAllAsync, fence, type ProcessGroup } from "./collectives.js";
import type { GradSync } from "./grad_sync.js";
import type { ShardedAdamW } from "./sharded_optimizer.js";

/**
 * Issues x's all-to-all over g, outside autograd (block j of dim 0 to rank j, block i from
 * rank i); `finish()` waits for it (a fence on g) and returns the received blocks.
 */
function _allToAllStart(x: Tensor, g: ProcessGroup): () => Tensor {
  const { src, out } = noGrad(() => ({ src: x.contiguous(), out: Tensor.empty([...x.shape], x.dtype) }));
  const work = allToAllAsync(src, out, g);
  return () => {
    if (!work.completed) fence(g);
    if (src !== x) src.dispose();
    return out;
  };
}

/**
 * All-to-all forward, the reverse all-to-all backward, started now and completed by the
 * returned `wait()` (see the file comment): dim 0 of x (size g.size) indexes the destination
 * rank going in and the source rank coming out. It is its own conjugate: the gradient of the
 * block that came from rank i goes back to rank i. Every rank of g must start its exchanges in
 * the same order; x must not be written before `wait()`.
 * @example
 * const pending = allToAllRegionStart(slotsByDestination, mesh.group("ep"));   // (n, E/n, S, C)
 * const w = stackWeights();                  // overlaps with the transfer
 * const mine = pending.wait();               // (n, E/n, S, C), by source rank
 */
export function allToAllRegionStart(x: Tensor, g: ProcessGroup): { wait(): Tensor } {
  if (g.size === 1) return { wait: () => recordNode("identity", x.alias(), [x], (gy) => [(gy as Tensor).alias()]) };
  const finish = _allToAllStart(x, g);
  return { wait: () => recordNode("ep_all_to_all", finish(), [x], (gy) => [_allToAllStart(gy as Tensor, g)()]) };
}

/**
 * The blocking form of `allToAllRegionStart`: start and wait at once.
 * @example
 * const mine = allToAllRegion(slotsByDestination, mesh.group("ep"));   // (n, E/n, S, C)
 */
export function allToAllRegion(x: Tensor, g: ProcessGroup): Tensor {
  return allToAllRegionStart(x, g).wait();
}

/** What expert parallelism did to the model. */
export interface ExpertParallelPlan {
  /** The ep group. */
  group: ProcessGroup;
  /** This rank's expert parameters (reduced over dp only, counted on every ep rank in the norm). */
  expertParams: Set<Tensor>;
  /** MoE layers sharded. */
  layers: number;
}

/** Whether a parameter name is an expert's (`h.{i}.mlp.experts.{j}.…`). */
export function isExpertParam(name: string): boolean {
  return /(^|\.)mlp\.experts\.\d+\./.test(name);
}

/**
 * Keeps this rank's experts in every MoE layer of `model` and routes their tokens over `group`.
 * @example
 * const plan = applyExpertParallel(gpt, mesh.group("ep"));
 */
export function applyExpertParallel(model: GPT, group: ProcessGroup): ExpertParallelPlan {
  let layers = 0;
  if (group.size > 1) {
    for (const b of model.h) {
      if (!(b.mlp instanceof MoE)) continue;
      b.mlp.shardExperts({ size: group.size, rank: group.rank, exchange: (x) => allToAllRegionStart(x, group) });
      layers++;
    }
  }
  const expertParams = new Set(group.size > 1 ? model.namedParameters().filter(([n]) => isExpertParam(n)).map(([, p]) => p) : []);
  return { group, expertParams, layers };
}

/**
 * Multiplies the expert gradients by 1 / ep after the last micro-step's reduction (see the file
 * comment): runs after the data-parallel GradSyncs.
 */
export class ExpertGradScale implements GradSync {
  constructor(private readonly params: ReadonlySet<Tensor>, private readonly ep: number) {}
  beforeMicroStep(): void {}
  async afterBackward(isLast: boolean): Promise<void> {
    if (!isLast || this.ep === 1) return;
    noGrad(() => {
      for (const p of this.params) p.grad?.mul_(1 / this.ep);
    });
  }
}

/**
 * ZeRO-1 under expert parallelism: `shared` (state sharded over dp x ep) and `experts` (over
 * dp) as one Optimizer, parameters in the model's order. The norm is the two parts' norms
 * combined (the experts' part already summed over ep by its scope); checkpoints read each
 * part's shards (`parts`) and join them into logical moments.
 * @example
 * const opt = new ExpertShardedAdamW(model.parameters(), sharedOpt, expertOpt);
 */
export class ExpertShardedAdamW implements Optimizer {
  readonly params: readonly Tensor[];
  constructor(params: readonly Tensor[], readonly shared: ShardedAdamW, readonly experts: ShardedAdamW) {
    this.params = params;
  }
  /** The two sharded optimizers, each with its own group and parameters. */
  get parts(): readonly ShardedAdamW[] {
    return [this.shared, this.experts];
  }
  get lr(): number {
    return this.shared.lr;
  }
  set lr(v: number) {
    this.shared.lr = v;
    this.experts.lr = v;
  }
  get stepCount(): number {
    return this.shared.stepCount;
  }
  step(opts: StepOptions = {}): void {
    this.shared.step(opts);
    this.experts.step(opts);
  }
  zeroGrad(): void {
    this.shared.zeroGrad();
    this.experts.zeroGrad();
  }
  gradNorm(maxNorm = Infinity): GradNormResult {
    const a = this.shared.gradNorm().norm, b = this.experts.gradNorm().norm;
    const norm = Math.sqrt(a * a + b * b);
    return { norm, clipCoef: clipCoefficient(norm, maxNorm) };
  }
  /** The scalars only: the moments live in the parts' shards (the logical checkpoint gathers them per part). */
  stateDict(): OptimizerStateDict {
    return { state: this.shared.state() };
  }
  /** Scalars, and logical moments (one per parameter, in `params` order) cut into each part's shards. */
  loadStateDict(sd: OptimizerStateDict): void {
    const index = new Map(this.params.map((p, i) => [p, i]));
    for (const part of this.parts) {
      const moments = sd.moments
        ? Object.fromEntries(Object.entries(sd.moments).map(([k, ts]) => [k, part.params.map((p) => ts[index.get(p)!]!)]))
        : undefined;
      part.loadStateDict({ state: sd.state, ...(moments ? { moments } : {}) });
    }
  }
}

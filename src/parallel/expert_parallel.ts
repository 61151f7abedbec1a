/**
 * Expert parallelism (GShard, DeepSpeed-MoE, Megatron): each MoE layer's E experts are split
 * over the mesh's ep axis, E / ep consecutive experts per rank, and replicated over dp. Tokens
 * go to the ranks holding their experts and come back by all-to-all, in forward and (as the
 * reverse all-to-all) in backward: `allToAllRegion`, the conjugate-pair op the layer's
 * `MoE.shardExperts` hook calls. Capacity stays per source rank (DeepSpeed): each rank sends
 * each expert at most ceil(cf * N_local * k / E) tokens.
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
 * At ep = 1 nothing changes: the layer keeps every expert and exchanges nothing.
 */
import { noGrad, recordNode } from "../autograd/index.js";
import { Tensor } from "../tensor/index.js";
import type { GPT } from "../models/index.js";
import { MoE } from "../nn/index.js";
import { allToAll, type ProcessGroup } from "./collectives.js";
import type { GradSync } from "./grad_sync.js";

/** x's all-to-all over g, outside autograd: block j (dim 0) to rank j, block i from rank i. */
function allToAllRaw(x: Tensor, g: ProcessGroup): Tensor {
  return noGrad(() => {
    const src = x.contiguous();
    const out = Tensor.empty([...x.shape], x.dtype);
    allToAll(src, out, g);
    src.dispose();
    return out;
  });
}

/**
 * All-to-all forward, the reverse all-to-all backward: dim 0 of x (size g.size) indexes the
 * destination rank going in and the source rank coming out. It is its own conjugate: the
 * gradient of the block that came from rank i goes back to rank i.
 * @example
 * const mine = allToAllRegion(slotsByDestination, mesh.group("ep"));   // (n, E/n, S, C)
 */
export function allToAllRegion(x: Tensor, g: ProcessGroup): Tensor {
  if (g.size === 1) return recordNode("identity", x.alias(), [x], (gy) => [(gy as Tensor).alias()]);
  return recordNode("ep_all_to_all", allToAllRaw(x, g), [x], (gy) => [allToAllRaw(gy as Tensor, g)]);
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
      b.mlp.shardExperts({ size: group.size, rank: group.rank, exchange: (x) => allToAllRegion(x, group) });
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

/**
 * Mixture-of-experts metrics for a train step: the router's losses (reported apart from the
 * language-model loss they are added to) and, per MoE layer, the share of routing choices each
 * expert got and the share dropped for lack of capacity, averaged over the step's
 * micro-batches. This rank's micro-batches only (rank 0 writes metrics.jsonl); under pipeline
 * parallelism, the stage that computes the loss sees the losses.
 */
import type { Tensor } from "../tensor/index.js";
import { MoE } from "../nn/index.js";
import type { Module } from "../nn/index.js";

/** The MoE fields of one metrics.jsonl line. */
export interface MoEStepMetrics {
  /** Cross-entropy alone (the logged `loss` adds aux_loss_coef x aux_loss + z_loss_coef x z_loss). */
  lm_loss: number;
  /** Load-balancing loss summed over MoE layers (1 per layer when perfectly balanced). */
  aux_loss: number;
  /** Router z-loss summed over MoE layers. */
  z_loss: number;
  /** Per MoE layer: expert token fractions (sum to 1) and the dropped fraction. */
  moe: Array<{ layer: string; expert_fraction: number[]; dropped_fraction: number }>;
}

export class MoEMetrics {
  private readonly layers: Array<[string, MoE]>;
  private sums = { lm: 0, aux: 0, z: 0, n: 0 };
  private fractions: number[][] = [];
  private dropped: number[] = [];
  private statsSeen = 0;

  constructor(model: Module) {
    this.layers = model.namedModules().filter((e): e is [string, MoE] => e[1] instanceof MoE);
    this.reset();
  }

  /** Whether the model has MoE layers (else the trainer logs nothing extra). */
  get active(): boolean {
    return this.layers.length > 0;
  }

  reset(): void {
    this.sums = { lm: 0, aux: 0, z: 0, n: 0 };
    this.fractions = this.layers.map(([, m]) => new Array<number>(m.numExperts).fill(0));
    this.dropped = this.layers.map(() => 0);
    this.statsSeen = 0;
  }

  /** After a micro-batch's forward: its losses (when this rank computed them) and every layer's routing statistics. */
  observe(out: { lmLoss?: Tensor; auxLoss?: Tensor; zLoss?: Tensor }): void {
    if (out.auxLoss && out.zLoss && out.lmLoss) {
      this.sums.lm += out.lmLoss.item();
      this.sums.aux += out.auxLoss.item();
      this.sums.z += out.zLoss.item();
      this.sums.n++;
    }
    let seen = false;
    this.layers.forEach(([, m], k) => {
      const st = m.lastStats;
      if (!st) return;
      seen = true;
      st.expertFraction.forEach((f, e) => { this.fractions[k]![e]! += f; });
      this.dropped[k]! += st.droppedFraction;
    });
    if (seen) this.statsSeen++;
  }

  /** The step's averages (losses only where this rank computed them). */
  summary(): Partial<MoEStepMetrics> {
    if (!this.active) return {};
    const n = Math.max(1, this.statsSeen);
    const moe = this.layers.map(([name], k) => ({
      layer: name, expert_fraction: this.fractions[k]!.map((f) => f / n), dropped_fraction: this.dropped[k]! / n,
    }));
    if (this.sums.n === 0) return { moe };
    const s = this.sums;
    return { lm_loss: s.lm / s.n, aux_loss: s.aux / s.n, z_loss: s.z / s.n, moe };
  }
}

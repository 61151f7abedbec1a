/**
 * AdamW with decoupled weight decay (Loshchilov & Hutter), one fused native kernel per
 * parameter: m, v, and the parameter update in a single pass over memory, with the gradient
 * scale (clipping) folded in so clipping costs no extra pass.
 *
 * Weight decay applies only to tensors with >= 2 dims (matrices and embeddings), never to
 * biases and LayerNorm gains: nanoGPT's and Megatron's parameter groups.
 */
import { ValueError } from "../core/errors.js";
import { _native as native, zeros, withCategory, keep, type Tensor, reduceSumSq } from "./_deps.js";

export interface AdamWOptions {
  /** Learning rate. Default 1e-3. */
  lr?: number;
  /** (beta1, beta2). Default [0.9, 0.999] (PyTorch's). */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay for >= 2-D tensors. Default 0.01 (PyTorch's). */
  weightDecay?: number;
}

/** Serializable optimizer state (moments are saved separately, as tensors). */
export interface AdamWState {
  step: number;
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/**
 * @example
 * const opt = new AdamW(model.parameters(), { lr: 6e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
 * loss.backward(); opt.step(); opt.zeroGrad();
 */
export class AdamW {
  readonly params: Tensor[];
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  /** Completed steps (bias correction uses step + 1 during a step). */
  stepCount = 0;
  readonly m: Tensor[] = [];
  readonly v: Tensor[] = [];

  constructor(params: Tensor[], opts: AdamWOptions = {}) {
    this.params = params;
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    const [b1, b2] = this.betas;
    if (!(this.lr >= 0)) throw new ValueError(`AdamW: lr must be >= 0, got ${this.lr}`);
    if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) throw new ValueError(`AdamW: betas must be in [0, 1), got [${b1}, ${b2}]`);
    if (!(this.eps >= 0)) throw new ValueError(`AdamW: eps must be >= 0, got ${this.eps}`);
    if (!(this.weightDecay >= 0)) throw new ValueError(`AdamW: weightDecay must be >= 0, got ${this.weightDecay}`);
    for (const p of params) {
      if (p.dtype !== "float32" || !p.isContiguous) throw new ValueError(`AdamW: parameter ${p.name ?? ""} must be a contiguous float32 tensor`);
    }
    withCategory("optimizer", () => {
      for (const p of params) {
        this.m.push(keep(zeros(p.shape)));
        this.v.push(keep(zeros(p.shape)));
      }
    });
  }

  /**
   * One update of every parameter that has a gradient. `gradScale` multiplies gradients first
   * (e.g. the clipping coefficient); `lr` overrides the learning rate for this step.
   */
  step(opts: { lr?: number; gradScale?: number } = {}): void {
    if (opts.lr !== undefined) this.lr = opts.lr;
    const gs = opts.gradScale ?? 1;
    this.stepCount++;
    const [b1, b2] = this.betas;
    const bc1 = 1 - b1 ** this.stepCount;
    const bc2 = 1 - b2 ** this.stepCount;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      const wd = p.ndim >= 2 ? this.weightDecay : 0;
      native.adamw(p.ptr, p.grad.ptr, this.m[i]!.ptr, this.v[i]!.ptr, p.numel, this.lr, b1, b2, this.eps, wd, bc1, bc2, gs);
    });
  }

  /** Disposes every parameter's gradient. */
  zeroGrad(): void {
    clearGrads(this.params);
  }

  state(): AdamWState {
    return adamwState(this);
  }

  loadState(s: AdamWState, moments?: { m: Tensor[]; v: Tensor[] }): void {
    this.stepCount = s.step;
    this.lr = s.lr;
    if (moments) {
      if (moments.m.length !== this.m.length || moments.v.length !== this.v.length) {
        throw new ValueError(`AdamW.loadState: expected ${this.m.length} moment tensors, got ${moments.m.length}/${moments.v.length}`);
      }
      moments.m.forEach((t, i) => this.m[i]!.copy_(t));
      moments.v.forEach((t, i) => this.v[i]!.copy_(t));
    }
  }
}

/** Disposes and clears every parameter's gradient (shared by AdamW and ZeRO's sharded AdamW). */
export function clearGrads(params: readonly Tensor[]): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}

/** The serializable scalars of an AdamW-like optimizer. */
export function adamwState(o: { stepCount: number; lr: number; betas: readonly [number, number]; eps: number; weightDecay: number }): AdamWState {
  return { step: o.stepCount, lr: o.lr, betas: [o.betas[0], o.betas[1]], eps: o.eps, weightDecay: o.weightDecay };
}

/**
 * Global L2 norm of all gradients (float64 accumulation across tensors), and the clipping
 * coefficient min(1, maxNorm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_ computes it.
 */
export function gradNorm(params: Tensor[], maxNorm = Infinity): { norm: number; clipCoef: number } {
  let sq = 0;
  for (const p of params) if (p.grad) sq += reduceSumSq(p.grad);
  const norm = Math.sqrt(sq);
  return { norm, clipCoef: clipCoefficient(norm, maxNorm) };
}

/** min(1, maxNorm / (norm + 1e-6)), or 1 without clipping (torch.nn.utils.clip_grad_norm_). */
export function clipCoefficient(norm: number, maxNorm: number): number {
  return Number.isFinite(maxNorm) && maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
}

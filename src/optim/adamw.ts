/**
 * AdamW with decoupled weight decay (Loshchilov & Hutter), one fused native kernel per
 * parameter: m, v, and the parameter update in a single pass over memory, with the gradient
 * scale (clipping) folded in so clipping costs no extra pass.
 *
 * Weight decay applies only to tensors with >= 2 dims (matrices and embeddings), never to
 * biases and LayerNorm gains: nanoGPT's and Megatron's parameter groups.
 *
 * The math lives in `adamwUpdate()`, which updates any (param, grad, m, v) quadruple of equal
 * length: whole parameters here, flat ranges of this rank's shards in parallel/'s ShardedAdamW.
 * One kernel call, so a sharded run computes exactly the bits a single process computes.
 */
import { ValueError } from "../core/errors.js";
import { backend, zeros, withCategory, keep, type Tensor, reduceSumSq } from "./_deps.js";
import type { AdamWState, GradNormResult, Optimizer, OptimizerStateDict, StepOptions } from "./optimizer.js";

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

/** The hyperparameters of one AdamW update, bias corrections included (see `adamwStepHyper`). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Weight decay for this tensor (0 for biases and gains). */
  weightDecay: number;
  /** 1 - beta1^step and 1 - beta2^step. */
  biasCorrection1: number;
  biasCorrection2: number;
  /** Gradient multiplier (clipping). */
  gradScale: number;
}

/** AdamW's hyperparameters with their defaults applied and checked. */
export function resolveAdamWOptions(opts: AdamWOptions = {}): Required<AdamWOptions> {
  const r = { lr: opts.lr ?? 1e-3, betas: opts.betas ?? [0.9, 0.999] as [number, number], eps: opts.eps ?? 1e-8, weightDecay: opts.weightDecay ?? 0.01 };
  const [b1, b2] = r.betas;
  if (!(r.lr >= 0)) throw new ValueError(`AdamW: lr must be >= 0, got ${r.lr}`);
  if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) throw new ValueError(`AdamW: betas must be in [0, 1), got [${b1}, ${b2}]`);
  if (!(r.eps >= 0)) throw new ValueError(`AdamW: eps must be >= 0, got ${r.eps}`);
  if (!(r.weightDecay >= 0)) throw new ValueError(`AdamW: weightDecay must be >= 0, got ${r.weightDecay}`);
  return r;
}

/**
 * The hyperparameters of step number `step` (1-based) for a tensor of `ndim` dims.
 * @example
 * const h = adamwStepHyper(opt, opt.stepCount, p.ndim, clipCoef);
 */
export function adamwStepHyper(
  o: { lr: number; betas: readonly [number, number]; eps: number; weightDecay: number }, step: number, ndim: number, gradScale = 1,
): AdamWHyper {
  const [b1, b2] = o.betas;
  return {
    lr: o.lr, beta1: b1, beta2: b2, eps: o.eps, weightDecay: ndim >= 2 ? o.weightDecay : 0,
    biasCorrection1: 1 - b1 ** step, biasCorrection2: 1 - b2 ** step, gradScale,
  };
}

/**
 * One AdamW update in place: m and v from g (times gradScale), then the decayed parameter.
 * p, g, m and v are contiguous float32 tensors (or views) with the same number of elements.
 * @example
 * adamwUpdate(p, p.grad!, m, v, adamwStepHyper(opt, 1, p.ndim));
 */
export function adamwUpdate(p: Tensor, g: Tensor, m: Tensor, v: Tensor, h: AdamWHyper): void {
  const n = p.numel;
  for (const [name, t] of [["grad", g], ["m", m], ["v", v]] as const) {
    if (t.numel !== n) throw new ValueError(`adamwUpdate: ${name} has ${t.numel} elements, the parameter ${n}`);
  }
  for (const [name, t] of [["parameter", p], ["grad", g], ["m", m], ["v", v]] as const) {
    if (!t.isContiguous) throw new ValueError(`adamwUpdate: ${name} must be contiguous (got strides ${JSON.stringify(t.strides)})`);
    const ok = name === "m" || name === "v" ? t.dtype === "float32" : t.dtype === "float32" || t.dtype === "bfloat16" || t.dtype === "float16";
    if (!ok) throw new ValueError(`adamwUpdate: ${name} is ${t.dtype}; moments must be float32, parameter and grad a floating dtype`);
  }
  // One fused kernel: the parameter in its dtype (float32 master weights in mixed precision),
  // the gradient in its own (a bfloat16 gradient is read and widened in the kernel), moments float32.
  backend.adamw(p, g, m, v, n, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.biasCorrection1, h.biasCorrection2, h.gradScale, p.dtype, g.dtype);
}

/**
 * @example
 * const opt = new AdamW(model.parameters(), { lr: 6e-4, betas: [0.9, 0.95], weightDecay: 0.1 });
 * loss.backward(); opt.step(); opt.zeroGrad();
 */
export class AdamW implements Optimizer {
  readonly params: Tensor[];
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  /** Completed steps (bias correction uses step + 1 during a step). */
  stepCount = 0;
  readonly m: Tensor[] = [];
  readonly v: Tensor[] = [];
  /** Which gradients the global norm counts and how ranks combine it (model parallelism); null = all, local. */
  normScope: GradNormScope | null = null;

  constructor(params: Tensor[], opts: AdamWOptions = {}) {
    this.params = params;
    const r = resolveAdamWOptions(opts);
    this.lr = r.lr;
    this.betas = r.betas;
    this.eps = r.eps;
    this.weightDecay = r.weightDecay;
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
  step(opts: StepOptions = {}): void {
    if (opts.lr !== undefined) this.lr = opts.lr;
    this.stepCount++;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      adamwUpdate(p, p.grad, this.m[i]!, this.v[i]!, adamwStepHyper(this, this.stepCount, p.ndim, opts.gradScale ?? 1));
    });
  }

  /** Disposes every parameter's gradient. */
  zeroGrad(): void {
    clearGrads(this.params);
  }

  /** The global gradient norm (the gradients are whole here, and already averaged under DDP). */
  gradNorm(maxNorm = Infinity): GradNormResult {
    return gradNorm(this.params, maxNorm, this.normScope ?? undefined);
  }

  state(): AdamWState {
    return adamwState(this);
  }

  /** Scalars and the moments, logical form (the tensors themselves, not copies). */
  stateDict(): OptimizerStateDict {
    return { state: this.state(), moments: { exp_avg: this.m, exp_avg_sq: this.v } };
  }

  loadStateDict(sd: OptimizerStateDict): void {
    const mo = sd.moments;
    this.loadState(sd.state, mo ? { m: momentsOf(mo, "exp_avg", this.m.length), v: momentsOf(mo, "exp_avg_sq", this.v.length) } : undefined);
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

/** `moments[name]`, checked to hold one tensor per parameter (for loadStateDict implementations). */
export function momentsOf(moments: Record<string, Tensor[]>, name: string, count: number): Tensor[] {
  const ts = moments[name];
  if (!ts || ts.length !== count) throw new ValueError(`optimizer state: expected ${count} "${name}" tensors, got ${ts?.length ?? "none"}`);
  return ts;
}

/** Disposes and clears every parameter's gradient (shared by AdamW and the sharded AdamW). */
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
export function gradNorm(params: readonly Tensor[], maxNorm = Infinity, scope?: GradNormScope): GradNormResult {
  let sq = 0;
  params.forEach((p, i) => {
    if (p.grad && (scope?.counted?.(i) ?? true)) sq += reduceSumSq(p.grad);
  });
  if (scope?.reduce) sq = scope.reduce(sq);
  const norm = Math.sqrt(sq);
  return { norm, clipCoef: clipCoefficient(norm, maxNorm) };
}

/**
 * How a global gradient norm is taken when parameters are split over ranks (tensor and
 * pipeline parallelism): each rank sums the squares of the gradients it `counted` (a
 * parameter replicated on several ranks counts on one of them), and `reduce` combines the
 * ranks' sums (an all-reduce, supplied by parallel/ so optim stays free of collectives).
 */
export interface GradNormScope {
  /** Whether parameter `i` (in `params` order) counts on this rank. Default: all. */
  counted?: (paramIndex: number) => boolean;
  /** The sum over the ranks that share this step's norm, from this rank's sum. Default: identity. */
  reduce?: (localSumSq: number) => number;
}

/** min(1, maxNorm / (norm + 1e-6)), or 1 without clipping (torch.nn.utils.clip_grad_norm_). */
export function clipCoefficient(norm: number, maxNorm: number): number {
  return Number.isFinite(maxNorm) && maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
}

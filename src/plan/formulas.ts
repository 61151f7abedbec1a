/**
 * The papers' formulas for memory, FLOPs, the pipeline bubble, communication and training time,
 * one small function each, in the papers' own notation. Pure arithmetic: no tensors, no I/O.
 *
 * Notation (shared by the three papers):
 *   Ψ    parameters (of the model, or of one rank's model-parallel part)
 *   N_d  data-parallel degree (ZeRO); N the ranks of a collective's group
 *   K    optimizer-state bytes per parameter (ZeRO: 12 for mixed-precision Adam)
 *   s    sequence length        b  micro-batch size      B  global batch size
 *   h    hidden size            a  attention heads       l / L  layers
 *   V    vocabulary size        t  tensor-parallel size  p  pipeline stages
 *   m    micro-batches per step v  model chunks per rank (interleaved schedule)
 *   T    training tokens        P  parameters            n  GPUs      X  FLOP/s per GPU
 *
 * References:
 *   [ZeRO]  Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
 *           Parameter Models" (SC'20), section 3.1 and Figure 1.
 *   [SP]    Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
 *           Models", section 4 and Table 2.
 *   [PTD-P] Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
 *           Clusters Using Megatron-LM" (SC'21): §2.2 (the bubble), eqs. 3 and 4 (FLOPs, time).
 */
import { bubbleFraction as scheduleBubble, type PipelineScheduleName } from "../parallel/pipeline/schedules.js";

/** ZeRO's stages: 0 = plain data parallel, 1 = P_os, 2 = P_os+g, 3 = P_os+g+p. */
export type ZeroStage = 0 | 1 | 2 | 3;

/** Activation recomputation: none, selective (attention core only, [SP] §4.2) or full (whole layers). */
export type Recompute = "none" | "selective" | "full";

/** Model-state bytes per rank, by category. */
export interface ModelStateBytes {
  /** Parameters as the forward reads them (2Ψ in 16-bit, 4Ψ in fp32), sharded at stage 3. */
  parameters: number;
  /** Gradients (2Ψ / 4Ψ), sharded from stage 2. */
  gradients: number;
  /** Optimizer state KΨ (mixed precision: fp32 master copy, momentum, variance), sharded from stage 1. */
  optimizer: number;
  /** The sum. */
  total: number;
}

/** Bytes per element of each precision's parameter/gradient copies, and K of its optimizer. */
export interface StateBytesPerParam {
  /** Bytes per parameter of the weights the forward uses. 16-bit: 2; fp32: 4. */
  param: number;
  /** Bytes per parameter of the gradients. 16-bit: 2; fp32: 4. */
  grad: number;
  /** K: optimizer bytes per parameter. Mixed-precision Adam: 12 (fp32 master 4 + m 4 + v 4); fp32 Adam: 8 (m, v). */
  k: number;
}

/** [ZeRO] §3.1: mixed-precision Adam keeps 2Ψ (fp16 params) + 2Ψ (fp16 grads) + KΨ, K = 12. */
export const MIXED_PRECISION_ADAM: StateBytesPerParam = { param: 2, grad: 2, k: 12 };
/**
 * Our training, fp32 and bf16/fp16 alike: 4Ψ params + 4Ψ grads + 8Ψ AdamW moments. Under
 * mixed precision the fp32 parameters are themselves the master weights (autocast casts them to
 * 16-bit per matmul, `tensor/autocast.ts`), so the total is ZeRO's 16Ψ but split 4/4/8, not 2/2/12;
 * the 16-bit casts are saved for backward and counted with the activations.
 */
export const FP32_ADAM: StateBytesPerParam = { param: 4, grad: 4, k: 8 };

/**
 * Model-state memory per rank under ZeRO stage `stage` with N_d data-parallel ranks [ZeRO §5, Fig. 1]:
 *   stage 0 (baseline): (2 + 2 + K)Ψ
 *   stage 1 (P_os):     2Ψ + 2Ψ + KΨ/N_d
 *   stage 2 (P_os+g):   2Ψ + (2 + K)Ψ/N_d
 *   stage 3 (P_os+g+p): (2 + 2 + K)Ψ/N_d
 * (with 4/4/8 instead of 2/2/12 for fp32). Ψ is the parameters this rank's model-parallel part
 * holds; shards are taken as exact divisions (the runtime pads them to equal sizes, < N_d elements).
 *
 * @example modelStateBytes(7.5e9, 3, 64).total / 1e9 // 1.875 (ZeRO Figure 1: 1.9 GB)
 */
export function modelStateBytes(psi: number, stage: ZeroStage, nd: number, per: StateBytesPerParam = MIXED_PRECISION_ADAM): ModelStateBytes {
  const parameters = (per.param * psi) / (stage >= 3 ? nd : 1);
  const gradients = (per.grad * psi) / (stage >= 2 ? nd : 1);
  const optimizer = (per.k * psi) / (stage >= 1 ? nd : 1);
  return { parameters, gradients, optimizer, total: parameters + gradients + optimizer };
}

/** The shape of one transformer layer's activations. */
export interface ActivationShape {
  /** s: sequence length. */
  s: number;
  /** b: micro-batch size. */
  b: number;
  /** h: hidden size. */
  h: number;
  /** a: attention heads. */
  a: number;
  /** t: tensor-parallel size (1 = none). */
  t?: number;
  /** Sequence parallelism in the layernorm/dropout regions (needs t > 1). */
  sp?: boolean;
}

/**
 * Activation bytes one transformer layer keeps for backward, [SP] Table 2 (16-bit activations,
 * 1-byte dropout masks, as the paper counts):
 *   no parallelism      sbh(34 + 5as/h)
 *   tensor parallel     sbh(10 + 24/t + 5as/(ht))
 *   tensor + sequence   sbh(34/t + 5as/(ht))
 *   selective recompute drops the 5as/h (attention-core) term
 *   full recompute      2sbh (only each layer's input; [SP] §4.1), 2sbh/t with sequence parallelism
 * For other activation dtypes scale by `bytesPerValue / 2` (`activationLayerBytesAt`).
 *
 * @example activationLayerBytes({ s: 2048, b: 1, h: 12288, a: 96, t: 8, sp: true }, "selective") // sbh · 34/8
 */
export function activationLayerBytes(shape: ActivationShape, recompute: Recompute = "none"): number {
  const { s, b, h, a } = shape;
  const t = shape.t ?? 1;
  const sbh = s * b * h;
  if (recompute === "full") return (2 * sbh) / (shape.sp ? t : 1);
  const attention = recompute === "selective" ? 0 : (5 * a * s) / (h * t);  // 5as/(ht): softmax, its dropout mask, QK^T
  if (shape.sp) return sbh * (34 / t + attention);
  if (t > 1) return sbh * (10 + 24 / t + attention);
  return sbh * (34 + attention);
}

/**
 * The paper's 1-byte dropout masks inside `activationLayerBytes`: sbh after the attention
 * projection and after the MLP (replicated under plain TP, split with SP), and as²b/t after the
 * softmax (none under selective or full recomputation, which drop the attention core).
 */
export function dropoutMaskBytes(shape: ActivationShape, recompute: Recompute = "none"): number {
  if (recompute === "full") return 0;
  const { s, b, h, a } = shape;
  const t = shape.t ?? 1;
  const sbh = s * b * h;
  return (2 * sbh) / (shape.sp ? t : 1) + (recompute === "selective" ? 0 : (a * s * s * b) / t);
}

/**
 * `activationLayerBytes` for values stored with `bytesPerValue` bytes (4 for fp32, 2 for
 * bf16/fp16), for a runtime that never stores dropout masks (ours regenerates them in backward
 * from the keyed Philox stream): (bytesPerValue / 2) x (the paper's bytes - its 1-byte masks).
 * In fp32 that is 2x the 16-bit formula minus twice the masks, e.g. a layer without parallelism
 * keeps sbh(64 + 8as/h) bytes, not 2 x sbh(34 + 5as/h).
 * @example activationLayerBytesAt({ s: 128, b: 2, h: 256, a: 4 }, "none", 4) // 65536 * 80
 */
export function activationLayerBytesAt(shape: ActivationShape, recompute: Recompute, bytesPerValue: number): number {
  return ((activationLayerBytes(shape, recompute) - dropoutMaskBytes(shape, recompute)) * bytesPerValue) / 2;
}

/**
 * Bytes the caching allocator reserves for a request of `n` bytes: 64-byte granules up to 4 KiB,
 * then 8 steps per power of two (mirrors `round_size` in native/src/memory.cc; its live and peak
 * counters, which metrics.jsonl reports, count the rounded size). Up to 12.5% more than asked:
 * it matters for one-buffer ZeRO shards, e.g. 8.09 MiB -> 9 MiB.
 * @example allocatedBytes(8_481_792) // 9 * 2 ** 20
 */
export function allocatedBytes(n: number): number {
  if (n <= 0) n = 1;
  if (n <= 4096) return Math.ceil(n / 64) * 64;
  const p = 2 ** Math.floor(Math.log2(n));
  const step = p / 8;
  return Math.ceil(n / step) * step;
}

/**
 * Activation bytes outside the layers, kept by the last stage, [SP] §4.3: the final layernorm,
 * output projection and cross-entropy, 4sbh/t · (1 + V/h) in 16-bit; plus the first stage's
 * embedding dropout mask, sbh/t (with sp) or sbh. Returned separately for the first and last stage.
 */
export function activationOutsideLayersBytes(shape: ActivationShape & { V: number }): { first: number; last: number } {
  const t = shape.t ?? 1;
  const sbh = shape.s * shape.b * shape.h;
  return { first: sbh / (shape.sp ? t : 1), last: ((4 * sbh) / t) * (1 + shape.V / shape.h) };
}

/**
 * Micro-batches whose activations a pipeline stage holds at its peak, counted in model chunks
 * (each chunk is L/(p·v) layers), so the peak activation memory is
 * `inFlight * (L / (p·v)) * activationLayerBytes`:
 *   GPipe        m                          (every forward runs before any backward)
 *   1F1B         min(p - stage, m)          (stage 0 holds p; [PTD-P] §2.2.1)
 *   interleaved  min((p - stage - 1)·2 + (v - 1)·p + 1, m·v)   (Megatron's warm-up count + 1;
 *                for stage 0 this is L·(1 + (p-1)/(p·v)) layers, [SP] §4.2.3)
 *   p = 1        1                          (plain accumulation frees each micro-batch's activations)
 */
export function inFlightMicroBatches(schedule: PipelineScheduleName, p: number, m: number, stage = 0, v = 1): number {
  if (p === 1) return 1;
  if (schedule === "gpipe") return m;
  if (schedule === "1f1b") return Math.min(p - stage, m);
  return Math.min((p - stage - 1) * 2 + (v - 1) * p + 1, m * v);
}

/** The shape of a GPT for FLOP counting. */
export interface FlopShape {
  /** B: global batch size (sequences per iteration). */
  B: number;
  /** s: sequence length. */
  s: number;
  /** l: layers. */
  l: number;
  /** h: hidden size. */
  h: number;
  /** V: vocabulary size. */
  V: number;
}

/**
 * FLOPs per iteration [PTD-P eq. 3, derived in its appendix]. A layer's forward is 24Bsh² + 4Bs²h (GEMMs and
 * attention), the logit layer 2BshV, backward twice the forward:
 *   none       72·B·s·l·h²·(1 + s/(6h) + V/(12lh))     (3 passes: the model FLOPs MFU counts)
 *   full       96·B·s·l·h²·(1 + s/(6h) + V/(16lh))     (4 passes of the layers: PTD-P's eq. 3,
 *              which the paper states with recomputation; the logit layer is not recomputed)
 *   selective  the model FLOPs + 4Bs²h·l (the attention core's forward once more, [SP] §4.2)
 * (The paper's 96 already includes full recomputation, so there is no further 128 factor.)
 *
 * @example iterationFlops({ B: 1536, s: 2048, l: 96, h: 12288, V: 51200 }, "full") // ≈ 4.5e18, GPT-3 175B
 */
export function iterationFlops(shape: FlopShape, recompute: Recompute = "none"): number {
  const { B, s, l, h, V } = shape;
  if (recompute === "full") return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h));
  const model = 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h));
  return recompute === "selective" ? model + 4 * B * s * s * h * l : model;
}

/**
 * The pipeline bubble as a fraction of ideal compute [PTD-P §2.2]: (p-1)/m for GPipe and 1F1B,
 * (p-1)/(m·v) for the interleaved schedule. 0 when p = 1.
 * @example pipelineBubble("interleaved", 4, 8, 2) // 0.1875
 */
export function pipelineBubble(schedule: PipelineScheduleName, p: number, m: number, v = 1): number {
  if (p === 1) return 0;
  return scheduleBubble(schedule, { stages: p, microBatches: m, virtualStages: schedule === "interleaved" ? v : undefined });
}

/**
 * Bytes each rank sends in one ring collective over N ranks of a buffer of `bytes` (the standard
 * bandwidth-optimal ring algorithms, e.g. NCCL's "bus bandwidth" accounting):
 *   all-reduce       2(N-1)/N · bytes   (reduce-scatter then all-gather)
 *   reduce-scatter   (N-1)/N · bytes
 *   all-gather       (N-1)/N · bytes    (bytes = the gathered, full buffer)
 *   send/recv        bytes
 */
export function ringBytes(kind: "all_reduce" | "reduce_scatter" | "all_gather" | "send_recv", bytes: number, n: number): number {
  if (kind === "send_recv") return bytes;
  if (n <= 1) return 0;
  const share = (n - 1) / n;
  return kind === "all_reduce" ? 2 * share * bytes : share * bytes;
}

/**
 * End-to-end training time in seconds [PTD-P eq. 4]: ≈ 8·T·P / (n·X), the 8 being
 * 2 (multiply-add) x 4 (forward, backward, recompute) FLOPs per parameter per token.
 * @example trainingTimeSeconds(300e9, 175e9, 1024, 140e12) / 86400 // ≈ 34 days (GPT-3)
 */
export function trainingTimeSeconds(T: number, P: number, n: number, X: number): number {
  return (8 * T * P) / (n * X);
}

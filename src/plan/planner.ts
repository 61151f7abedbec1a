/**
 * The planner: every valid layout of a training config on N ranks, each with its predicted
 * memory per rank by category, pipeline bubble, communication bytes per collective kind, FLOPs,
 * step time and MFU, ranked (layouts that fit first, then by predicted step time).
 *
 * Every number comes from the formulas in `formulas.ts`; this file only decides which layer
 * counts, batch sizes and group sizes go into them. Plain records in, plain records out: the
 * CLI prints them, scripts read them as JSON.
 *
 * Modelling choices, stated once:
 *  - The global batch is the config's (micro_batch_size x grad_accum_steps x parallel.dp) and is
 *    kept fixed across layouts: a layout with dp ranks gives each B/dp sequences, in micro-batches
 *    of the largest size <= train.micro_batch_size that divides B/dp.
 *  - Memory is reported for the most loaded rank: the first or last pipeline stage (they hold the
 *    embedding and the tied head's copy, and stage 0 holds the most micro-batches in flight).
 *  - Step time = the GEMMs at the profile's FLOP/s (per product shape when the profile has a
 *    measured GEMM table: small products run far below big ones on a CPU; `gemmSeconds`), plus
 *    the non-GEMM memory traffic (`memoryTrafficBytes`) at the profile's elementwise bandwidth
 *    (measured through the runtime's own kernels when calibrated, else its copy bandwidth), plus
 *    a fixed cost per tensor op (`opsPerStep`), stretched by the bubble; plus every collective's
 *    time at its link's bandwidth and a latency per call. No overlap is credited (the runtime
 *    overlaps DP reduction with backward, so this is an upper bound for dp layouts).
 */
import type { PipelineScheduleName } from "../parallel/pipeline/schedules.js";
import type { CollectiveKind, HardwareProfile } from "./hardware.js";
import {
  FP32_ADAM, activationLayerBytesAt, allocatedBytes, activationOutsideLayersBytes, inFlightMicroBatches,
  iterationFlops, modelStateBytes, pipelineBubble, ringBytes, type Recompute, type ZeroStage,
} from "./formulas.js";

/**
 * What the planner reads of a training config: the GPT's shape, the batch and precision, and
 * the data-parallel settings. A structural subset of `TrainConfig` (src/train/config.ts), so any
 * validated training config is one; declared here rather than imported so that the trainer can
 * ask the planner for its prediction (train -> plan) without an import cycle.
 */
export interface PlanConfig {
  model: { n_layer: number; n_embd: number; n_head: number; block_size: number; vocab_size: number; bias: boolean };
  train: { micro_batch_size: number; grad_accum_steps: number; precision: "fp32" | "bf16" | "fp16" };
  parallel: { dp: number; bucket_mb: number; reduce_dtype: "fp32" | "bf16"; offload: "none" | "disk"; offload_chunk_mb: number };
}

/** One way to lay a config out on N ranks. */
export interface Layout {
  dp: number;
  tp: number;
  pp: number;
  /** Sequence parallelism (tp > 1). */
  sp: boolean;
  zero: ZeroStage;
  recompute: Recompute;
  /** Pipeline schedule (meaningful when pp > 1; "1f1b" otherwise). */
  schedule: PipelineScheduleName;
  /** v: model chunks per rank (interleaved only). */
  virtualStages: number;
  /** b: sequences per micro-batch. */
  microBatchSize: number;
  /** m: micro-batches per step per data-parallel rank (the accumulation steps / pipeline micro-batches). */
  microBatches: number;
}

/** Predicted memory of the most loaded rank, bytes. */
export interface MemoryPrediction {
  parameters: number;
  gradients: number;
  optimizer: number;
  activations: number;
  /** DDP buckets, ZeRO's gathered/reduced units, pipeline send/recv buffers. */
  communication_buffers: number;
  total: number;
  /** Which pipeline stage this is (0 or p-1). */
  stage: number;
}

/** Bytes one rank sends per step, by collective kind (ring volumes, `ringBytes`). */
export interface CommBytes {
  dp_all_reduce: number;
  dp_reduce_scatter: number;
  dp_all_gather: number;
  tp_all_reduce: number;
  sp_all_gather: number;
  sp_reduce_scatter: number;
  pp_send_recv: number;
}

/** Everything predicted for one layout. */
export interface Prediction {
  layout: Layout;
  memory: MemoryPrediction;
  /** memory.total <= the profile's memory per rank. */
  fits: boolean;
  /** (p-1)/m or (p-1)/(m·v); 0 without a pipeline. */
  bubble: number;
  comm_bytes: CommBytes;
  /** FLOPs per step, whole job: `model` (no recomputation, what MFU counts) and `hardware` (executed). */
  flops: { model: number; hardware: number };
  /** Predicted seconds per step: compute (incl. the bubble), communication, total. */
  step_time: { compute: number; communication: number; total: number };
  /** model FLOPs / (ranks x peak FLOP/s x step time). */
  mfu: number;
}

/** A layout the enumeration refused, and why. */
export interface Refusal {
  layout: Partial<Layout>;
  reason: string;
}

/** The planner's answer. */
export interface Plan {
  world: number;
  hardware: HardwareProfile;
  /** The model as counted: parameters and the global batch the plan keeps fixed. */
  model: { parameters: number; n_layer: number; n_embd: number; n_head: number; block_size: number; vocab_size: number; global_batch: number; precision: string };
  /** Ranked best first. */
  layouts: Prediction[];
  refused: Refusal[];
  /** A few lines on the first choice. */
  explanation: string[];
}

const divisors = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0);

/** Parameters of the whole GPT (GPT-2 layout: tied head, learned positions). */
export function gptParameters(c: PlanConfig): number {
  const { n_layer: L, n_embd: h, vocab_size: V, block_size: s, bias } = c.model;
  const norm = bias ? 2 * h : h;
  const layer = 12 * h * h + (bias ? 9 * h : 0) + 2 * norm;
  return L * layer + V * h + s * h + norm;
}

/** Parameters held by pipeline stage `stage` of a layout's tensor-parallel rank (the Ψ ZeRO divides). */
export function stageParameters(c: PlanConfig, l: Pick<Layout, "tp" | "pp">, stage: number): number {
  const { n_layer: L, n_embd: h, vocab_size: V, block_size: s, bias } = c.model;
  const t = l.tp;
  const norm = bias ? 2 * h : h;
  // Column-parallel qkv and fc (weights and biases split), row-parallel proj and fc2 (weights split,
  // biases replicated), layernorms replicated.
  const layer = (12 * h * h) / t + (bias ? (7 * h) / t + 2 * h : 0) + 2 * norm;
  let psi = (L / l.pp) * layer;
  if (stage === 0) psi += (V * h) / t + s * h;  // vocab-parallel wte, replicated wpe
  if (stage === l.pp - 1) psi += norm + (stage === 0 ? 0 : (V * h) / t);  // final norm; the tied head's copy
  return psi;
}

/** Why a layout cannot run this config on `world` ranks, or null when it can. */
export function checkLayout(c: PlanConfig, l: Layout, world: number): string | null {
  const { n_head: a, n_embd: h, n_layer: L, block_size: s } = c.model;
  if (l.dp * l.tp * l.pp !== world) return `dp x tp x pp = ${l.dp * l.tp * l.pp}, not the ${world} ranks`;
  if (a % l.tp !== 0) return `n_head (${a}) is not divisible by tp (${l.tp})`;
  if ((4 * h) % l.tp !== 0) return `the MLP width 4 x n_embd (${4 * h}) is not divisible by tp (${l.tp})`;
  if (l.sp && l.tp === 1) return "sequence parallelism needs tp > 1";
  if (l.sp && s % l.tp !== 0) return `block_size (${s}) is not divisible by tp (${l.tp}) for sequence parallelism`;
  const chunks = l.pp * l.virtualStages;
  if (L % chunks !== 0) return `n_layer (${L}) is not divisible by pp x virtual stages (${chunks})`;
  if (l.pp > 1 && l.zero >= 2) return `ZeRO-${l.zero} cannot combine with pipeline parallelism (pp = ${l.pp})`;
  if (l.zero > 0 && l.dp === 1) return `ZeRO-${l.zero} with dp = 1 is plain training (zero = 0)`;
  if (l.schedule === "interleaved") {
    if (l.pp === 1) return "the interleaved schedule needs pp > 1";
    if (l.virtualStages < 2) return "the interleaved schedule needs at least 2 virtual stages";
    if (l.microBatches % l.pp !== 0) return `the interleaved schedule needs micro-batches (${l.microBatches}) divisible by pp (${l.pp})`;
  } else if (l.virtualStages !== 1) return `virtual stages need the interleaved schedule`;
  return null;
}

/** Bytes per stored activation / per 16-bit-or-fp32 value for a precision. */
const actBytes = (c: PlanConfig): number => (c.train.precision === "fp32" ? 4 : 2);

/**
 * Memory of pipeline stage `stage` for a layout, as this runtime allocates it:
 *  - model states by ZeRO's formulas with 4/4/8 bytes per parameter in every precision
 *    (`FP32_ADAM`: the fp32 parameters are the master weights); a ZeRO shard is one flat buffer
 *    per state, counted at the allocator's rounded size (`allocatedBytes`), m and v apart;
 *    with parallel.offload "disk" the optimizer's resident state is one streamed chunk;
 *  - activations by Korthikanti's per-layer formula without the dropout masks (never stored),
 *    at the precision's bytes per value, times the micro-batches in flight, plus the larger of
 *    the head's backward (last stage: [SP] §4.3's head activations and the logits' gradient)
 *    and one layer's backward (its activation gradients, ~ one layer's activations); under 16-bit autocast each matmul's weight cast (2 bytes per
 *    weight of the stage's layers and the head) is saved for backward per micro-batch in flight.
 */
function stageMemory(c: PlanConfig, l: Layout, stage: number): MemoryPrediction {
  const { n_layer: L, n_embd: h, n_head: a, block_size: s, vocab_size: V } = c.model;
  const per = FP32_ADAM;
  const psi = stageParameters(c, l, stage);
  const state = modelStateBytes(psi, l.zero, l.dp, per);
  if (l.dp > 1) {
    const shard = (bytesPerParam: number) => allocatedBytes((bytesPerParam * psi) / l.dp);
    if (l.zero >= 3) state.parameters = shard(per.param);
    if (l.zero >= 2) state.gradients = shard(per.grad);
    if (l.zero >= 1) state.optimizer = (per.k / 4) * shard(4);  // m and v: one buffer each
    state.total = state.parameters + state.gradients + state.optimizer;
  }
  if (c.parallel.offload === "disk") {
    // The moments live in a file; one chunk of them (m and v together) is resident while streamed.
    state.optimizer = Math.min(state.optimizer, allocatedBytes(Math.round(c.parallel.offload_chunk_mb * 2 ** 20)));
    state.total = state.parameters + state.gradients + state.optimizer;
  }
  const shape = { s, b: l.microBatchSize, h, a, t: l.tp, sp: l.sp };
  const bytes = actBytes(c);
  const inFlight = inFlightMicroBatches(l.schedule, l.pp, l.microBatches, stage, l.virtualStages);
  const layersPerChunk = L / (l.pp * l.virtualStages);
  const outside = activationOutsideLayersBytes({ ...shape, V });
  const stored = inFlight * layersPerChunk * activationLayerBytesAt(shape, l.recompute, bytes);
  // The first stage's embedding-dropout mask (outside.first) is never stored either.
  const last = stage === l.pp - 1;
  // The peak is the larger of two moments of the backward:
  //  - the head's (last stage): the head's activations ([SP] §4.3) and the logits' gradient
  //    (s·b·V/t values). Under tp the cross-entropy is composed from differentiable ops
  //    (vocabParallelCrossEntropy) and keeps z = logits - max, exp(z) and a float one-hot: 2
  //    more fp32 values per local logit than the fused kernel.
  //  - a layer's (every stage): its activation gradients, about one layer's activations, while
  //    it runs; under full recomputation that layer's activations, rebuilt, as well.
  const logitsPerRank = (s * l.microBatchSize * V) / l.tp;
  const head = last ? (outside.last * bytes) / 2 + logitsPerRank * bytes + (l.tp > 1 ? 2 * 4 * logitsPerRank : 0) : 0;
  const oneLayer = activationLayerBytesAt(shape, "none", bytes);
  const layer = oneLayer * (l.recompute === "full" ? 2 : 1);
  let activations = stored + Math.max(head, layer);
  if (bytes === 2) {
    const layerWeights = (L / l.pp) * (12 * h * h) / l.tp;
    activations += 2 * (inFlight * layerWeights + (last ? (V * h) / l.tp : 0));
  }
  // Communication buffers (approximate, documented in the file header's spirit):
  const layerPsi = (12 * h * h) / l.tp;
  let buffers = 0;
  if (l.dp > 1 && l.zero === 0) buffers += Math.min(c.parallel.bucket_mb * 2 ** 20, psi * per.grad);  // one DDP bucket
  if (l.dp > 1 && (l.zero === 1 || l.zero === 2)) buffers += layerPsi * (per.grad + per.param);  // one unit reduce-scattered / gathered
  if (l.dp > 1 && l.zero === 3) buffers += layerPsi * (2 * per.param + per.grad);  // current + prefetched block gathered, one grad unit
  if (l.pp > 1) buffers += 2 * l.microBatchSize * s * h * bytes;  // one send and one receive buffer
  return {
    parameters: state.parameters, gradients: state.gradients, optimizer: state.optimizer, activations,
    communication_buffers: buffers, total: state.total + activations + buffers, stage,
  };
}

/** Bytes per step this layout's busiest rank sends, per collective kind. */
export function commBytes(c: PlanConfig, l: Layout): CommBytes {
  const { n_layer: L, n_embd: h, block_size: s } = c.model;
  const per = FP32_ADAM;  // the fp32 parameters are what ZeRO gathers, in every precision
  const gradWire = c.parallel.reduce_dtype === "bf16" ? 2 : 4;
  const psi = Math.max(stageParameters(c, l, 0), stageParameters(c, l, l.pp - 1));
  const m = l.microBatches;
  const out: CommBytes = { dp_all_reduce: 0, dp_reduce_scatter: 0, dp_all_gather: 0, tp_all_reduce: 0, sp_all_gather: 0, sp_reduce_scatter: 0, pp_send_recv: 0 };
  // Data parallel: DDP all-reduces once per step (accumulation is local); ZeRO-1 reduce-scatters
  // once and all-gathers updated parameters; ZeRO-2 reduce-scatters every micro-batch; ZeRO-3
  // also gathers parameters for each micro-batch's forward and backward.
  const n = l.dp;
  if (l.zero === 0) out.dp_all_reduce = ringBytes("all_reduce", psi * gradWire, n);
  if (l.zero === 1) out.dp_reduce_scatter = ringBytes("reduce_scatter", psi * gradWire, n);
  if (l.zero === 2) out.dp_reduce_scatter = m * ringBytes("reduce_scatter", psi * gradWire, n);
  if (l.zero === 1 || l.zero === 2) out.dp_all_gather = ringBytes("all_gather", psi * per.param, n);
  if (l.zero === 3) {
    out.dp_reduce_scatter = m * ringBytes("reduce_scatter", psi * gradWire, n);
    out.dp_all_gather = 2 * m * ringBytes("all_gather", psi * per.param, n);
  }
  // Tensor parallel: per layer, 2 all-reduces of b·s·h in forward and 2 in backward ([PTD-P] §2.3),
  // 2 more when full recomputation reruns the forward; the vocab-parallel embedding adds 1.
  // Sequence parallelism turns each all-reduce into an all-gather + reduce-scatter pair.
  const act = l.microBatchSize * s * h * actBytes(c);
  const perLayer = 4 + (l.recompute === "full" ? 2 : 0);
  const calls = m * ((L / l.pp) * perLayer + 1);
  if (l.tp > 1 && !l.sp) out.tp_all_reduce = calls * ringBytes("all_reduce", act, l.tp);
  if (l.tp > 1 && l.sp) {
    out.sp_all_gather = calls * ringBytes("all_gather", act, l.tp);
    out.sp_reduce_scatter = calls * ringBytes("reduce_scatter", act, l.tp);
  }
  // Pipeline: b·s·h forward and its gradient backward per micro-batch per chunk boundary; an
  // interior rank sends both ways for each of its v chunks, an end rank one fewer.
  if (l.pp > 1) {
    const sends = l.pp > 2 ? 2 * l.virtualStages : 2 * l.virtualStages - 1;
    out.pp_send_recv = m * sends * act;
  }
  return out;
}

/**
 * Bytes the non-GEMM work of one step moves through memory on the busiest rank: the elementwise
 * kernels (layernorm, GELU, softmax, residual adds, cross-entropy) are bandwidth-bound, and a
 * CPU's memory bandwidth is low beside its FLOP/s. Counted as: every saved activation written in
 * the forward and read in the backward, and its gradient written and read once (4 passes over
 * each micro-batch's activations, one more forward under full recomputation); AdamW reading the
 * parameter, gradient and both moments and writing back three (28 bytes per fp32 parameter of
 * this rank's shard). GEMM operands are not counted: they are the FLOP term's.
 */
export function memoryTrafficBytes(c: PlanConfig, l: Layout): number {
  const t = trafficParts(c, l);
  return t.layers + t.head + t.optimizer;
}

/**
 * `memoryTrafficBytes` by where the bytes move (a calibrated profile has a rate for each): the
 * blocks' activation passes, the embedding's, head's and loss's, and AdamW's.
 */
export function trafficParts(c: PlanConfig, l: Layout): { layers: number; head: number; optimizer: number } {
  const { n_layer: L, n_embd: h, n_head: a, block_size: s, vocab_size: V } = c.model;
  const shape = { s, b: l.microBatchSize, h, a, t: l.tp, sp: l.sp };
  const bytes = actBytes(c);
  // Every layer's activations as if none were recomputed: recomputation rewrites them.
  const passes = 4 + (l.recompute === "full" ? 1 : 0);
  const layers = passes * l.microBatches * (L / l.pp) * activationLayerBytesAt(shape, "none", bytes);
  // Under tp the cross-entropy is composed from ops (vocabParallelCrossEntropy): z = logits - max,
  // exp(z) and a float one-hot, 3 more fp32 values per local logit, each written and read in the
  // forward and backward, where the fused kernel moves none (stageMemory counts them too).
  const composedCe = l.tp > 1 ? 3 * 4 * ((s * l.microBatchSize * V) / l.tp) : 0;
  const head = 4 * l.microBatches * ((activationOutsideLayersBytes({ ...shape, V }).last * bytes) / 2 + composedCe);
  const psi = Math.max(stageParameters(c, l, 0), stageParameters(c, l, l.pp - 1));
  const optimizer = (28 * psi) / (l.zero >= 1 ? l.dp : 1);
  return { layers, head, optimizer };
}

/**
 * The GEMM shapes (M, K, N) of one micro-batch's forward on one rank of a layout: a block's qkv,
 * attention projection, MLP up and down (column-parallel N or row-parallel K split by tp), and
 * the tied head (vocab split by tp); M = b·s tokens. Each appears once per layer (the head once).
 * @example modelGemmShapes(loadConfig("configs/tiny.json")) // [[b*s, h, 3h], [b*s, h, h], ...]
 */
export function modelGemmShapes(c: PlanConfig, l: Pick<Layout, "tp" | "microBatchSize"> = { tp: 1, microBatchSize: c.train.micro_batch_size }): Array<[number, number, number]> {
  const { n_embd: h, block_size: s, vocab_size: V } = c.model;
  const M = l.microBatchSize * s, t = l.tp;
  return [[M, h, (3 * h) / t], [M, h / t, h], [M, h, (4 * h) / t], [M, (4 * h) / t, h], [M, h, Math.ceil(V / t)]];
}

/**
 * The FLOP/s a product of shape `mkn` runs at on `hw`: the measured shape nearest to it (by the
 * log of each dimension) in the profile's GEMM table, or the profile's achievable FLOP/s when it
 * has none. A CPU GEMM's rate falls steeply at small shapes (256-token products run at half the
 * rate of 1,024-token ones here), so a model's own shapes, calibrated, are what predict its step.
 */
export function gemmRate(hw: HardwareProfile, mkn: readonly [number, number, number]): number {
  const table = hw.gemmTable;
  if (!table || table.length === 0) return hw.achievableFlops;
  const dist = (x: readonly number[]) => x.reduce((a, v, i) => a + Math.log(v / mkn[i]!) ** 2, 0);
  return table.reduce((best, r) => (dist(r.mkn) < dist(best.mkn) ? r : best)).flops;
}

/**
 * Seconds one rank spends in GEMMs per step: the executed FLOPs per rank at the FLOP-weighted
 * harmonic mean of the rates of the layout's own products (`modelGemmShapes`, each looked up
 * by `gemmRate`): the backward's two products of each forward one are taken at its rate.
 */
export function gemmSeconds(c: PlanConfig, l: Layout, hw: HardwareProfile, hardwareFlopsPerRank: number): number {
  const shapes = modelGemmShapes(c, l);
  const L = c.model.n_layer / l.pp;
  const weight = shapes.map((mkn, i) => 2 * mkn[0] * mkn[1] * mkn[2] * (i === shapes.length - 1 ? 1 : L));
  const total = weight.reduce((a, b) => a + b, 0);
  const seconds = weight.reduce((a, w, i) => a + w / gemmRate(hw, shapes[i]!), 0);
  return hardwareFlopsPerRank * (seconds / total);
}

/**
 * Tensor ops one rank runs per step, for the fixed per-op cost (dispatch, autograd bookkeeping,
 * the allocator): about 25 in a block's forward and twice that in its backward, 3 more forwards'
 * worth when the block is recomputed in full (1 for selective), 10 for embedding, head and loss
 * per micro-batch, and AdamW's few per parameter tensor (one fused kernel each, plus the clip).
 */
export function opsPerStep(c: PlanConfig, l: Layout): number {
  const paramTensors = 12 * (c.model.n_layer / l.pp) + 4;
  return forwardBackwardOps(c, l) + 3 * paramTensors;
}

/** `opsPerStep` less the optimizer's: the forward and backward of every micro-batch. */
export function forwardBackwardOps(c: PlanConfig, l: Layout): number {
  const perLayer = 75 + (l.recompute === "full" ? 25 : l.recompute === "selective" ? 8 : 0);
  return l.microBatches * ((c.model.n_layer / l.pp) * perLayer + 10);
}

/** Collective calls per step, per group, for latency: [dp, tp, pp]. */
function commCalls(c: PlanConfig, l: Layout): { dp: number; tp: number; pp: number } {
  const m = l.microBatches;
  const units = c.model.n_layer / l.pp + 1;  // ZeRO's flat units: one per block, plus the rest
  const buckets = Math.ceil((stageParameters(c, l, 0) * 4) / (c.parallel.bucket_mb * 2 ** 20));  // DDP: one all-reduce per bucket
  const dp = l.dp === 1 ? 0 : l.zero === 0 ? buckets : l.zero === 1 ? 2 * units : l.zero === 2 ? (m + 1) * units : 3 * m * units;
  const perLayer = 4 + (l.recompute === "full" ? 2 : 0);
  const tp = l.tp === 1 ? 0 : m * ((c.model.n_layer / l.pp) * perLayer + 1) * (l.sp ? 2 : 1);
  const pp = l.pp === 1 ? 0 : m * (l.pp > 2 ? 2 * l.virtualStages : 2 * l.virtualStages - 1);
  return { dp, tp, pp };
}

/**
 * Predicts one layout on a profile. Memory is the most loaded pipeline stage's, or stage
 * `stage`'s when given (e.g. to compare with what rank 0 measured).
 */
export function predict(c: PlanConfig, l: Layout, hw: HardwareProfile, stage?: number): Prediction {
  const world = l.dp * l.tp * l.pp;
  const stages = stage !== undefined ? [stage] : l.pp === 1 ? [0] : [0, l.pp - 1];
  const memory = stages.map((st) => stageMemory(c, l, st)).reduce((x, y) => (y.total > x.total ? y : x));
  const bubble = pipelineBubble(l.schedule, l.pp, l.microBatches, l.virtualStages);
  const B = l.dp * l.microBatches * l.microBatchSize;
  const shape = { B, s: c.model.block_size, l: c.model.n_layer, h: c.model.n_embd, V: c.model.vocab_size };
  const flops = { model: iterationFlops(shape, "none"), hardware: iterationFlops(shape, l.recompute) };
  const gemm = gemmSeconds(c, l, hw, flops.hardware / world);
  const traffic = trafficParts(c, l), bw = hw.elementwiseBandwidth ?? hw.memoryBandwidth;
  const nonGemm = (traffic.layers + traffic.optimizer) / bw + traffic.head / (hw.headBandwidth ?? bw) + opsPerStep(c, l) * (hw.opOverhead ?? 0);
  const compute = (gemm + nonGemm) * (1 + bubble);
  // Which link each group crosses: ranks are numbered tp innermost, then dp, then pp (DeviceMesh).
  // Inside a node a calibrated profile has each collective kind's own bandwidth and latency.
  const link = (span: number, kind: CollectiveKind): { bw: number; lat: number } => {
    if (span > hw.ranksPerNode) return { bw: hw.interNodeBandwidth, lat: hw.interNodeLatency };
    const k = hw.collectives?.[kind];
    return k ? { bw: k.bandwidth, lat: k.latency_s } : { bw: hw.intraNodeBandwidth, lat: hw.intraNodeLatency };
  };
  const dpSpan = l.tp * l.dp;
  const cb = commBytes(c, l);
  const calls = commCalls(c, l);
  const dpKinds: Array<[number, CollectiveKind]> = [[cb.dp_all_reduce, "all_reduce"], [cb.dp_reduce_scatter, "reduce_scatter"], [cb.dp_all_gather, "all_gather"]];
  const dpBytes = (kind: CollectiveKind, bytes: number) => bytes / link(dpSpan, kind).bw;
  // dp latency: the calls are spread over the kinds a stage uses; charge each at its kind's latency.
  const dpLatKind: CollectiveKind = l.zero === 0 ? "all_reduce" : "reduce_scatter";
  const communication =
    dpKinds.reduce((t, [b, k]) => t + dpBytes(k, b), 0) + calls.dp * link(dpSpan, dpLatKind).lat +
    cb.tp_all_reduce / link(l.tp, "all_reduce").bw + (cb.sp_all_gather + cb.sp_reduce_scatter) / link(l.tp, "all_gather").bw +
    calls.tp * link(l.tp, l.sp ? "all_gather" : "all_reduce").lat +
    cb.pp_send_recv / link(world, "send_recv").bw + calls.pp * link(world, "send_recv").lat;
  const total = compute + communication;
  return {
    layout: l, memory, fits: memory.total <= hw.memoryBytes, bubble, comm_bytes: cb, flops,
    step_time: { compute, communication, total }, mfu: flops.model / (world * hw.peakFlops * total),
  };
}

/** Every candidate layout (valid or not) for `world` ranks; `checkLayout` sorts them. */
function candidates(c: PlanConfig, world: number): Array<Layout | Refusal> {
  const B = c.train.micro_batch_size * c.train.grad_accum_steps * c.parallel.dp;
  const out: Array<Layout | Refusal> = [];
  for (const tp of divisors(world)) {
    for (const pp of divisors(world / tp)) {
      const dp = world / tp / pp;
      if (B % dp !== 0) {
        out.push({ layout: { dp, tp, pp }, reason: `the global batch (${B} sequences) is not divisible by dp (${dp})` });
        continue;
      }
      const perRank = B / dp;
      const b = divisors(perRank).filter((d) => d <= c.train.micro_batch_size).pop()!;
      const m = perRank / b;
      // With one micro-batch GPipe and 1F1B run the same actions: list 1F1B only.
      const schedules: Array<[PipelineScheduleName, number]> = pp === 1 ? [["1f1b", 1]] : [...(m > 1 ? [["gpipe", 1] as [PipelineScheduleName, number]] : []), ["1f1b", 1], ["interleaved", 2]];
      for (const [schedule, v] of schedules) {
        for (const zero of [0, 1, 2, 3] as ZeroStage[]) {
          for (const sp of [false, true]) {
            for (const recompute of ["none", "selective", "full"] as Recompute[]) {
              const l: Layout = { dp, tp, pp, sp, zero, recompute, schedule, virtualStages: v, microBatchSize: b, microBatches: m };
              const why = checkLayout(c, l, world);
              out.push(why === null ? l : { layout: l, reason: why });
            }
          }
        }
      }
    }
  }
  return out;
}

/** Sorts predictions: layouts that fit first, then predicted step time, then memory. */
export function rankPredictions(ps: Prediction[]): Prediction[] {
  return [...ps].sort((x, y) => Number(y.fits) - Number(x.fits) || x.step_time.total - y.step_time.total || x.memory.total - y.memory.total);
}

/** A layout in one short phrase, e.g. "dp2 tp2 sp pp2/1f1b m4 zero1 recompute=selective". */
export function describeLayout(l: Layout): string {
  const parts = [`dp${l.dp}`, `tp${l.tp}${l.sp ? "+sp" : ""}`, `pp${l.pp}${l.pp > 1 ? `/${l.schedule}${l.virtualStages > 1 ? `x${l.virtualStages}` : ""}` : ""}`, `zero${l.zero}`, `b${l.microBatchSize}xm${l.microBatches}`, `recompute=${l.recompute}`];
  return parts.join(" ");
}

const gib = (x: number): string => `${(x / 2 ** 30).toFixed(x < 2 ** 30 ? 3 : 2)} GiB`;
/** Seconds as "83.1 ms" or "16.5 s". */
export const formatSeconds = (x: number): string => (x >= 1 ? `${x.toPrecision(3)} s` : `${(x * 1e3).toPrecision(3)} ms`);
const ms = formatSeconds;

/** A few lines on why the first layout is first. */
function explain(ranked: Prediction[], hw: HardwareProfile): string[] {
  const top = ranked[0];
  if (!top) return ["no valid layout: see the refused list for why each was rejected"];
  const m = top.memory;
  const cb = Object.entries(top.comm_bytes).filter(([, v]) => v > 0).sort((x, y) => y[1] - x[1]);
  const lines = [
    `first choice: ${describeLayout(top.layout)}`,
    `  memory per rank ${gib(m.total)} of ${gib(hw.memoryBytes)} (${top.fits ? "fits" : "does NOT fit"}): parameters ${gib(m.parameters)}, gradients ${gib(m.gradients)}, optimizer ${gib(m.optimizer)}, activations ${gib(m.activations)}, buffers ${gib(m.communication_buffers)}`,
    `  step ${ms(top.step_time.total)}: compute ${ms(top.step_time.compute)}${top.bubble > 0 ? ` (incl. a ${(top.bubble * 100).toFixed(0)}% bubble)` : ""}, communication ${ms(top.step_time.communication)}${cb.length ? ` (most: ${cb[0]![0]})` : ""}; MFU ${(top.mfu * 100).toFixed(1)}%`,
  ];
  if (!top.fits) lines.push(`  no layout fits ${gib(hw.memoryBytes)} per rank; this one needs the least`);
  const next = ranked.find((p) => p !== top && p.fits === top.fits && describeLayout(p.layout) !== describeLayout(top.layout));
  if (next) {
    const slower = next.step_time.total / top.step_time.total - 1;
    lines.push(`  runner-up ${describeLayout(next.layout)}: ${(slower * 100).toFixed(1)}% slower, ${gib(next.memory.total)} per rank`);
  }
  if (top.fits && top.layout.recompute === "none") lines.push("  no recomputation: activations fit, so recomputing them would only cost time");
  else if (top.fits) {
    const same = ranked.find((p) => describeLayout(p.layout) === describeLayout({ ...top.layout, recompute: "none" }));
    lines.push(same && !same.fits
      ? `  recomputation (${top.layout.recompute}) is what makes it fit: without it this layout needs ${gib(same.memory.total)}`
      : `  recomputation (${top.layout.recompute}) costs little here and the faster layouts without it do not fit`);
  }
  return lines;
}

/**
 * Plans `c` on `world` ranks of `hw`.
 * @example plan(loadConfig("configs/tiny.json"), 4, resolveHardware("a100-80g", "bfloat16", 4)).layouts[0]
 */
export function plan(c: PlanConfig, world: number, hw: HardwareProfile): Plan {
  const all = candidates(c, world);
  const valid = all.filter((x): x is Layout => !("reason" in x));
  const refused = all.filter((x): x is Refusal => "reason" in x);
  const layouts = rankPredictions(valid.map((l) => predict(c, l, hw)));
  return {
    world, hardware: hw,
    model: {
      parameters: gptParameters(c), n_layer: c.model.n_layer, n_embd: c.model.n_embd, n_head: c.model.n_head,
      block_size: c.model.block_size, vocab_size: c.model.vocab_size,
      global_batch: c.train.micro_batch_size * c.train.grad_accum_steps * c.parallel.dp, precision: c.train.precision,
    },
    layouts, refused, explanation: explain(layouts, hw),
  };
}

/**
 * Sparse mixture of experts (GShard, Switch Transformer, Mixtral): a drop-in replacement for a
 * transformer block's MLP.
 *
 * Shape legend: N tokens (B x T flattened), C width, E experts, k experts per token (top_k),
 * S slots per expert (the capacity), F expert hidden width (4C).
 *
 * The forward, in order:
 * 1. Router, in float32 whatever autocast says: logits = x Wg^T (N, E), softmax over experts,
 *    top-k. For k = 2 the two gates are renormalised to sum to 1 (GShard, Mixtral); for k = 1
 *    the gate is the top probability itself (Switch), so the router gets a gradient.
 * 2. Dispatch plan (host bookkeeping on N x k integers, no tensors): each expert has
 *    S = min(N, ceil(capacity_factor * N * k / E)) slots. Choices claim slots in a fixed order,
 *    every token's first choice in token order, then every token's second choice (GShard), so
 *    second choices are the ones dropped first. A choice that finds its expert full is dropped:
 *    it adds nothing to the output (the block's residual carries the token through).
 * 3. Experts as one grouped GEMM: the routed tokens are gathered into one (E, S, C) buffer
 *    (empty slots read a zero row) and every expert's MLP runs as a batched matmul over the
 *    stacked weights: (E, S, C) @ (E, C, F) -> GELU(tanh) -> (E, S, F) @ (E, F, C).
 * 4. Combine: each token gathers its k slot outputs (a dropped choice reads a zero row),
 *    weighted by its gates and summed.
 *
 * Gather and scatter are the embedding lookup (whose backward scatter-adds) over a table with
 * one extra zero row, plus cat: existing differentiable ops, so no new gradient code.
 *
 * Two router losses come back beside the output (`takeLosses()`), unscaled: the Switch/GShard
 * load-balancing loss E * sum_e f_e * P_e, with f_e the share of the N * k routing choices that
 * picked expert e (before capacity dropping; for k = 1 exactly Switch's fraction of tokens) and
 * P_e the mean router probability of e, and the router z-loss mean_n logsumexp(logits_n)^2
 * (ST-MoE). The model scales them by its coefficients and adds them to the training loss.
 *
 * Parameters follow Mixtral's layout: `gate.weight` (E, C), the router (no bias), and
 * `experts.{j}.c_fc.weight` / `.bias`, `experts.{j}.c_proj.weight` / `.bias` (GPT-2's MLP names,
 * nn.Linear [out, in] layout), so a checkpoint names every expert's tensors separately and an
 * expert-parallel layout can hold any subset of experts.
 *
 * Expert parallelism (`shardExperts`, applied by parallel/expert_parallel.ts): the layer keeps
 * E / n experts and step 3 runs between two all-to-alls: the (E, S, C) buffer goes out as
 * (n, E/n, S, C) blocks by destination rank, the local experts run over (E/n, n*S, C) (every
 * rank's slots for them), and the outputs go back the same way. Capacity S stays computed on
 * this rank's N tokens (DeepSpeed's per-source-rank capacity).
 *
 * Inference (`dropless`, set by `setMoEDropless` for generation and serving): in eval mode every
 * routing choice gets a slot, whatever `evalCapacityFactor` says, and S shrinks to the busiest
 * expert's load (empty slots are wasted work, no dropping needs more). Serving needs this: the
 * paged runner feeds the tokens of many requests as one batch, and a capacity limit would make
 * one request's tokens depend on which others share its step (continuous batching would then
 * differ from generating each request alone). Eval losses keep `evalCapacityFactor`.
 *
 * Trade-off: the experts are separate Linear modules (checkpoint names, sharding by expert), so
 * each forward stacks their weights into (E, F, C) / (E, C, F) before the grouped GEMM: a copy
 * of the expert weights per call (8 C^2 E floats), small next to the GEMM's 16 S C^2 E flops at
 * training batch sizes. The experts' own `forward` (a plain MLP) is the per-expert reference
 * the grouped path is tested against. When the expert projections are swapped for int8 ones
 * (`quantizeModelInt8` in serving) there are no float weights to stack, so the experts run one
 * after the other through their own `forward` over their slots (int8 is forward-only anyway).
 */
import {
  Tensor, cat, stack, zeros, rand, tensor, softmax, embedding, gelu, withScope, withAutocast,
} from "../tensor/index.js";
import { ValueError } from "../core/errors.js";
import { Module } from "./module.js";
import { Linear, Dropout, type Projection } from "./layers.js";

/** Options of a mixture-of-experts layer (defaults as in the training config's `model.moe`). */
export interface MoEOptions {
  /** Model width C. */
  nEmbd: number;
  /** Experts E (>= 1). */
  numExperts: number;
  /** Experts per token: 1 (Switch) or 2 (GShard, Mixtral). */
  topK: 1 | 2;
  /**
   * Slots per expert in training = min(tokens, ceil(capacityFactor * tokens * k / E)). Default
   * 1.25. Infinity, or any value >= E / k (what a JSON config can say), drops nothing: an expert
   * then has a slot for every token, and no token picks one expert twice.
   */
  capacityFactor?: number;
  /** The capacity factor in eval mode (eval, generation, serving). Default 2.0; Infinity drops nothing. */
  evalCapacityFactor?: number;
  /** Training only: the router input is multiplied by U(1 - jitter, 1 + jitter) noise (Switch). Default 0. */
  routerJitter?: number;
  /** Biases in the expert MLPs. Default true. */
  bias?: boolean;
  /** Dropout on the layer's output (as GPT-2's MLP). Default 0. */
  dropout?: number;
}

/** What the last forward's router did, for metrics. Plain numbers, no tensors. */
export interface RoutingStats {
  /** Tokens routed (N). */
  tokens: number;
  /** Slots per expert (S). */
  capacity: number;
  /** Per expert: the share of the N * k routing choices that picked it, before dropping (sums to 1). */
  expertFraction: number[];
  /** The share of the N * k routing choices dropped for lack of capacity. */
  droppedFraction: number;
}

/** The router's auxiliary losses from one forward, unscaled scalars with their graphs. */
export interface RouterLosses {
  /** Load-balancing loss E * sum_e f_e * P_e (1 when perfectly balanced). */
  aux: Tensor;
  /** Router z-loss: mean over tokens of logsumexp(router logits)^2. */
  z: Tensor;
}

/**
 * Expert parallelism as the layer sees it (parallel/expert_parallel.ts builds it over the ep
 * group): `size` ranks each hold E / size consecutive experts, and `exchange` starts a
 * differentiable all-to-all, (n, E/n, S, C) blocks by destination rank in, the same shape of
 * blocks by source rank out from `wait()`; its backward is the reverse all-to-all. Between
 * start and wait the layer computes what does not need the tokens (the overlap point). The
 * layer knows nothing of process groups.
 */
export interface ExpertExchange {
  /** Ranks the experts are split over (n). */
  size: number;
  /** This rank's place among them (holds experts [rank E/n, (rank+1) E/n)). */
  rank: number;
  /** Starts (n, E/n, S, C) -> (n, E/n, S, C): block j goes to rank j, block i came from rank i. */
  exchange(x: Tensor): { wait(): Tensor };
}

/**
 * One expert: C -> F -> GELU(tanh) -> C, GPT-2's MLP without dropout. Its projections are
 * Linears, or int8 stand-ins after `quantizeModelInt8` (hence `Projection`).
 */
export class Expert extends Module {
  readonly c_fc: Projection;
  readonly c_proj: Projection;
  constructor(nEmbd: number, hidden: number, bias: boolean) {
    super();
    this.c_fc = this.module("c_fc", new Linear(nEmbd, hidden, { bias }));
    this.c_proj = this.module("c_proj", new Linear(hidden, nEmbd, { bias }));
  }

  /** The plain per-expert MLP (the reference the grouped GEMM is tested against). */
  forward(x: Tensor): Tensor {
    const h = gelu(this.c_fc.forward(x), "tanh");                               // (.., F)
    const y = this.c_proj.forward(h);                                          // (.., C)
    h.dispose();
    return y;
  }
}

/** The dispatch plan: which token fills each expert slot and which slot serves each choice. */
interface DispatchPlan {
  /** (E * S) token index per slot; N (the zero row) for an empty slot. */
  slotToken: Int32Array;
  /** (N * k) slot per routing choice (row-major (N, k)); E * S (the zero row) when dropped. */
  choiceSlot: Int32Array;
  capacity: number;
  stats: RoutingStats;
}

/**
 * Assigns routing choices to expert slots: first choices of all tokens in token order, then
 * second choices (GShard's order), each expert filling slots 0..S-1; a choice finding its
 * expert full is dropped.
 */
export function planDispatch(choices: Int32Array, N: number, k: number, E: number, capacityFactor: number | "dropless"): DispatchPlan {
  const capacity = capacityFactor === "dropless" ? _busiestLoad(choices, E) : Math.max(1, Math.min(N, Math.ceil((capacityFactor * N * k) / E)));
  const slotToken = new Int32Array(E * capacity).fill(N);
  const choiceSlot = new Int32Array(N * k).fill(E * capacity);
  const fill = new Int32Array(E);
  const routed = new Float64Array(E);
  let dropped = 0;
  for (let j = 0; j < k; j++) {
    for (let n = 0; n < N; n++) {
      const e = choices[n * k + j]!;
      routed[e]!++;
      if (fill[e]! >= capacity) {
        dropped++;
        continue;
      }
      const s = e * capacity + fill[e]!++;
      slotToken[s] = n;
      choiceSlot[n * k + j] = s;
    }
  }
  const total = Math.max(1, N * k);
  const stats: RoutingStats = {
    tokens: N, capacity, expertFraction: Array.from(routed, (r) => r / total), droppedFraction: dropped / total,
  };
  return { slotToken, choiceSlot, capacity, stats };
}

/** The most routing choices any one expert received (at least 1): the dropless capacity. */
function _busiestLoad(choices: Int32Array, E: number): number {
  const load = new Int32Array(E);
  let most = 1;
  for (const e of choices) most = Math.max(most, ++load[e]!);
  return most;
}

/**
 * A mixture-of-experts MLP: router, top-k dispatch with capacity, grouped expert GEMM, combine.
 * @example
 * const moe = new MoE({ nEmbd: 64, numExperts: 8, topK: 2 });
 * const y = moe.forward(x);                       // (B, T, C) -> (B, T, C)
 * const { aux, z } = moe.takeLosses()!;           // add coef * aux + coef * z to the loss
 * moe.lastStats?.droppedFraction;                 // for metrics
 */
export class MoE extends Module {
  /** The router: C -> E, no bias (Mixtral's `gate`). */
  readonly gate: Linear;
  readonly experts: Expert[];
  readonly dropout: Dropout;
  readonly numExperts: number;
  readonly topK: 1 | 2;
  readonly capacityFactor: number;
  readonly evalCapacityFactor: number;
  readonly routerJitter: number;
  readonly dropoutP: number;
  /** Routing statistics of the last forward (null before the first). */
  lastStats: RoutingStats | null = null;
  /**
   * Eval mode only: drop nothing, ignoring `evalCapacityFactor` (generation and serving; see
   * the file comment). Not under expert parallelism, whose all-to-all needs one S on every
   * rank. Default false; `setMoEDropless` sets it on every MoE layer of a model.
   */
  dropless = false;
  private pending: RouterLosses | null = null;
  /** Expert parallelism (`shardExperts`), null when this layer holds every expert. */
  private ep: ExpertExchange | null = null;

  constructor(opts: MoEOptions) {
    super();
    const { nEmbd, numExperts: E, topK } = opts;
    if (!Number.isInteger(E) || E < 1) throw new ValueError(`MoE: numExperts must be an integer >= 1, got ${E}`);
    if (topK !== 1 && topK !== 2) throw new ValueError(`MoE: topK must be 1 or 2, got ${topK}`);
    if (topK > E) throw new ValueError(`MoE: topK (${topK}) cannot exceed numExperts (${E})`);
    this.numExperts = E;
    this.topK = topK;
    this.capacityFactor = opts.capacityFactor ?? 1.25;
    this.evalCapacityFactor = opts.evalCapacityFactor ?? 2.0;
    this.routerJitter = opts.routerJitter ?? 0;
    this.dropoutP = opts.dropout ?? 0;
    for (const [k, v] of [["capacityFactor", this.capacityFactor], ["evalCapacityFactor", this.evalCapacityFactor]] as const) {
      if (!(v > 0)) throw new ValueError(`MoE: ${k} must be > 0, got ${v}`);
    }
    if (!(this.routerJitter >= 0 && this.routerJitter < 1)) throw new ValueError(`MoE: routerJitter must be in [0, 1), got ${this.routerJitter}`);
    this.gate = this.module("gate", new Linear(nEmbd, E, { bias: false }));
    this.experts = [];
    for (let j = 0; j < E; j++) this.experts.push(this.module(`experts.${j}`, new Expert(nEmbd, 4 * nEmbd, opts.bias ?? true)));
    this.dropout = this.module("dropout", new Dropout(this.dropoutP));
  }

  /**
   * Keeps only this rank's experts, E / n consecutive ones (their names, `experts.{j}` with the
   * global j, stay the logical ones), and routes dispatch and combine through `ep.exchange`.
   * Capacity stays a function of this rank's tokens (DeepSpeed): every rank sends each expert
   * up to S = ceil(cf * N_local * k / E) tokens, so an expert sees n * S slots, and the result
   * equals one process running each rank's tokens as its own batch. Called by parallelize.
   */
  shardExperts(ep: ExpertExchange): void {
    const E = this.numExperts, n = ep.size;
    if (this.ep) throw new ValueError("MoE.shardExperts: the experts are already sharded");
    if (E % n !== 0) throw new ValueError(`MoE.shardExperts: ${E} experts cannot be split evenly over ${n} expert-parallel ranks`);
    const El = E / n, first = ep.rank * El;
    for (let j = 0; j < E; j++) if (j < first || j >= first + El) this.setModule(`experts.${j}`, null);
    this.experts.splice(0, E, ...this.experts.slice(first, first + El));
    this.ep = n > 1 ? ep : null;
  }

  /**
   * The router losses of the last forward, handed over (the caller owns and disposes them);
   * null when there is none pending.
   */
  takeLosses(): RouterLosses | null {
    const l = this.pending;
    this.pending = null;
    return l;
  }

  /** x (..., C) -> (..., C). Router losses wait in `takeLosses()`, statistics in `lastStats`. */
  forward(x: Tensor): Tensor {
    const { y, aux, z } = withScope(() => this.moeForward(x));
    this.pending?.aux.dispose();
    this.pending?.z.dispose();
    this.pending = { aux, z };
    if (this.dropoutP > 0) {
      const out = this.dropout.forward(y);
      y.dispose();
      return out;
    }
    return y;
  }

  private moeForward(x: Tensor): { y: Tensor; aux: Tensor; z: Tensor } {
    const C = x.shape[x.ndim - 1]!;
    const N = x.numel / C;
    const E = this.numExperts, k = this.topK;
    const xf = x.view([N, C]);                                                  // (N, C)

    // 1. Router, float32 (its softmax decides discrete choices; bf16 logits would flip them).
    const { logits, probs } = withAutocast(null, () => {
      let xr = xf.dtype === "float32" ? xf : xf.to("float32");                  // (N, C)
      if (this.training && this.routerJitter > 0) {
        const eps = this.routerJitter;
        xr = xr.mul(rand([N, C]).mul(2 * eps).add(1 - eps));
      }
      const logits = this.gate.forward(xr);                                     // (N, E)
      return { logits, probs: softmax(logits, -1) };                            // (N, E)
    });
    const top = probs.topk(k, -1);                                              // (N, k) values, indices
    const gates = k === 1 ? top.values : top.values.div(top.values.sum(-1, true)); // (N, k)

    // 2. Dispatch plan on the host.
    const cf = this.training ? this.capacityFactor : this.dropless && !this.ep ? "dropless" : this.evalCapacityFactor;
    const plan = planDispatch(top.indices.data() as Int32Array, N, k, E, cf);
    this.lastStats = plan.stats;
    const S = plan.capacity;

    // 3. Gather into (E, S, C) and run every expert as one batched GEMM.
    const xPad = cat([xf, zeros([1, C], { dtype: xf.dtype })], 0);              // (N + 1, C)
    const slotToken = tensor(plan.slotToken, { shape: [E * S], dtype: "int32" });
    const buf = embedding(slotToken, xPad).view([E, S, C]);                     // (E, S, C)
    // Expert parallelism: send each rank its experts' slots, run them on every rank's tokens
    // as (E/n, n*S, C), and send the outputs back (El = E/n local experts; El = E without ep).
    const ep = this.ep, n = ep?.size ?? 1, El = E / n;
    const dispatch = ep?.exchange(buf.view([n, El, S, C]));
    // Overlap point (expert parallelism): while the tokens travel, stack the local experts'
    // weights and compute the router losses, neither of which needs them.
    const weights = this.stackedWeights();
    const { aux, z } = this.routerLosses(logits, probs, plan.stats);
    const xin = dispatch
      ? dispatch.wait().transpose(0, 1).reshape([El, n * S, C])                 // (El, n*S, C)
      : buf;
    let out = this.expertsForward(xin, weights);                                // (El, n*S, C)
    if (ep) {
      const combine = ep.exchange(out.view([El, n, S, C]).transpose(0, 1).contiguous());
      // Nothing left in this layer runs without the outputs: the combine is waited for at once
      // (the next micro-batch's router would be the next candidate, a schedule change).
      out = combine.wait().view([E, S, C]);                                     // (E, S, C)
    }

    // 4. Combine: each token's k slot outputs (zero row when dropped), weighted by its gates.
    const outPad = cat([out.view([E * S, C]), zeros([1, C], { dtype: out.dtype })], 0); // (E*S + 1, C)
    const choiceSlot = tensor(plan.choiceSlot, { shape: [N, k], dtype: "int32" });
    const picked = embedding(choiceSlot, outPad);                               // (N, k, C)
    const g = gates.dtype === picked.dtype ? gates : gates.to(picked.dtype);
    const y = picked.mul(g.unsqueeze(-1)).sum(1).view(x.shape);                 // (..., C)
    return { y, aux, z };
  }

  /** Router losses (float32): load balancing E * sum_e f_e P_e, and z-loss mean(lse^2). */
  private routerLosses(logits: Tensor, probs: Tensor, stats: RoutingStats): { aux: Tensor; z: Tensor } {
    const E = this.numExperts;
    const f = tensor(Float32Array.from(stats.expertFraction), { shape: [E] });
    const aux = probs.mean(0).mul(f).sum().mul(E);                              // ()
    const m = logits.max(-1, true).values.detach();                             // (N, 1)
    const lse = logits.sub(m).exp().sum(-1, true).log().add(m);                 // (N, 1)
    const z = lse.square().mean();                                              // ()
    return { aux, z };
  }

  /**
   * The local experts' weights stacked for the grouped GEMM, w1 (El, C, F) and w2 (El, F, C)
   * as transposed views, with their Linears; null when the experts are int8 (no float weights).
   */
  private stackedWeights(): { w1: Tensor; w2: Tensor; fc: Linear[]; proj: Linear[] } | null {
    const fc = this.experts.map((e) => e.c_fc), proj = this.experts.map((e) => e.c_proj);
    if (!fc.every((l) => l instanceof Linear) || !proj.every((l) => l instanceof Linear)) return null;
    const w1 = stack((fc as Linear[]).map((l) => l.weight)).transpose(1, 2);   // (El, C, F)
    const w2 = stack((proj as Linear[]).map((l) => l.weight)).transpose(1, 2); // (El, F, C)
    return { w1, w2, fc: fc as Linear[], proj: proj as Linear[] };
  }

  /**
   * Every local expert over its slots, (El, M, C) -> (El, M, C): one grouped GEMM over the
   * stacked float weights, or (int8 experts, see the file comment) each expert's own forward.
   */
  private expertsForward(xin: Tensor, weights: ReturnType<MoE["stackedWeights"]>): Tensor {
    if (!weights) return stack(this.experts.map((e, j) => e.forward(xin.select(0, j)))); // (El, M, C)
    const { w1, w2, fc, proj } = weights;
    let h = xin.matmul(w1);                                                     // (El, M, F)
    if (fc[0]!.bias) h = h.add(_stackedBias(fc, h.dtype));
    h = gelu(h, "tanh");
    let out = h.matmul(w2);                                                     // (El, M, C)
    if (proj[0]!.bias) out = out.add(_stackedBias(proj, out.dtype));
    return out;
  }
}

/** The Linears' biases stacked to (E, 1, width), cast to the compute dtype. */
function _stackedBias(linears: readonly Linear[], dtype: Tensor["dtype"]): Tensor {
  const b = stack(linears.map((l) => l.bias!)).unsqueeze(1);                   // (E, 1, width)
  return b.dtype === dtype ? b : b.to(dtype);
}

/**
 * Sets `MoE.dropless` on every MoE layer under `root`: generation and serving turn it on, so a
 * request's tokens do not depend on what shares its batch. Returns a function that puts the
 * previous settings back (a no-op for a dense model).
 * @example
 * const restore = setMoEDropless(model, true);   // no capacity limit while generating
 * try { ... } finally { restore(); }             // eval losses use evalCapacityFactor again
 */
export function setMoEDropless(root: Module, on: boolean): () => void {
  const layers = root.namedModules().map(([, m]) => m).filter((m): m is MoE => m instanceof MoE);
  const before = layers.map((m) => m.dropless);
  for (const m of layers) m.dropless = on;
  return () => layers.forEach((m, i) => { m.dropless = before[i]!; });
}

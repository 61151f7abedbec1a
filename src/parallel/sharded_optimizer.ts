/**
 * ShardedAdamW: ZeRO stages 1 and 2 (Rajbhandari et al. 2020), and the optimizer half of stage 3,
 * around the plain AdamW math: each rank keeps AdamW's moments for its shards only (FlatShards'
 * layout) and updates them with optim's `adamwUpdate()`, the same kernel call a single process
 * makes, so every layout computes the same bits.
 *
 *  stage 1  full gradients accumulate as usual; once backward completes a unit's gradients on
 *           the last micro-step they are reduce-scattered (averaged) asynchronously, the owned
 *           shard is updated, and an all-gather brings every rank the new parameters.
 *  stage 2  also gradients: on every micro-step each unit's gradients are reduce-scattered as
 *           soon as backward completes them, accumulated into the owned shard and freed, so no
 *           full gradient outlives its unit's backward.
 *  stage 3  as stage 2, but the parameters themselves are sharded by FSDP's units (fsdp.ts):
 *           the optimizer updates FSDP's parameter shards in place and gathers nothing.
 *
 * It is also the GradSync of those stages (the reduce-scatters are its), so `parallelize()`
 * hands the trainer one object for both roles. At group size 1 every collective is the identity
 * and each stage computes exactly AdamW (test/parallel/sharded_optimizer.test.ts).
 * Memory per rank (fp32, allocator categories when gradients are complete): optimizer 8Ψ/N;
 * grads 4Ψ at stage 1, 4Ψ/N from stage 2.
 */
import { ValueError } from "../core/errors.js";
import { Tensor, zeros, withCategory, keep, reduceSumSq, tensor } from "../tensor/index.js";
import {
  adamwState, adamwStepHyper, adamwUpdate, clearGrads, clipCoefficient, type GradNormScope, momentsOf, resolveAdamWOptions,
  type AdamWOptions, type AdamWState, type GradNormResult, type Optimizer, type OptimizerStateDict, type StepOptions,
  OffloadFile, type OffloadOptions, type HostOptimizerStateDict,
} from "../optim/index.js";
import { allReduce, broadcast, reduceScatterAsync, type ProcessGroup, type Work } from "./collectives.js";
import type { FlatShards, ShardPiece, ShardUnit } from "./flat_shards.js";
import type { GradSync } from "./grad_sync.js";
import { copyRange, flatRange, zeroRange } from "./_views.js";

/** 1: optimizer state, 2: + gradients, 3: + parameters (with FSDP's units). */
export type ZeroStage = 1 | 2 | 3;

/** Options of `ShardedAdamW`. */
export interface ShardedAdamWOptions {
  /** ZeRO stage. Default 1. */
  stage?: ZeroStage;
  /**
   * Stage 3: the rank's parameter shards (FSDP's `paramShard`, `shards.shardSize` elements),
   * the only copy of the weights the update writes. Required at stage 3, refused below it.
   */
  paramShard?: Tensor;
  /** dtype gradients are reduce-scattered in ("bfloat16" halves the bytes; shards accumulate in float32). Default "float32". */
  reduceDtype?: "float32" | "bfloat16";
  /**
   * Keep this rank's moment shards in a file instead of memory (ZeRO-Infinity's offload,
   * optim/offload.ts): `step()` then streams them in chunks and returns a promise. Default: in memory.
   */
  offload?: OffloadOptions;
}

interface InFlight {
  unit: ShardUnit;
  flat: Tensor;
  out: Tensor;
  work: Work;
}

/**
 * @example
 * const shards = new FlatShards(model.parameters(), dp, model.h.map((b) => b.parameters()));
 * const opt = new ShardedAdamW(shards, { lr: 6e-4 }, { stage: 2 });
 * opt.beforeMicroStep(true); loss.backward(); await opt.afterBackward(true);
 * opt.step({ gradScale: (await opt.gradNorm(1)).clipCoef }); opt.zeroGrad();
 */
export class ShardedAdamW implements Optimizer, GradSync {
  readonly shards: FlatShards;
  readonly params: Tensor[];
  readonly group: ProcessGroup;
  readonly stage: ZeroStage;
  /** dtype of the gradient reduce-scatters. */
  readonly reduceDtype: "float32" | "bfloat16";
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  stepCount = 0;
  /** AdamW moments of this rank's shards (null when they are offloaded to `offloaded`). */
  readonly mShard: Tensor | null;
  readonly vShard: Tensor | null;
  /** The moments' scratch file when offloaded (flat elements as in mShard / vShard), else null. */
  readonly offloaded: OffloadFile | null;
  /** Stage >= 2: this rank's averaged gradient shards (accumulated over micro-steps). */
  readonly gradShard: Tensor | null;
  /** Stage 3: FSDP's parameter shards. */
  readonly paramShard: Tensor | null;
  /**
   * Stage 1 reduces only when this is true (the last micro-step); stages 2 and 3 reduce on
   * every micro-step because they cannot keep full gradients.
   */
  syncEnabled = true;
  /** Model parallelism: which gradients the norm counts and how the other axes combine it (parallelize sets it). */
  normScope: GradNormScope | null = null;
  /** Overlap accounting like DataParallel's: commMs on the communication thread, waitedMs in synchronize(). */
  readonly timings = { launched: 0, commMs: 0, waitedMs: 0 };
  private readonly ready: number[];
  private readonly launched: boolean[];
  private inFlight: InFlight[] = [];

  constructor(shards: FlatShards, adam: AdamWOptions = {}, opts: ShardedAdamWOptions = {}) {
    this.shards = shards;
    this.params = shards.params;
    this.group = shards.group;
    this.stage = opts.stage ?? 1;
    this.reduceDtype = opts.reduceDtype ?? "float32";
    if (![1, 2, 3].includes(this.stage)) throw new ValueError(`ZeRO: stage must be 1, 2 or 3, got ${String(this.stage)}`);
    if ((this.stage === 3) !== (opts.paramShard !== undefined)) {
      throw new ValueError(`ZeRO: stage ${this.stage} ${this.stage === 3 ? "needs FSDP's paramShard (build FullyShardedUnits first)" : "takes no paramShard (that is stage 3)"}`);
    }
    if (opts.paramShard && opts.paramShard.numel !== shards.shardSize) {
      throw new ValueError(`ZeRO-3: paramShard has ${opts.paramShard.numel} elements, this rank's shards ${shards.shardSize}`);
    }
    const r = resolveAdamWOptions(adam);
    this.lr = r.lr;
    this.betas = r.betas;
    this.eps = r.eps;
    this.weightDecay = r.weightDecay;
    const n = shards.shardSize;
    this.offloaded = opts.offload ? new OffloadFile(n, opts.offload) : null;
    [this.mShard, this.vShard] = this.offloaded ? [null, null] : withCategory("optimizer", () => [keep(zeros([n])), keep(zeros([n]))]);
    this.gradShard = this.stage >= 2 ? withCategory("grads", () => keep(zeros([n]))) : null;
    this.paramShard = opts.paramShard ?? null;
    // Every rank starts from rank 0's weights (at stage 3 FSDP did this before sharding them).
    if (!this.paramShard) for (const p of this.params) broadcast(p, this.group, 0);
    this.ready = shards.units.map(() => 0);
    this.launched = shards.units.map(() => false);
    for (const p of this.params) p.registerGradReadyHook((t) => this.onReady(t));
  }

  // ---- gradients (GradSync) -----------------------------------------------------------------------

  private get reducing(): boolean {
    return this.stage >= 2 || this.syncEnabled;
  }

  /** Stage 1 reduces on the last micro-step only; stages 2 and 3 on every one. */
  beforeMicroStep(isLast: boolean): void {
    this.syncEnabled = isLast;
  }

  /** After each micro-step's backward: `synchronize()`. */
  async afterBackward(): Promise<void> {
    await this.synchronize();
  }

  private onReady(p: Tensor): void {
    const u = this.shards.unitOf(p)!;
    if (++this.ready[u.index]! < u.params.length) return;
    this.ready[u.index] = 0;
    if (this.reducing && !this.launched[u.index]) this.launch(u);
  }

  /** Flattens a unit's gradients and starts their reduce-scatter (average over the group). */
  private launch(u: ShardUnit): void {
    const size = this.group.size;
    // kept: backward runs inside the step's tensor scope, these outlive it until synchronize().
    const rd = this.reduceDtype;
    const [flat, out] = withCategory("grads", () => [keep(Tensor.empty([u.shard * size], rd)), keep(Tensor.empty([u.shard], rd))]);
    u.params.forEach((i, k) => {
      const p = this.params[i]!;
      // A parameter without a gradient (unused this step) counts as zeros, so ranks agree.
      if (p.grad) copyRange(flat, u.offsets[k]!, p.grad, 0, p.numel);
      else zeroRange(flat, u.offsets[k]!, p.numel);
      if (this.stage >= 2) {
        p.grad?.dispose();
        p.grad = null;
      }
    });
    zeroRange(flat, u.numel, u.shard * size - u.numel);  // the padding
    this.launched[u.index] = true;
    this.timings.launched++;
    this.inFlight.push({ unit: u, flat, out, work: reduceScatterAsync(flat, out, this.group, "avg") });
  }

  /**
   * Starts the reductions backward did not start (parameters without a gradient count as
   * zeros), waits for all of them and files the averaged shards. Stage 1 does nothing on
   * accumulation micro-steps.
   */
  async synchronize(): Promise<void> {
    if (this.reducing) for (const u of this.shards.units) if (!this.launched[u.index]) this.launch(u);
    const t0 = performance.now();
    for (const f of this.inFlight) {
      await f.work.wait();
      this.timings.commMs += f.work.seconds * 1000;
      const u = f.unit;
      if (this.stage === 1) {
        for (const pc of u.pieces) {
          const p = this.params[pc.param]!;
          if (!p.grad) p.grad = withCategory("grads", () => keep(zeros(p.shape)));
          copyRange(p.grad, pc.start, f.out, pc.shardOffset, pc.len);
        }
      } else {
        const dst = this.shards.shardOf(this.gradShard!, u);
        dst.add_(f.out);
        dst.dispose();
      }
      f.flat.dispose();
      f.out.dispose();
      this.launched[u.index] = false;
    }
    this.timings.waitedMs += performance.now() - t0;
    this.inFlight = [];
    this.ready.fill(0);
  }

  /**
   * Global L2 norm of the averaged gradients (every rank sums its shards, then an all-reduce)
   * and the clipping coefficient, as `gradNorm()` computes them for a single process.
   */
  gradNorm(maxNorm = Infinity): GradNormResult {
    let sq = 0;
    const counted = this.normScope?.counted;
    if (this.stage === 1) {
      for (const u of this.shards.units) {
        for (const pc of u.pieces) {
          const g = this.params[pc.param]!.grad;
          if (!g || (counted && !counted(pc.param))) continue;
          const v = flatRange(g, pc.start, pc.len);
          sq += reduceSumSq(v);
          v.dispose();
        }
      }
    } else if (counted) {
      for (const u of this.shards.units) {
        for (const pc of u.pieces) {
          if (!counted(pc.param)) continue;
          const v = flatRange(this.gradShard!, u.base + pc.shardOffset, pc.len);
          sq += reduceSumSq(v);
          v.dispose();
        }
      }
    } else {
      sq = reduceSumSq(this.gradShard!);
    }
    sq = sumOverGroup(sq, this.group);
    if (this.normScope?.reduce) sq = this.normScope.reduce(sq);
    const norm = Math.sqrt(sq);
    return { norm, clipCoef: clipCoefficient(norm, maxNorm) };
  }

  zeroGrad(): void {
    clearGrads(this.params);
    this.gradShard?.zero_();
  }

  // ---- update -------------------------------------------------------------------------------------

  /**
   * Updates this rank's shards with AdamW's math; stages 1 and 2 then all-gather the
   * parameters. Offloaded moments stream through memory first: the step is then async.
   */
  step(opts: StepOptions = {}): void | Promise<void> {
    if (opts.lr !== undefined) this.lr = opts.lr;
    this.stepCount++;
    if (this.offloaded) return this.stepOffloaded(opts.gradScale ?? 1);
    const at = (buf: Tensor, u: ShardUnit, pc: { shardOffset: number; len: number }) => flatRange(buf, u.base + pc.shardOffset, pc.len);
    for (const u of this.shards.units) {
      for (const pc of u.pieces) {
        const p = this.params[pc.param]!;
        if (this.stage === 1 && !p.grad) continue;
        const m = at(this.mShard!, u, pc), v = at(this.vShard!, u, pc);
        this.updatePiece(u, pc, 0, pc.len, m, v, opts.gradScale ?? 1);
        m.dispose();
        v.dispose();
      }
    }
    this.gatherParams();
  }

  /** AdamW on elements [from, from + n) of a piece, with the moments' views `m` and `v`. */
  private updatePiece(u: ShardUnit, pc: ShardPiece, from: number, n: number, m: Tensor, v: Tensor, gradScale: number): void {
    const p = this.params[pc.param]!;
    const at = (buf: Tensor) => flatRange(buf, u.base + pc.shardOffset + from, n);
    const w = this.paramShard ? at(this.paramShard) : flatRange(p, pc.start + from, n);
    const g = this.gradShard ? at(this.gradShard) : flatRange(p.grad!, pc.start + from, n);
    adamwUpdate(w, g, m, v, adamwStepHyper(this, this.stepCount, p.ndim, gradScale));
    w.dispose();
    g.dispose();
  }

  /** The offloaded step: each piece's moments stream from the file chunk by chunk. */
  private async stepOffloaded(gradScale: number): Promise<void> {
    const segments = this.shards.units.flatMap((u) => u.pieces.flatMap((pc) => (
      this.stage === 1 && !this.params[pc.param]!.grad ? [] : [{ start: u.base + pc.shardOffset, len: pc.len, u, pc }]
    )));
    await this.offloaded!.update(segments, (s, from, n, m, v) => this.updatePiece(s.u, s.pc, from, n, m, v, gradScale));
    this.gatherParams();
  }

  /** Stages 1 and 2: every rank gets the updated parameters (stage 3: FSDP gathers them when used). */
  private gatherParams(): void {
    if (this.paramShard) return;
    const params = (i: number) => this.params[i]!;
    for (const u of this.shards.units) {
      const send = Tensor.empty([u.shard]);
      this.shards.pack(u, send, params);
      this.shards.gather(u, send, params);
      send.dispose();
    }
  }

  state(): AdamWState {
    return adamwState(this);
  }

  /**
   * Scalars and this rank's moment shards (the sharded form; the tensors themselves, not
   * copies, unless offloaded: then new tensors read back from the file, which the caller disposes).
   */
  stateDict(): OptimizerStateDict {
    let tensors = { exp_avg: this.mShard!, exp_avg_sq: this.vShard! };
    if (this.offloaded) {
      const { m, v } = this.offloaded.readRange(0, this.shards.shardSize);
      tensors = withCategory("optimizer", () => ({ exp_avg: tensor(m), exp_avg_sq: tensor(v) }));
    }
    return { state: this.state(), shard: { rank: this.group.rank, size: this.group.size, layout: this.shards.layout(this.stage), tensors } };
  }

  /** `stateDict()` with host copies of the shards (read from the file when offloaded: no tensor is allocated). */
  hostStateDict(): HostOptimizerStateDict {
    const n = this.shards.shardSize;
    const { m, v } = this.offloaded ? this.offloaded.readRange(0, n) : { m: this.mShard!.data() as Float32Array, v: this.vShard!.data() as Float32Array };
    const tensors = { exp_avg: { shape: [n], data: m }, exp_avg_sq: { shape: [n], data: v } };
    return { state: this.state(), shard: { rank: this.group.rank, size: this.group.size, layout: this.shards.layout(this.stage), tensors } };
  }

  /** Loads scalars and full (logical) moments from a checkpoint of any layout: each rank keeps its shard. */
  loadStateDict(sd: OptimizerStateDict): void {
    this.stepCount = sd.state.step;
    this.lr = sd.state.lr;
    if (!sd.moments) return;
    const m = momentsOf(sd.moments, "exp_avg", this.params.length), v = momentsOf(sd.moments, "exp_avg_sq", this.params.length);
    if (this.offloaded) {
      // The pieces, gathered on the host, into the file (padding stays zero).
      const n = this.shards.shardSize, mh = new Float32Array(n), vh = new Float32Array(n);
      for (const u of this.shards.units) {
        for (const pc of u.pieces) {
          const at = u.base + pc.shardOffset, md = m[pc.param]!.data() as Float32Array, vd = v[pc.param]!.data() as Float32Array;
          mh.set(md.subarray(pc.start, pc.start + pc.len), at);
          vh.set(vd.subarray(pc.start, pc.start + pc.len), at);
        }
      }
      this.offloaded.writeRange(0, mh, vh);
      return;
    }
    for (const u of this.shards.units) {
      for (const pc of u.pieces) {
        copyRange(this.mShard!, u.base + pc.shardOffset, m[pc.param]!, pc.start, pc.len);
        copyRange(this.vShard!, u.base + pc.shardOffset, v[pc.param]!, pc.start, pc.len);
      }
    }
  }

  /** Closes (and deletes) the offload file, if any. */
  close(): void {
    this.offloaded?.close();
  }
}

/**
 * A float64 sum over the group's ranks, sent through a float32 all-reduce as a high and a
 * low part (the sum of squares of millions of gradients needs more than float32's 24 bits).
 * A collective; the identity at group size 1.
 */
export function sumOverGroup(x: number, g: ProcessGroup): number {
  if (g.size === 1) return x;
  const hi = Math.fround(x);
  const t = tensor([hi, x - hi]);
  allReduce(t, g, "sum");
  const [a, b] = t.toArray() as number[];
  t.dispose();
  return a! + b!;
}

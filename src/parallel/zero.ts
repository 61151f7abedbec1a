/**
 * ZeRO stage 1 (Rajbhandari et al. 2020): optimizer state sharded across the data-parallel
 * group. Parameters are viewed as one flat index space split into `size` equal shards; each
 * rank keeps AdamW's m and v only for its shard, updates only the parameter elements of its
 * shard (the fused AdamW kernel runs on sub-ranges of each tensor), then an all-gather brings
 * every rank the updated parameters. Gradients arrive already averaged (DataParallel).
 * At group size 1 it is plain AdamW over one shard that covers everything.
 */
import { ValueError } from "../core/errors.js";
import { native } from "../backend/native/index.js";
import { Tensor, zeros, withCategory, keep } from "../tensor/index.js";
import { adamwState, clearGrads, type AdamWOptions, type AdamWState } from "../optim/index.js";
import { allGather, type ProcessGroup } from "./collectives.js";

interface Piece {
  param: number;   // index into params
  start: number;   // first element within the parameter
  len: number;
  shardOffset: number;  // position within this rank's shard
}

export class ZeroAdamW {
  readonly params: Tensor[];
  readonly group: ProcessGroup;
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  stepCount = 0;
  /** Moments of this rank's shard only (shardSize elements each). */
  readonly mShard: Tensor;
  readonly vShard: Tensor;
  readonly shardSize: number;
  private readonly offsets: number[] = [];
  private readonly pieces: Piece[] = [];
  private readonly total: number;

  constructor(params: Tensor[], group: ProcessGroup, opts: AdamWOptions = {}) {
    this.params = params;
    this.group = group;
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    let n = 0;
    for (const p of params) {
      if (p.dtype !== "float32" || !p.isContiguous) throw new ValueError("ZeRO: parameters must be contiguous float32 tensors");
      this.offsets.push(n);
      n += p.numel;
    }
    this.total = n;
    this.shardSize = Math.ceil(n / group.size);
    const lo = group.rank * this.shardSize, hi = Math.min(n, lo + this.shardSize);
    params.forEach((p, i) => {
      const a = Math.max(lo, this.offsets[i]!), b = Math.min(hi, this.offsets[i]! + p.numel);
      if (a < b) this.pieces.push({ param: i, start: a - this.offsets[i]!, len: b - a, shardOffset: a - lo });
    });
    [this.mShard, this.vShard] = withCategory("optimizer", () => [keep(zeros([this.shardSize])), keep(zeros([this.shardSize]))]);
  }

  /** Updates this rank's shard, then all-gathers the parameters. */
  step(opts: { lr?: number; gradScale?: number } = {}): void {
    if (opts.lr !== undefined) this.lr = opts.lr;
    const gs = opts.gradScale ?? 1;
    this.stepCount++;
    const [b1, b2] = this.betas;
    const bc1 = 1 - b1 ** this.stepCount, bc2 = 1 - b2 ** this.stepCount;
    for (const pc of this.pieces) {
      const p = this.params[pc.param]!;
      if (!p.grad) continue;
      const wd = p.ndim >= 2 ? this.weightDecay : 0;
      native.adamw(p.ptr + pc.start * 4, p.grad.ptr + pc.start * 4, this.mShard.ptr + pc.shardOffset * 4, this.vShard.ptr + pc.shardOffset * 4,
        pc.len, this.lr, b1, b2, this.eps, wd, bc1, bc2, gs);
    }
    this.gatherInto(this.params, (t) => t);
  }

  zeroGrad(): void {
    clearGrads(this.params);
  }

  state(): AdamWState {
    return adamwState(this);
  }

  /** The full (unsharded) moments per parameter: a collective, every rank must call it. */
  fullMoments(): { m: Tensor[]; v: Tensor[] } {
    const m = this.params.map((p) => zeros(p.shape));
    const v = this.params.map((p) => zeros(p.shape));
    this.gatherFromShard(this.mShard, m);
    this.gatherFromShard(this.vShard, v);
    return { m, v };
  }

  /** Loads full moments (from a checkpoint of any layout): each rank keeps its shard. */
  loadState(s: AdamWState, moments?: { m: Tensor[]; v: Tensor[] }): void {
    this.stepCount = s.step;
    this.lr = s.lr;
    if (!moments) return;
    for (const pc of this.pieces) {
      native.copyStrided(4, moments.m[pc.param]!.ptr + pc.start * 4, [1], this.mShard.ptr + pc.shardOffset * 4, [1], [pc.len]);
      native.copyStrided(4, moments.v[pc.param]!.ptr + pc.start * 4, [1], this.vShard.ptr + pc.shardOffset * 4, [1], [pc.len]);
    }
  }

  /** All-gathers this rank's shard of the flat space (read from `src` tensors) into every `dst`. */
  private gatherInto(tensors: Tensor[], pick: (t: Tensor) => Tensor): void {
    const send = Tensor.empty([this.shardSize]);
    for (const pc of this.pieces) native.copyStrided(4, pick(tensors[pc.param]!).ptr + pc.start * 4, [1], send.ptr + pc.shardOffset * 4, [1], [pc.len]);
    this.scatterFull(send, tensors);
    send.dispose();
  }

  private gatherFromShard(shard: Tensor, dst: Tensor[]): void {
    this.scatterFull(shard, dst);
  }

  /** allGather(shard) -> flat [size * shardSize], then copy each tensor's range out of it. */
  private scatterFull(shard: Tensor, dst: Tensor[]): void {
    const full = Tensor.empty([this.shardSize * this.group.size]);
    allGather(shard, full, this.group);
    dst.forEach((t, i) => native.copyStrided(4, full.ptr + this.offsets[i]! * 4, [1], t.ptr, [1], [t.numel]));
    full.dispose();
    void this.total;
  }
}

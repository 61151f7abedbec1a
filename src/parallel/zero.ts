/**
 * ZeRO stages 1, 2 and 3 (Rajbhandari et al. 2020) over the data-parallel group, laid out the
 * way PyTorch FSDP lays out its flat parameters.
 *
 * Parameters are grouped into units (one per transformer block and a root unit for the rest).
 * Each unit is one flat index space, padded to a multiple of the group size and cut into equal
 * shards: rank r owns elements [r*s, (r+1)*s) of every unit. AdamW's state (m, v) exists for the
 * owned shards only, in one buffer per rank.
 *
 *  stage 1  full gradients accumulate as usual; once backward completes a unit's gradients on
 *           the last micro-step they are reduce-scattered (averaged) asynchronously, the owned
 *           shard is updated, and an all-gather brings every rank the new parameters.
 *  stage 2  also gradients: on every micro-step each unit's gradients are reduce-scattered as
 *           soon as backward completes them, accumulated into the owned shard and freed, so no
 *           full gradient outlives its unit's backward.
 *  stage 3  also parameters: between uses only the owned shard exists (the parameter tensors
 *           keep their identity, views and graph edges; their storage is released, FSDP's
 *           `resize_(0)`). `shardModules()` wraps each unit's module so its parameters are
 *           all-gathered before its forward and released after, gathered again when backward
 *           reaches the module's output, and released once the unit's gradients are reduced.
 *           While a unit computes, the next one's all-gather is already running (forward:
 *           the following block; backward: the preceding one), on a communicator of its own
 *           so it never queues behind the gradient reduce-scatters; FSDP's forward and
 *           backward prefetch. At most two units are gathered at a time.
 *
 * At group size 1 every collective is the identity and each stage computes exactly AdamW.
 * Memory per rank (fp32, allocator categories at the moment gradients are complete):
 * params 4Ψ | 4Ψ | 4Ψ/N, grads 4Ψ | 4Ψ/N | 4Ψ/N, optimizer 8Ψ/N for stages 1 | 2 | 3.
 */
import { ValueError } from "../core/errors.js";
import { native, BinaryOp } from "../backend/native/index.js";
import { Tensor, zeros, withCategory, keep, Category, reduceSumSq, tensor } from "../tensor/index.js";
import { isBackwardRunning, isGradEnabled, recordNode, type Differentiable } from "../autograd/index.js";
import type { Module } from "../nn/index.js";
import { adamwState, clearGrads, clipCoefficient, type AdamWOptions, type AdamWState } from "../optim/index.js";
import { allGather, allGatherAsync, allReduce, broadcast, fence, reduceScatterAsync, setCommThreadNice, splitGroup, type ProcessGroup, type Work } from "./collectives.js";

export type ZeroStage = 1 | 2 | 3;

export interface ZeroOptions {
  /** 1: optimizer state, 2: + gradients, 3: + parameters. Default 1. */
  stage?: ZeroStage;
  /**
   * Parameter groups sharded (and, at stage 3, gathered) together, e.g. one per transformer
   * block. Parameters in no group form a root unit, placed first. Default: one unit.
   */
  units?: Tensor[][];
  /**
   * Stage 3: start the all-gather of the unit that runs next while the current one computes
   * (forward and backward prefetch). Default true; false gathers each unit when it is needed.
   */
  prefetch?: boolean;
}

/** A run of a parameter's elements inside this rank's shard of a unit. */
interface Piece {
  param: number;       // index into params
  start: number;       // first element within the parameter
  len: number;
  shardOffset: number; // position within the unit's shard
}

interface Unit {
  params: number[];    // indices into params
  offsets: number[];   // flat offset of each within the unit
  numel: number;
  shard: number;       // elements per rank (numel padded up to a multiple of the group size, / size)
  base: number;        // offset of this unit's shard in the rank's shard buffers
  pieces: Piece[];
  ready: number;       // gradients completed in the current backward
  launched: boolean;
  refs: number;        // stage 3: users of the gathered parameters
  heldForBackward: number;
  prefetched: Tensor | null;  // stage 3: the padded flat space an early all-gather is filling
}

interface InFlight {
  unit: Unit;
  flat: Tensor;
  out: Tensor;
  work: Work;
}

/** Layout record stored next to sharded checkpoints, enough to rebuild full tensors. */
export interface ZeroLayout {
  stage: ZeroStage;
  size: number;
  units: Array<{ params: string[]; numel: number[]; shard: number }>;
}

export class ZeroAdamW {
  readonly params: Tensor[];
  readonly group: ProcessGroup;
  readonly stage: ZeroStage;
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  stepCount = 0;
  /** Elements of this rank's shard, over all units. */
  readonly shardSize: number;
  /** AdamW moments of this rank's shards. */
  readonly mShard: Tensor;
  readonly vShard: Tensor;
  /** Stage >= 2: this rank's averaged gradient shards (accumulated over micro-steps). */
  readonly gradShard: Tensor | null;
  /** Stage 3: this rank's parameter shards, the only copy of the weights between uses. */
  readonly paramShard: Tensor | null;
  /**
   * Stage 1 reduces only when this is true (the last micro-step); stages 2 and 3 reduce on
   * every micro-step because they cannot keep full gradients.
   */
  syncEnabled = true;
  /**
   * Overlap accounting like DataParallel's: commMs on the communication thread, waitedMs in
   * synchronize(). Stage 3: units gathered from a prefetch vs gathered on demand.
   */
  readonly timings = { launched: 0, commMs: 0, waitedMs: 0, prefetched: 0, gatheredOnDemand: 0 };
  /** Stage 3: the communicator of parameter all-gathers (a copy of `group`), so prefetches
   *  never wait behind gradient reductions in the group's FIFO. */
  private readonly gatherGroup: ProcessGroup;
  private readonly prefetchEnabled: boolean;
  /** A prefetch's gather that failed: synchronize() reports it. */
  private prefetchError: unknown = null;
  private readonly units: Unit[] = [];
  private readonly unitOf = new Map<Tensor, Unit>();
  private inFlight: InFlight[] = [];

  constructor(params: Tensor[], group: ProcessGroup, opts: AdamWOptions = {}, zero: ZeroOptions = {}) {
    this.params = params;
    this.group = group;
    this.stage = zero.stage ?? 1;
    if (![1, 2, 3].includes(this.stage)) throw new ValueError(`ZeRO: stage must be 1, 2 or 3, got ${String(this.stage)}`);
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    for (const p of params) {
      if (p.dtype !== "float32" || !p.isContiguous || p.offset !== 0) {
        throw new ValueError(`ZeRO: parameter ${p.name ?? ""} must be a contiguous float32 tensor that owns its storage`);
      }
    }
    // Units: the given groups, the rest in a root unit first.
    const index = new Map(params.map((p, i) => [p, i]));
    const groups: number[][] = [];
    const taken = new Set<number>();
    for (const g of zero.units ?? []) {
      const ids = g.map((p) => {
        const i = index.get(p);
        if (i === undefined) throw new ValueError(`ZeRO: unit parameter ${p.name ?? ""} is not among the optimizer's parameters`);
        if (taken.has(i)) throw new ValueError(`ZeRO: parameter ${p.name ?? i} is in two units`);
        taken.add(i);
        return i;
      });
      if (ids.length) groups.push(ids);
    }
    const rest = params.map((_, i) => i).filter((i) => !taken.has(i));
    if (rest.length) groups.unshift(rest);
    let base = 0;
    const { rank, size } = group;
    for (const ids of groups) {
      const offsets: number[] = [];
      let n = 0;
      for (const i of ids) { offsets.push(n); n += params[i]!.numel; }
      const shard = Math.ceil(n / size);
      const lo = rank * shard, hi = Math.min(n, lo + shard);
      const pieces: Piece[] = [];
      ids.forEach((i, k) => {
        const a = Math.max(lo, offsets[k]!), b = Math.min(hi, offsets[k]! + params[i]!.numel);
        if (a < b) pieces.push({ param: i, start: a - offsets[k]!, len: b - a, shardOffset: a - lo });
      });
      const u: Unit = { params: ids, offsets, numel: n, shard, base, pieces, ready: 0, launched: false, refs: 0, heldForBackward: 0, prefetched: null };
      this.units.push(u);
      for (const i of ids) this.unitOf.set(params[i]!, u);
      base += shard;
    }
    this.shardSize = base;
    [this.mShard, this.vShard] = withCategory("optimizer", () => [keep(zeros([base])), keep(zeros([base]))]);
    this.gradShard = this.stage >= 2 ? withCategory("grads", () => keep(zeros([base]))) : null;
    // Every rank starts from rank 0's weights.
    for (const p of params) broadcast(p, group, 0);
    this.prefetchEnabled = this.stage === 3 && (zero.prefetch ?? true);
    // A collective over the group (every rank constructs its optimizer in the same order).
    this.gatherGroup = this.stage === 3 ? splitGroup(group, 0, group.rank, `${group.name ?? "dp"}/zero3-gather`) : group;
    if (this.stage === 3) {
      // The next block waits for its prefetch soon: its thread must not starve behind compute.
      setCommThreadNice(this.gatherGroup, 0);
      this.paramShard = withCategory("params", () => keep(zeros([base])));
      this.shardFromFull();
      for (const p of params) p.storage.releaseData_();
    } else {
      this.paramShard = null;
    }
    for (const p of params) p.registerGradReadyHook((t) => this.onReady(t));
  }

  /** The layout of the shards, for checkpoints that other layouts can load. */
  layout(names: string[]): ZeroLayout {
    return {
      stage: this.stage, size: this.group.size,
      units: this.units.map((u) => ({ params: u.params.map((i) => names[i]!), numel: u.params.map((i) => this.params[i]!.numel), shard: u.shard })),
    };
  }

  // ---- gradients ----------------------------------------------------------------------------------

  private get reducing(): boolean {
    return this.stage >= 2 || this.syncEnabled;
  }

  private onReady(p: Tensor): void {
    const u = this.unitOf.get(p)!;
    if (++u.ready < u.params.length) return;
    u.ready = 0;
    if (this.reducing && !u.launched) this.launch(u);
    if (u.heldForBackward > 0) {
      u.heldForBackward--;
      this.releaseUnit(u);
    }
  }

  /** Flattens a unit's gradients and starts their reduce-scatter (average over the group). */
  private launch(u: Unit): void {
    const size = this.group.size;
    // kept: backward runs inside the step's tensor scope, these outlive it until synchronize().
    const [flat, out] = withCategory("grads", () => [keep(Tensor.empty([u.shard * size])), keep(Tensor.empty([u.shard]))]);
    u.params.forEach((i, k) => {
      const p = this.params[i]!;
      const dst = flat.ptr + u.offsets[k]! * 4;
      if (p.grad) native.copyStrided(4, p.grad.ptr, [1], dst, [1], [p.numel]);
      else native.fill(dst, p.numel, 0, 0);
      if (this.stage >= 2) {
        p.grad?.dispose();
        p.grad = null;
      }
    });
    if (u.shard * size > u.numel) native.fill(flat.ptr + u.numel * 4, u.shard * size - u.numel, 0, 0);
    u.launched = true;
    this.timings.launched++;
    this.inFlight.push({ unit: u, flat, out, work: reduceScatterAsync(flat, out, this.group, "avg") });
  }

  /**
   * Call after each micro-step's backward: starts the reductions backward did not start
   * (parameters without a gradient count as zeros), waits for all of them and files the
   * averaged shards. Stage 1 does nothing on accumulation micro-steps.
   */
  async synchronize(): Promise<void> {
    if (this.reducing) for (const u of this.units) if (!u.launched) this.launch(u);
    const t0 = performance.now();
    for (const f of this.inFlight) {
      await f.work.wait();
      this.timings.commMs += f.work.seconds * 1000;
      const u = f.unit;
      if (this.stage === 1) {
        for (const pc of u.pieces) {
          const p = this.params[pc.param]!;
          if (!p.grad) p.grad = withCategory("grads", () => keep(zeros(p.shape)));
          native.copyStrided(4, f.out.ptr + pc.shardOffset * 4, [1], p.grad.ptr + pc.start * 4, [1], [pc.len]);
        }
      } else {
        const dst = this.gradShard!.ptr + u.base * 4;
        native.binary(BinaryOp.add, dst, [1], f.out.ptr, [1], dst, [u.shard]);
      }
      f.flat.dispose();
      f.out.dispose();
      u.launched = false;
    }
    this.timings.waitedMs += performance.now() - t0;
    this.inFlight = [];
    // A prefetch nobody used (a forward cut short) would hold stale weights after step().
    for (const u of this.units) this.dropPrefetch(u);
    if (this.prefetchError) {
      const e = this.prefetchError;
      this.prefetchError = null;
      throw e;
    }
    for (const u of this.units) {
      u.ready = 0;
      // A forward whose backward never ran leaves its units gathered: release them now.
      while (u.heldForBackward > 0) {
        u.heldForBackward--;
        this.releaseUnit(u);
      }
    }
  }

  /**
   * Global L2 norm of the averaged gradients (every rank sums its shards, then an all-reduce)
   * and the clipping coefficient, as `gradNorm()` computes them for a single process.
   */
  gradNorm(maxNorm = Infinity): { norm: number; clipCoef: number } {
    let sq = 0;
    if (this.stage === 1) {
      for (const u of this.units) {
        for (const pc of u.pieces) {
          const g = this.params[pc.param]!.grad;
          if (!g) continue;
          const v = g.view_([pc.len], [1], pc.start);
          sq += reduceSumSq(v);
          v.dispose();
        }
      }
    } else {
      sq = reduceSumSq(this.gradShard!);
    }
    // float32 all-reduce of a float64 sum: send it as a high and a low part.
    const hi = Math.fround(sq);
    const t = tensor([hi, sq - hi]);
    allReduce(t, this.group, "sum");
    const [a, b] = t.toArray() as number[];
    t.dispose();
    const norm = Math.sqrt(a! + b!);
    return { norm, clipCoef: clipCoefficient(norm, maxNorm) };
  }

  zeroGrad(): void {
    clearGrads(this.params);
    if (this.gradShard) native.fill(this.gradShard.ptr, this.shardSize, 0, 0);
  }

  // ---- update -------------------------------------------------------------------------------------

  /** Updates this rank's shards; stages 1 and 2 then all-gather the parameters. */
  step(opts: { lr?: number; gradScale?: number } = {}): void {
    if (opts.lr !== undefined) this.lr = opts.lr;
    const gs = opts.gradScale ?? 1;
    this.stepCount++;
    const [b1, b2] = this.betas;
    const bc1 = 1 - b1 ** this.stepCount, bc2 = 1 - b2 ** this.stepCount;
    for (const u of this.units) {
      for (const pc of u.pieces) {
        const p = this.params[pc.param]!;
        const wd = p.ndim >= 2 ? this.weightDecay : 0;
        const at = (u.base + pc.shardOffset) * 4;
        let w: number, g: number;
        if (this.stage === 1) {
          if (!p.grad) continue;
          w = p.ptr + pc.start * 4;
          g = p.grad.ptr + pc.start * 4;
        } else {
          w = this.stage === 3 ? this.paramShard!.ptr + at : p.ptr + pc.start * 4;
          g = this.gradShard!.ptr + at;
        }
        native.adamw(w, g, this.mShard.ptr + at, this.vShard.ptr + at, pc.len, this.lr, b1, b2, this.eps, wd, bc1, bc2, gs);
      }
    }
    if (this.stage < 3) {
      for (const u of this.units) {
        const send = Tensor.empty([u.shard]);
        this.packShard(u, send.ptr, (i) => this.params[i]!.ptr);
        this.gatherUnit(u, send, (i) => this.params[i]!.ptr);
        send.dispose();
      }
    }
  }

  state(): AdamWState {
    return adamwState(this);
  }

  /** The full (unsharded) moments per parameter: a collective, every rank must call it. */
  fullMoments(): { m: Tensor[]; v: Tensor[] } {
    const m = this.params.map((p) => zeros(p.shape));
    const v = this.params.map((p) => zeros(p.shape));
    for (const u of this.units) {
      for (const [shard, dst] of [[this.mShard, m], [this.vShard, v]] as const) {
        const view = shard.view_([u.shard], [1], u.base);
        this.gatherUnit(u, view, (i) => dst[i]!.ptr);
        view.dispose();
      }
    }
    return { m, v };
  }

  /** This rank's shards as flat tensors (views; do not dispose the optimizer while using them). */
  localShards(): { exp_avg: Tensor; exp_avg_sq: Tensor; param?: Tensor } {
    return { exp_avg: this.mShard, exp_avg_sq: this.vShard, ...(this.paramShard ? { param: this.paramShard } : {}) };
  }

  /** Loads full moments (from a checkpoint of any layout): each rank keeps its shard. */
  loadState(s: AdamWState, moments?: { m: Tensor[]; v: Tensor[] }): void {
    this.stepCount = s.step;
    this.lr = s.lr;
    if (!moments) return;
    for (const u of this.units) {
      for (const pc of u.pieces) {
        const at = this.mShard.ptr + (u.base + pc.shardOffset) * 4, atv = this.vShard.ptr + (u.base + pc.shardOffset) * 4;
        native.copyStrided(4, moments.m[pc.param]!.ptr + pc.start * 4, [1], at, [1], [pc.len]);
        native.copyStrided(4, moments.v[pc.param]!.ptr + pc.start * 4, [1], atv, [1], [pc.len]);
      }
    }
  }

  // ---- stage 3: gathering parameters ----------------------------------------------------------------

  /**
   * Runs `fn` with every parameter gathered (stage 3; at other stages it just runs `fn`).
   * With `writeBack`, what `fn` wrote into the parameters becomes the new shards (loading
   * weights). A collective: every rank must call it.
   */
  async withFullParams<T>(fn: () => T | Promise<T>, opts: { writeBack?: boolean } = {}): Promise<T> {
    if (this.stage < 3) return await fn();
    for (const u of this.units) this.acquire(u);
    try {
      const r = await fn();
      if (opts.writeBack) this.shardFromFull();
      return r;
    } finally {
      for (const u of this.units) this.releaseUnit(u);
    }
  }

  /**
   * Stage 3: wraps `root.forward` and each of `children`'s (each child's parameters must form one
   * unit) so parameters are gathered only while needed. Other stages: nothing to do.
   */
  shardModules(root: Module, children: Module[]): void {
    if (this.stage < 3) return;
    const unitOfModule = (m: Module): Unit => {
      const ps = m.parameters();
      const u = this.unitOf.get(ps[0]!);
      if (!u || ps.some((p) => this.unitOf.get(p) !== u)) throw new ValueError("ZeRO-3: a wrapped module's parameters must form exactly one unit");
      return u;
    };
    for (const child of children) this.wrapForward(child, unitOfModule(child), false);
    const rootUnit = this.unitOf.get(root.parameters().find((p) => !children.some((c) => c.parameters().includes(p)))!);
    if (rootUnit) this.wrapForward(root, rootUnit, true);
  }

  private wrapForward(m: Module, u: Unit, isRoot: boolean): void {
    const target = m as unknown as { forward: (...args: unknown[]) => unknown };
    const orig = target.forward.bind(m);
    const index = this.units.indexOf(u);
    target.forward = (...args: unknown[]) => {
      // Inside backward, a forward is activation checkpointing's replay of this block, whose
      // backward runs right after: the order there is backward's.
      const replay = isBackwardRunning();
      this.acquire(u);
      // Forward prefetch: the next block's gather runs while this unit computes (the root's
      // forward runs every block, so from the root it is the first block).
      if (!replay) this.startPrefetch(this.units[index + 1]);
      let out: unknown;
      try {
        out = orig(...args);
      } catch (e) {
        this.releaseUnit(u);
        throw e;
      }
      if (isRoot) {
        // The root's parameters (embeddings, tied head, final norm) are used at both ends of the
        // graph: keep them until their gradients are reduced (synchronize() releases leftovers).
        if (isGradEnabled()) {
          u.heldForBackward++;
          // Backward starts right after (loss, head, final norm), and the last block's comes
          // first: start gathering it now.
          if (!replay) this.startPrefetch(this.units[this.units.length - 1]);
        } else {
          this.releaseUnit(u);
        }
        return out;
      }
      const differentiable = out instanceof Tensor && out.requiresGrad && isGradEnabled();
      if (differentiable && replay) {
        // The replay's backward follows at once: keep the parameters gathered for it (released
        // when the unit's gradients are reduced) instead of gathering them twice.
        u.heldForBackward++;
        return this.gatherOnBackward(out as Tensor, u, index, false);
      }
      this.releaseUnit(u);
      if (differentiable) return this.gatherOnBackward(out as Tensor, u, index, true);
      return out;
    };
  }

  /**
   * An identity op whose backward marks the start of the module's backward: it gathers the
   * unit's parameters (unless `gather` is false: they are still held) and prefetches the
   * preceding unit's. `index` is the unit's position in this.units.
   */
  private gatherOnBackward(x: Tensor, u: Unit, index: number, gather: boolean): Tensor {
    const y = x.alias();
    x.dispose();
    return recordNode("zero3_gather", y, [x], (gy: Differentiable) => {
      if (gather) {
        this.acquire(u);
        u.heldForBackward++;
      }
      // Backward prefetch: the preceding block's backward comes next (the root, unit 0, is
      // still held from forward).
      if (index > 1) this.startPrefetch(this.units[index - 1]);
      return [(gy as Tensor).alias()];
    });
  }

  private acquire(u: Unit): void {
    if (u.refs++ > 0) return;
    for (const i of u.params) this.params[i]!.storage.restoreData_(Category.params);
    const dst = (i: number) => this.params[i]!.ptr;
    if (u.prefetched) {
      fence(this.gatherGroup);  // the prefetched gather (and any before it) is done
      this.scatterFull(u, u.prefetched, dst);
      u.prefetched.dispose();
      u.prefetched = null;
      this.timings.prefetched++;
      return;
    }
    const view = this.paramShard!.view_([u.shard], [1], u.base);
    this.gatherUnit(u, view, dst);
    view.dispose();
    this.timings.gatheredOnDemand++;
  }

  /** Starts gathering unit `u` (if given, not gathered and not already on its way). */
  private startPrefetch(u: Unit | undefined): void {
    if (!this.prefetchEnabled || !u || u.refs > 0 || u.prefetched) return;
    const full = withCategory("params", () => keep(Tensor.empty([u.shard * this.group.size])));
    const view = this.paramShard!.view_([u.shard], [1], u.base);
    const work = allGatherAsync(view, full, this.gatherGroup);  // holds both buffers until done
    view.dispose();
    work.wait().catch((e: unknown) => { this.prefetchError ??= e; });
    u.prefetched = full;
  }

  /** Waits for and frees a prefetch that was never used. */
  private dropPrefetch(u: Unit): void {
    if (!u.prefetched) return;
    fence(this.gatherGroup);
    u.prefetched.dispose();
    u.prefetched = null;
  }

  private releaseUnit(u: Unit): void {
    if (u.refs === 0) throw new Error("internal: ZeRO-3 unit released more often than gathered");
    if (--u.refs > 0) return;
    for (const i of u.params) this.params[i]!.storage.releaseData_();
  }

  /** Stage 3: copies this rank's elements of the (gathered) parameters into its shards. */
  private shardFromFull(): void {
    for (const u of this.units) this.packShard(u, this.paramShard!.ptr + u.base * 4, (i) => this.params[i]!.ptr);
  }

  // ---- helpers ------------------------------------------------------------------------------------

  /** Copies this rank's elements of a unit, read from per-parameter buffers, into `dst` (shard order). */
  private packShard(u: Unit, dst: number, src: (param: number) => number): void {
    native.fill(dst, u.shard, 0, 0);
    for (const pc of u.pieces) native.copyStrided(4, src(pc.param) + pc.start * 4, [1], dst + pc.shardOffset * 4, [1], [pc.len]);
  }

  /** All-gathers a unit's shards (`shard`, u.shard elements) and copies each parameter's range to `dst(i)`. */
  private gatherUnit(u: Unit, shard: Tensor, dst: (param: number) => number): void {
    const full = Tensor.empty([u.shard * this.group.size]);
    allGather(shard, full, this.gatherGroup);
    this.scatterFull(u, full, dst);
    full.dispose();
  }

  /** Copies each parameter's range of a gathered unit (`full`, the padded flat space) to `dst(i)`. */
  private scatterFull(u: Unit, full: Tensor, dst: (param: number) => number): void {
    u.params.forEach((i, k) => native.copyStrided(4, full.ptr + u.offsets[k]! * 4, [1], dst(i), [1], [this.params[i]!.numel]));
  }
}

/**
 * Rebuilds full per-parameter tensors from every rank's shard of a sharded checkpoint.
 * `shards[r]` is rank r's flat shard buffer; returns one Float32Array per parameter name.
 */
export function unshard(layout: ZeroLayout, shards: Float32Array[]): Map<string, Float32Array> {
  if (shards.length !== layout.size) throw new ValueError(`ZeRO checkpoint: expected ${layout.size} rank shards, got ${shards.length}`);
  const out = new Map<string, Float32Array>();
  let base = 0;
  for (const u of layout.units) {
    let off = 0;
    u.params.forEach((name, k) => {
      const n = u.numel[k]!;
      const dst = new Float32Array(n);
      for (let e = 0; e < n;) {
        const flat = off + e, r = Math.floor(flat / u.shard), within = flat - r * u.shard;
        const take = Math.min(n - e, u.shard - within);
        const src = shards[r]!;
        if (src.length < base + within + take) throw new ValueError(`ZeRO checkpoint: rank ${r}'s shard holds ${src.length} elements, layout needs ${base + within + take}`);
        dst.set(src.subarray(base + within, base + within + take), e);
        e += take;
      }
      out.set(name, dst);
      off += n;
    });
    base += u.shard;
  }
  return out;
}

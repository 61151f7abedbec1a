/**
 * FSDP-style parameter sharding (ZeRO-3's parameter half), applied to a model from outside
 * through module forward hooks: the model's code is untouched and knows nothing of it.
 *
 * Between uses only this rank's shard of each unit exists (`paramShard`, in FlatShards' layout);
 * the parameter tensors keep their identity, views and graph edges while their storage is
 * released (FSDP's `resize_(0)`). Each unit's module gets
 *   a pre-hook    gathering its parameters before its forward, and starting the next unit's
 *                 gather (forward prefetch: the following block; the root's forward runs every
 *                 block, so from the root it is the first);
 *   a post-hook   releasing them after it, and wrapping the output in an identity op whose
 *                 backward gathers them again and prefetches the preceding unit (backward
 *                 prefetch);
 * and each parameter a gradient-ready hook releasing the unit once backward completed all its
 * gradients. Prefetched gathers run on a communicator of their own, so they never queue behind
 * the gradient reduce-scatters, and are waited for with `fence()` inside the synchronous forward.
 * At most two units are gathered at a time. With activation checkpointing, a block's forward
 * replayed inside backward (`isBackwardRunning()`) keeps its parameters gathered for the
 * backward that follows instead of gathering them twice.
 *
 * The root unit (embeddings, tied head, final norm) is used at both ends of the graph: it stays
 * gathered from the root's forward until its gradients are complete. `afterBackward()` releases
 * whatever a forward without backward left gathered and drops unused prefetches.
 */
import { ValueError } from "../core/errors.js";
import { Tensor, withCategory, keep, Category } from "../tensor/index.js";
import { isBackwardRunning, isGradEnabled, recordNode, type Differentiable } from "../autograd/index.js";
import type { Module } from "../nn/index.js";
import { allGatherAsync, broadcast, fence, setCommThreadNice, splitGroup, type ProcessGroup } from "./collectives.js";
import type { FlatShards, ShardUnit } from "./flat_shards.js";
import type { GradSync } from "./grad_sync.js";

/** Options of `FullyShardedUnits`. */
export interface FSDPOptions {
  /**
   * Start the all-gather of the unit that runs next while the current one computes (forward
   * and backward prefetch). Default true; false gathers each unit when it is needed.
   */
  prefetch?: boolean;
}

interface UnitState {
  /** Users of the gathered parameters. */
  refs: number;
  /** Holds kept for backward (root forward, checkpointing replays, a block's backward). */
  heldForBackward: number;
  /** Gradients completed in the current backward. */
  ready: number;
  /** The padded flat space an early all-gather is filling. */
  prefetched: Tensor | null;
}

/**
 * @example
 * const shards = new FlatShards(model.parameters(), dp, model.h.map((b) => b.parameters()));
 * const fsdp = new FullyShardedUnits(model, model.h, shards);
 * const opt = new ShardedAdamW(shards, adam, { stage: 3, paramShard: fsdp.paramShard });
 * await fsdp.withFullParams(() => model.savePretrained(dir));
 */
export class FullyShardedUnits implements GradSync {
  readonly shards: FlatShards;
  /** This rank's parameter shards, the only copy of the weights between uses. */
  readonly paramShard: Tensor;
  /** Units gathered from a prefetch vs gathered on demand. */
  readonly timings = { prefetched: 0, gatheredOnDemand: 0 };
  /** The communicator of parameter all-gathers (a copy of the data-parallel group). */
  private readonly gatherGroup: ProcessGroup;
  private readonly prefetchEnabled: boolean;
  private readonly state: UnitState[];
  /** A prefetch's gather that failed: afterBackward() reports it. */
  private prefetchError: unknown = null;

  /**
   * Shards `root`'s parameters: `blocks` each form one unit of `shards` (FlatShards built with
   * one group per block), the rest of root's parameters the root unit. A collective: every
   * rank builds it in the same order.
   */
  constructor(root: Module, blocks: readonly Module[], shards: FlatShards, opts: FSDPOptions = {}) {
    this.shards = shards;
    const group = shards.group;
    this.prefetchEnabled = opts.prefetch ?? true;
    this.state = shards.units.map(() => ({ refs: 0, heldForBackward: 0, ready: 0, prefetched: null }));
    const unitOfModule = (m: Module): ShardUnit => {
      const ps = m.parameters();
      const u = ps[0] && shards.unitOf(ps[0]);
      if (!u || u.params.length !== ps.length || ps.some((p) => shards.unitOf(p) !== u)) {
        throw new ValueError("FSDP: a sharded module's parameters must form exactly one unit of the FlatShards (one group per block)");
      }
      return u;
    };
    const blockUnits = blocks.map(unitOfModule);
    const inBlocks = new Set(blocks.flatMap((b) => b.parameters()));
    const rootParam = root.parameters().find((p) => !inBlocks.has(p));
    const rootUnit = rootParam ? shards.unitOf(rootParam) : undefined;
    // Every rank starts from rank 0's weights, before they are cut into shards.
    for (const p of shards.params) broadcast(p, group, 0);
    this.gatherGroup = splitGroup(group, 0, group.rank, `${group.name ?? "dp"}/fsdp-gather`);
    // The next block waits for its prefetch soon: its thread must not starve behind compute.
    setCommThreadNice(this.gatherGroup, 0);
    this.paramShard = withCategory("params", () => keep(Tensor.empty([shards.shardSize])));
    this.shardFromFull();
    for (const p of shards.params) p.storage.releaseData_();
    blocks.forEach((b, i) => this.hookBlock(b, blockUnits[i]!));
    if (rootUnit) this.hookRoot(root, rootUnit);
    for (const p of shards.params) p.registerGradReadyHook((t) => this.onReady(t));
  }

  // ---- hooks --------------------------------------------------------------------------------------

  private hookBlock(m: Module, u: ShardUnit): void {
    const units = this.shards.units;
    m.registerForwardPreHook(() => {
      this.acquire(u);
      // Inside backward, a forward is activation checkpointing's replay of this block, whose
      // backward runs right after: the order there is backward's, nothing to prefetch.
      if (!isBackwardRunning()) this.startPrefetch(units[u.index + 1]);
    });
    m.registerForwardHook((_m, _args, out) => {
      const differentiable = out instanceof Tensor && out.requiresGrad && isGradEnabled();
      if (differentiable && isBackwardRunning()) {
        // The replay's backward follows at once: keep the parameters gathered for it (released
        // when the unit's gradients are complete) instead of gathering them twice.
        this.state[u.index]!.heldForBackward++;
        return this.gatherOnBackward(out, u, false);
      }
      this.releaseUnit(u);
      return differentiable ? this.gatherOnBackward(out, u, true) : undefined;
    }, { onError: () => this.releaseUnit(u) });
  }

  private hookRoot(m: Module, u: ShardUnit): void {
    const units = this.shards.units;
    m.registerForwardPreHook(() => {
      this.acquire(u);
      if (!isBackwardRunning()) this.startPrefetch(units[u.index + 1]);
    });
    m.registerForwardHook(() => {
      if (!isGradEnabled()) {
        this.releaseUnit(u);
        return;
      }
      // Used again by backward (loss, head, final norm, embeddings): keep until its gradients
      // are complete. Backward starts right after, with the last block: start gathering it now.
      this.state[u.index]!.heldForBackward++;
      if (!isBackwardRunning()) this.startPrefetch(units[units.length - 1]);
    }, { onError: () => this.releaseUnit(u) });
  }

  /**
   * An identity op whose backward marks the start of the module's backward: it gathers the
   * unit's parameters (unless `gather` is false: they are still held) and prefetches the
   * preceding unit's.
   */
  private gatherOnBackward(x: Tensor, u: ShardUnit, gather: boolean): Tensor {
    const y = x.alias();
    x.dispose();
    return recordNode("fsdp_gather", y, [x], (gy: Differentiable) => {
      if (gather) {
        this.acquire(u);
        this.state[u.index]!.heldForBackward++;
      }
      // Backward prefetch: the preceding block's backward comes next (the root, unit 0, is
      // still held from forward).
      if (u.index > 1) this.startPrefetch(this.shards.units[u.index - 1]);
      return [(gy as Tensor).alias()];
    });
  }

  private onReady(p: Tensor): void {
    const u = this.shards.unitOf(p)!;
    const s = this.state[u.index]!;
    if (++s.ready < u.params.length) return;
    s.ready = 0;
    if (s.heldForBackward > 0) {
      s.heldForBackward--;
      this.releaseUnit(u);
    }
  }

  // ---- GradSync -----------------------------------------------------------------------------------

  beforeMicroStep(): void {}

  /**
   * After each micro-step's backward (once the gradient reductions are done): drops prefetches
   * nobody used (they would hold stale weights after step()), reports a failed prefetch, and
   * releases units a forward without backward left gathered.
   */
  async afterBackward(): Promise<void> {
    for (const u of this.shards.units) this.dropPrefetch(u);
    if (this.prefetchError) {
      const e = this.prefetchError;
      this.prefetchError = null;
      throw e;
    }
    for (const u of this.shards.units) {
      const s = this.state[u.index]!;
      s.ready = 0;
      while (s.heldForBackward > 0) {
        s.heldForBackward--;
        this.releaseUnit(u);
      }
    }
  }

  // ---- gathering ----------------------------------------------------------------------------------

  /**
   * Runs `fn` with every parameter gathered. With `writeBack`, what `fn` wrote into the
   * parameters becomes the new shards (loading weights). A collective: every rank must call it.
   */
  async withFullParams<T>(fn: () => T | Promise<T>, opts: { writeBack?: boolean } = {}): Promise<T> {
    for (const u of this.shards.units) this.acquire(u);
    try {
      const r = await fn();
      if (opts.writeBack) this.shardFromFull();
      return r;
    } finally {
      for (const u of this.shards.units) this.releaseUnit(u);
    }
  }

  private acquire(u: ShardUnit): void {
    const s = this.state[u.index]!;
    if (s.refs++ > 0) return;
    for (const i of u.params) this.shards.params[i]!.storage.restoreData_(Category.params);
    const dst = (i: number) => this.shards.params[i]!;
    if (s.prefetched) {
      fence(this.gatherGroup);  // the prefetched gather (and any before it) is done
      this.shards.unpack(u, s.prefetched, dst);
      s.prefetched.dispose();
      s.prefetched = null;
      this.timings.prefetched++;
      return;
    }
    const view = this.shards.shardOf(this.paramShard, u);
    this.shards.gather(u, view, dst, this.gatherGroup);
    view.dispose();
    this.timings.gatheredOnDemand++;
  }

  /** Starts gathering unit `u` (if given, not gathered and not already on its way). */
  private startPrefetch(u: ShardUnit | undefined): void {
    if (!this.prefetchEnabled || !u) return;
    const s = this.state[u.index]!;
    if (s.refs > 0 || s.prefetched) return;
    const full = withCategory("params", () => keep(Tensor.empty([u.shard * this.shards.group.size])));
    const view = this.shards.shardOf(this.paramShard, u);
    const work = allGatherAsync(view, full, this.gatherGroup);  // holds both buffers until done
    view.dispose();
    work.wait().catch((e: unknown) => { this.prefetchError ??= e; });
    s.prefetched = full;
  }

  /** Waits for and frees a prefetch that was never used. */
  private dropPrefetch(u: ShardUnit): void {
    const s = this.state[u.index]!;
    if (!s.prefetched) return;
    fence(this.gatherGroup);
    s.prefetched.dispose();
    s.prefetched = null;
  }

  private releaseUnit(u: ShardUnit): void {
    const s = this.state[u.index]!;
    if (s.refs === 0) throw new Error("internal: FSDP unit released more often than gathered");
    if (--s.refs > 0) return;
    for (const i of u.params) this.shards.params[i]!.storage.releaseData_();
  }

  /** Copies this rank's elements of the (gathered) parameters into its shards. */
  private shardFromFull(): void {
    for (const u of this.shards.units) {
      const view = this.shards.shardOf(this.paramShard, u);
      this.shards.pack(u, view, (i) => this.shards.params[i]!);
      view.dispose();
    }
  }
}

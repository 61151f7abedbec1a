/**
 * Data parallelism with communication overlapped with backward (PyTorch DDP's reducer).
 *
 * Parameters are grouped into buckets of about `bucketBytes`, in reverse registration order
 * (roughly the order backward produces their gradients). When every gradient of a bucket is
 * ready (gradient-ready hooks), it is copied into the bucket's flat buffer and an asynchronous
 * all-reduce starts while backward continues. `synchronize()` waits for all buckets and writes
 * the averaged gradients back and frees the buckets' buffers (so between steps only `.grad`
 * holds gradients: 4 bytes per parameter). On accumulation micro-steps nothing is reduced
 * until the last.
 * At group size 1 nothing is registered: the single-process path is unchanged.
 *
 * It is the data-parallel GradSync `parallelize()` applies when ZeRO is off: `beforeMicroStep`
 * switches the hooks on for the last micro-step only, `afterBackward` of that step waits.
 */
import { Tensor, withCategory, keep } from "../tensor/index.js";
import { allReduceAsync, broadcast, type ProcessGroup, type Work } from "./collectives.js";
import type { GradSync } from "./grad_sync.js";
import { copyRange, zeroRange } from "./_views.js";

export interface DataParallelOptions {
  /** Target bucket size in bytes. Default 25 MiB (PyTorch's). */
  bucketBytes?: number;
  /** dtype of the all-reduce ("bfloat16" halves the bytes; `.grad` stays float32). Default "float32". */
  reduceDtype?: "float32" | "bfloat16";
}

interface Bucket {
  params: Tensor[];
  offsets: number[];
  numel: number;
  /** The flat buffer while a reduction is in flight (allocated per step, freed after). */
  flat: Tensor | null;
  ready: number;
  pending: Work | null;
}

/**
 * @example
 * const ddp = new DataParallel(model.parameters(), mesh.group("dp"), { bucketBytes: 25 * 2 ** 20 });
 * ddp.beforeMicroStep(true); loss.backward(); await ddp.afterBackward(true);  // .grad is averaged
 */
export class DataParallel implements GradSync {
  readonly group: ProcessGroup;
  private readonly buckets: Bucket[] = [];
  private readonly bucketOf = new Map<Tensor, Bucket>();
  /** When false (accumulation micro-steps), gradient-ready hooks do nothing. */
  syncEnabled = true;
  /**
   * Overlap accounting, cumulative: buckets launched, milliseconds the bucket all-reduces took
   * on the communication thread (commMs), and milliseconds synchronize() waited for them
   * (waitedMs). The share of communication hidden behind backward is 1 - waitedMs / commMs.
   */
  readonly timings = { launched: 0, commMs: 0, waitedMs: 0 };
  /** dtype of the bucket buffers and their all-reduce. */
  readonly reduceDtype: "float32" | "bfloat16" = "float32";

  constructor(params: Tensor[], group: ProcessGroup, opts: DataParallelOptions = {}) {
    this.group = group;
    if (group.size === 1) return;
    const limit = opts.bucketBytes ?? 25 * 2 ** 20;
    this.reduceDtype = opts.reduceDtype ?? "float32";
    let cur: Tensor[] = [];
    let bytes = 0;
    const flush = () => {
      if (!cur.length) return;
      const offsets: number[] = [];
      let n = 0;
      for (const p of cur) { offsets.push(n); n += p.numel; }
      const b: Bucket = { params: cur, offsets, numel: n, flat: null, ready: 0, pending: null };
      this.buckets.push(b);
      for (const p of cur) this.bucketOf.set(p, b);
      cur = [];
      bytes = 0;
    };
    for (const p of [...params].reverse()) {
      cur.push(p);
      bytes += p.numel * (this.reduceDtype === "float32" ? 4 : 2);
      if (bytes >= limit) flush();
    }
    flush();
    for (const p of params) p.registerGradReadyHook((t) => this.onReady(t));
    // Every rank starts from rank 0's weights.
    for (const p of params) broadcast(p, group, 0);
  }

  private onReady(p: Tensor): void {
    if (!this.syncEnabled) return;
    const b = this.bucketOf.get(p);
    if (!b || !p.grad) return;
    const i = b.params.indexOf(p);
    const flat = this.flatOf(b);
    copyRange(flat, b.offsets[i]!, p.grad, 0, p.numel);
    if (++b.ready === b.params.length) {
      b.pending = allReduceAsync(flat, this.group, "avg");
      this.timings.launched++;
    }
  }

  /** The bucket's flat buffer, allocated when its first gradient arrives (the caching allocator makes this cheap). */
  private flatOf(b: Bucket): Tensor {
    return (b.flat ??= withCategory("grads", () => keep(Tensor.empty([b.numel], this.reduceDtype))));
  }

  /** Reduce only on the last micro-step: earlier ones accumulate into `.grad` locally. */
  beforeMicroStep(isLast: boolean): void {
    this.syncEnabled = isLast;
  }

  /** After the last micro-step's backward: `synchronize()`. */
  async afterBackward(isLast: boolean): Promise<void> {
    if (isLast) await this.synchronize();
  }

  /** Waits for every bucket and writes the averaged gradients back into `.grad`. */
  async synchronize(): Promise<void> {
    if (this.group.size === 1) return;
    const t0 = performance.now();
    for (const b of this.buckets) {
      const flat = this.flatOf(b);
      if (!b.pending) {
        // Some parameter got no gradient this step (unused): reduce the bucket anyway so ranks agree.
        for (let i = 0; i < b.params.length; i++) {
          const p = b.params[i]!;
          if (p.grad) copyRange(flat, b.offsets[i]!, p.grad, 0, p.numel);
          else zeroRange(flat, b.offsets[i]!, p.numel);
        }
        b.pending = allReduceAsync(flat, this.group, "avg");
      }
      await b.pending.wait();
      this.timings.commMs += b.pending.seconds * 1000;
      b.params.forEach((p, i) => {
        if (p.grad) copyRange(p.grad, 0, flat, b.offsets[i]!, p.numel);
      });
      flat.dispose();
      b.flat = null;
      b.pending = null;
      b.ready = 0;
    }
    this.timings.waitedMs += performance.now() - t0;
  }
}

/**
 * Optimizer-state offload to disk (ZeRO-Infinity's NVMe offload, Rajbhandari et al. 2021, for
 * AdamW's moments): m and v live in a scratch file and stream through memory in fixed-size
 * chunks during `step()`, so resident optimizer memory is O(chunk), not O(parameters).
 *
 * The pipeline, one chunk at a time, with three host buffers and one resident chunk tensor:
 *
 *     read chunk i+1  ─┐                  (libuv's thread pool, into host buffer (i+1) % 3)
 *     update chunk i   ├─ at the same time (the native AdamW kernel on the chunk tensor, this thread)
 *     write chunk i-1 ─┘                  (thread pool, from host buffer (i-1) % 3)
 *
 * Chunk i moves file -> host buffer i % 3 -> chunk tensor -> (update) -> the same host buffer ->
 * file; a buffer is read into again only once its previous write is done.
 *
 * Each chunk is one contiguous region of the file, [m(len) | v(len)], so it moves in one read
 * and one write; the resident chunk tensor has the same layout. The update itself is optim's
 * `adamwUpdate()` on views of the chunk: the same kernel call the in-memory AdamW makes, so the
 * results are bit-exact with it (tested with chunks that cut tensors anywhere).
 *
 * What is offloaded is m and v (8 bytes per parameter), and with `OffloadedAdamW`'s
 * `masterDtype` (bf16 / fp16 training, one process, ZeRO 0) the fp32 master weights too: the
 * chunk regions are then [m | v | master] (12 bytes per parameter, ZeRO-Infinity's figure), the
 * parameters stay resident in the 16-bit dtype (so do their gradients), and each step writes
 * the rounded master back into them. Without it the fp32 parameters stay resident: they are
 * both the master weights and what the model computes with (bf16 mode casts them at use).
 *
 * The file is scratch: it is created empty (all zeros) by every run and never read across a
 * crash. Checkpoints hold the moments (read back from the file by `stateDict()`), and resuming
 * rewrites the file from the checkpoint (`loadStateDict()`), so a process killed mid-step,
 * with the file half-updated, resumes exactly from its last checkpoint.
 *
 * Memory: the chunk tensor (chunkBytes) counts under the allocator's "optimizer" category; the
 * three host buffers (3 x chunkBytes) are Node buffers outside the allocator's counts. The OS page cache may keep file
 * pages while memory is free; it gives them back under pressure (they are not process memory).
 */
import { closeSync, mkdirSync, openSync, read, readSync, ftruncateSync, unlinkSync, write, writeSync } from "node:fs";
import { dirname } from "node:path";
import { ValueError } from "../core/errors.js";
import { backend, keep, noGrad, tensor, withCategory, Tensor } from "./_deps.js";
import {
  adamwState, adamwStepHyper, adamwUpdate, clearGrads, gradNorm, momentsOf, resolveAdamWOptions,
  type AdamWOptions, type GradNormScope,
} from "./adamw.js";
import type { AdamWState, GradNormResult, HostArray, HostOptimizerStateDict, Optimizer, OptimizerStateDict, StepOptions } from "./optimizer.js";

/** Bytes of one fp32 field (m, v or the master weight) per element. */
const FIELD_BYTES = 4;
/** Node's fs calls move at most 2 GiB at once; chunks stay well below. */
const MAX_CHUNK_BYTES = 2 ** 30;
/** Host buffers: one being read into, one being updated, one being written from. */
const SLOTS = 3;
/**
 * Elements per read-back from the chunk tensor. The backend returns each read as a new
 * ArrayBuffer; tens of MiB at once cost page faults on fresh memory (~0.5 s per 32 MiB measured
 * on the dev VM), 256 KiB pieces reuse freed memory (~15x faster there).
 */
const READBACK_ELEMS = 64 * 1024;

/** Where and how the moments are offloaded. */
export interface OffloadOptions {
  /** The scratch file (its directory is created). Every run truncates it. */
  path: string;
  /** Bytes of optimizer state (m and v, and the master with `master`) per chunk. Default 32 MiB. */
  chunkBytes?: number;
  /**
   * Hold a third fp32 field per element, the master weight, after m and v (OffloadedAdamW's
   * `masterDtype`). It starts as zeros like m and v; the owner writes it. Default false.
   */
  master?: boolean;
  /** Delete the file on `close()`. Default true. */
  removeOnClose?: boolean;
}

/** I/O accounting of an OffloadFile, cumulative (the bench reads it; `resetTimings()` zeroes it). */
export interface OffloadTimings {
  /** Chunks streamed through `update()`. */
  chunks: number;
  bytesRead: number;
  bytesWritten: number;
  /** Milliseconds this thread waited for reads or writes (the part of I/O not hidden by compute). */
  waitMs: number;
  /** Milliseconds in the update callbacks (the AdamW kernel). */
  computeMs: number;
  /** Milliseconds copying chunks from host buffers into the chunk tensor, and back out. */
  copyInMs: number;
  copyOutMs: number;
}

/** A run of the flat state that belongs to one tensor: flat elements [start, start + len). */
export interface OffloadSegment {
  /** First flat element. */
  start: number;
  len: number;
}

/**
 * AdamW's m and v for `numel` flat elements, in a scratch file streamed in chunks.
 * @example
 * const f = new OffloadFile(1_000_000, { path: "out/offload/rank0.bin", chunkBytes: 32 << 20 });
 * await f.update([{ start: 0, len: 1_000_000 }], (seg, from, n, m, v) => adamwUpdate(p, g, m, v, h));
 * f.close();
 */
export class OffloadFile {
  readonly path: string;
  /** Elements of m (and of v). */
  readonly numel: number;
  /** Elements per chunk. */
  readonly chunkElems: number;
  /** fp32 fields per element: 2 (m, v) or 3 (m, v, master). */
  readonly fields: 2 | 3;
  readonly timings: OffloadTimings = { chunks: 0, bytesRead: 0, bytesWritten: 0, waitMs: 0, computeMs: 0, copyInMs: 0, copyOutMs: 0 };
  private fd: number;
  private readonly removeOnClose: boolean;
  /** The resident chunk, [m(len) | v(len) (| master(len))] like the file's chunk regions. */
  private readonly chunk: Tensor;
  private readonly slots: Float32Array[];
  private busy = false;

  constructor(numel: number, opts: OffloadOptions) {
    if (!Number.isSafeInteger(numel) || numel < 0) throw new ValueError(`OffloadFile: numel must be a non-negative integer, got ${numel}`);
    const chunkBytes = opts.chunkBytes ?? 32 * 2 ** 20;
    this.fields = opts.master ? 3 : 2;
    const elemBytes = this.fields * FIELD_BYTES;
    if (!(Number.isSafeInteger(chunkBytes) && chunkBytes >= elemBytes && chunkBytes <= MAX_CHUNK_BYTES)) {
      throw new ValueError(`OffloadFile: chunkBytes must be an integer from ${elemBytes} (one element's state) to ${MAX_CHUNK_BYTES}, got ${chunkBytes}`);
    }
    this.path = opts.path;
    this.numel = numel;
    this.chunkElems = Math.max(1, Math.min(Math.floor(chunkBytes / elemBytes), numel));
    this.removeOnClose = opts.removeOnClose ?? true;
    mkdirSync(dirname(opts.path), { recursive: true });
    // "w+": a fresh file every run; the holes ftruncate leaves read as zeros (AdamW's initial state).
    this.fd = openSync(opts.path, "w+", 0o600);
    ftruncateSync(this.fd, numel * elemBytes);
    this.chunk = withCategory("optimizer", () => keep(Tensor.empty([this.fields * this.chunkElems])));
    this.slots = Array.from({ length: SLOTS }, () => new Float32Array(this.fields * this.chunkElems));
  }

  /** Number of chunks. */
  get chunks(): number {
    return Math.ceil(this.numel / this.chunkElems);
  }

  /** Bytes resident for streaming: the chunk tensor plus the three host buffers. */
  get residentBytes(): number {
    return (1 + SLOTS) * this.chunkElems * this.fields * FIELD_BYTES;
  }

  /**
   * Streams every chunk that holds part of a segment through memory: `fn(seg, from, n, m, v)`
   * is called for each part of each segment inside a chunk, `from` being the part's first
   * element within the segment, `m`/`v` (and `w`, the master, when the file holds one) 1-D
   * views (n elements) of the chunk that `fn` updates in place. Segments must not overlap; chunks no segment touches are neither read nor
   * written. Resolves once every updated chunk is back in the file.
   */
  async update<S extends OffloadSegment>(segments: readonly S[], fn: (seg: S, from: number, n: number, m: Tensor, v: Tensor, w: Tensor | null) => void): Promise<void> {
    this.checkOpen();
    if (this.busy) throw new ValueError(`OffloadFile ${this.path}: update() called while another update is running (await it first)`);
    const C = this.chunkElems, F = this.fields;
    const byChunk = new Map<number, S[]>();
    for (const s of segments) {
      if (!(s.start >= 0 && s.len >= 0 && s.start + s.len <= this.numel)) {
        throw new ValueError(`OffloadFile: segment [${s.start}, ${s.start + s.len}) is outside the ${this.numel} offloaded elements`);
      }
      for (let k = Math.floor(s.start / C); k * C < s.start + s.len; k++) {
        let list = byChunk.get(k);
        if (!list) byChunk.set(k, (list = []));
        list.push(s);
      }
    }
    const order = [...byChunk.keys()].sort((a, b) => a - b);
    if (order.length === 0) return;
    this.busy = true;
    const t = this.timings;
    const reads: Array<Promise<void>> = [];
    const writes: Array<Promise<void>> = [];
    const wait = async (p: Promise<void> | undefined) => {
      if (!p) return;
      const t0 = performance.now();
      await p;
      t.waitMs += performance.now() - t0;
    };
    const written: boolean[] = [];
    // Chunk i's slot is free once chunk i - SLOTS is written. When it is, the read is issued
    // now, synchronously, so it runs while this thread computes (an await would defer it).
    const startRead = (i: number): Promise<void> => {
      const issue = () => {
        const k = order[i]!, len = this.chunkLen(k);
        t.bytesRead += F * len * FIELD_BYTES;
        return _readAt(this.fd, new Uint8Array(this.slots[i % SLOTS]!.buffer, 0, F * len * FIELD_BYTES), k * C * F * FIELD_BYTES);
      };
      const prev = writes[i - SLOTS];
      return !prev || written[i - SLOTS] ? issue() : prev.then(issue);
    };
    try {
      reads[0] = _handled(startRead(0));
      for (let i = 0; i < order.length; i++) {
        const k = order[i]!, len = this.chunkLen(k), base = k * C;
        const slot = this.slots[i % SLOTS]!.subarray(0, F * len);
        await wait(reads[i]);
        let t0 = performance.now();
        const view = noGrad(() => this.chunk.narrow(0, 0, F * len));
        backend.write(view, slot);
        view.dispose();
        t.copyInMs += performance.now() - t0;
        if (i + 1 < order.length) reads[i + 1] = _handled(startRead(i + 1));
        t0 = performance.now();
        for (const s of byChunk.get(k)!) {
          const lo = Math.max(s.start, base), hi = Math.min(s.start + s.len, base + len);
          if (hi <= lo) continue;
          const [m, v, w] = noGrad(() => [0, 1, 2].slice(0, F).map((f) => this.chunk.narrow(0, f * len + lo - base, hi - lo)));
          try {
            fn(s, lo - s.start, hi - lo, m!, v!, w ?? null);
          } finally {
            m!.dispose();
            v!.dispose();
            w?.dispose();
          }
        }
        t.computeMs += performance.now() - t0;
        t0 = performance.now();
        for (let e = 0; e < F * len; e += READBACK_ELEMS) {
          const n = Math.min(READBACK_ELEMS, F * len - e);
          const piece = noGrad(() => this.chunk.narrow(0, e, n));
          slot.set(new Float32Array(backend.read(piece, n)), e);
          piece.dispose();
        }
        t.copyOutMs += performance.now() - t0;
        writes[i] = _handled(_writeAt(this.fd, new Uint8Array(slot.buffer, 0, F * len * FIELD_BYTES), base * F * FIELD_BYTES).then(() => { written[i] = true; }));
        t.bytesWritten += F * len * FIELD_BYTES;
        t.chunks++;
      }
      await wait(Promise.all(writes).then(() => undefined));
    } finally {
      // On an error, let every request in flight finish before the buffers are reused.
      await Promise.allSettled([...reads, ...writes]);
      this.busy = false;
    }
  }

  /** m and v of flat elements [start, start + len), read synchronously (checkpoints). */
  readRange(start: number, len: number): { m: Float32Array; v: Float32Array } {
    return { m: this.readField(0, start, len), v: this.readField(1, start, len) };
  }

  /** Overwrites m and v of flat elements [start, start + m.length) (restoring a checkpoint). */
  writeRange(start: number, m: Float32Array, v: Float32Array): void {
    if (m.length !== v.length) throw new ValueError(`OffloadFile.writeRange: m has ${m.length} elements, v ${v.length}`);
    this.writeField(0, start, m);
    this.writeField(1, start, v);
  }

  /** The master weights of flat elements [start, start + len) (a file opened with `master`). */
  readMaster(start: number, len: number): Float32Array {
    return this.readField(2, start, len);
  }

  /** Overwrites the master weights of flat elements [start, start + w.length). */
  writeMaster(start: number, w: Float32Array): void {
    this.writeField(2, start, w);
  }

  /** Field f (0 m, 1 v, 2 master) of a range, read synchronously. */
  private readField(f: number, start: number, len: number): Float32Array {
    this.checkField(f);
    this.checkRange(start, len);
    const out = new Float32Array(len);
    this.eachChunkPart(start, len, (pos, chunkBase, chunkLen, off, n) => {
      _readSyncAt(this.fd, new Uint8Array(out.buffer, pos * FIELD_BYTES, n * FIELD_BYTES), (chunkBase * this.fields + f * chunkLen + off) * FIELD_BYTES);
    });
    return out;
  }

  private writeField(f: number, start: number, a: Float32Array): void {
    this.checkField(f);
    this.checkRange(start, a.length);
    this.eachChunkPart(start, a.length, (pos, chunkBase, chunkLen, off, n) => {
      _writeSyncAt(this.fd, new Uint8Array(a.buffer, a.byteOffset + pos * FIELD_BYTES, n * FIELD_BYTES), (chunkBase * this.fields + f * chunkLen + off) * FIELD_BYTES);
    });
  }

  private checkField(f: number): void {
    if (f >= this.fields) throw new ValueError(`OffloadFile ${this.path} holds m and v only (no master weights); open it with master: true`);
  }

  /** Zeroes the I/O accounting. */
  resetTimings(): void {
    Object.assign(this.timings, { chunks: 0, bytesRead: 0, bytesWritten: 0, waitMs: 0, computeMs: 0, copyInMs: 0, copyOutMs: 0 });
  }

  /** Closes (and by default deletes) the file and frees the chunk. Idempotent. */
  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
    this.chunk.dispose();
    if (this.removeOnClose) {
      try {
        unlinkSync(this.path);
      } catch {
        // already gone: nothing to clean up
      }
    }
  }

  private chunkLen(k: number): number {
    return Math.min(this.chunkElems, this.numel - k * this.chunkElems);
  }

  /** Calls fn(posInRange, chunkBase, chunkLen, offsetInChunk, n) for each chunk part of a range. */
  private eachChunkPart(start: number, len: number, fn: (pos: number, base: number, chunkLen: number, off: number, n: number) => void): void {
    const C = this.chunkElems;
    for (let e = start; e < start + len;) {
      const k = Math.floor(e / C), base = k * C, n = Math.min(start + len, base + this.chunkLen(k)) - e;
      fn(e - start, base, this.chunkLen(k), e - base, n);
      e += n;
    }
  }

  private checkRange(start: number, len: number): void {
    this.checkOpen();
    if (!(start >= 0 && len >= 0 && start + len <= this.numel)) throw new ValueError(`OffloadFile: range [${start}, ${start + len}) is outside the ${this.numel} offloaded elements`);
  }

  private checkOpen(): void {
    if (this.fd < 0) throw new ValueError(`OffloadFile ${this.path} is closed`);
  }
}

/**
 * `p`, marked handled: a request that fails while this thread computes must not count as an
 * unhandled rejection (Node would exit) before the loop gets to awaiting it.
 */
function _handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

/** Reads dst.length bytes at `position` (looping over short reads). */
function _readAt(fd: number, dst: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const more = (done: number) => {
      if (done === dst.length) return resolve();
      read(fd, dst, done, dst.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(new ValueError(`offload file: unexpected end of file at byte ${position + done} (the scratch file was truncated while training)`));
        more(done + n);
      });
    };
    more(0);
  });
}

/** Writes all of src at `position`. */
function _writeAt(fd: number, src: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const more = (done: number) => {
      if (done === src.length) return resolve();
      write(fd, src, done, src.length - done, position + done, (err, n) => (err ? reject(err) : more(done + n)));
    };
    more(0);
  });
}

function _readSyncAt(fd: number, dst: Uint8Array, position: number): void {
  for (let done = 0; done < dst.length;) {
    const n = readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) throw new ValueError(`offload file: unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

function _writeSyncAt(fd: number, src: Uint8Array, position: number): void {
  for (let done = 0; done < src.length;) done += writeSync(fd, src, done, src.length - done, position + done);
}

/** OffloadedAdamW's options: the file's, plus where the master weights live. */
export interface OffloadedAdamWOptions extends OffloadOptions {
  /**
   * Offload the fp32 master weights too, and keep the parameters resident in this 16-bit dtype
   * (bf16 / fp16 training). The constructor moves each float32 parameter's values into the file
   * and replaces its data with the rounded copy; gradients then arrive in that dtype. Default:
   * none (float32 parameters stay resident and are the master weights).
   */
  masterDtype?: "bfloat16" | "float16";
}

/**
 * AdamW with m and v offloaded to disk (see the file comment): same math, same kernel, same
 * state dict as `AdamW`, but `step()` is async (it streams the moments through memory).
 *
 * With `masterDtype` the fp32 master weights live in the file too (12 bytes per parameter on
 * disk): each chunk's update reads master/m/v, runs the same `adamwUpdate()` on the fp32 master
 * (the kernel widens the 16-bit gradient), writes them back, and copies the rounded master into
 * the resident 16-bit parameter. Code that reads or writes whole weights (checkpoints, export)
 * goes through `withMasterParams()`, which swaps the fp32 masters in for its duration.
 * @example
 * const opt = new OffloadedAdamW(model.parameters(), { lr: 6e-4 }, { path: "out/offload/rank00000.bin" });
 * loss.backward(); await opt.step(); opt.zeroGrad();
 * opt.close();
 */
export class OffloadedAdamW implements Optimizer {
  readonly params: Tensor[];
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  stepCount = 0;
  /** Which gradients the global norm counts and how ranks combine it (as AdamW's). */
  normScope: GradNormScope | null = null;
  /** The moments: parameter i owns flat elements [offsets[i], offsets[i] + numel). */
  readonly file: OffloadFile;
  private readonly offsets: number[] = [];

  /** The resident parameters' dtype when the masters are offloaded, else null. */
  readonly masterDtype: "bfloat16" | "float16" | null;

  constructor(params: Tensor[], adam: AdamWOptions, offload: OffloadedAdamWOptions) {
    this.params = params;
    const r = resolveAdamWOptions(adam);
    this.lr = r.lr;
    this.betas = r.betas;
    this.eps = r.eps;
    this.weightDecay = r.weightDecay;
    let total = 0;
    for (const p of params) {
      if (p.dtype !== "float32" || !p.isContiguous) throw new ValueError(`OffloadedAdamW: parameter ${p.name ?? ""} must be a contiguous float32 tensor, got ${p.dtype}${p.isContiguous ? "" : " (strided)"}`);
      this.offsets.push(total);
      total += p.numel;
    }
    this.masterDtype = offload.masterDtype ?? null;
    if (this.masterDtype !== null && this.masterDtype !== "bfloat16" && this.masterDtype !== "float16") {
      throw new ValueError(`OffloadedAdamW: masterDtype must be "bfloat16" or "float16", got ${JSON.stringify(this.masterDtype)}`);
    }
    const { masterDtype: _, ...fileOpts } = offload;
    this.file = new OffloadFile(total, { ...fileOpts, master: this.masterDtype !== null });
    if (this.masterDtype) {
      // The masters move out one parameter at a time: resident memory never holds both copies.
      this.params.forEach((p, i) => {
        this.file.writeMaster(this.offsets[i]!, p.data() as Float32Array);
        this.setResident(p, p);
      });
    }
  }

  /** Replaces p's data by `src` rounded to the resident dtype (a parameter's own storage). */
  private setResident(p: Tensor, src: Tensor): void {
    noGrad(() => {
      const c = withCategory("params", () => src.to(this.masterDtype!));
      p.setData_(c);
    });
  }

  /** One update of every parameter that has a gradient, chunk by chunk through the file. */
  async step(opts: StepOptions = {}): Promise<void> {
    if (opts.lr !== undefined) this.lr = opts.lr;
    this.stepCount++;
    const scale = opts.gradScale ?? 1;
    const segments = this.params.flatMap((p, i) => (p.grad ? [{ start: this.offsets[i]!, len: p.numel, param: i }] : []));
    await this.file.update(segments, (s, from, n, m, v, master) => {
      const p = this.params[s.param]!;
      const [w, g] = noGrad(() => [_flatRange(p, from, n), _flatRange(p.grad!, from, n)]);
      try {
        // With offloaded masters the update runs on the fp32 master (the kernel widens the
        // 16-bit gradient), and the resident parameter takes its rounded copy.
        adamwUpdate(master ?? w, g, m, v, adamwStepHyper(this, this.stepCount, p.ndim, scale));
        if (master) noGrad(() => {
          const low = master.to(this.masterDtype!);  // (n,) rounded to nearest even
          w.copy_(low);
          low.dispose();
        });
      } finally {
        w.dispose();
        g.dispose();
      }
    });
  }

  zeroGrad(): void {
    clearGrads(this.params);
  }

  gradNorm(maxNorm = Infinity): GradNormResult {
    return gradNorm(this.params, maxNorm, this.normScope ?? undefined);
  }

  state(): AdamWState {
    return adamwState(this);
  }

  /**
   * Scalars and the moments in the logical form, read back from the file: new tensors (unlike
   * AdamW's), which the caller disposes (e.g. by calling this inside `withScope`).
   */
  stateDict(): OptimizerStateDict {
    const exp_avg: Tensor[] = [], exp_avg_sq: Tensor[] = [];
    withCategory("optimizer", () => this.params.forEach((p, i) => {
      const { m, v } = this.file.readRange(this.offsets[i]!, p.numel);
      exp_avg.push(tensor(m, { shape: p.shape }));
      exp_avg_sq.push(tensor(v, { shape: p.shape }));
    }));
    return { state: this.state(), moments: { exp_avg, exp_avg_sq } };
  }

  /**
   * Scalars and the logical moments as host arrays read from the file: what a checkpoint
   * writes, with no tensor allocated (the trainer's save path).
   */
  hostStateDict(): HostOptimizerStateDict {
    const exp_avg: HostArray[] = [], exp_avg_sq: HostArray[] = [];
    this.params.forEach((p, i) => {
      const { m, v } = this.file.readRange(this.offsets[i]!, p.numel);
      exp_avg.push({ shape: [...p.shape], data: m });
      exp_avg_sq.push({ shape: [...p.shape], data: v });
    });
    return { state: this.state(), moments: { exp_avg, exp_avg_sq } };
  }

  /** Scalars and, when given, logical moments, which are written into the file. */
  loadStateDict(sd: OptimizerStateDict): void {
    this.stepCount = sd.state.step;
    this.lr = sd.state.lr;
    if (!sd.moments) return;
    const m = momentsOf(sd.moments, "exp_avg", this.params.length), v = momentsOf(sd.moments, "exp_avg_sq", this.params.length);
    this.params.forEach((p, i) => {
      if (m[i]!.numel !== p.numel || v[i]!.numel !== p.numel) {
        throw new ValueError(`OffloadedAdamW.loadStateDict: parameter ${p.name ?? i} has ${p.numel} elements, its moments ${m[i]!.numel}/${v[i]!.numel}`);
      }
      this.file.writeRange(this.offsets[i]!, m[i]!.data() as Float32Array, v[i]!.data() as Float32Array);
    });
  }

  /**
   * Runs `fn` with the fp32 master weights in the parameters (read from the file), e.g. to
   * save a checkpoint or export a model; afterwards the parameters hold the 16-bit rounding of
   * what they hold then. `writeBack`: what `fn` wrote into the parameters (a checkpoint being
   * loaded) becomes the new masters. Without offloaded masters it just runs `fn`.
   * @example
   * await opt.withMasterParams(() => writeSafetensors(file, gptToRecords(model)));
   */
  async withMasterParams<T>(fn: () => T | Promise<T>, opts: { writeBack?: boolean } = {}): Promise<T> {
    if (!this.masterDtype) return await fn();
    this.params.forEach((p, i) => {
      const w = withCategory("params", () => tensor(this.file.readMaster(this.offsets[i]!, p.numel), { shape: p.shape }));
      noGrad(() => p.setData_(w));
    });
    try {
      return await fn();
    } finally {
      this.params.forEach((p, i) => {
        if (opts.writeBack) {
          if (p.dtype !== "float32") throw new ValueError(`OffloadedAdamW.withMasterParams: parameter ${p.name ?? i} became ${p.dtype} inside fn; expected float32`);
          this.file.writeMaster(this.offsets[i]!, p.data() as Float32Array);
        }
        this.setResident(p, p);
      });
    }
  }

  /** Closes and deletes the scratch file. */
  close(): void {
    this.file.close();
  }
}

/** A 1-D view of elements [start, start + len) of contiguous `t`; call under noGrad. */
function _flatRange(t: Tensor, start: number, len: number): Tensor {
  const flat = t.reshape([t.numel]);
  const out = flat.narrow(0, start, len);
  flat.dispose();
  return out;
}

/**
 * The model runner: owns the paged KV-cache tensors and runs GPT forward passes over ragged
 * batches (no padding) built by the scheduler, returning logits only for the positions that
 * sample a token.
 *
 * The KV pool of each layer is one [num_blocks * block_size, H, D] float32 tensor per k and v
 * (counted under the "kvCache" memory category). A batch runs through the model's own
 * `GPT.forward` with a paged attention context (nn/attention.ts): the N tokens are fed as
 * idx (1, N), and `logitsRows` makes the model apply its LM head to the sampled rows only.
 * Whatever modules the model holds (Int8Linear after quantizeModelInt8) are what runs. Mixture-
 * of-experts layers run dropless (every routed token computed, `setMoEDropless`).
 */
import { ValueError } from "../../core/errors.js";
import { Tensor, tensor, zeros, withScope, withCategory, keep, dtypeSize } from "../../tensor/index.js";
import { noGrad } from "../../autograd/index.js";
import { setMoEDropless, type PagedContext } from "../../nn/index.js";
import type { GPT } from "../../models/index.js";

/** One ragged batch: every array is per scheduled token unless noted. */
export interface RunnerBatch {
  /** Token ids to feed, concatenated over requests. */
  tokens: Int32Array;
  /** Absolute position of each token in its sequence. */
  positions: Int32Array;
  /** Row of `blockTables` (the request's index in this batch) for each token. */
  seqIndex: Int32Array;
  /** KV-cache slot (block * blockSize + offset) each token's k/v is written to. */
  slotMapping: Int32Array;
  /** Block tables, one row of `maxBlocks` block ids per request (padded with 0). */
  blockTables: Int32Array;
  maxBlocks: number;
  /** Indices into `tokens` whose next-token logits are wanted, in output order. */
  sampleRows: number[];
}

export interface ModelRunnerOptions {
  /** Blocks in the pool (from the memory budget; see kv_cache's blocksForBudget). */
  numBlocks: number;
  /** Tokens per block. Default 16. */
  blockSize?: number;
  /** dtype of the KV pools. Default: the model's compute dtype (its parameters' dtype). */
  kvCacheDtype?: "float32" | "bfloat16" | "float16";
}

export class ModelRunner {
  readonly model: GPT;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly kCache: Tensor[] = [];
  readonly vCache: Tensor[] = [];
  /** dtype of the KV pools. */
  readonly kvCacheDtype: "float32" | "bfloat16" | "float16";

  constructor(model: GPT, opts: ModelRunnerOptions) {
    this.model = model;
    this.numBlocks = opts.numBlocks;
    this.blockSize = opts.blockSize ?? 16;
    if (!Number.isInteger(this.numBlocks) || this.numBlocks < 1) throw new ValueError(`ModelRunner: numBlocks must be a positive integer, got ${this.numBlocks}`);
    const c = model.config;
    const H = c.nHead, D = c.nEmbd / c.nHead;
    this.kvCacheDtype = opts.kvCacheDtype ?? ModelRunner.modelDtype(model);
    const dtype = this.kvCacheDtype;
    withCategory("kvCache", () => {
      for (let l = 0; l < c.nLayer; l++) {
        this.kCache.push(keep(zeros([this.numBlocks * this.blockSize, H, D], { dtype })));       // (slots, H, D)
        this.vCache.push(keep(zeros([this.numBlocks * this.blockSize, H, D], { dtype })));
      }
    });
    model.eval();
    // A batch holds many requests' tokens: a capacity limit in MoE layers would make each
    // request's output depend on its neighbours, so serving drops no routed token (nn/moe.ts).
    setMoEDropless(model, true);
  }

  /** The dtype a model computes in: its token embedding's (float32, or bfloat16 after `model.to("bfloat16")`). */
  static modelDtype(model: GPT): "float32" | "bfloat16" | "float16" {
    const d = model.wte.weight.dtype;
    return d === "bfloat16" || d === "float16" ? d : "float32";
  }

  /** Bytes of one KV block across all layers (k and v), for pools in `dtype` (default: the model's). */
  static bytesPerBlock(model: GPT, blockSize = 16, dtype: "float32" | "bfloat16" | "float16" = ModelRunner.modelDtype(model)): number {
    const c = model.config;
    return 2 * c.nLayer * c.nEmbd * blockSize * dtypeSize(dtype);
  }

  /** Copies whole blocks (copy-on-write for forked sequences): pairs of [src, dst] block ids. */
  copyBlocks(pairs: ReadonlyArray<readonly [number, number]>): void {
    const bs = this.blockSize;
    for (const [src, dst] of pairs) {
      for (const b of [src, dst]) {
        if (!Number.isInteger(b) || b < 0 || b >= this.numBlocks) throw new ValueError(`ModelRunner.copyBlocks: block ${b} outside the pool of ${this.numBlocks} blocks`);
      }
      noGrad(() => withScope(() => {
        for (const pool of [...this.kCache, ...this.vCache]) pool.narrow(0, dst * bs, bs).copy_(pool.narrow(0, src * bs, bs));   // (blockSize, H, D)
      }));
    }
  }

  /** Runs one batch; returns [sampleRows.length x V] logits (row-major). */
  execute(b: RunnerBatch): Float32Array {
    const n = b.tokens.length;
    if (b.positions.length !== n || b.seqIndex.length !== n || b.slotMapping.length !== n) {
      throw new ValueError(`ModelRunner.execute: tokens (${n}), positions (${b.positions.length}), seqIndex (${b.seqIndex.length}) and slotMapping (${b.slotMapping.length}) must have equal lengths`);
    }
    const c = this.model.config;
    for (const p of b.positions) if (p < 0 || p >= c.blockSize) throw new ValueError(`ModelRunner.execute: position ${p} outside the model's context of ${c.blockSize}`);
    const cap = this.numBlocks * this.blockSize;
    for (const s of b.slotMapping) if (s < 0 || s >= cap) throw new ValueError(`ModelRunner.execute: slot ${s} outside the KV pool of ${cap} slots`);
    if (b.blockTables.length % b.maxBlocks !== 0) {
      throw new ValueError(`ModelRunner.execute: blockTables has ${b.blockTables.length} entries, not a multiple of maxBlocks = ${b.maxBlocks}`);
    }
    for (const r of b.sampleRows) if (!Number.isInteger(r) || r < 0 || r >= n) throw new ValueError(`ModelRunner.execute: sample row ${r} outside the batch of ${n} tokens`);
    return noGrad(() => withScope(() => {
      const ctx: PagedContext = {
        kind: "paged",
        kCache: this.kCache,
        vCache: this.vCache,
        blockSize: this.blockSize,
        blockTables: tensor(b.blockTables, { shape: [b.blockTables.length / b.maxBlocks, b.maxBlocks], dtype: "int32" }),
        slotMapping: tensor(b.slotMapping, { dtype: "int32" }),
        positions: tensor(b.positions, { dtype: "int32" }),
        seqIndex: tensor(b.seqIndex, { dtype: "int32" }),
        logitsRows: tensor(Int32Array.from(b.sampleRows), { dtype: "int32" }),
      };
      const idx = tensor(b.tokens, { shape: [1, n], dtype: "int32" });        // (1, N): the ragged batch as one row
      const { logits } = this.model.forward(idx, null, ctx);                    // (S, V)
      return logits.data() as Float32Array;
    }));
  }

  /** Frees the KV pool. */
  dispose(): void {
    for (const t of [...this.kCache, ...this.vCache]) t.dispose();
    this.kCache.length = 0;
    this.vCache.length = 0;
  }
}

/**
 * The model runner: owns the paged KV-cache tensors and runs GPT forward passes over ragged
 * batches (no padding) built by the scheduler, returning logits only for the positions that
 * sample a token.
 *
 * The KV pool of each layer is one [num_blocks * block_size, H, D] float32 tensor per k and v
 * (counted under the "kvCache" memory category). The runner reads the model's weights but runs
 * its own forward: attention goes through the native paged-attention kernel, and the LM head
 * is applied to the sampled rows only.
 */
import { ValueError } from "../../core/errors.js";
import { native } from "../../backend/native/index.js";
import { Tensor, tensor, zeros, withScope, withCategory, keep, embedding, layerNorm, gelu } from "../../tensor/index.js";
import { quantizedForward, lmHeadForward } from "../quant/index.js";
import { noGrad } from "../../autograd/index.js";
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
}

export class ModelRunner {
  readonly model: GPT;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly kCache: Tensor[] = [];
  readonly vCache: Tensor[] = [];
  private readonly H: number;
  private readonly D: number;

  constructor(model: GPT, opts: ModelRunnerOptions) {
    this.model = model;
    this.numBlocks = opts.numBlocks;
    this.blockSize = opts.blockSize ?? 16;
    if (!Number.isInteger(this.numBlocks) || this.numBlocks < 1) throw new ValueError(`ModelRunner: numBlocks must be a positive integer, got ${this.numBlocks}`);
    const c = model.config;
    this.H = c.nHead;
    this.D = c.nEmbd / c.nHead;
    withCategory("kvCache", () => {
      for (let l = 0; l < c.nLayer; l++) {
        this.kCache.push(keep(zeros([this.numBlocks * this.blockSize, this.H, this.D])));
        this.vCache.push(keep(zeros([this.numBlocks * this.blockSize, this.H, this.D])));
      }
    });
    model.eval();
  }

  /** Bytes of one KV block across all layers (k and v). */
  static bytesPerBlock(model: GPT, blockSize = 16): number {
    const c = model.config;
    return 2 * c.nLayer * c.nEmbd * blockSize * 4;
  }

  /** Copies whole blocks (copy-on-write for forked sequences): pairs of [src, dst] block ids. */
  copyBlocks(pairs: ReadonlyArray<readonly [number, number]>): void {
    const row = this.blockSize * this.H * this.D;
    for (const [src, dst] of pairs) {
      for (const pool of [...this.kCache, ...this.vCache]) {
        native.copyStrided(4, pool.ptr + src * row * 4, [1], pool.ptr + dst * row * 4, [1], [row]);
      }
    }
  }

  /** Runs one batch; returns [sampleRows.length x V] logits (row-major). */
  execute(b: RunnerBatch): Float32Array {
    const n = b.tokens.length;
    if (b.positions.length !== n || b.seqIndex.length !== n || b.slotMapping.length !== n) {
      throw new ValueError(`ModelRunner.execute: tokens (${n}), positions (${b.positions.length}), seqIndex (${b.seqIndex.length}) and slotMapping (${b.slotMapping.length}) must have equal lengths`);
    }
    const m = this.model;
    const c = m.config;
    for (const p of b.positions) if (p < 0 || p >= c.blockSize) throw new ValueError(`ModelRunner.execute: position ${p} outside the model's context of ${c.blockSize}`);
    const cap = this.numBlocks * this.blockSize;
    for (const s of b.slotMapping) if (s < 0 || s >= cap) throw new ValueError(`ModelRunner.execute: slot ${s} outside the KV pool of ${cap} slots`);
    return noGrad(() => withScope(() => {
      const C = c.nEmbd, H = this.H, D = this.D;
      const tok = tensor(b.tokens, { dtype: "int32" });
      const pos = tensor(b.positions, { dtype: "int32" });
      const seq = tensor(b.seqIndex, { dtype: "int32" });
      const slots = tensor(b.slotMapping, { dtype: "int32" });
      const tables = tensor(b.blockTables, { dtype: "int32" });
      let x = embedding(tok, m.wte.weight).add(embedding(pos, m.wpe.weight));       // (N, C)
      m.h.forEach((block, l) => {
        const h = block.ln_1.forward(x);
        const qkv = quantizedForward(block.attn.c_attn, h);                          // (N, 3C)
        const [q, k, v] = qkv.split(C, -1).map((t) => t.contiguous());               // 3 x (N, C)
        native.kvCacheWrite(this.kCache[l]!.ptr, this.vCache[l]!.ptr, k!.ptr, v!.ptr, slots.ptr, n, C);
        const att = Tensor.empty([n, C]);
        native.pagedAttention(q!.ptr, this.kCache[l]!.ptr, this.vCache[l]!.ptr, tables.ptr, b.maxBlocks, this.blockSize,
          seq.ptr, pos.ptr, att.ptr, n, H, D, 1 / Math.sqrt(D));
        x = x.add(quantizedForward(block.attn.c_proj, att));
        // The MLP by hand so int8 projections (when registered) replace the float ones.
        const fc = gelu(quantizedForward(block.mlp.c_fc, block.ln_2.forward(x)), "tanh");
        x = x.add(quantizedForward(block.mlp.c_proj, fc));                           // (N, C)
      });
      const rows = tensor(Int32Array.from(b.sampleRows), { dtype: "int32" });
      const sel = embedding(rows, x);                                                // (S, C) gather
      const hf = layerNorm(sel, [C], m.ln_f.weight, m.ln_f.bias, c.layerNormEpsilon);
      const logits = lmHeadForward(m, hf);                                           // (S, V)
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

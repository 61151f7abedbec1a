/**
 * How many KV blocks a memory budget holds. One block stores k and v for `blockSize` tokens in
 * every layer: 2 x nLayer x nKvHeads x headDim x blockSize x dtypeBytes bytes.
 */
import { ValueError } from "../../core/errors.js";

/** The shape of one token's K/V across the model; every field is per model, not per request. */
export interface KvCacheShape {
  /** Transformer layers. */
  nLayer: number;
  /** Key/value heads (nHead for multi-head attention; fewer with grouped-query attention). */
  nKvHeads: number;
  /** Channels per head (nEmbd / nHead for GPT-2). */
  headDim: number;
  /** Tokens per block. Default 16. */
  blockSize?: number;
  /** Bytes per element of the cache: 4 for float32 (default), 2 for bf16/fp16. */
  dtypeBytes?: number;
}

/**
 * Bytes of one KV block across all layers (k and v).
 *
 * @example kvBlockBytes({ nLayer: 12, nKvHeads: 12, headDim: 64 }) // GPT-2 124M, fp32: 1,179,648 bytes (1.125 MiB)
 */
export function kvBlockBytes(shape: KvCacheShape): number {
  const { nLayer, nKvHeads, headDim } = shape;
  const blockSize = shape.blockSize ?? 16;
  const dtypeBytes = shape.dtypeBytes ?? 4;
  for (const [name, v] of Object.entries({ nLayer, nKvHeads, headDim, blockSize, dtypeBytes })) {
    if (!Number.isInteger(v) || v < 1) throw new ValueError(`kvBlockBytes: ${name} must be a positive integer, got ${v}`);
  }
  return 2 * nLayer * nKvHeads * headDim * blockSize * dtypeBytes;
}

/**
 * Blocks that fit in `budgetBytes` (rounded down; 0 when not even one fits).
 *
 * @example
 * const numBlocks = blocksForBudget(256 * 2 ** 20, { nLayer: 12, nKvHeads: 12, headDim: 64 }); // 227
 */
export function blocksForBudget(budgetBytes: number, shape: KvCacheShape): number {
  if (!(budgetBytes >= 0) || !Number.isFinite(budgetBytes)) throw new ValueError(`blocksForBudget: budgetBytes must be a finite number >= 0, got ${budgetBytes}`);
  return Math.floor(budgetBytes / kvBlockBytes(shape));
}

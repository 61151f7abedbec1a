/**
 * Attention contexts: where a causal self-attention layer gets its keys and values, and where
 * the positions of the tokens it is fed come from. A model's forward is written once and
 * receives one of these (DESIGN.md "one model, many contexts"):
 *
 * - `causal`: dense training / scoring. idx (B, T) is whole sequences; positions 0..T-1;
 *   keys are the tokens themselves under a causal mask.
 * - `kv`: a contiguous per-layer KV cache for generation (`generate`). idx (B, T) holds only
 *   the new tokens; positions continue from `cache.length`; keys are the cache plus the new
 *   tokens (bottom-right causal alignment). The cache grows by T per forward.
 * - `paged`: serving (inference/runner). A ragged batch of N tokens from several sequences,
 *   concatenated with no padding, is fed as idx (1, N): batch dimension 1, one "time" row
 *   holding every token. Per-token int32 vectors of length N give each token's position in
 *   its own sequence, its KV slot and its row of the block tables; keys and values live in
 *   per-layer pools (numBlocks * blockSize, H, D) (tensor/paged_ops.ts).
 *
 * Every kind may carry `logitsRows`: int32 (S) indices into the flattened (B * T) token rows.
 * When present, the model applies its final norm and LM head to those rows only and returns
 * logits (S, V): serving samples a few rows of a long prefill, and the head is the largest
 * matmul of a decode step.
 *
 * Shape legend: B batch, T new tokens, S keys (or selected rows), H heads, D head width,
 * C = H * D, N tokens of a ragged batch.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { Tensor, scaledDotProductAttention, cat, tensor, kvCacheWrite, pagedAttention, checkpoint } from "./_deps.js";

/** Per-layer key/value cache for incremental decoding: (B, H, T_cached, D) each. */
export interface KVCache {
  k: Array<Tensor | null>;
  v: Array<Tensor | null>;
  /** Tokens already in the cache. */
  length: number;
}

interface RowSelection {
  /** int32 (S): rows of the flattened (B * T) tokens whose logits are wanted; default all, as (B, T, V). */
  logitsRows?: Tensor;
}

/** Dense causal attention over whole sequences (training; the default). */
export interface CausalContext extends RowSelection {
  kind: "causal";
  /**
   * Selective activation recomputation (Korthikanti et al. 2022): keep only the attention
   * core's inputs (q, k, v) and recompute the core in backward. Default false.
   */
  recomputeCore?: boolean;
}

/** A contiguous KV cache: the new tokens attend to the cache and to each other. */
export interface KVContext extends RowSelection {
  kind: "kv";
  cache: KVCache;
}

/** Paged KV pools with block tables, for a ragged batch fed as idx (1, N). */
export interface PagedContext extends RowSelection {
  kind: "paged";
  /** Per layer, the key pool (numBlocks * blockSize, H, D) float32. */
  kCache: readonly Tensor[];
  /** Per layer, the value pool, like kCache. */
  vCache: readonly Tensor[];
  /** Tokens per block. */
  blockSize: number;
  /** int32 (numSeqs, maxBlocks): each sequence's block ids, padded. */
  blockTables: Tensor;
  /** int32 (N): the pool slot (block * blockSize + offset) each token's k/v is written to. */
  slotMapping: Tensor;
  /** int32 (N): each token's position in its own sequence. */
  positions: Tensor;
  /** int32 (N): each token's row of blockTables. */
  seqIndex: Tensor;
}

/** Where attention reads keys and values from; see the file comment. */
export type AttentionContext = CausalContext | KVContext | PagedContext;

/** The default context: dense causal. */
export const CAUSAL: CausalContext = Object.freeze({ kind: "causal" }) as CausalContext;

/** Whether `x` is a bare KVCache (the older third argument of `GPT.forward`) rather than a context. */
export function isKVCache(x: AttentionContext | KVCache): x is KVCache {
  return !("kind" in x) && Array.isArray((x as KVCache).k) && Array.isArray((x as KVCache).v);
}

/**
 * The positions of the T tokens a forward is fed, as an int32 (T) tensor the caller disposes;
 * throws (naming `who`) when a position falls outside a context of `maxLen`.
 */
export function contextPositions(ctx: AttentionContext, T: number, maxLen: number, who: string): Tensor {
  if (ctx.kind === "paged") {
    const p = ctx.positions;
    if (p.dtype !== "int32" || p.ndim !== 1 || p.shape[0] !== T) {
      throw new ValueError(`${who}: paged positions must be int32 (${T}), one per token of idx (1, ${T}); got ${p.dtype} ${fmtShape(p.shape)}`);
    }
    for (const q of p.data() as Int32Array) {
      if (q < 0 || q >= maxLen) throw new ValueError(`${who}: position ${q} outside the model's context of ${maxLen}`);
    }
    return p.alias();
  }
  const past = ctx.kind === "kv" ? ctx.cache.length : 0;
  if (past + T > maxLen) throw new ValueError(`${who}: sequence length ${past + T} exceeds block_size ${maxLen}`);
  const pos = new Int32Array(T);
  for (let i = 0; i < T; i++) pos[i] = past + i;
  return tensor(pos, { dtype: "int32" });
}

/** Records that a forward of T tokens went through `ctx` (a KV cache grows by T). */
export function advanceContext(ctx: AttentionContext, T: number): void {
  if (ctx.kind === "kv") ctx.cache.length += T;
}

/**
 * Causal multi-head attention of layer `layer` through `ctx`. q, k, v: (B, T, C) each (views
 * of a fused projection are fine) -> (B, T, C), heads merged. The kv kind appends k, v to the
 * cache; the paged kind writes them into the pools first (B must be 1).
 */
export function causalAttention(q: Tensor, k: Tensor, v: Tensor, nHead: number, ctx: AttentionContext, layer: number): Tensor {
  const [B, T, C] = q.shape as [number, number, number];
  const H = nHead, D = C / H;
  if (ctx.kind === "paged") {
    if (B !== 1) throw new ValueError(`paged attention: a ragged batch is fed as (1, N), got (${B}, ${T}, ${C})`);
    const kPool = ctx.kCache[layer], vPool = ctx.vCache[layer];
    if (!kPool || !vPool) throw new ValueError(`paged attention: no KV pool for layer ${layer} (the context has ${ctx.kCache.length})`);
    const q2 = q.select(0, 0), k2 = k.select(0, 0), v2 = v.select(0, 0);     // (N, C)
    kvCacheWrite(kPool, vPool, k2, v2, ctx.slotMapping);
    const y = pagedAttention(q2, kPool, vPool, ctx.blockTables, ctx.blockSize, ctx.seqIndex, ctx.positions, 1 / Math.sqrt(D));   // (N, C)
    return y.unsqueeze(0);                                                    // (1, N, C)
  }
  const heads = (t: Tensor) => t.view([B, T, H, D]).transpose(1, 2);        // (B, H, T, D)
  const qh = heads(q);
  let kh = heads(k), vh = heads(v);
  let y: Tensor;
  if (ctx.kind === "kv") {
    const kv = ctx.cache;
    const pk = kv.k[layer], pv = kv.v[layer];
    if (pk && pv) {
      kh = cat([pk, kh], 2);                                                  // (B, H, T_past + T, D)
      vh = cat([pv, vh], 2);
    } else {
      kh = kh.contiguous();
      vh = vh.contiguous();
    }
    kv.k[layer]?.dispose();
    kv.v[layer]?.dispose();
    kv.k[layer] = kh.keep();
    kv.v[layer] = vh.keep();
    const S = kh.shape[2]!;
    if (S !== T) {
      // New queries sit at the end of the keys: bottom-right causal alignment via an explicit mask.
      const mask = causalMask(T, S);
      y = scaledDotProductAttention(qh, kh, vh, { attnMask: mask });          // (B, H, T, D)
      mask.dispose();
    } else y = scaledDotProductAttention(qh, kh, vh, { isCausal: true });
  } else if (ctx.recomputeCore) {
    // The core and its head merge are recomputed in backward: only q, k, v (views of the
    // fused projection) are kept, not the kernel's contiguous copies, output and statistics.
    return checkpoint((a: Tensor, b: Tensor, c: Tensor) =>
      scaledDotProductAttention(a, b, c, { isCausal: true }).transpose(1, 2).reshape([B, T, C]), qh, kh, vh);   // (B, T, C)
  } else y = scaledDotProductAttention(qh, kh, vh, { isCausal: true });      // (B, H, T, D)
  return y.transpose(1, 2).reshape([B, T, C]);                              // (B, T, C)
}

/** 1 where query i (at position S - T + i) may see key j, as uint8 [T, S]. */
function causalMask(T: number, S: number): Tensor {
  const m = new Uint8Array(T * S);
  for (let i = 0; i < T; i++) for (let j = 0; j <= S - T + i; j++) m[i * S + j] = 1;
  return tensor(m, { shape: [T, S], dtype: "uint8" });
}

/**
 * Paged KV-cache ops for serving, as tensor functions: write each token's k/v into its slot of
 * a paged pool, and ragged causal attention that reads keys and values through block tables
 * (vLLM's reshape_and_cache and paged_attention).
 *
 * Layout: a pool is one contiguous float32 tensor (numBlocks * blockSize, H, D) per layer and
 * per k/v; slot s = block * blockSize + offset holds one token's k (or v) for every head. A
 * ragged batch is N tokens from several sequences, concatenated with no padding: q, k, v are
 * (N, C) with C = H * D, and per-token int32 vectors say where each token goes (slot), which
 * row of the block tables it reads (seq) and its position in its own sequence (pos).
 *
 * Forward-only (serving): no autograd graph is recorded. Indices are checked on the host (a
 * few reads of N ints) because a bad slot or block id would write or read outside the pool.
 *
 * Dtypes: the pools hold the KV-cache dtype (float32, or bfloat16/float16 to halve the
 * cache); queries, keys and values come in the model's compute dtype, which may differ (the
 * kernel converts on write and on read, accumulating in float32). The output is in q's dtype.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { backend } from "../backend/index.js";
import { Tensor } from "./tensor.js";

function need(cond: boolean, op: string, what: string, t: Tensor): void {
  if (!cond) throw new ValueError(`${op}: ${what}, got ${t.dtype} ${fmtShape(t.shape)}`);
}

const FLOAT = new Set(["float32", "bfloat16", "float16"]);

/** Checks a floating pool (S, H, D) and returns [S, H, D]. */
function poolShape(op: string, name: string, pool: Tensor): [number, number, number] {
  need(FLOAT.has(pool.dtype) && pool.ndim === 3 && pool.isContiguous, op, `${name} must be a contiguous floating pool (slots, H, D)`, pool);
  return pool.shape as [number, number, number];
}

function checkIndex(op: string, name: string, t: Tensor, n: number): Int32Array {
  need(t.dtype === "int32" && t.ndim === 1 && t.shape[0] === n, op, `${name} must be int32 (${n})`, t);
  return t.data() as Int32Array;
}

/** Runs `fn` on a contiguous version of `t`, disposing the copy if one was made. */
function contig<R>(t: Tensor, fn: (c: Tensor) => R): R {
  const c = t.isContiguous ? t : t.contiguous();
  try {
    return fn(c);
  } finally {
    if (c !== t) c.dispose();
  }
}

/**
 * Writes token t's key and value into slot `slots[t]` of the pools, in place:
 * kPool[slots[t]] = k[t], vPool[slots[t]] = v[t].
 *
 * kPool, vPool: (S, H, D) float32 contiguous; k, v: (N, H * D) float32 (any strides);
 * slots: (N) int32, each in [0, S).
 * @example
 * kvCacheWrite(kCache[layer], vCache[layer], k, v, slotMapping);   // k, v (N, C)
 */
export function kvCacheWrite(kPool: Tensor, vPool: Tensor, k: Tensor, v: Tensor, slots: Tensor): void {
  const op = "kvCacheWrite";
  const [S, H, D] = poolShape(op, "kPool", kPool);
  need(vPool.dtype === kPool.dtype && vPool.isContiguous && vPool.shape.join() === kPool.shape.join(), op, `vPool must be a contiguous ${kPool.dtype} pool like kPool ${fmtShape(kPool.shape)}`, vPool);
  const C = H * D;
  need(FLOAT.has(k.dtype) && k.ndim === 2 && k.shape[1] === C, op, `k must be floating (N, ${C})`, k);
  const N = k.shape[0]!;
  need(v.dtype === k.dtype && v.ndim === 2 && v.shape[0] === N && v.shape[1] === C, op, `v must be ${k.dtype} (${N}, ${C}) like k`, v);
  const s = checkIndex(op, "slots", slots, N);
  for (let t = 0; t < N; t++) {
    if (s[t]! < 0 || s[t]! >= S) throw new ValueError(`${op}: slot ${s[t]} of token ${t} is outside the pool of ${S} slots`);
  }
  contig(k, (kc) => contig(v, (vc) => backend.kvCacheWrite(kPool, vPool, kc, vc, slots, N, C, kPool.dtype, k.dtype)));
}

/**
 * Ragged causal attention over a paged KV cache: token t of sequence seq[t] at position pos[t]
 * attends to positions 0..pos[t] of its sequence, read from the pools through row seq[t] of
 * the block tables (position p lives in slot blockTables[seq[t], p / blockSize] * blockSize +
 * p % blockSize). The keys and values of the batch's own tokens must already be written
 * (kvCacheWrite).
 *
 * q: (N, H * D) floating; kPool, vPool: (S, H, D); blockTables: (numSeqs, maxBlocks) int32 with
 * block ids in [0, S / blockSize); seq, pos: (N) int32. Returns (N, H * D).
 * @example
 * const att = pagedAttention(q, kCache[l], vCache[l], tables, 16, seqIndex, positions, 1 / Math.sqrt(D));   // (N, C)
 */
export function pagedAttention(q: Tensor, kPool: Tensor, vPool: Tensor, blockTables: Tensor, blockSize: number,
  seq: Tensor, pos: Tensor, scale: number): Tensor {
  const op = "pagedAttention";
  const [S, H, D] = poolShape(op, "kPool", kPool);
  need(vPool.dtype === kPool.dtype && vPool.isContiguous && vPool.shape.join() === kPool.shape.join(), op, `vPool must be a contiguous ${kPool.dtype} pool like kPool ${fmtShape(kPool.shape)}`, vPool);
  const C = H * D;
  need(FLOAT.has(q.dtype) && q.ndim === 2 && q.shape[1] === C, op, `q must be floating (N, ${C})`, q);
  if (!Number.isInteger(blockSize) || blockSize < 1 || S % blockSize !== 0) {
    throw new ValueError(`${op}: blockSize must be a positive integer dividing the pool's ${S} slots, got ${blockSize}`);
  }
  need(blockTables.dtype === "int32" && blockTables.ndim === 2 && blockTables.isContiguous, op, "blockTables must be contiguous int32 (numSeqs, maxBlocks)", blockTables);
  const [numSeqs, maxBlocks] = blockTables.shape as [number, number];
  const N = q.shape[0]!;
  const sq = checkIndex(op, "seq", seq, N), ps = checkIndex(op, "pos", pos, N);
  const numBlocks = S / blockSize;
  // The furthest block each sequence reads, then its table row up to there.
  const lastBlock = new Int32Array(numSeqs).fill(-1);
  for (let t = 0; t < N; t++) {
    if (sq[t]! < 0 || sq[t]! >= numSeqs) throw new ValueError(`${op}: seq ${sq[t]} of token ${t} is outside the ${numSeqs} rows of blockTables`);
    const b = Math.floor(ps[t]! / blockSize);
    if (ps[t]! < 0 || b >= maxBlocks) throw new ValueError(`${op}: position ${ps[t]} of token ${t} needs more than the ${maxBlocks} blocks of a table row`);
    lastBlock[sq[t]!] = Math.max(lastBlock[sq[t]!]!, b);
  }
  const tables = blockTables.data() as Int32Array;
  for (let r = 0; r < numSeqs; r++) {
    for (let b = 0; b <= lastBlock[r]!; b++) {
      const id = tables[r * maxBlocks + b]!;
      if (id < 0 || id >= numBlocks) throw new ValueError(`${op}: block id ${id} (sequence ${r}, block ${b}) is outside the pool's ${numBlocks} blocks`);
    }
  }
  const out = Tensor.empty([N, C], q.dtype);
  contig(q, (qc) => backend.pagedAttention(qc, kPool, vPool, blockTables, maxBlocks, blockSize, seq, pos, out, N, H, D, scale, q.dtype, kPool.dtype));
  return out;
}

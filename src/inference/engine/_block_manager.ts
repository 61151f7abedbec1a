/**
 * The engine's block manager (private for now: src/inference/kv_cache/ holds the standalone
 * bookkeeping module being built beside it; the engine moves onto it once its API settles).
 *
 * The paged KV-cache bookkeeping (vLLM's block manager): fixed-size blocks in one pool,
 * per-sequence block tables, reference counts, and prefix caching. Pure bookkeeping: no tensors.
 *
 * Prefix caching: a FULL block is identified by a chained hash of (parent block's hash, its
 * token ids), so equal prefixes map to equal hash chains. Full blocks are registered when they
 * fill; when their last user frees them they stay cached (evictable, least recently used
 * first) and a later sequence with the same prefix reuses them instead of recomputing.
 */
import { ValueError } from "../../core/errors.js";

export interface BlockManagerOptions {
  numBlocks: number;
  /** Tokens per block. Default 16. */
  blockSize?: number;
  /** Reuse full blocks across sequences with equal prefixes. Default true. */
  enablePrefixCaching?: boolean;
}

/** Blocks that fit in a memory budget: 2 (k, v) x layers x width x block size x dtype bytes each. */
export function blocksForBudget(budgetBytes: number, nLayer: number, nEmbd: number, blockSize = 16, dtypeBytes = 4): number {
  return Math.floor(budgetBytes / (2 * nLayer * nEmbd * blockSize * dtypeBytes));
}

/** 53-bit FNV-1a style chained hash of a block's tokens (collisions are vanishingly rare at this width). */
function blockHash(parent: number, tokens: readonly number[]): number {
  let h = (parent ^ 0x9e3779b1) >>> 0;
  let l = (Math.floor(parent / 2 ** 32) ^ 0x85ebca6b) >>> 0;
  for (const t of tokens) {
    h = Math.imul(h ^ t, 16777619) >>> 0;
    l = Math.imul(l ^ (t + h), 2246822519) >>> 0;
  }
  return (l & 0x1fffff) * 2 ** 32 + h;
}

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;
  private readonly refs: Int32Array;
  private readonly hashes: Array<number | null>;
  /** Never-used (or invalidated) blocks. */
  private readonly free: number[] = [];
  /** Cached full blocks nobody holds, in LRU order (Map keeps insertion order). */
  private readonly evictable = new Map<number, true>();
  private readonly byHash = new Map<number, number>();
  private readonly tables = new Map<string, number[]>();
  private hitTokens = 0;
  private queryTokens = 0;

  constructor(o: BlockManagerOptions) {
    if (!Number.isInteger(o.numBlocks) || o.numBlocks < 1) throw new ValueError(`BlockManager: numBlocks must be a positive integer, got ${o.numBlocks}`);
    this.numBlocks = o.numBlocks;
    this.blockSize = o.blockSize ?? 16;
    this.enablePrefixCaching = o.enablePrefixCaching ?? true;
    this.refs = new Int32Array(this.numBlocks);
    this.hashes = new Array(this.numBlocks).fill(null);
    for (let b = this.numBlocks - 1; b >= 0; b--) this.free.push(b);
  }

  /** Blocks a sequence of `numTokens` tokens needs. */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** Blocks that can be handed out now (free + evictable cached). */
  available(): number {
    return this.free.length + this.evictable.size;
  }

  blockTable(seqId: string): readonly number[] {
    return this.tables.get(seqId) ?? [];
  }

  has(seqId: string): boolean {
    return this.tables.has(seqId);
  }

  /**
   * Starts a sequence: reuses cached full blocks of its longest cached prefix and returns how
   * many tokens they cover (always leaving at least one token to compute).
   */
  startSequence(seqId: string, tokens: readonly number[]): number {
    if (this.tables.has(seqId)) throw new ValueError(`BlockManager: sequence ${seqId} already has blocks`);
    const table: number[] = [];
    this.tables.set(seqId, table);
    if (!this.enablePrefixCaching) return 0;
    let parent = 0;
    const maxFull = Math.floor((tokens.length - 1) / this.blockSize);
    this.queryTokens += tokens.length;
    for (let i = 0; i < maxFull; i++) {
      const h = blockHash(parent, tokens.slice(i * this.blockSize, (i + 1) * this.blockSize));
      const b = this.byHash.get(h);
      if (b === undefined) break;
      this.take(b);
      table.push(b);
      parent = h;
    }
    const cached = table.length * this.blockSize;
    this.hitTokens += cached;
    return cached;
  }

  /**
   * Makes the sequence's table cover `numTokens` tokens, allocating blocks; registers blocks
   * that are now full (given the sequence's tokens) in the prefix cache. Returns false (and
   * changes nothing) when there are not enough blocks.
   */
  ensure(seqId: string, tokens: readonly number[], numTokens: number): boolean {
    const table = this.tables.get(seqId);
    if (!table) throw new ValueError(`BlockManager: unknown sequence ${seqId}`);
    const need = this.blocksFor(numTokens) - table.length;
    if (need > this.available()) return false;
    for (let i = 0; i < need; i++) table.push(this.allocateBlock());
    if (this.enablePrefixCaching) {
      let parent = 0;
      const full = Math.floor(Math.min(numTokens, tokens.length) / this.blockSize);
      for (let i = 0; i < full; i++) {
        const h = blockHash(parent, tokens.slice(i * this.blockSize, (i + 1) * this.blockSize));
        const b = table[i]!;
        if (this.hashes[b] === null && !this.byHash.has(h)) {
          this.hashes[b] = h;
          this.byHash.set(h, b);
        }
        parent = h;
      }
    }
    return true;
  }

  /** Releases a sequence's blocks (cached full blocks stay reusable until evicted). */
  freeSequence(seqId: string): void {
    const table = this.tables.get(seqId);
    if (!table) return;
    this.tables.delete(seqId);
    for (const b of table) {
      if (--this.refs[b]! > 0) continue;
      if (this.hashes[b] !== null) this.evictable.set(b, true);
      else this.free.push(b);
    }
  }

  usage(): { used: number; free: number; cached: number; total: number; fraction: number } {
    const free = this.free.length;
    const cached = this.evictable.size;
    const used = this.numBlocks - free - cached;
    return { used, free, cached, total: this.numBlocks, fraction: used / this.numBlocks };
  }

  prefixCacheStats(): { hitTokens: number; queryTokens: number; hitRate: number } {
    return { hitTokens: this.hitTokens, queryTokens: this.queryTokens, hitRate: this.queryTokens ? this.hitTokens / this.queryTokens : 0 };
  }

  /** Throws if the bookkeeping is inconsistent (used by tests). */
  checkInvariants(): void {
    const counts = new Int32Array(this.numBlocks);
    for (const t of this.tables.values()) for (const b of t) counts[b]++;
    for (let b = 0; b < this.numBlocks; b++) {
      if (counts[b] !== this.refs[b]) throw new Error(`block ${b}: refcount ${this.refs[b]} but held by ${counts[b]} tables`);
      const states = (this.free.includes(b) ? 1 : 0) + (this.evictable.has(b) ? 1 : 0) + (this.refs[b]! > 0 ? 1 : 0);
      if (states !== 1) throw new Error(`block ${b} is in ${states} states (free/evictable/used)`);
    }
  }

  private take(b: number): void {
    if (this.refs[b] === 0) this.evictable.delete(b);
    this.refs[b]++;
  }

  private allocateBlock(): number {
    let b = this.free.pop();
    if (b === undefined) {
      // Evict the least recently freed cached block.
      b = this.evictable.keys().next().value as number;
      this.evictable.delete(b);
      this.byHash.delete(this.hashes[b]!);
    }
    this.hashes[b] = null;
    this.refs[b] = 1;
    return b;
  }
}

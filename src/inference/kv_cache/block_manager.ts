/**
 * The paged KV-cache bookkeeping (vLLM's block manager). Pure bookkeeping: it hands out block
 * ids and never touches a tensor; the runner owns the K/V pool and does what the ids say.
 *
 * The pool has `numBlocks` blocks of `blockSize` token slots. A sequence (one request, or one
 * choice of an n > 1 request) owns a block table: block ids in position order, so token p lives
 * in slot `table[floor(p / blockSize)] * blockSize + p % blockSize`. Every block is in exactly
 * one state:
 *
 *   free       refcount 0, holds nothing reusable;
 *   used       refcount = number of block tables holding it (> 1 when shared);
 *   cached     refcount 0, but a FULL block registered in the prefix cache: reusable by a later
 *              sequence with the same prefix, evicted least recently used first when the free
 *              list runs dry.
 *
 * Sharing happens two ways. Prefix caching: a full block is keyed by a chained hash of (parent
 * block's key, its token ids; see _block_hash.ts), registered when its last slot is allocated,
 * and `allocate` reuses the longest run of cached leading blocks. Forking (n > 1 sampling):
 * the child gets the parent's table, refcounts go up, and the first sequence to append into a
 * shared, partially filled last block gets a private copy first (copy-on-write: the runner is
 * told to copy src -> dst before the forward pass). Full blocks are never written again, so
 * they never need copying.
 *
 * Speculative decoding needs slots for draft tokens that may be rejected: `appendSlots` takes
 * a number of lookahead slots, which get blocks but no tokens. Only confirmed tokens (appended
 * later, once accepted) fill blocks and make them eligible for the prefix cache, so a rejected
 * draft can never end up under a block's key.
 *
 * A block is registered as soon as its slots are allocated, i.e. in the step that computes it.
 * That is safe because the runner writes a step's K/V in each layer before that layer's
 * attention reads it, so a second sequence hitting the block in the same step reads what the
 * first one writes. If a step fails, free its sequences with `{ keepCached: false }` so blocks
 * that may hold garbage are not offered to later prompts.
 */
import { MegalithError, ValueError } from "../../core/errors.js";
import { ROOT_BLOCK_KEY, blockKey } from "./_block_hash.js";

export interface BlockManagerOptions {
  /** Blocks in the pool (see `blocksForBudget`). */
  numBlocks: number;
  /** Token slots per block. Default 16. */
  blockSize?: number;
  /** Reuse full blocks across sequences with equal prefixes. Default true. */
  enablePrefixCaching?: boolean;
}

/** A K/V copy the runner must do before the step's forward: block `src` into block `dst`, every layer, k and v. */
export type BlockCopy = [src: number, dst: number];

/** What `allocate` did. */
export interface Allocation {
  /** The sequence's block table (a copy): block ids in position order. */
  blockTable: number[];
  /**
   * Leading tokens whose K/V is already in the cache (prefix-cache hits): a multiple of
   * blockSize, and always < tokenIds.length so at least one token is computed (its logits are
   * needed). Computation starts at this position.
   */
  numCachedTokens: number;
  /** Tokens the table now has slots for: numCachedTokens + the new tokens allocated. */
  numSlots: number;
}

/** What `appendSlots` did. */
export interface AppendResult {
  /** Copy-on-write copies to do before the forward pass, in order (empty almost always). */
  copies: BlockCopy[];
}

/** Block counts; used + free + cached = total. */
export interface KvUsage {
  /** Blocks held by at least one sequence. */
  used: number;
  /** Blocks holding nothing reusable. */
  free: number;
  /** Unheld full blocks kept for prefix reuse (evictable). */
  cached: number;
  /** numBlocks. */
  total: number;
  /** used / total: the KV-usage gauge. */
  fraction: number;
}

/** Prefix-cache counters since construction, in tokens. */
export interface PrefixCacheStats {
  /** Tokens of the sequences looked up (by successful `allocate` calls). */
  queryTokens: number;
  /** Of those, tokens served from cached blocks. */
  hitTokens: number;
  /** hitTokens / queryTokens (0 before any query). */
  hitRate: number;
  /** Cached blocks evicted to make room. */
  evictedBlocks: number;
}

/** One sequence's bookkeeping. */
interface SeqState {
  /**
   * Block table, position order: blocksFor(tokenIds.length) blocks, then possibly spare blocks
   * for lookahead slots (private, never registered, never shared by fork).
   */
  blocks: number[];
  /** The confirmed tokens that have slots (computed, or being computed this step). */
  tokenIds: number[];
  /** Chained keys of its full blocks (prefix caching only): keys[i] belongs to blocks[i]. */
  keys: string[];
}

/**
 * Block pool, block tables, refcounts and prefix cache.
 *
 * @example
 * const bm = new BlockManager({ numBlocks: 1024, blockSize: 16 });
 * const a = bm.allocate("req-1", promptIds);          // null when the pool is too full
 * // ... the runner computes promptIds[a.numCachedTokens..] into a.blockTable ...
 * const { copies } = bm.appendSlots("req-1", [next])!; // slot for the sampled token
 * bm.free("req-1");                                    // full blocks stay cached for reuse
 */
export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly enablePrefixCaching: boolean;
  /** Tables holding each block. */
  private readonly refs: Int32Array;
  /** Prefix-cache key of each registered block, null when unregistered. */
  private readonly keyOf: Array<string | null>;
  /** Key -> registered block. Inverse of keyOf. */
  private readonly cachedByKey = new Map<string, number>();
  /** Free blocks (a stack: the most recently freed is reused first). */
  private readonly freeList: number[] = [];
  /** Unheld registered blocks, least recently released first (a Map keeps insertion order). */
  private readonly evictable = new Map<number, true>();
  private readonly seqs = new Map<string, SeqState>();
  private queryTokens = 0;
  private hitTokens = 0;
  private evictedBlocks = 0;

  constructor(o: BlockManagerOptions) {
    this.numBlocks = o.numBlocks;
    this.blockSize = o.blockSize ?? 16;
    this.enablePrefixCaching = o.enablePrefixCaching ?? true;
    if (!Number.isInteger(this.numBlocks) || this.numBlocks < 1) throw new ValueError(`BlockManager: numBlocks must be a positive integer, got ${o.numBlocks}`);
    if (!Number.isInteger(this.blockSize) || this.blockSize < 1) throw new ValueError(`BlockManager: blockSize must be a positive integer, got ${o.blockSize}`);
    this.refs = new Int32Array(this.numBlocks);
    this.keyOf = new Array<string | null>(this.numBlocks).fill(null);
    for (let b = this.numBlocks - 1; b >= 0; b--) this.freeList.push(b);  // block 0 on top
  }

  /** Blocks that `numTokens` tokens occupy. */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** Blocks that can be handed out now: free + cached (evictable). */
  numAvailableBlocks(): number {
    return this.freeList.length + this.evictable.size;
  }

  /**
   * Whether a new sequence of `numTokens` tokens fits now. Conservative: prefix-cache hits can
   * only lower what `allocate` needs, so `true` guarantees `allocate` succeeds.
   */
  canAllocate(numTokens: number): boolean {
    return this.blocksFor(numTokens) <= this.numAvailableBlocks();
  }

  /** Whether `appendSlots` with `numTokens` tokens (and `numLookaheadSlots`) would succeed now. */
  canAppendSlots(seqId: string, numTokens: number, numLookaheadSlots = 0): boolean {
    return this.blocksToAppend(this.seq(seqId, "canAppendSlots"), numTokens, numLookaheadSlots) <= this.numAvailableBlocks();
  }

  /** Whether the sequence has a block table. */
  has(seqId: string): boolean {
    return this.seqs.has(seqId);
  }

  /** Confirmed tokens the sequence has slots for (lookahead slots not counted). */
  numTokens(seqId: string): number {
    return this.seq(seqId, "numTokens").tokenIds.length;
  }

  /** A copy of the sequence's block table (block ids in position order). */
  blockTable(seqId: string): number[] {
    return [...this.seq(seqId, "blockTable").blocks];
  }

  /**
   * Starts a sequence whose known tokens are `tokenIds` (a prompt, or prompt + generated tokens
   * when recomputing a preempted request). Reuses the longest run of cached full leading
   * blocks, then allocates slots for up to `maxNewTokens` more tokens (the step's share of a
   * chunked prefill; default all of them). Returns null, changing nothing, when the pool cannot
   * supply the blocks.
   */
  allocate(seqId: string, tokenIds: readonly number[], maxNewTokens = Infinity): Allocation | null {
    if (this.seqs.has(seqId)) throw new ValueError(`BlockManager.allocate: sequence '${seqId}' already has a block table; free() it first`);
    if (!(maxNewTokens >= 0)) throw new ValueError(`BlockManager.allocate: maxNewTokens must be >= 0, got ${maxNewTokens}`);
    const bs = this.blockSize;
    const hits: number[] = [];
    const keys: string[] = [];
    if (this.enablePrefixCaching) {
      // Never the whole sequence: the last token must be computed to get its logits.
      const maxFull = Math.floor((tokenIds.length - 1) / bs);
      let parent = ROOT_BLOCK_KEY;
      for (let i = 0; i < maxFull; i++) {
        const key = blockKey(parent, tokenIds.slice(i * bs, (i + 1) * bs));
        const b = this.cachedByKey.get(key);
        if (b === undefined) break;
        hits.push(b);
        keys.push(key);
        parent = key;
      }
    }
    const numCached = hits.length * bs;
    const numNew = Math.min(tokenIds.length - numCached, maxNewTokens);
    const revived = hits.filter((b) => this.refs[b] === 0).length;
    if (this.blocksFor(numCached + numNew) - hits.length > this.numAvailableBlocks() - revived) return null;
    for (const b of hits) {
      if (this.refs[b] === 0) this.evictable.delete(b);
      this.refs[b]++;
    }
    const seq: SeqState = { blocks: hits, tokenIds: tokenIds.slice(0, numCached), keys };
    this.seqs.set(seqId, seq);
    this.grow(seq, tokenIds.slice(numCached, numCached + numNew), 0, []);  // the last hit is full: no copy
    if (this.enablePrefixCaching) {
      this.queryTokens += tokenIds.length;
      this.hitTokens += numCached;
    }
    return { blockTable: [...seq.blocks], numCachedTokens: numCached, numSlots: seq.tokenIds.length };
  }

  /**
   * Gives the sequence slots for `newTokenIds` (the next tokens to compute: a prefill chunk or a
   * sampled token), allocating blocks as the last one fills and registering blocks in the
   * prefix cache as they become full. When the last block is partially filled and shared (after
   * `fork`), the sequence first gets a private copy and the result says which block to copy.
   * `numLookaheadSlots` more slots past the new tokens get blocks but no tokens (speculative
   * drafts; confirm accepted ones by appending them later, into the same slots). Returns null,
   * changing nothing, when the pool cannot supply the blocks.
   */
  appendSlots(seqId: string, newTokenIds: readonly number[], numLookaheadSlots = 0): AppendResult | null {
    const seq = this.seq(seqId, "appendSlots");
    if (!(numLookaheadSlots >= 0)) throw new ValueError(`BlockManager.appendSlots: numLookaheadSlots must be >= 0, got ${numLookaheadSlots}`);
    if (this.blocksToAppend(seq, newTokenIds.length, numLookaheadSlots) > this.numAvailableBlocks()) return null;
    const copies: BlockCopy[] = [];
    this.grow(seq, newTokenIds, numLookaheadSlots, copies);
    return { copies };
  }

  /**
   * Makes `childSeqId` share every block of `parentSeqId` (n > 1 sampling: choices share the
   * prompt's K/V). Needs no free block; the shared partial last block is copied on the first
   * append (see appendSlots).
   */
  fork(parentSeqId: string, childSeqId: string): void {
    const parent = this.seq(parentSeqId, "fork");
    if (this.seqs.has(childSeqId)) throw new ValueError(`BlockManager.fork: sequence '${childSeqId}' already has a block table`);
    const blocks = parent.blocks.slice(0, this.blocksFor(parent.tokenIds.length));  // spare blocks stay the parent's
    for (const b of blocks) this.refs[b]++;
    this.seqs.set(childSeqId, { blocks, tokenIds: [...parent.tokenIds], keys: [...parent.keys] });
  }

  /**
   * Releases a sequence's blocks; returns false when it had none. Full registered blocks nobody
   * else holds become cached (evictable) unless `keepCached` is false (use that when the step
   * that wrote them failed). The table is released from its last block to its first, so a
   * prefix's tail is evicted before its head (a tail block is only reusable if its head is).
   */
  free(seqId: string, options: { keepCached?: boolean } = {}): boolean {
    const seq = this.seqs.get(seqId);
    if (!seq) return false;
    this.seqs.delete(seqId);
    const keep = options.keepCached ?? true;
    for (let i = seq.blocks.length - 1; i >= 0; i--) {
      const b = seq.blocks[i]!;
      if (--this.refs[b]! > 0) continue;
      const key = this.keyOf[b]!;
      if (key !== null && keep) {
        this.evictable.set(b, true);
        continue;
      }
      if (key !== null) this.unregister(b);
      this.freeList.push(b);
    }
    return true;
  }

  /** Block counts now. */
  usage(): KvUsage {
    const free = this.freeList.length;
    const cached = this.evictable.size;
    const used = this.numBlocks - free - cached;
    return { used, free, cached, total: this.numBlocks, fraction: used / this.numBlocks };
  }

  /** Prefix-cache counters. */
  prefixCacheStats(): PrefixCacheStats {
    const { queryTokens, hitTokens, evictedBlocks } = this;
    return { queryTokens, hitTokens, hitRate: queryTokens ? hitTokens / queryTokens : 0, evictedBlocks };
  }

  /**
   * Throws unless the bookkeeping is consistent: every block's refcount equals the number of
   * tables holding it; every block is in exactly one of free / used / cached (so they add up to
   * numBlocks); registered blocks and keys map one to one; every table has exactly the blocks
   * its tokens need, no block twice; and a registered block sits at a full position of every
   * table holding it, under the key that table's tokens give. For tests and debugging: it is
   * O(numBlocks + total table length).
   */
  checkInvariants(): void {
    const fail = (m: string): never => {
      throw new MegalithError(`BlockManager invariant violated: ${m}`, "kv_cache_invariant");
    };
    const bs = this.blockSize;
    const held = new Int32Array(this.numBlocks);
    for (const [id, s] of this.seqs) {
      const needed = this.blocksFor(s.tokenIds.length);
      if (s.blocks.length < needed) fail(`sequence '${id}' has ${s.blocks.length} blocks for ${s.tokenIds.length} tokens`);
      const full = Math.floor(s.tokenIds.length / bs);
      if (this.enablePrefixCaching && s.keys.length !== full) fail(`sequence '${id}' has ${s.keys.length} block keys for ${full} full blocks`);
      const seen = new Set<number>();
      s.blocks.forEach((b, i) => {
        if (!Number.isInteger(b) || b < 0 || b >= this.numBlocks) fail(`sequence '${id}' holds block ${b}, outside 0..${this.numBlocks - 1}`);
        if (seen.has(b)) fail(`sequence '${id}' holds block ${b} twice`);
        seen.add(b);
        held[b]++;
        const key = this.keyOf[b];
        if (key !== null && (i >= full || s.keys[i] !== key)) fail(`sequence '${id}' holds registered block ${b} at index ${i}, which is not the full block with its key`);
        if (i >= needed && this.refs[b] !== 1) fail(`sequence '${id}' shares its spare (lookahead) block ${b}`);
      });
    }
    const inFree = new Set(this.freeList);
    if (inFree.size !== this.freeList.length) fail(`the free list holds a block twice`);
    for (let b = 0; b < this.numBlocks; b++) {
      if (this.refs[b] !== held[b]) fail(`block ${b} has refcount ${this.refs[b]} but ${held[b]} tables hold it`);
      const states = (inFree.has(b) ? 1 : 0) + (this.evictable.has(b) ? 1 : 0) + (held[b]! > 0 ? 1 : 0);
      if (states !== 1) fail(`block ${b} is in ${states} of the states free / cached / used`);
      const key = this.keyOf[b];
      if (inFree.has(b) && key !== null) fail(`free block ${b} is still registered`);
      if (this.evictable.has(b) && key === null) fail(`cached block ${b} is not registered`);
      if (key !== null && this.cachedByKey.get(key) !== b) fail(`block ${b}'s key maps to block ${this.cachedByKey.get(key)}`);
    }
    for (const [key, b] of this.cachedByKey) if (this.keyOf[b] !== key) fail(`key ${key} maps to block ${b}, which has key ${this.keyOf[b]}`);
  }

  private seq(seqId: string, op: string): SeqState {
    const s = this.seqs.get(seqId);
    if (!s) throw new ValueError(`BlockManager.${op}: unknown sequence '${seqId}' (never allocated, or already freed)`);
    return s;
  }

  /** Whether writing at the sequence's next position needs a private copy of a shared partial block. */
  private needsCopy(seq: SeqState): boolean {
    const len = seq.tokenIds.length;
    return len % this.blockSize !== 0 && this.refs[seq.blocks[Math.floor(len / this.blockSize)]!]! > 1;
  }

  /** New blocks that appending `numTokens` confirmed + `numLookahead` slots takes, counting a copy-on-write. */
  private blocksToAppend(seq: SeqState, numTokens: number, numLookahead: number): number {
    if (numTokens + numLookahead <= 0) return 0;
    const grow = Math.max(0, this.blocksFor(seq.tokenIds.length + numTokens + numLookahead) - seq.blocks.length);
    return grow + (this.needsCopy(seq) ? 1 : 0);
  }

  /** Appends slots (the caller checked that enough blocks are available). */
  private grow(seq: SeqState, newTokenIds: readonly number[], numLookahead: number, copies: BlockCopy[]): void {
    const bs = this.blockSize;
    let len = seq.tokenIds.length;
    if (newTokenIds.length + numLookahead > 0 && this.needsCopy(seq)) {
      const i = Math.floor(len / bs);
      const src = seq.blocks[i]!;
      const dst = this.takeBlock();
      this.refs[src]--;
      seq.blocks[i] = dst;
      copies.push([src, dst]);
    }
    for (const t of newTokenIds) {
      if (len % bs === 0 && seq.blocks.length === len / bs) seq.blocks.push(this.takeBlock());  // else a spare block is there
      seq.tokenIds.push(t);
      len++;
      if (len % bs === 0 && this.enablePrefixCaching) this.register(seq, len / bs - 1);
    }
    while (seq.blocks.length < this.blocksFor(len + numLookahead)) seq.blocks.push(this.takeBlock());
  }

  /** Computes the key of the sequence's full block i and registers the block unless the key is taken. */
  private register(seq: SeqState, i: number): void {
    const bs = this.blockSize;
    const key = blockKey(i ? seq.keys[i - 1]! : ROOT_BLOCK_KEY, seq.tokenIds.slice(i * bs, (i + 1) * bs));
    seq.keys[i] = key;
    const b = seq.blocks[i]!;
    // An equal block computed by another sequence keeps the key; this one frees normally.
    if (this.keyOf[b] === null && !this.cachedByKey.has(key)) {
      this.keyOf[b] = key;
      this.cachedByKey.set(key, b);
    }
  }

  private unregister(b: number): void {
    this.cachedByKey.delete(this.keyOf[b]!);
    this.keyOf[b] = null;
  }

  /** A block with refcount 1: from the free list, else the least recently released cached block. */
  private takeBlock(): number {
    let b = this.freeList.pop();
    if (b === undefined) {
      const lru = this.evictable.keys().next();
      if (lru.done) throw new MegalithError("BlockManager: no block left to take (a caller skipped the availability check)", "kv_cache_internal");
      b = lru.value;
      this.evictable.delete(b);
      this.unregister(b);
      this.evictedBlocks++;
    }
    this.refs[b] = 1;
    return b;
  }
}

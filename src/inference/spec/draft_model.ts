/**
 * Draft-model speculation: a second, smaller GPT with the same vocabulary proposes k tokens
 * per sequence, autoregressively, with its own ModelRunner and its own paged KV cache.
 *
 * The draft's cache follows the target's own discipline (kv_cache/'s lookahead slots): only
 * tokens of the real history are ever confirmed in the draft's BlockManager; the k - 1 draft
 * tokens fed to get the next proposal sit in lookahead slots past them. Rolling back after a
 * rejection therefore costs nothing: the next proposal confirms (and recomputes) the tokens
 * the target actually emitted since, overwriting those slots, and attention never reads a
 * position past the one it computes. A rejected draft can never reach the prefix cache.
 *
 * One proposal of k tokens is k forwards of the draft, each batched over every sequence:
 * the first feeds each sequence's not-yet-cached history (usually the one or few tokens
 * emitted by the last verification), the others one draft token each.
 *
 * Drafts are drawn from the draft's processed distribution q (the request's own sampling
 * transforms) with the request's seeded stream at offset "draft", indexed by output position,
 * so a proposal depends only on the history and the seed.
 */
import type { GPT } from "../../models/index.js";
import { BlockManager, type BlockCopy } from "../kv_cache/index.js";
import { ModelRunner } from "../runner/index.js";
import { drawToken, toProbs, tokenDistribution, type SamplingParams } from "../sample/index.js";
import { streamUniform } from "./acceptance.js";

/** A sequence asking for drafts. */
export interface DraftRequest {
  id: string;
  /** Every known token: prompt, then output. */
  tokens: readonly number[];
  /** Leading tokens that are the prompt (the rest is output, for penalties and stream indices). */
  promptLength: number;
  /** Drafts wanted (fewer come back near the draft model's context end or when its cache is full). */
  k: number;
  sampling: SamplingParams;
}

/** Proposed drafts of one sequence. */
export interface Drafts {
  tokens: number[];
  /**
   * The processed draft distribution (dense, length V) each token was drawn from, for the
   * acceptance rule; null for greedy requests (q is one-hot on the argmax).
   */
  probs: Array<Float64Array | null>;
}

export interface DraftModelOptions {
  /** Blocks of the draft's own KV pool. */
  numBlocks: number;
  /** Tokens per block. Default 16. */
  blockSize?: number;
}

/**
 * A draft model with its KV cache, proposing tokens for many sequences at once.
 *
 * @example
 * const drafter = new DraftModel(smallGpt, { numBlocks: 512 });
 * const drafts = drafter.propose([{ id: "r1", tokens: [...prompt, ...out], promptLength: prompt.length, k: 4, sampling }]);
 * // ... verify drafts.get("r1") with the target ...
 * drafter.free("r1");                      // when r1 finishes, is aborted or preempted
 */
export class DraftModel {
  readonly runner: ModelRunner;
  readonly blocks: BlockManager;

  constructor(model: GPT, o: DraftModelOptions) {
    this.blocks = new BlockManager({ numBlocks: o.numBlocks, blockSize: o.blockSize ?? 16, enablePrefixCaching: true });
    this.runner = new ModelRunner(model, { numBlocks: o.numBlocks, blockSize: this.blocks.blockSize });
  }

  /**
   * Proposes drafts for each request. A sequence the draft cache cannot hold right now gets
   * none (verification then simply decodes one token). If a draft forward fails, the
   * sequences of that batch get no drafts and their draft caches are dropped.
   */
  propose(reqs: readonly DraftRequest[]): Map<string, Drafts> {
    const ctx = this.runner.model.config.blockSize;
    const bs = this.blocks.blockSize;
    interface Live { req: DraftRequest; k: number; feed: number[]; start: number; out: number[]; drafts: Drafts }
    const live: Live[] = [];
    const copies: BlockCopy[] = [];
    for (const req of reqs) {
      const T = req.tokens.length;
      // The last draft comes from the logits of position T + k - 2, which must be in context.
      let k = Math.min(req.k, ctx + 1 - T);
      if (k <= 0 || T === 0) {
        this.blocks.free(req.id);  // past the draft's context: it has nothing more to offer
        continue;
      }
      let start: number;
      if (!this.blocks.has(req.id)) {
        const a = this.blocks.allocate(req.id, req.tokens);
        if (!a) continue;
        start = a.numCachedTokens;
      } else {
        start = this.blocks.numTokens(req.id);
        if (start >= T) {
          // Everything is cached but the last token's logits are needed: start over (its
          // full blocks come back from the prefix cache).
          this.blocks.free(req.id);
          const a = this.blocks.allocate(req.id, req.tokens);
          if (!a) continue;
          start = a.numCachedTokens;
        } else {
          const res = this.blocks.appendSlots(req.id, req.tokens.slice(start));
          if (!res) continue;
          copies.push(...res.copies);
        }
      }
      if (k > 1) {
        const res = this.blocks.appendSlots(req.id, [], k - 1);
        if (res) copies.push(...res.copies);
        else k = 1;
      }
      live.push({ req, k, feed: req.tokens.slice(start), start, out: req.tokens.slice(req.promptLength), drafts: { tokens: [], probs: [] } });
    }
    const result = new Map<string, Drafts>();
    if (!live.length) return result;
    try {
      if (copies.length) this.runner.copyBlocks(copies);
      for (let step = 0; ; step++) {
        const batch = live.filter((l) => l.drafts.tokens.length < l.k);
        if (!batch.length) break;
        const tokens: number[] = [], positions: number[] = [], seqIndex: number[] = [], slots: number[] = [], sampleRows: number[] = [];
        const tables = batch.map((l) => this.blocks.blockTable(l.req.id));
        const maxBlocks = Math.max(1, ...tables.map((t) => t.length));
        const blockTables = new Int32Array(batch.length * maxBlocks);
        batch.forEach((l, i) => {
          blockTables.set(tables[i]!, i * maxBlocks);
          // Step 0 feeds the uncached history; later steps the newest draft.
          const feed = step === 0 ? l.feed : [l.drafts.tokens[l.drafts.tokens.length - 1]!];
          const first = step === 0 ? l.start : l.req.tokens.length + step - 1;
          feed.forEach((t, j) => {
            const p = first + j;
            tokens.push(t);
            positions.push(p);
            seqIndex.push(i);
            slots.push(tables[i]![Math.floor(p / bs)]! * bs + (p % bs));
          });
          sampleRows.push(tokens.length - 1);
        });
        const logits = this.runner.execute({
          tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), seqIndex: Int32Array.from(seqIndex),
          slotMapping: Int32Array.from(slots), blockTables, maxBlocks, sampleRows,
        });
        const V = logits.length / batch.length;
        batch.forEach((l, i) => {
          const sp = l.req.sampling;
          const history = [...l.out, ...l.drafts.tokens];
          const d = tokenDistribution(logits.subarray(i * V, (i + 1) * V), sp, l.req.tokens.slice(0, l.req.promptLength), history);
          if (sp.temperature === 0) {
            l.drafts.tokens.push(d.ids![0]!);
            l.drafts.probs.push(null);
          } else {
            l.drafts.tokens.push(drawToken(d, streamUniform(sp.seed, "draft", history.length)));
            l.drafts.probs.push(toProbs(d));
          }
        });
      }
    } catch {
      // Blocks written by a failed forward may hold garbage: keep them out of the prefix cache.
      for (const l of live) this.blocks.free(l.req.id, { keepCached: false });
      return result;
    }
    for (const l of live) result.set(l.req.id, l.drafts);
    return result;
  }

  /** Drops a sequence's draft cache (finished, aborted, or preempted by the target). */
  free(id: string, options: { keepCached?: boolean } = {}): void {
    this.blocks.free(id, options);
  }

  /** Frees the draft's KV pool. */
  dispose(): void {
    this.runner.dispose();
  }
}

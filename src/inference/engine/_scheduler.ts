/**
 * The engine's scheduler (private for now, like _block_manager.ts; see there).
 *
 * Iteration-level scheduling (vLLM's v1 scheduler): no prefill/decode phases. Each step, every
 * running request's computed tokens catch up with its total (prompt + generated) within a
 * token budget: running requests first (decodes need one token), then new requests from the
 * waiting queue, whose prompts may be split across steps (chunked prefill). When the KV cache
 * is full, the newest running request is preempted: its blocks are freed and it is recomputed
 * later from its prompt plus what it had generated. Pure bookkeeping: no tensors.
 */
import { ValueError } from "../../core/errors.js";
import { BlockManager } from "./_block_manager.js";

export interface SchedulerOptions {
  /** Most tokens computed in one step (all requests together). Default 512. */
  maxNumBatchedTokens?: number;
  /** Most requests running at once. Default 32. */
  maxNumSeqs?: number;
  /** Most requests waiting; addRequest refuses beyond it. Default 256. */
  maxWaiting?: number;
}

/** A request as the scheduler tracks it. */
export interface SchedRequest {
  id: string;
  promptTokens: number[];
  outputTokens: number[];
  /** Tokens whose k/v are in the cache. */
  numComputed: number;
  arrival: number;
  /** Set on the first step it was scheduled (queue time ends). */
  firstScheduledAt: number | null;
}

/** One request's share of a step (a plain record; see SchedulerOutput). */
export interface ScheduledRequest {
  requestId: string;
  /** Tokens fed this step: positions startPosition .. startPosition + tokenIds.length - 1. */
  tokenIds: number[];
  startPosition: number;
  /** The request's block table after allocation. */
  blockTable: readonly number[];
  /** True when this step reaches the request's total, so a next token must be sampled. */
  sample: boolean;
}

/** What one step does: the plain record the engine (and its tests) consume. */
export interface SchedulerOutput {
  scheduled: ScheduledRequest[];
  /** Requests preempted this step (freed; back at the front of the waiting queue). */
  preempted: string[];
  numBatchedTokens: number;
}

function total(r: SchedRequest): number {
  return r.promptTokens.length + r.outputTokens.length;
}

function allTokens(r: SchedRequest): number[] {
  return r.outputTokens.length ? [...r.promptTokens, ...r.outputTokens] : r.promptTokens;
}

export class Scheduler {
  readonly blocks: BlockManager;
  readonly maxNumBatchedTokens: number;
  readonly maxNumSeqs: number;
  readonly maxWaiting: number;
  private readonly waiting: SchedRequest[] = [];
  private readonly running: SchedRequest[] = [];
  private readonly byId = new Map<string, SchedRequest>();
  preemptions = 0;

  constructor(blocks: BlockManager, o: SchedulerOptions = {}) {
    this.blocks = blocks;
    this.maxNumBatchedTokens = o.maxNumBatchedTokens ?? 512;
    this.maxNumSeqs = o.maxNumSeqs ?? 32;
    this.maxWaiting = o.maxWaiting ?? 256;
    if (this.maxNumBatchedTokens < 1 || this.maxNumSeqs < 1 || this.maxWaiting < 0) throw new ValueError("Scheduler: limits must be positive");
  }

  get numWaiting(): number {
    return this.waiting.length;
  }
  get numRunning(): number {
    return this.running.length;
  }
  get(id: string): SchedRequest | undefined {
    return this.byId.get(id);
  }

  /** Queues a request; returns false when the waiting queue is full. */
  addRequest(id: string, promptTokens: number[], now = Date.now()): boolean {
    if (this.byId.has(id)) throw new ValueError(`Scheduler: duplicate request id ${id}`);
    if (promptTokens.length === 0) throw new ValueError(`Scheduler: request ${id} has an empty prompt`);
    if (this.blocks.blocksFor(promptTokens.length + 1) > this.blocks.numBlocks) {
      throw new ValueError(`Scheduler: request ${id} needs more KV blocks than the whole cache holds`);
    }
    if (this.waiting.length >= this.maxWaiting) return false;
    const r: SchedRequest = { id, promptTokens, outputTokens: [], numComputed: 0, arrival: now, firstScheduledAt: null };
    this.waiting.push(r);
    this.byId.set(id, r);
    return true;
  }

  /** Plans one step. */
  schedule(now = Date.now()): SchedulerOutput {
    let budget = this.maxNumBatchedTokens;
    const scheduled: ScheduledRequest[] = [];
    const preempted: string[] = [];
    const planned = new Set<SchedRequest>();
    // 1. Running requests, oldest first; preempt the newest when blocks run out.
    for (let i = 0; i < this.running.length && budget > 0; ) {
      const r = this.running[i]!;
      const take = Math.min(total(r) - r.numComputed, budget);
      if (take <= 0) { i++; continue; }
      if (!this.blocks.ensure(r.id, allTokens(r), r.numComputed + take)) {
        const victim = this.running[this.running.length - 1]!;
        if (planned.has(victim)) break;  // cannot free anything without undoing this step's plan
        this.preempt(victim);
        preempted.push(victim.id);
        continue;  // retry r (or stop if r itself was the victim)
      }
      scheduled.push(this.plan(r, take, now));
      planned.add(r);
      budget -= take;
      i++;
    }
    // 2. Waiting requests in arrival order (preempted ones were put back at the front).
    while (budget > 0 && this.waiting.length && this.running.length < this.maxNumSeqs) {
      const r = this.waiting[0]!;
      if (!this.blocks.has(r.id)) r.numComputed = this.blocks.startSequence(r.id, allTokens(r));
      const take = Math.min(total(r) - r.numComputed, budget);
      if (!this.blocks.ensure(r.id, allTokens(r), r.numComputed + take)) {
        this.blocks.freeSequence(r.id);
        r.numComputed = 0;
        break;  // wait for blocks to free up (FCFS: nobody overtakes the head of the queue)
      }
      this.waiting.shift();
      this.running.push(r);
      scheduled.push(this.plan(r, take, now));
      budget -= take;
    }
    return { scheduled, preempted, numBatchedTokens: this.maxNumBatchedTokens - budget };
  }

  private plan(r: SchedRequest, take: number, now: number): ScheduledRequest {
    r.firstScheduledAt ??= now;
    const tokens = allTokens(r).slice(r.numComputed, r.numComputed + take);
    return { requestId: r.id, tokenIds: tokens, startPosition: r.numComputed, blockTable: this.blocks.blockTable(r.id), sample: r.numComputed + take === total(r) };
  }

  private preempt(r: SchedRequest): void {
    this.running.splice(this.running.indexOf(r), 1);
    this.blocks.freeSequence(r.id);
    r.numComputed = 0;
    this.waiting.unshift(r);
    this.preemptions++;
  }

  /** Records a step's results: computed tokens advance, sampled tokens are appended. */
  update(out: SchedulerOutput, sampled: ReadonlyMap<string, number>): void {
    for (const s of out.scheduled) {
      const r = this.byId.get(s.requestId);
      if (!r) continue;  // aborted meanwhile
      r.numComputed = s.startPosition + s.tokenIds.length;
      const t = sampled.get(s.requestId);
      if (s.sample && t !== undefined) r.outputTokens.push(t);
    }
  }

  /** Ends a request (finished or aborted) and frees its blocks at once. */
  finish(id: string): void {
    const r = this.byId.get(id);
    if (!r) return;
    this.byId.delete(id);
    const i = this.running.indexOf(r);
    if (i >= 0) this.running.splice(i, 1);
    const w = this.waiting.indexOf(r);
    if (w >= 0) this.waiting.splice(w, 1);
    this.blocks.freeSequence(id);
  }

  hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }
}

/**
 * Iteration-level scheduling (vLLM's v1 scheduler). Pure bookkeeping: no tensors.
 *
 * There are no prefill and decode phases. A request has a total (prompt + generated tokens) and
 * a count of computed tokens (those whose K/V is in the cache); each step, running requests'
 * computed tokens catch up with their totals within a token budget. The budget goes, in order:
 *
 *   1. to running requests needing one token (decodes), oldest first;
 *   2. to running requests needing more (prompts: chunked prefill, oldest first, a chunk being
 *      whatever budget is left, so a long prompt spans several steps);
 *   3. to waiting requests, first come first served, while maxNumSeqs allows: each is admitted
 *      with its cached prefix (prefix caching) and a first chunk;
 *   4. to speculative draft tokens of decodes (optional work, so last).
 *
 * KV blocks are allocated for exactly the tokens scheduled. When the pool runs out while giving
 * slots to running requests (oldest first), the NEWEST running request is preempted: its blocks
 * are freed and it returns to the front of the waiting queue with computed = 0, its generated
 * tokens now part of what it must recompute (its full blocks usually survive in the prefix
 * cache, so the recompute is often cheap). A step that preempts admits no one, so a victim is not
 * re-admitted straight away. Nobody overtakes the head of the waiting queue (FCFS), and ties are
 * broken by arrival order only, so a run is deterministic.
 *
 * The loop the engine runs:
 *
 *   const out = scheduler.schedule();          // plan: tokens, positions, block tables, copies
 *   const logits = runner.execute(out);        // apply out.blockCopies first
 *   const sampled = sample(out, logits);       // Map<requestId, tokenIds> for samplesThisStep
 *   const { outputs } = scheduler.updateFromOutput(out, sampled);  // append, stop, free
 *
 * Computed tokens advance in updateFromOutput, not in schedule: if a step's output is never
 * applied (the forward failed), the same tokens are simply scheduled again.
 */
import { MegalithError, ValueError } from "../../core/errors.js";
import type { BlockCopy, BlockManager } from "../kv_cache/index.js";
import type {
  AddRequestResult, FinishReason, FinishedRequest, RequestOptions, RequestUpdate, ScheduledRequest, SchedulerOutput, SchedulerStats, UpdateResult,
} from "./output.js";

export interface SchedulerOptions {
  /** Most tokens computed in one step, all requests together. Default 512. Must be >= maxNumSeqs. */
  maxNumBatchedTokens?: number;
  /** Most requests running (holding KV blocks) at once. Default 32. */
  maxNumSeqs?: number;
  /** Most requests waiting; addRequest refuses beyond it (preempted requests always re-enter). Default 256. */
  maxWaiting?: number;
  /**
   * The model's context: a request whose total reaches it finishes with "length", and prompts
   * must be shorter. Default: unlimited (the caller enforces it).
   */
  maxModelLen?: number;
}

/** A request as the scheduler tracks it (a read-only view of live state: copy what you keep). */
export interface RequestState {
  readonly id: string;
  readonly promptTokens: readonly number[];
  /** Generated tokens, in order. */
  readonly outputTokens: readonly number[];
  /** Leading tokens (of prompt + output) whose K/V is in the cache, as of the last update. */
  readonly numComputed: number;
  /** Tokens it must compute before decoding: the prompt, or prompt + output at its last preemption. */
  readonly numPrefillTokens: number;
  readonly maxTokens: number;
  readonly stopTokenIds: ReadonlySet<number>;
  /** Wall-clock arrival (ms), for metrics. */
  readonly arrivalTime: number;
  /** Wall-clock time of its first scheduling (queue time ends), null before. */
  readonly firstScheduledAt: number | null;
  readonly status: "waiting" | "running";
  readonly numPreemptions: number;
  /** Draft tokens for the next step (setDraftTokens); consumed by schedule(). */
  readonly draftTokenIds: readonly number[];
  /** FCFS order: (arrivalSeq, forkSeq); a fork sits right after its parent. */
  readonly arrivalSeq: number;
  readonly forkSeq: number;
}

/** The scheduler's own, writable record. */
type Req = { -readonly [K in keyof RequestState]: RequestState[K] } & { outputTokens: number[]; draftTokenIds: number[] };

const before = (a: Req, b: Req) => a.arrivalSeq < b.arrivalSeq || (a.arrivalSeq === b.arrivalSeq && a.forkSeq < b.forkSeq);
const totalOf = (r: Req) => r.promptTokens.length + r.outputTokens.length;

/**
 * The scheduler over one BlockManager.
 *
 * @example
 * const scheduler = new Scheduler(new BlockManager({ numBlocks: 1024 }), { maxNumBatchedTokens: 512 });
 * const res = scheduler.addRequest("cmpl-1", promptIds, { maxTokens: 64, stopTokenIds: [eot] });
 * if (!res.accepted) reply(429, res.message);
 * while (scheduler.hasWork()) {
 *   const out = scheduler.schedule();
 *   const sampled = runAndSample(out);                 // Map<requestId, number[]>
 *   for (const u of scheduler.updateFromOutput(out, sampled).outputs) stream(u);
 * }
 */
export class Scheduler {
  readonly blocks: BlockManager;
  readonly maxNumBatchedTokens: number;
  readonly maxNumSeqs: number;
  readonly maxWaiting: number;
  readonly maxModelLen: number;
  /** Waiting requests in FCFS order (preempted ones re-enter at their arrival position: the front). */
  private readonly waiting: Req[] = [];
  /** Running requests in FCFS order; the last is the newest (the preemption victim). */
  private readonly running: Req[] = [];
  private readonly byId = new Map<string, Req>();
  /** Finished since the last schedule(), reported in its output. */
  private pendingFinished: FinishedRequest[] = [];
  /** The latest schedule() output not yet applied: its step id and what it scheduled. */
  private unapplied: { stepId: number; byId: Map<string, ScheduledRequest> } | null = null;
  private nextStepId = 1;
  private nextArrivalSeq = 0;
  private nextForkSeq = 1;
  private readonly counters: { preemptions: number; rejections: { queue_full: number }; finished: Record<FinishReason, number> } = {
    preemptions: 0, rejections: { queue_full: 0 }, finished: { stop: 0, length: 0, abort: 0, error: 0 },
  };

  constructor(blocks: BlockManager, o: SchedulerOptions = {}) {
    this.blocks = blocks;
    this.maxNumBatchedTokens = o.maxNumBatchedTokens ?? 512;
    this.maxNumSeqs = o.maxNumSeqs ?? 32;
    this.maxWaiting = o.maxWaiting ?? 256;
    this.maxModelLen = o.maxModelLen ?? Infinity;
    const posInt = (v: number) => Number.isInteger(v) && v >= 1;
    if (!posInt(this.maxNumBatchedTokens)) throw new ValueError(`Scheduler: maxNumBatchedTokens must be a positive integer, got ${o.maxNumBatchedTokens}`);
    if (!posInt(this.maxNumSeqs)) throw new ValueError(`Scheduler: maxNumSeqs must be a positive integer, got ${o.maxNumSeqs}`);
    if (!Number.isInteger(this.maxWaiting) || this.maxWaiting < 0) throw new ValueError(`Scheduler: maxWaiting must be an integer >= 0, got ${o.maxWaiting}`);
    if (this.maxNumBatchedTokens < this.maxNumSeqs) {
      throw new ValueError(`Scheduler: maxNumBatchedTokens (${this.maxNumBatchedTokens}) must be >= maxNumSeqs (${this.maxNumSeqs}), or decodes alone could use the whole budget and starve prompts`);
    }
    if (o.maxModelLen !== undefined && (!posInt(o.maxModelLen) || blocks.blocksFor(o.maxModelLen) > blocks.numBlocks)) {
      throw new ValueError(`Scheduler: maxModelLen must be a positive integer whose tokens fit in the KV cache (${blocks.numBlocks} blocks x ${blocks.blockSize} = ${blocks.numBlocks * blocks.blockSize} tokens), got ${o.maxModelLen}`);
    }
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length;
  }

  /** Preemptions since construction. */
  get preemptions(): number {
    return this.counters.preemptions;
  }

  /** Whether any request is waiting or running. */
  hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /** A live request (waiting or running), undefined once finished. Read-only. */
  get(requestId: string): RequestState | undefined {
    return this.byId.get(requestId);
  }

  stats(): SchedulerStats {
    const c = this.counters;
    return { running: this.running.length, waiting: this.waiting.length, preemptions: c.preemptions, rejections: { ...c.rejections }, finished: { ...c.finished } };
  }

  /**
   * Queues a request. Returns `{accepted: false, reason: "queue_full"}` when maxWaiting requests
   * already wait (answer 429/503 with Retry-After). Throws ValueError for a request that can never
   * run: duplicate id, empty or non-integer prompt, a prompt of maxModelLen tokens or more, or
   * one needing more blocks than the whole cache.
   */
  addRequest(requestId: string, promptTokens: readonly number[], options: RequestOptions = {}): AddRequestResult {
    if (this.byId.has(requestId)) throw new ValueError(`Scheduler.addRequest: request id '${requestId}' is already queued or running`);
    if (promptTokens.length === 0) throw new ValueError(`Scheduler.addRequest: request '${requestId}' has an empty prompt; give at least one token`);
    for (const t of promptTokens) if (!Number.isInteger(t) || t < 0) throw new ValueError(`Scheduler.addRequest: request '${requestId}' has prompt token ${t}; token ids are integers >= 0`);
    const maxTokens = options.maxTokens ?? Infinity;
    if (!(maxTokens === Infinity || (Number.isInteger(maxTokens) && maxTokens >= 1))) throw new ValueError(`Scheduler.addRequest: maxTokens must be a positive integer, got ${maxTokens}`);
    if (promptTokens.length >= this.maxModelLen) {
      throw new ValueError(`Scheduler.addRequest: request '${requestId}' has a prompt of ${promptTokens.length} tokens but the context is ${this.maxModelLen}; shorten the prompt`);
    }
    if (this.blocks.blocksFor(promptTokens.length + 1) > this.blocks.numBlocks) {
      throw new ValueError(`Scheduler.addRequest: request '${requestId}' (${promptTokens.length} prompt tokens) needs more KV blocks than the whole cache has (${this.blocks.numBlocks} x ${this.blocks.blockSize} tokens)`);
    }
    if (this.waiting.length >= this.maxWaiting) {
      this.counters.rejections.queue_full++;
      return { accepted: false, reason: "queue_full", message: `the waiting queue is full (${this.maxWaiting} requests); retry later` };
    }
    const r: Req = {
      id: requestId, promptTokens: [...promptTokens], outputTokens: [], numComputed: 0, numPrefillTokens: promptTokens.length,
      maxTokens, stopTokenIds: new Set(options.stopTokenIds ?? []), arrivalTime: options.arrivalTime ?? Date.now(), firstScheduledAt: null,
      status: "waiting", numPreemptions: 0, draftTokenIds: [], arrivalSeq: this.nextArrivalSeq++, forkSeq: 0,
    };
    this.waiting.push(r);
    this.byId.set(requestId, r);
    return { accepted: true };
  }

  /** Plans one step (see the file comment for the order). `now` (ms) only stamps firstScheduledAt. */
  schedule(now = Date.now()): SchedulerOutput {
    let budget = this.maxNumBatchedTokens;
    const scheduled: ScheduledRequest[] = [];
    const preempted: string[] = [];
    const copies: BlockCopy[] = [];
    // 1-2. Token shares of running requests: decodes first, then prompt chunks.
    const share = new Map<Req, number>();
    for (const r of this.running) {
      if (budget > 0 && totalOf(r) - r.numComputed === 1) {
        share.set(r, 1);
        budget--;
      }
    }
    for (const r of this.running) {
      const remaining = totalOf(r) - r.numComputed;
      if (budget > 0 && remaining > 1) {
        const n = Math.min(remaining, budget);
        share.set(r, n);
        budget -= n;
      }
    }
    // Slots for those shares, oldest first; out of blocks -> preempt the newest.
    for (const r of [...this.running]) {
      const n = share.get(r);
      if (!n || r.status !== "running") continue;  // no share, or preempted by an older request
      for (;;) {
        const res = this.reserveSlots(r, r.numComputed + n);
        if (res) {
          copies.push(...res.copies);
          scheduled.push(this.plan(r, n, now));
          break;
        }
        const victim = this.running[this.running.length - 1]!;
        if (victim === r && this.running.length === 1) {
          // Alone and still out of blocks: it holds the whole pool and wants more.
          this.finishInternal(r, "length");
          budget += n;
          break;
        }
        this.preempt(victim);
        preempted.push(victim.id);
        budget += share.get(victim) ?? 0;
        share.delete(victim);
        if (victim === r) break;
      }
    }
    // 3. Admissions, first come first served (none in a step that had to preempt).
    while (!preempted.length && budget > 0 && this.waiting.length && this.running.length < this.maxNumSeqs) {
      const r = this.waiting[0]!;
      const a = this.blocks.allocate(r.id, this.tokenSlice(r, 0, totalOf(r)), budget);
      if (!a) break;  // wait for blocks; nobody overtakes the head of the queue
      this.waiting.shift();
      r.status = "running";
      r.numComputed = a.numCachedTokens;
      this.insertByArrival(this.running, r);
      const n = a.numSlots - a.numCachedTokens;
      scheduled.push(this.plan(r, n, now));
      budget -= n;
    }
    // 4. Draft tokens of requests that sample, with what budget and blocks are left.
    for (const s of scheduled) {
      const r = this.byId.get(s.requestId)!;
      const drafts = r.draftTokenIds;
      r.draftTokenIds = [];
      if (!drafts.length || !s.samplesThisStep || budget === 0) continue;
      // A draft at position total + i - 1 can become output token outputs.length + i + 1.
      const room = Math.min(drafts.length, budget, r.maxTokens - r.outputTokens.length - 1, this.maxModelLen - totalOf(r));
      if (room <= 0) continue;
      const res = this.blocks.appendSlots(r.id, [], room);
      if (!res) continue;
      copies.push(...res.copies);
      s.tokenIds.push(...drafts.slice(0, room));
      s.numTokens += room;
      s.numDraftTokens = room;
      s.blockTable = this.blocks.blockTable(r.id);
      budget -= room;
    }
    for (const r of this.running) r.draftTokenIds = [];
    const out: SchedulerOutput = {
      stepId: this.nextStepId++, scheduled, numBatchedTokens: scheduled.reduce((sum, s) => sum + s.numTokens, 0), preempted,
      finished: this.pendingFinished, blockCopies: copies,
    };
    this.pendingFinished = [];
    this.unapplied = scheduled.length ? { stepId: out.stepId, byId: new Map(scheduled.map((s) => [s.requestId, { ...s }])) } : null;
    return out;
  }

  /**
   * Applies a step's results: computed tokens advance, sampled tokens are appended (each checked
   * against the request's stop token ids, maxTokens and maxModelLen), finished requests are
   * freed. `sampled` holds, for each scheduled request with samplesThisStep, its new tokens:
   * normally one; with drafts, the accepted drafts followed by the model's own token (only the
   * leading tokens equal to the drafts keep their K/V). A sampling request given no tokens
   * recomputes its last token next step. Must be called once per schedule(), with the latest
   * output, before the next schedule() (a skipped update only repeats the step's work).
   */
  updateFromOutput(out: SchedulerOutput, sampled: ReadonlyMap<string, readonly number[]>): UpdateResult {
    if (!out.scheduled.length) return { outputs: [] };
    if (!this.unapplied || this.unapplied.stepId !== out.stepId) {
      throw new ValueError(`Scheduler.updateFromOutput: step ${out.stepId} is not the latest unapplied schedule() output (${this.unapplied ? `step ${this.unapplied.stepId} is` : "none is"}); apply each step once, in order`);
    }
    // Check everything before changing anything, so a bad call leaves the step unapplied.
    for (const [id, tokens] of sampled) {
      const s = this.unapplied.byId.get(id);
      if (!s) throw new ValueError(`Scheduler.updateFromOutput: sampled tokens for '${id}', which step ${out.stepId} did not schedule`);
      if (tokens.length && !s.samplesThisStep) throw new ValueError(`Scheduler.updateFromOutput: sampled tokens for '${id}', which computes a prompt chunk and does not sample this step`);
      for (const t of tokens) if (!Number.isInteger(t) || t < 0) throw new ValueError(`Scheduler.updateFromOutput: sampled token ${t} for '${id}' is not a token id`);
    }
    this.unapplied = null;
    const outputs: RequestUpdate[] = [];
    for (const s of out.scheduled) {
      const r = this.byId.get(s.requestId);
      if (!r || r.status !== "running") continue;  // finished or aborted since schedule()
      const tokens = sampled.get(s.requestId) ?? [];
      const fedEnd = s.startPosition + s.numTokens - s.numDraftTokens;  // positions before it hold real tokens
      if (!s.samplesThisStep) {
        r.numComputed = fedEnd;
        continue;
      }
      if (!tokens.length) {
        r.numComputed = fedEnd - 1;
        continue;
      }
      const drafts = s.tokenIds.slice(s.numTokens - s.numDraftTokens);
      let accepted = 0;
      while (accepted < drafts.length && accepted < tokens.length - 1 && tokens[accepted] === drafts[accepted]) accepted++;
      r.numComputed = fedEnd + accepted;
      const appended: number[] = [];
      let reason: FinishReason | null = null;
      for (const t of tokens) {
        r.outputTokens.push(t);
        appended.push(t);
        reason = this.stopReason(r, t);
        if (reason) break;
      }
      outputs.push({ requestId: r.id, newTokenIds: appended, finishReason: reason, numAcceptedDraftTokens: accepted });
      if (reason) this.finishInternal(r, reason);
      // Accepted drafts sit in lookahead slots: confirm them (no new block is needed).
      else if (accepted && !this.reserveSlots(r, r.numComputed)) throw new MegalithError(`Scheduler: no slots to confirm accepted drafts of '${r.id}'`, "scheduler_internal");
    }
    return { outputs };
  }

  /**
   * Ends a request now, for any reason (a stop string found by the detokenizer: "stop"; a client
   * gone: "abort"; a failed step: "error", which also keeps its blocks out of the prefix cache).
   * Its blocks are freed at once; the next output lists it in `finished`. Returns false for an
   * unknown or already finished id.
   */
  finish(requestId: string, reason: FinishReason): boolean {
    const r = this.byId.get(requestId);
    if (!r) return false;
    this.finishInternal(r, reason);
    return true;
  }

  /** Cancels a request (client disconnect): finish(requestId, "abort"). */
  abort(requestId: string): boolean {
    return this.finish(requestId, "abort");
  }

  /**
   * Proposes speculative draft tokens for a running request's next step (e.g. from n-gram prompt
   * lookup). schedule() feeds them after the request's newest token when budget and blocks
   * allow (possibly fewer), and drops them otherwise; see updateFromOutput for acceptance.
   */
  setDraftTokens(requestId: string, draftTokenIds: readonly number[]): void {
    const r = this.byId.get(requestId);
    if (!r || r.status !== "running") throw new ValueError(`Scheduler.setDraftTokens: '${requestId}' is not a running request`);
    for (const t of draftTokenIds) if (!Number.isInteger(t) || t < 0) throw new ValueError(`Scheduler.setDraftTokens: draft token ${t} is not a token id`);
    r.draftTokenIds = [...draftTokenIds];
  }

  /**
   * Starts `childId` as a copy of running request `parentId` that shares all its KV blocks (n > 1
   * sampling: the choices share the prompt's K/V; a shared partial last block is copied on the
   * first write, reported in blockCopies). The child counts as arriving with its parent (FCFS)
   * and may take the running count past maxNumSeqs.
   *
   * The n > 1 flow: in the step where the parent samples (samplesThisStep, no drafts), sample n
   * tokens from its logits, then BEFORE updateFromOutput call fork(parent, child_i, {lastToken:
   * token_i}) for the other choices: each child starts from the parent's state after the step,
   * with token_i as its first new token. Then pass the parent's own token to updateFromOutput.
   * Between steps (the parent not in an unapplied output), fork copies the parent as it is and
   * takes no lastToken.
   *
   * Returns the child's finish reason when `lastToken` already ends it (stop id, maxTokens, or
   * the context; it is then freed at once and reported as finished), else null.
   */
  fork(parentId: string, childId: string, options: { lastToken?: number; maxTokens?: number; stopTokenIds?: readonly number[] } = {}): FinishReason | null {
    const p = this.byId.get(parentId);
    if (!p || p.status !== "running") throw new ValueError(`Scheduler.fork: '${parentId}' is not a running request`);
    if (this.byId.has(childId)) throw new ValueError(`Scheduler.fork: request id '${childId}' is already queued or running`);
    const { lastToken } = options;
    const inStep = this.unapplied?.byId.get(parentId);
    let numComputed = p.numComputed;
    const outputTokens = [...p.outputTokens];
    if (inStep) {
      if (!inStep.samplesThisStep || inStep.numDraftTokens > 0 || lastToken === undefined) {
        throw new ValueError(`Scheduler.fork: '${parentId}' is in step ${this.unapplied!.stepId}, not yet applied; fork it there only when it samples without drafts, with the child's lastToken (or fork after updateFromOutput)`);
      }
      numComputed = inStep.startPosition + inStep.numTokens;
    } else if (lastToken !== undefined) {
      throw new ValueError(`Scheduler.fork: lastToken is for forking in the step where '${parentId}' samples (before updateFromOutput); between steps the child is a plain copy`);
    }
    if (lastToken !== undefined) {
      if (!Number.isInteger(lastToken) || lastToken < 0) throw new ValueError(`Scheduler.fork: lastToken ${lastToken} is not a token id`);
      outputTokens.push(lastToken);
    }
    this.blocks.fork(parentId, childId);
    const child: Req = {
      id: childId, promptTokens: p.promptTokens, outputTokens, numComputed, numPrefillTokens: p.numPrefillTokens,
      maxTokens: options.maxTokens ?? p.maxTokens, stopTokenIds: options.stopTokenIds ? new Set(options.stopTokenIds) : p.stopTokenIds,
      arrivalTime: p.arrivalTime, firstScheduledAt: p.firstScheduledAt, status: "running", numPreemptions: 0, draftTokenIds: [],
      arrivalSeq: p.arrivalSeq, forkSeq: this.nextForkSeq++,
    };
    this.byId.set(childId, child);
    this.insertByArrival(this.running, child);
    const reason = lastToken !== undefined ? this.stopReason(child, lastToken) : null;
    if (reason) this.finishInternal(child, reason);
    return reason;
  }

  /**
   * Throws unless the scheduler's and the block manager's state agree: every request is either
   * waiting (holding no blocks) or running (holding blocks for at least its computed tokens),
   * both lists in FCFS order, and the block manager's own invariants hold. For tests.
   */
  checkInvariants(): void {
    const fail = (m: string): never => {
      throw new MegalithError(`Scheduler invariant violated: ${m}`, "scheduler_invariant");
    };
    const seen = new Set<string>();
    for (const [list, status] of [[this.waiting, "waiting"], [this.running, "running"]] as const) {
      list.forEach((r, i) => {
        if (r.status !== status) fail(`'${r.id}' is in the ${status} list with status ${r.status}`);
        if (seen.has(r.id)) fail(`'${r.id}' is listed twice`);
        seen.add(r.id);
        if (this.byId.get(r.id) !== r) fail(`'${r.id}' is listed but not indexed`);
        if (i > 0 && !before(list[i - 1]!, r)) fail(`the ${status} list is out of arrival order at '${r.id}'`);
        if (r.numComputed < 0 || r.numComputed > totalOf(r)) fail(`'${r.id}' has ${r.numComputed} computed of ${totalOf(r)} tokens`);
        if (status === "waiting" && (this.blocks.has(r.id) || r.numComputed !== 0)) fail(`waiting '${r.id}' holds blocks or computed tokens`);
        if (status === "running" && (!this.blocks.has(r.id) || this.blocks.numTokens(r.id) < r.numComputed)) fail(`running '${r.id}' lacks slots for its ${r.numComputed} computed tokens`);
      });
    }
    if (seen.size !== this.byId.size) fail(`${this.byId.size} requests indexed but ${seen.size} listed`);
    this.blocks.checkInvariants();
  }

  /** Makes the request's table cover `target` tokens (its slot tokens are its own tokens). */
  private reserveSlots(r: Req, target: number): { copies: BlockCopy[] } | null {
    const held = this.blocks.numTokens(r.id);
    if (target <= held) return { copies: [] };
    return this.blocks.appendSlots(r.id, this.tokenSlice(r, held, target));
  }

  private plan(r: Req, n: number, now: number): ScheduledRequest {
    r.firstScheduledAt ??= now;
    const start = r.numComputed;
    const samples = start + n === totalOf(r);
    return {
      requestId: r.id, numTokens: n, startPosition: start, tokenIds: this.tokenSlice(r, start, start + n), blockTable: this.blocks.blockTable(r.id),
      isPrefillChunk: start < r.numPrefillTokens, samplesThisStep: samples, numDraftTokens: 0,
    };
  }

  private preempt(r: Req): void {
    this.running.splice(this.running.indexOf(r), 1);
    this.blocks.free(r.id);
    r.status = "waiting";
    r.numComputed = 0;
    r.numPrefillTokens = totalOf(r);
    r.numPreemptions++;
    r.draftTokenIds = [];
    this.insertByArrival(this.waiting, r);
    this.counters.preemptions++;
  }

  private finishInternal(r: Req, reason: FinishReason): void {
    const list = r.status === "running" ? this.running : this.waiting;
    list.splice(list.indexOf(r), 1);
    this.blocks.free(r.id, { keepCached: reason !== "error" });
    this.byId.delete(r.id);
    this.pendingFinished.push({ requestId: r.id, reason });
    this.counters.finished[reason]++;
  }

  /** Why the request stops after appending `token`, or null. */
  private stopReason(r: Req, token: number): FinishReason | null {
    if (r.stopTokenIds.has(token)) return "stop";
    if (r.outputTokens.length >= r.maxTokens || totalOf(r) >= this.maxModelLen) return "length";
    return null;
  }

  /** Tokens [from, to) of prompt + output, without concatenating the whole sequence. */
  private tokenSlice(r: Req, from: number, to: number): number[] {
    const P = r.promptTokens.length;
    const out: number[] = [];
    for (let i = from; i < to; i++) out.push(i < P ? r.promptTokens[i]! : r.outputTokens[i - P]!);
    return out;
  }

  private insertByArrival(list: Req[], r: Req): void {
    let i = list.length;
    while (i > 0 && before(r, list[i - 1]!)) i--;
    list.splice(i, 0, r);
  }
}

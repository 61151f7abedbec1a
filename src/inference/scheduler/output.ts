/**
 * The plain records the scheduler exchanges with the engine (vLLM's SchedulerOutput and
 * EngineCoreOutput): JSON-serializable, no class instances, no references into the scheduler's
 * state, so a runner in another thread or process could consume them as they are.
 */
import type { BlockCopy } from "../kv_cache/index.js";

/** Why a request ended. */
export type FinishReason =
  /** A stop token id was generated (stop strings are found by the detokenizer, which calls finish(id, "stop")). */
  | "stop"
  /** maxTokens generated, the model's context (maxModelLen) reached, or the request cannot fit in the whole KV cache. */
  | "length"
  /** Cancelled by the caller (client disconnect, shutdown). */
  | "abort"
  /** The step that computed it failed. */
  | "error";

/** Per-request limits, given once to addRequest. */
export interface RequestOptions {
  /** Most tokens to generate; reaching it finishes the request with "length". Default: no limit. */
  maxTokens?: number;
  /** Token ids that finish the request with "stop" (the stop token is kept as the last output token). Default none. */
  stopTokenIds?: readonly number[];
  /** Wall-clock arrival in ms, for queue-time metrics only (order is by addRequest call). Default Date.now(). */
  arrivalTime?: number;
}

/** addRequest's answer: accepted, or refused with a reason the server maps to 429/503 + Retry-After. */
export type AddRequestResult =
  | { accepted: true }
  | { accepted: false; reason: "queue_full"; message: string };

/** One request's share of a step. */
export interface ScheduledRequest {
  /** The request (or forked sequence) id. */
  requestId: string;
  /** Tokens fed this step: tokenIds.length, draft tokens included. */
  numTokens: number;
  /** Position of tokenIds[0]; token k sits at startPosition + k. Equals the request's computed tokens. */
  startPosition: number;
  /** The token ids to feed: a prompt chunk, or the newest generated token, then numDraftTokens drafts. */
  tokenIds: number[];
  /** The request's block table after this step's allocation (a copy); covers every position fed. */
  blockTable: number[];
  /**
   * True while the request computes tokens it already had before decoding: its prompt, or after
   * a preemption its prompt plus what it had generated. False for decode steps.
   */
  isPrefillChunk: boolean;
  /**
   * True when this step reaches the request's total, so a next token must be sampled from the
   * logits of the last non-draft token (and, with drafts, of each draft token as well).
   */
  samplesThisStep: boolean;
  /**
   * Speculative draft tokens at the end of tokenIds (see Scheduler.setDraftTokens); 0 without.
   * A request with drafts wants 1 + numDraftTokens rows of logits: its last numDraftTokens + 1
   * positions.
   */
  numDraftTokens: number;
}

/** A request that left the scheduler, with why. */
export interface FinishedRequest {
  requestId: string;
  reason: FinishReason;
}

/** What one step does: the record schedule() returns and the runner executes. */
export interface SchedulerOutput {
  /** Increases by one per schedule() call; updateFromOutput checks it is applied once, in order. */
  stepId: number;
  /** Requests computing tokens this step, oldest arrival first. */
  scheduled: ScheduledRequest[];
  /** Sum of scheduled[].numTokens; never above maxNumBatchedTokens. */
  numBatchedTokens: number;
  /** Requests preempted this step: their blocks are freed; they wait at the front of the queue to be recomputed. */
  preempted: string[];
  /**
   * Requests that finished or were aborted since the previous schedule() (including this
   * one): their blocks are already freed; the runner drops any per-request state it keeps.
   */
  finished: FinishedRequest[];
  /**
   * Copy-on-write copies: for each [src, dst], copy block src's K/V into block dst (every
   * layer), in this order, BEFORE the forward pass writes this step's K/V.
   */
  blockCopies: BlockCopy[];
}

/** What updateFromOutput did to one scheduled request that sampled. */
export interface RequestUpdate {
  requestId: string;
  /** The tokens appended to its output (sampled tokens up to and including a stop condition). */
  newTokenIds: number[];
  /** Set when the request finished in this update (its blocks are freed). */
  finishReason: FinishReason | null;
  /** Draft tokens whose K/V was kept: the leading drafts equal to the sampled tokens. */
  numAcceptedDraftTokens: number;
}

/** updateFromOutput's result. */
export interface UpdateResult {
  /** One entry per scheduled request that sampled and got tokens, in schedule order. */
  outputs: RequestUpdate[];
}

/** Counters and gauges for metrics. */
export interface SchedulerStats {
  running: number;
  waiting: number;
  /** Preemptions since construction. */
  preemptions: number;
  /** Refusals by addRequest, by reason. */
  rejections: { queue_full: number };
  /** Requests that left, by reason. */
  finished: Record<FinishReason, number>;
}

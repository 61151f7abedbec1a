/**
 * scheduler: iteration-level scheduling over the paged KV cache (continuous batching, chunked
 * prefill, preemption by recompute, bounded queue) and the plain per-step records it emits.
 * Pure bookkeeping: imports only core and kv_cache.
 */
export { Scheduler, type SchedulerOptions, type RequestState } from "./scheduler.js";
export type {
  AddRequestResult, FinishReason, FinishedRequest, RequestOptions, RequestUpdate, ScheduledRequest, SchedulerOutput, SchedulerStats, UpdateResult,
} from "./output.js";

/**
 * spec: speculative decoding. Drafts from n-gram prompt lookup or from a small draft model
 * with its own KV cache, and the acceptance rule that keeps outputs distributed exactly as
 * without speculation. The engine feeds drafts through Scheduler.setDraftTokens and verifies
 * them from the target's rows of logits.
 */
export { acceptDraft, acceptOneHot, streamUniform, STREAM_OFFSETS, type Verdict } from "./acceptance.js";
export { DraftModel, type DraftModelOptions, type DraftRequest, type Drafts } from "./draft_model.js";
export { proposeNgram } from "./ngram.js";

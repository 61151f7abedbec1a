/**
 * The contract between the HTTP layer and the inference engine: plain records and a stream of
 * typed events per request.
 */
import type { SamplingParams } from "../sample/index.js";

/** One generation request, already tokenized and validated. */
export interface GenerationRequest {
  /** Unique id (the server's `cmpl-...`). */
  requestId: string;
  promptTokens: number[];
  sampling: SamplingParams;
  /** Most tokens to generate per choice. */
  maxTokens: number;
  /** Stop strings: generation ends before the first occurrence; the stop text is not returned. */
  stop: string[];
  /** Token ids that end generation (the model's end-of-text is always one). */
  stopTokenIds: number[];
  /** Choices sharing the prompt's KV blocks. */
  n: number;
}

/** Per-token logprob record (OpenAI's shape, before JSON naming). */
export interface TokenLogprob {
  token: string;
  tokenId: number;
  logprob: number;
  top: Array<{ token: string; tokenId: number; logprob: number }>;
}

/** Stream events: a request yields deltas per choice, one finish per choice, then done. */
export type EngineEvent =
  | { type: "delta"; index: number; text: string; tokenIds: number[]; logprobs: TokenLogprob[] }
  | { type: "finish"; index: number; reason: "stop" | "length" | "abort" | "error"; error?: string }
  | { type: "done"; usage: { promptTokens: number; completionTokens: number } };

/** Why a request was refused before it started. */
export class EngineRejection extends Error {
  constructor(readonly reason: "queue_full" | "not_ready" | "shutting_down", message: string, readonly retryAfterS = 1) {
    super(message);
    this.name = "EngineRejection";
  }
}

/** Counters and gauges the server exports at /metrics. */
export interface EngineStats {
  running: number;
  waiting: number;
  kvUsage: number;
  prefixCacheHitRate: number;
  preemptions: number;
  rejections: Record<string, number>;
  /** Seconds, recent samples for the latency histograms. */
  ttft: number[];
  itl: number[];
  e2e: number[];
  queueTime: number[];
  promptTokens: number;
  generationTokens: number;
  steps: number;
  lastStepAt: number;
  /** Speculative decoding: draft tokens proposed and accepted. */
  speculativeProposed?: number;
  speculativeAccepted?: number;
}

/** What the server needs from an engine. */
export interface EngineLike {
  readonly modelName: string;
  /** Most tokens (prompt + generated) of one sequence: the max model length. */
  readonly contextLength: number;
  /** Token ids 0..vocabSize-1 are valid (logit_bias keys, prompt ids the tokenizer can decode). */
  readonly vocabSize: number;
  /** Bytes of the longest token: a text of B bytes has at least B / maxTokenBytes tokens. */
  readonly maxTokenBytes: number;
  /** Tokenizer used for prompts and detokenization. */
  encode(text: string): number[];
  readonly eotToken: number;
  /** Starts a request; events stream until "done". Throws EngineRejection when it cannot queue. */
  submit(req: GenerationRequest, signal?: AbortSignal): AsyncIterable<EngineEvent>;
  /** Model loaded and the engine made progress recently (or is idle). */
  ready(): boolean;
  stats(): EngineStats;
  shutdown(): Promise<void>;
}

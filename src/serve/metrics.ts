/**
 * /metrics: Prometheus exposition through prom-client, one registry per server (no global
 * default registry, so two servers in one process, as in tests, never share counters).
 *
 * Latency histograms are observed by the HTTP layer as a client sees them (vLLM's names and
 * buckets, under megalith_): time to first token from the request's arrival at the route to
 * its first text delta, inter-token latency between consecutive deltas of one choice, and
 * end-to-end latency from arrival to the end of the response. A delta usually carries one token;
 * with speculative decoding or text held back at a partial UTF-8 character it may carry more,
 * so ITL is per delta, not strictly per token.
 *
 * Engine counters and gauges are read from engine.stats() at scrape time (collect callbacks).
 * The queue time, which only the engine sees, is exported as quantiles of its recent samples.
 *
 * /v1/embeddings has its own counters and latency histogram (megalith_embedding_*), so the
 * generation latencies stay about generation. A server without an engine (an encoder served
 * for embeddings only) has no engine metrics.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EngineLike } from "../inference/engine/types.js";

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** The server's metrics: histograms it observes, engine statistics read at scrape time. */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly e2e: Histogram;
  /** HTTP requests refused before reaching the engine, by status code (404, 400, 405, 429...). */
  readonly refused: Counter<"status">;
  /** /v1/embeddings requests answered with vectors. */
  readonly embeddingRequests: Counter;
  /** Inputs embedded (one request may carry up to 2048). */
  readonly embeddingInputs: Counter;
  /** Tokens the model saw for embeddings, special tokens included (usage.prompt_tokens). */
  readonly embeddingTokens: Counter;
  /** Time from an embeddings request's arrival to its response. */
  readonly embeddingLatency: Histogram;

  constructor(engine?: EngineLike) {
    const registers = [this.registry];
    this.ttft = new Histogram({ name: "megalith_time_to_first_token_seconds", help: "Time from a request's arrival to its first streamed text.", buckets: TTFT_BUCKETS, registers });
    this.itl = new Histogram({ name: "megalith_inter_token_latency_seconds", help: "Time between consecutive text deltas of one choice.", buckets: ITL_BUCKETS, registers });
    this.e2e = new Histogram({ name: "megalith_e2e_request_latency_seconds", help: "Time from a request's arrival to the end of its response.", buckets: E2E_BUCKETS, registers });
    this.refused = new Counter({ name: "megalith_http_refused_total", help: "Requests answered with an error status before generation, by status.", labelNames: ["status"], registers });
    this.embeddingRequests = new Counter({ name: "megalith_embedding_requests_total", help: "Embeddings requests answered with vectors.", registers });
    this.embeddingInputs = new Counter({ name: "megalith_embedding_inputs_total", help: "Inputs embedded.", registers });
    this.embeddingTokens = new Counter({ name: "megalith_embedding_prompt_tokens_total", help: "Tokens embedded, special tokens included.", registers });
    this.embeddingLatency = new Histogram({ name: "megalith_embedding_request_latency_seconds", help: "Time from an embeddings request's arrival to its response.", buckets: TTFT_BUCKETS, registers });
    if (engine) this.engineMetrics(engine);
  }

  /** Engine state, read when scraped. */
  private engineMetrics(engine: EngineLike): void {
    const registers = [this.registry];
    // A counter mirrors the engine's cumulative count (reset, then increased to it).
    const gauge = (name: string, help: string, read: (s: ReturnType<EngineLike["stats"]>) => number) =>
      new Gauge({ name, help, registers, collect() { this.set(read(engine.stats())); } });
    const counter = (name: string, help: string, read: (s: ReturnType<EngineLike["stats"]>) => number) =>
      new Counter({ name, help, registers, collect() { this.reset(); this.inc(read(engine.stats())); } });
    gauge("megalith_num_requests_running", "Requests currently scheduled.", (s) => s.running);
    gauge("megalith_num_requests_waiting", "Requests waiting for KV cache or batch space.", (s) => s.waiting);
    gauge("megalith_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.", (s) => s.kvUsage);
    gauge("megalith_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / prompt tokens looked up.", (s) => s.prefixCacheHitRate);
    counter("megalith_num_preemptions_total", "Requests preempted (freed and recomputed later).", (s) => s.preemptions);
    counter("megalith_prompt_tokens_total", "Prompt tokens processed.", (s) => s.promptTokens);
    counter("megalith_generation_tokens_total", "Tokens generated.", (s) => s.generationTokens);
    counter("megalith_engine_steps_total", "Engine steps run.", (s) => s.steps);
    new Counter({
      name: "megalith_request_rejections_total", help: "Requests the engine refused before starting, by reason.", labelNames: ["reason"], registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(engine.stats().rejections)) this.inc({ reason }, n);
      },
    });
    new Gauge({
      name: "megalith_request_queue_time_seconds", help: "Time a request waited before its first scheduled step: quantiles of the engine's most recent requests.", labelNames: ["quantile"], registers,
      collect() {
        const s = [...engine.stats().queueTime].sort((a, b) => a - b);
        this.reset();
        if (s.length) for (const q of [0.5, 0.9, 0.99]) this.set({ quantile: String(q) }, quantile(s, q));
      },
    });
    const spec = (name: string, help: string, read: (s: ReturnType<EngineLike["stats"]>) => number | undefined) =>
      new Counter({ name, help, registers, collect() { this.reset(); const v = read(engine.stats()); if (v !== undefined) this.inc(v); } });
    if (engine.stats().speculativeProposed !== undefined) {
      spec("megalith_spec_decode_draft_tokens_total", "Speculative draft tokens fed to the target model for verification.", (s) => s.speculativeProposed);
      spec("megalith_spec_decode_accepted_tokens_total", "Speculative draft tokens accepted.", (s) => s.speculativeAccepted);
    }
  }

  /** The text exposition (Prometheus 0.0.4 format). */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

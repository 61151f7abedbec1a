/** Prometheus text exposition of the engine's statistics (/metrics). */
import type { EngineStats } from "../inference/engine/types.js";

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

function summary(name: string, help: string, samples: number[]): string {
  const s = [...samples].sort((a, b) => a - b);
  const sum = s.reduce((a, b) => a + b, 0);
  return [
    `# HELP ${name} ${help}`,
    `# TYPE ${name} summary`,
    ...[0.5, 0.9, 0.99].map((q) => `${name}{quantile="${q}"} ${quantile(s, q)}`),
    `${name}_sum ${sum}`,
    `${name}_count ${s.length}`,
  ].join("\n");
}

function gauge(name: string, help: string, value: number, type: "gauge" | "counter" = "gauge"): string {
  return `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${value}`;
}

export function renderMetrics(s: EngineStats): string {
  const parts = [
    summary("megalith_time_to_first_token_seconds", "Time from arrival to the first generated token.", s.ttft),
    summary("megalith_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", s.itl),
    summary("megalith_e2e_request_latency_seconds", "Time from arrival to the last token.", s.e2e),
    summary("megalith_request_queue_time_seconds", "Time a request waited before its first scheduled step.", s.queueTime),
    gauge("megalith_num_requests_running", "Requests currently scheduled.", s.running),
    gauge("megalith_num_requests_waiting", "Requests waiting for KV cache or batch space.", s.waiting),
    gauge("megalith_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.", s.kvUsage),
    gauge("megalith_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / prompt tokens looked up.", s.prefixCacheHitRate),
    gauge("megalith_num_preemptions_total", "Requests preempted (freed and recomputed later).", s.preemptions, "counter"),
    gauge("megalith_prompt_tokens_total", "Prompt tokens processed.", s.promptTokens, "counter"),
    gauge("megalith_generation_tokens_total", "Tokens generated.", s.generationTokens, "counter"),
    gauge("megalith_engine_steps_total", "Engine steps run.", s.steps, "counter"),
    "# HELP megalith_request_rejections_total Requests refused before starting, by reason.\n# TYPE megalith_request_rejections_total counter\n" +
      Object.entries(s.rejections).map(([r, n]) => `megalith_request_rejections_total{reason="${r}"} ${n}`).join("\n"),
  ];
  if (s.speculativeProposed !== undefined) {
    parts.push(
      gauge("megalith_spec_decode_draft_tokens_total", "Speculative draft tokens fed to the target model for verification.", s.speculativeProposed, "counter"),
      gauge("megalith_spec_decode_accepted_tokens_total", "Speculative draft tokens accepted.", s.speculativeAccepted ?? 0, "counter"),
    );
  }
  return parts.join("\n") + "\n";
}

/**
 * `npm run bench -- serve [--quick]`:
 *  1. A load generator on loopback (Poisson arrivals, fixed request count, prompt and output
 *     lengths from a fixed seeded distribution) against the HTTP server, for continuous
 *     batching vs one request at a time vs static batching: throughput, TTFT and inter-token
 *     latency p50/p99 measured by the client from the SSE stream.
 *  2. Batch-1 decode tokens/s of GPT-2 124M (random weights) through the engine, beside the
 *     memory-bandwidth limit (weight bytes per token / measured copy bandwidth) and PyTorch
 *     1.13 decoding with a KV cache in the same run.
 */
import { execFileSync } from "node:child_process";
import { GPT, loadTokenizer, randn, zeros, _native as native } from "../src/index.js";
import { Engine, type EngineOptions } from "../src/inference/index.js";
import { createServer } from "../src/serve/index.js";
import type { BenchResult } from "./main.js";

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function pct(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

interface Req { at: number; prompt: number[]; maxTokens: number }

function workload(n: number, ratePerS: number, vocab: number): Req[] {
  const r = lcg(42);
  let t = 0;
  return Array.from({ length: n }, () => {
    t += -Math.log(1 - r()) / ratePerS;  // Poisson arrivals: exponential gaps
    const len = 16 + Math.floor(r() * 112);
    return { at: t * 1000, prompt: Array.from({ length: len }, () => Math.floor(r() * (vocab - 1))), maxTokens: 16 + Math.floor(r() * 48) };
  });
}

/** Streams one request and returns (ttft, itls, tokens). */
async function streamOne(base: string, q: Req): Promise<{ ttft: number; itl: number[]; tokens: number; end: number }> {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: q.prompt, max_tokens: q.maxTokens, temperature: 0, stream: true }),
  });
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = "", last = 0, ttft = NaN, tokens = 0;
  const itl: number[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      const j = JSON.parse(ev.slice(6)) as { choices: Array<{ text: string; finish_reason: string | null }> };
      if (!j.choices[0] || j.choices[0].finish_reason) continue;
      const now = performance.now();
      if (Number.isNaN(ttft)) ttft = now - t0;
      else itl.push(now - last);
      last = now;
      tokens++;
    }
  }
  return { ttft, itl, tokens, end: performance.now() };
}

async function loadTest(model: GPT, mode: "continuous" | "sequential" | "static", reqs: Req[], staticBatch: number) {
  const tok = loadTokenizer("gpt2");
  const opts: EngineOptions = { modelName: "bench", kvCacheBytes: 512 * 2 ** 20, maxNumBatchedTokens: 512, maxNumSeqs: mode === "sequential" ? 1 : 32 };
  const engine = new Engine(model, tok, opts);
  const app = createServer({ engine });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const start = performance.now();
  const results: Array<Awaited<ReturnType<typeof streamOne>>> = [];
  if (mode === "static") {
    // Static batching: requests queue up; each batch of up to B runs to completion before the next starts.
    let next = 0;
    while (next < reqs.length) {
      const now = performance.now() - start;
      if (reqs[next]!.at > now) await new Promise((r) => setTimeout(r, reqs[next]!.at - now));
      const arrived = reqs.filter((q, i) => i >= next && q.at <= performance.now() - start).slice(0, staticBatch);
      next += arrived.length;
      results.push(...(await Promise.all(arrived.map((q) => streamOne(base, q)))));
    }
  } else {
    results.push(...(await Promise.all(reqs.map(async (q) => {
      await new Promise((r) => setTimeout(r, q.at));
      return streamOne(base, q);
    }))));
  }
  const elapsed = (Math.max(...results.map((r) => r.end)) - start) / 1000;
  await app.close();
  await engine.shutdown();
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  const ttft = results.map((r) => r.ttft);
  const itl = results.flatMap((r) => r.itl);
  return {
    name: `load: ${mode}`, requests: reqs.length, tokens_per_s: +(tokens / elapsed).toFixed(1),
    ttft_p50_ms: +pct(ttft, 0.5).toFixed(1), ttft_p99_ms: +pct(ttft, 0.99).toFixed(1),
    itl_p50_ms: +pct(itl, 0.5).toFixed(1), itl_p99_ms: +pct(itl, 0.99).toFixed(1), wall_s: +elapsed.toFixed(2),
  };
}

async function decodeBench(quick: boolean) {
  const cfg = quick ? { nLayer: 6, nHead: 6, nEmbd: 384, blockSize: 512, vocabSize: 50304 } : { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50304 };
  const model = new GPT(cfg, { seed: 0 });
  const tok = loadTokenizer("gpt2");
  const engine = new Engine(model, tok, { kvCacheBytes: 128 * 2 ** 20, maxNumSeqs: 1 });
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919) % 50000);
  const newTokens = 64;
  const run = async () => {
    let first = 0, last = 0, n = 0;
    const sampling = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: 0 };
    for await (const ev of engine.submit({ requestId: `d${Math.random()}`, promptTokens: prompt, sampling, maxTokens: newTokens, stop: [], stopTokenIds: [], n: 1 })) {
      if (ev.type !== "delta") continue;
      n++;
      if (n === 1) first = performance.now();
      last = performance.now();
    }
    return (n - 1) / ((last - first) / 1000);
  };
  await run();  // warm-up
  const tps = await run();
  await engine.shutdown();
  // Memory-bandwidth limit: every weight is read once per token (the tied LM head included).
  const weightBytes = model.numParameters() * 4;
  const n = 3 << 23;
  const a = randn([n], { seed: 1 }), b = zeros([n]);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    native.copyStrided(4, a.ptr, [1], b.ptr, [1], [n]);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  const copyGBs = (2 * n * 4) / best / 1e9;
  const limit = (copyGBs * 1e9) / weightBytes;
  const py = JSON.parse(execFileSync("/usr/bin/python3", ["scripts/torch_ref/bench_decode.py",
    ...[cfg.nLayer, cfg.nHead, cfg.nEmbd, cfg.blockSize, cfg.vocabSize, 32, newTokens, native.numThreads()].map(String)], { encoding: "utf8" })) as { tokens_per_s: number };
  return {
    name: `decode batch 1 (${(model.numParameters() / 1e6).toFixed(0)}M params)`, tokens_per_s: +tps.toFixed(1),
    bandwidth_limit_tokens_per_s: +limit.toFixed(1), fraction_of_limit: +(tps / limit).toFixed(3),
    pytorch_kv_cache_tokens_per_s: +py.tokens_per_s.toFixed(1), copy_gbs: +copyGBs.toFixed(1), weight_mb: +(weightBytes / 1e6).toFixed(0),
  };
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const rows: BenchResult["rows"] = [];
  const model = new GPT({ nLayer: 4, nHead: 4, nEmbd: 256, blockSize: 256, vocabSize: 50304 }, { seed: 1 });
  const reqs = workload(quick ? 12 : 32, 6, 50257);
  for (const mode of ["continuous", "sequential", "static"] as const) {
    console.error(`serve bench: load test, ${mode}...`);
    rows.push(await loadTest(model, mode, reqs, 8));
  }
  console.error("serve bench: batch-1 decode...");
  rows.push(await decodeBench(quick));
  return { suite: "serve", env: { threads: native.numThreads(), loadModel: "GPT 4L/4H/256, random weights", arrivalsPerS: 6 }, rows };
}

/**
 * `npm run bench -- serve [--quick]`, or `npm run bench -- serve --clients 64 --seconds 60`
 * (sustained load only, see sustainedLoad below):
 *  1. A load generator on loopback (Poisson arrivals, fixed request count, prompt and output
 *     lengths from a fixed seeded distribution) against the HTTP server, for continuous
 *     batching vs one request at a time vs static batching: throughput, TTFT and inter-token
 *     latency p50/p99 measured by the client from the SSE stream.
 *  2. Batch-1 decode tokens/s of GPT-2 124M (random weights) through the engine, float32 and
 *     with int8 projections, beside the memory-bandwidth limit (weight bytes per token / measured
 *     copy bandwidth) and PyTorch 1.13 decoding with a KV cache in the same run.
 *  3. Perplexity of a small GPT trained on the Brown corpus, float32 and int8, on the Brown
 *     validation split (the quality cost of `--quantize int8`).
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { GPT, Trainer, validateConfig, ensurePreparedBrown, loadTokenizer, randn, zeros, backend } from "../src/index.js";
import { Engine, quantizeModelInt8, perplexity, readSplitTokens, type EngineOptions } from "../src/inference/index.js";
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

/** Batch-1 greedy decode tokens/s through the engine: the median of `runs` runs of 64 tokens after a warm-up, and the range. */
async function decodeTokensPerS(model: GPT, runs: number): Promise<{ median: number; min: number; max: number }> {
  const tok = loadTokenizer("gpt2");
  const engine = new Engine(model, tok, { kvCacheBytes: 128 * 2 ** 20, maxNumSeqs: 1 });
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919) % 50000);
  const once = async () => {
    let first = 0, last = 0, n = 0;
    const sampling = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, seed: 0, logprobs: 0 };
    for await (const ev of engine.submit({ requestId: `d${Math.random()}`, promptTokens: prompt, sampling, maxTokens: DECODE_TOKENS, stop: [], stopTokenIds: [], n: 1 })) {
      if (ev.type !== "delta") continue;
      n++;
      if (n === 1) first = performance.now();
      last = performance.now();
    }
    return (n - 1) / ((last - first) / 1000);
  };
  await once();  // warm-up
  const tps: number[] = [];
  for (let i = 0; i < runs; i++) tps.push(await once());
  await engine.shutdown();
  return { median: pct(tps, 0.5), min: Math.min(...tps), max: Math.max(...tps) };
}

const DECODE_TOKENS = 64;

async function decodeBench(quick: boolean) {
  const cfg = quick ? { nLayer: 6, nHead: 6, nEmbd: 384, blockSize: 512, vocabSize: 50304 } : { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50304 };
  const model = new GPT(cfg, { seed: 0 });
  const runs = quick ? 2 : 3;
  // Memory-bandwidth limit: every weight is read once per token (the tied LM head included).
  // Counted before quantizing: the swap takes the projection weights out of the parameters.
  const weightBytes = model.numParameters() * 4;
  const fp32 = await decodeTokensPerS(model, runs);
  // int8: the four projections of every block; embeddings and the tied LM head stay float32.
  const q = quantizeModelInt8(model);
  const int8 = await decodeTokensPerS(model, runs);
  // ... and the tied LM head too (the largest single read: 154 MB of the 498).
  const qh = quantizeModelInt8(model, { lmHead: true });
  const int8Head = await decodeTokensPerS(model, runs);
  const weightBytesInt8 = weightBytes - q.bytesFloat32 + q.bytesInt8;
  const weightBytesInt8Head = weightBytes - qh.bytesFloat32 + qh.bytesInt8;
  const n = 3 << 23;
  const a = randn([n], { seed: 1 }), b = zeros([n]);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    backend.copyStrided(4, a, [1], b, [1], [n]);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  const copyGBs = (2 * n * 4) / best / 1e9;
  const py = JSON.parse(execFileSync("/usr/bin/python3", ["scripts/torch_ref/bench_decode.py",
    ...[cfg.nLayer, cfg.nHead, cfg.nEmbd, cfg.blockSize, cfg.vocabSize, 32, DECODE_TOKENS, backend.numThreads()].map(String)], { encoding: "utf8" })) as { tokens_per_s: number };
  const params = `${(weightBytes / 4 / 1e6).toFixed(0)}M params`;
  return ([["float32", fp32, weightBytes], ["int8 projections", int8, weightBytesInt8], ["int8 projections + LM head", int8Head, weightBytesInt8Head]] as const).map(([kind, tps, bytes]) => {
    const limit = (copyGBs * 1e9) / bytes;
    return {
      name: `decode batch 1 (${params}, ${kind})`, tokens_per_s: +tps.median.toFixed(1), tokens_per_s_range: `${tps.min.toFixed(1)}-${tps.max.toFixed(1)}`,
      bandwidth_limit_tokens_per_s: +limit.toFixed(1), fraction_of_limit: +(tps.median / limit).toFixed(3),
      pytorch_kv_cache_tokens_per_s: +py.tokens_per_s.toFixed(1), copy_gbs: +copyGBs.toFixed(1), weight_mb: +(bytes / 1e6).toFixed(0),
    };
  });
}

/**
 * Quality of int8 next to float32: perplexity on the Brown validation split of a small GPT
 * trained on the Brown training split (random weights would make perplexity meaningless). The
 * trained model is cached under .cache/megalith/bench/ by its config, so only the first run
 * pays for training (a few minutes on 2 cores).
 */
async function qualityBench(quick: boolean) {
  const steps = quick ? 100 : 300;
  const raw = {
    out_dir: `.cache/megalith/bench/serve-ppl-4x128-${steps}`,
    model: { n_layer: 4, n_head: 4, n_embd: 128, block_size: 64, vocab_size: 50304, dropout: 0 },
    data: { source: "brown", tokenizer: "gpt2" },
    train: { max_steps: steps, micro_batch_size: 16, seed: 1337, grad_clip: 1.0, log_interval: 50 },
    optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 20, betas: [0.9, 0.95], weight_decay: 0.1 },
    eval: { interval: 0, batches: 8 },
    checkpoint: { interval: 0, keep: 1 },
  };
  const config = validateConfig(raw, "bench serve quality config");
  const finalDir = join(config.out_dir, "final");
  let trainS = 0;
  if (!existsSync(join(finalDir, "model.safetensors"))) {
    console.error(`serve bench: training a 4-layer GPT on Brown for ${steps} steps (cached in ${config.out_dir})...`);
    const t0 = performance.now();
    // No final/ yet: a cut-off earlier run is redone from scratch.
    const trainer = new Trainer(config, { log: true, overwrite: true });
    await trainer.setup();
    await trainer.run();
    trainS = (performance.now() - t0) / 1000;
  }
  const model = await GPT.fromPretrained(finalDir);
  const { dir } = await ensurePreparedBrown(config.data.cache_dir, "gpt2");
  const val = readSplitTokens(dir, "val");
  const blockSize = config.model.block_size, stride = blockSize / 2;
  console.error(`serve bench: perplexity on ${val.length} Brown val tokens, float32, int8, int8 + LM head...`);
  const t0 = performance.now();
  const fp32 = perplexity(model, val, { blockSize, stride });
  const t1 = performance.now();
  quantizeModelInt8(model);
  const int8 = perplexity(model, val, { blockSize, stride, quantized: true });
  const t2 = performance.now();
  quantizeModelInt8(model, { lmHead: true });
  const int8Head = perplexity(model, val, { blockSize, stride, quantized: true });
  const pct = (p: number) => +((100 * (p - fp32.perplexity)) / fp32.perplexity).toFixed(3);
  return {
    name: `perplexity: Brown val, GPT 4L/4H/128 trained ${steps} steps`, fp32_perplexity: +fp32.perplexity.toFixed(3),
    int8_perplexity: +int8.perplexity.toFixed(3), int8_vs_fp32_pct: pct(int8.perplexity),
    int8_lm_head_perplexity: +int8Head.perplexity.toFixed(3), int8_lm_head_vs_fp32_pct: pct(int8Head.perplexity),
    val_tokens: fp32.tokens, block_size: blockSize, stride, fp32_eval_s: +((t1 - t0) / 1000).toFixed(1), int8_eval_s: +((t2 - t1) / 1000).toFixed(1),
    train_s: +trainS.toFixed(0),
  };
}

/** The value after `--name` in args, as a positive integer, or undefined when absent. */
function intArg(args: string[], name: string): number | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = Number(args[i + 1]);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${name} wants a positive integer, got ${JSON.stringify(args[i + 1])}`);
  return v;
}

/**
 * Sustained load: `clients` closed-loop clients stream requests back to back over loopback for
 * `seconds` (prompts of 16-127 tokens, 16-63 generated tokens, greedy), and one in ten
 * disconnects after its third chunk, as impatient users do. Meanwhile a prober GETs /health every
 * 100 ms from a separate process: its latency is how responsive HTTP stays while the engine
 * generates. A request fails
 * when it gets a status other than 200, a network error, or a stream that ends without
 * `data: [DONE]` (disconnects we made are not failures). After the clients stop, the KV blocks
 * in use must drop back to 0 (every finished or cancelled request freed its blocks).
 */
async function sustainedLoad(model: GPT, clients: number, seconds: number) {
  const tok = loadTokenizer("gpt2");
  const engine = new Engine(model, tok, { modelName: "bench", kvCacheBytes: 512 * 2 ** 20, maxNumBatchedTokens: 512, maxNumSeqs: 32, maxWaiting: 256 });
  const app = createServer({ engine });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const deadline = performance.now() + seconds * 1000;
  let completed = 0, disconnected = 0, tokens = 0;
  const failures: string[] = [];
  const ttft: number[] = [], itl: number[] = [], health: number[] = [];
  let healthFailures = 0, peakRunning = 0, peakWaiting = 0, peakKv = 0, slowestProbeAt = 0;

  const client = async (c: number) => {
    const r = lcg(1000 + c);
    while (performance.now() < deadline) {
      const len = 16 + Math.floor(r() * 112);
      const prompt = Array.from({ length: len }, () => Math.floor(r() * 50000));
      const maxTokens = 16 + Math.floor(r() * 48);
      const leave = r() < 0.1;
      const ctrl = new AbortController();
      const t0 = performance.now();
      try {
        const res = await fetch(`${base}/v1/completions`, {
          method: "POST", headers: { "content-type": "application/json" }, signal: ctrl.signal,
          body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
        });
        if (res.status !== 200) {
          failures.push(`status ${res.status}: ${(await res.text()).slice(0, 200)}`);
          continue;
        }
        const reader = res.body!.getReader();
        const dec = new TextDecoder();
        let buf = "", chunks = 0, last = 0, done = false;
        for (;;) {
          const { done: end, value } = await reader.read();
          if (end) break;
          buf += dec.decode(value, { stream: true });
          let i: number;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const ev = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (ev === "data: [DONE]") { done = true; continue; }
            const j = JSON.parse(ev.slice(6)) as { choices?: Array<{ finish_reason: string | null }>; error?: { message: string } };
            if (j.error) failures.push(`stream error: ${j.error.message}`);
            if (!j.choices?.[0] || j.choices[0].finish_reason) continue;
            const now = performance.now();
            if (chunks === 0) ttft.push(now - t0);
            else itl.push(now - last);
            last = now;
            chunks++;
            tokens++;
          }
          if (leave && chunks >= 3) {
            ctrl.abort();
            disconnected++;
            break;
          }
        }
        if (leave && chunks >= 3) continue;
        if (done) completed++;
        else failures.push("stream ended without data: [DONE]");
      } catch (e) {
        if (!ctrl.signal.aborted) failures.push(`network: ${(e as Error).message}`);
      }
    }
  };
  // The /health prober runs in its own process, so its numbers are the server's responsiveness,
  // not the scheduling of 64 in-process clients around it.
  const PROBER = `const [base, ms] = process.argv.slice(1); const end = Date.now() + Number(ms); const out = { lat: [], fail: 0, slowestAt: 0 }; const t0 = performance.now();
    while (Date.now() < end) { const s = performance.now(); try { const r = await fetch(base + "/health"); await r.text(); if (r.status === 200) { const d = performance.now() - s; if (d > Math.max(0, ...out.lat)) out.slowestAt = (s - t0) / 1000; out.lat.push(d); } else out.fail++; } catch { out.fail++; } await new Promise((r) => setTimeout(r, 100)); }
    process.stdout.write(JSON.stringify(out));`;
  const prober = new Promise<{ lat: number[]; fail: number; slowestAt: number }>((resolve, reject) => {
    execFile(process.execPath, ["--input-type=module", "-e", PROBER, base, String(seconds * 1000)], { maxBuffer: 1 << 24 }, (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout))));
  });
  const watcher = (async () => {
    while (performance.now() < deadline) {
      const s = engine.stats();
      peakRunning = Math.max(peakRunning, s.running);
      peakWaiting = Math.max(peakWaiting, s.waiting);
      peakKv = Math.max(peakKv, s.kvUsage);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const t0 = performance.now();
  await Promise.all([...Array.from({ length: clients }, (_, c) => client(c)), watcher]);
  const probe = await prober;
  health.push(...probe.lat);
  healthFailures = probe.fail;
  slowestProbeAt = probe.slowestAt;
  const elapsed = (performance.now() - t0) / 1000;
  // Cancelled requests are freed at the engine's next step: give it a moment.
  let used = engine.blocks.usage().used;
  for (let i = 0; i < 50 && used > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    used = engine.blocks.usage().used;
  }
  const after = engine.stats();
  await app.close();
  await engine.shutdown();
  const f = (x: number) => +x.toFixed(1);
  return {
    name: `sustained: ${clients} streaming clients x ${seconds} s`, requests_completed: completed, requests_disconnected_by_client: disconnected,
    requests_failed: failures.length, first_failures: failures.slice(0, 3).join(" | "), tokens_per_s: f(tokens / elapsed),
    ttft_p50_ms: f(pct(ttft, 0.5)), ttft_p99_ms: f(pct(ttft, 0.99)), itl_p50_ms: f(pct(itl, 0.5)), itl_p99_ms: f(pct(itl, 0.99)),
    health_p50_ms: f(pct(health, 0.5)), health_p99_ms: f(pct(health, 0.99)), health_max_ms: f(Math.max(...health)), health_slowest_at_s: f(slowestProbeAt), health_probes: health.length, health_failures: healthFailures,
    peak_running: peakRunning, peak_waiting: peakWaiting, peak_kv_usage: +peakKv.toFixed(3),
    kv_blocks_used_after: used, running_after: after.running, waiting_after: after.waiting, wall_s: f(elapsed),
  };
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const clients = intArg(args, "--clients");
  if (clients !== undefined) {
    const seconds = intArg(args, "--seconds") ?? 60;
    const model = new GPT({ nLayer: 4, nHead: 4, nEmbd: 256, blockSize: 256, vocabSize: 50304 }, { seed: 1 });
    console.error(`serve bench: ${clients} streaming clients for ${seconds} s, /health probed every 100 ms...`);
    const row = await sustainedLoad(model, clients, seconds);
    return { suite: "serve", env: { threads: backend.numThreads(), loadModel: "GPT 4L/4H/256, random weights", clients, seconds }, rows: [row] };
  }
  const rows: BenchResult["rows"] = [];
  const model = new GPT({ nLayer: 4, nHead: 4, nEmbd: 256, blockSize: 256, vocabSize: 50304 }, { seed: 1 });
  const reqs = workload(quick ? 12 : 32, 6, 50257);
  for (const mode of ["continuous", "sequential", "static"] as const) {
    console.error(`serve bench: load test, ${mode}...`);
    rows.push(await loadTest(model, mode, reqs, 8));
  }
  console.error("serve bench: batch-1 decode, float32 and int8...");
  rows.push(...(await decodeBench(quick)));
  rows.push(await qualityBench(quick));
  return { suite: "serve", env: { threads: backend.numThreads(), loadModel: "GPT 4L/4H/256, random weights", arrivalsPerS: 6 }, rows };
}

/**
 * The inference engine: a step loop of schedule -> run -> sample -> stream.
 *
 * Requests arrive from the HTTP side at any time; the loop runs one scheduler step per
 * macrotask (setImmediate between steps), so the event loop keeps serving sockets while the
 * model works. Each choice of a request (n > 1) is its own sequence; they share the prompt's
 * full KV blocks through the prefix cache. A failure inside a step ends the requests of that
 * step with an error event and the engine keeps serving.
 */
import { ValueError } from "../../core/errors.js";
import type { GPT } from "../../models/index.js";
import type { Tokenizer } from "../../tokenizers/index.js";
import { BlockManager, blocksForBudget } from "../kv_cache/index.js";
import { Scheduler, type SchedulerOutput } from "../scheduler/index.js";
import { ModelRunner, type RunnerBatch } from "../runner/index.js";
import { sampleNext, type SamplingParams } from "../sample/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type EngineStats, type GenerationRequest, type TokenLogprob } from "./types.js";

export interface EngineOptions {
  modelName?: string;
  /** Bytes for the KV cache. Default 256 MiB (capped at what maxNumSeqs full contexts need). */
  kvCacheBytes?: number;
  blockSize?: number;
  maxNumBatchedTokens?: number;
  maxNumSeqs?: number;
  maxWaiting?: number;
  enablePrefixCaching?: boolean;
  /** n-gram prompt-lookup speculative decoding for greedy requests. Off by default. */
  speculative?: { numTokens: number; ngramMax?: number };
}

/** One sequence (a choice of a request). */
interface Seq {
  id: string;
  index: number;
  req: GenerationRequest;
  group: Group;
  text: string;
  /** Output token ids so far (mirrors the scheduler's, kept after it releases the request). */
  ids: number[];
  emitted: number;
  lastTokenAt: number;
  done: boolean;
}

/** A request: its choices and the queue its events go to. */
interface Group {
  req: GenerationRequest;
  seqs: Seq[];
  pending: EngineEvent[];
  wake: (() => void) | null;
  finished: number;
  completionTokens: number;
  arrival: number;
  firstTokenAt: number | null;
}

const SAMPLES_KEPT = 2000;

export class Engine implements EngineLike {
  readonly modelName: string;
  readonly contextLength: number;
  readonly eotToken: number;
  readonly blocks: BlockManager;
  readonly scheduler: Scheduler;
  readonly runner: ModelRunner;
  private readonly tokenizer: Tokenizer;
  private readonly seqs = new Map<string, Seq>();
  private readonly spec: { numTokens: number; ngramMax: number } | null;
  private looping = false;
  private stopped = false;
  private readonly st: EngineStats = {
    running: 0, waiting: 0, kvUsage: 0, prefixCacheHitRate: 0, preemptions: 0, rejections: {}, ttft: [], itl: [], e2e: [],
    queueTime: [], promptTokens: 0, generationTokens: 0, steps: 0, lastStepAt: Date.now(),
  };

  constructor(model: GPT, tokenizer: Tokenizer, o: EngineOptions = {}) {
    const c = model.config;
    this.modelName = o.modelName ?? "megalith-gpt";
    this.contextLength = c.blockSize;
    this.tokenizer = tokenizer;
    this.eotToken = tokenizer.eotToken;
    const blockSize = o.blockSize ?? 16;
    const maxNumSeqs = o.maxNumSeqs ?? 32;
    const wanted = blocksForBudget(o.kvCacheBytes ?? 256 * 2 ** 20, { nLayer: c.nLayer, nKvHeads: c.nHead, headDim: c.nEmbd / c.nHead, blockSize });
    const cap = maxNumSeqs * Math.ceil(c.blockSize / blockSize) + 1;
    const numBlocks = Math.min(wanted, cap);
    if (numBlocks < Math.ceil(c.blockSize / blockSize)) {
      throw new ValueError(`Engine: the KV-cache budget holds ${numBlocks} blocks, fewer than one full context needs (${Math.ceil(c.blockSize / blockSize)}); raise kvCacheBytes`);
    }
    this.blocks = new BlockManager({ numBlocks, blockSize, enablePrefixCaching: o.enablePrefixCaching ?? true });
    this.scheduler = new Scheduler(this.blocks, {
      maxNumBatchedTokens: Math.max(o.maxNumBatchedTokens ?? 512, maxNumSeqs), maxNumSeqs, maxWaiting: o.maxWaiting ?? 256, maxModelLen: c.blockSize,
    });
    this.runner = new ModelRunner(model, { numBlocks, blockSize });
    this.spec = o.speculative ? { numTokens: o.speculative.numTokens, ngramMax: o.speculative.ngramMax ?? 3 } : null;
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text);
  }

  ready(): boolean {
    // Idle, or made progress within the last 30 s.
    return !this.stopped && (!this.scheduler.hasWork() || Date.now() - this.st.lastStepAt < 30_000);
  }

  stats(): EngineStats {
    const u = this.blocks.usage();
    return {
      ...this.st, running: this.scheduler.numRunning, waiting: this.scheduler.numWaiting, kvUsage: u.fraction,
      prefixCacheHitRate: this.blocks.prefixCacheStats().hitRate, preemptions: this.scheduler.preemptions,
    };
  }

  async shutdown(): Promise<void> {
    this.stopped = true;
    for (const s of this.seqs.values()) this.finishSeq(s, "abort");
    this.runner.dispose();
  }

  submit(req: GenerationRequest, signal?: AbortSignal): AsyncIterable<EngineEvent> {
    if (this.stopped) throw new EngineRejection("shutting_down", "the server is shutting down", 5);
    if (req.promptTokens.length >= this.contextLength) throw new ValueError(`the prompt has ${req.promptTokens.length} tokens but the model's context length is ${this.contextLength}`);
    const V = this.runner.model.config.vocabSize;
    for (const t of req.promptTokens) if (!Number.isInteger(t) || t < 0 || t >= V) throw new ValueError(`prompt token ${t} is outside the vocabulary (0..${V - 1})`);
    if (this.scheduler.numWaiting + req.n > this.scheduler.maxWaiting) {
      this.st.rejections.queue_full = (this.st.rejections.queue_full ?? 0) + 1;
      throw new EngineRejection("queue_full", `the waiting queue is full (${this.scheduler.maxWaiting} requests); retry later`, 1);
    }
    const group: Group = { req, seqs: [], pending: [], wake: null, finished: 0, completionTokens: 0, arrival: Date.now(), firstTokenAt: null };
    for (let i = 0; i < req.n; i++) {
      const id = req.n === 1 ? req.requestId : `${req.requestId}#${i}`;
      const seq: Seq = { id, index: i, req: { ...req, sampling: { ...req.sampling, seed: req.sampling.seed + i } }, group, text: "", ids: [], emitted: 0, lastTokenAt: 0, done: false };
      group.seqs.push(seq);
      this.seqs.set(id, seq);
      const added = this.scheduler.addRequest(id, req.promptTokens, { maxTokens: req.maxTokens, stopTokenIds: req.stopTokenIds, arrivalTime: group.arrival });
      if (!added.accepted) {
        for (const s of group.seqs) {
          this.scheduler.abort(s.id);
          this.seqs.delete(s.id);
        }
        this.st.rejections.queue_full = (this.st.rejections.queue_full ?? 0) + 1;
        throw new EngineRejection("queue_full", added.message, 1);
      }
    }
    this.st.promptTokens += req.promptTokens.length * req.n;
    signal?.addEventListener("abort", () => {
      for (const s of group.seqs) if (!s.done) this.finishSeq(s, "abort");
    });
    this.kick();
    return this.stream(group);
  }

  private async *stream(group: Group): AsyncGenerator<EngineEvent> {
    for (;;) {
      while (group.pending.length) {
        const ev = group.pending.shift()!;
        yield ev;
        if (ev.type === "done") return;
      }
      await new Promise<void>((resolve) => (group.wake = resolve));
      group.wake = null;
    }
  }

  private push(group: Group, ev: EngineEvent): void {
    group.pending.push(ev);
    group.wake?.();
  }

  private kick(): void {
    if (this.looping || this.stopped) return;
    this.looping = true;
    setImmediate(() => this.loop());
  }

  private loop(): void {
    if (this.stopped || !this.scheduler.hasWork()) {
      this.looping = false;
      return;
    }
    this.step();
    setImmediate(() => this.loop());  // yield to the HTTP side between steps
  }

  /** Runs one scheduler step (public for tests and benchmarks). */
  step(): void {
    const out = this.scheduler.schedule();
    this.st.steps++;
    this.st.lastStepAt = Date.now();
    for (const f of out.finished) {
      const seq = this.seqs.get(f.requestId);
      if (seq) this.endSeq(seq, f.reason);
    }
    if (!out.scheduled.length) return;
    let logits: Float32Array;
    const sampleSeqs: Array<{ seq: Seq; rows: number; drafts: number[] }> = [];
    try {
      if (out.blockCopies.length) this.runner.copyBlocks(out.blockCopies);
      logits = this.runner.execute(this.buildBatch(out, sampleSeqs));
    } catch (e) {
      for (const s of out.scheduled) {
        const seq = this.seqs.get(s.requestId);
        if (seq) this.finishSeq(seq, "error", (e as Error).message);
      }
      return;
    }
    const V = this.runner.model.config.vocabSize;
    const sampled = new Map<string, number[]>();
    const logprobs = new Map<string, TokenLogprob[]>();
    const now = Date.now();
    let row = 0;
    for (const { seq, rows, drafts } of sampleSeqs) {
      const r = this.scheduler.get(seq.id)!;
      const g = seq.group;
      if (g.firstTokenAt === null) {
        g.firstTokenAt = now;
        this.record(this.st.ttft, (now - g.arrival) / 1000);
        this.record(this.st.queueTime, ((r.firstScheduledAt ?? now) - g.arrival) / 1000);
      } else if (seq.lastTokenAt) this.record(this.st.itl, (now - seq.lastTokenAt) / 1000);
      seq.lastTokenAt = now;
      // Greedy verification of drafts: keep each draft the model agrees with; the first
      // disagreement is replaced by the model's token; if all agree, the last row adds one more.
      const tokens: number[] = [];
      const lps: TokenLogprob[] = [];
      for (let i = 0; i < rows; i++) {
        const res = sampleNext(logits.subarray((row + i) * V, (row + i + 1) * V), seq.req.sampling, r.promptTokens, [...r.outputTokens, ...tokens]);
        tokens.push(res.token);
        lps.push({
          token: this.tokenizer.decode([res.token]), tokenId: res.token, logprob: res.logprob,
          top: res.top.map((t) => ({ token: this.tokenizer.decode([t.token]), tokenId: t.token, logprob: t.logprob })),
        });
        if (i >= drafts.length || res.token !== drafts[i]) break;
      }
      if (drafts.length) {
        this.st.speculativeProposed = (this.st.speculativeProposed ?? 0) + drafts.length;
        this.st.speculativeAccepted = (this.st.speculativeAccepted ?? 0) + tokens.length - 1;
      }
      sampled.set(seq.id, tokens);
      logprobs.set(seq.id, lps);
      row += rows;
    }
    const { outputs } = this.scheduler.updateFromOutput(out, sampled);
    for (const o of outputs) {
      const seq = this.seqs.get(o.requestId);
      if (!seq) continue;
      const lps = logprobs.get(o.requestId) ?? [];
      this.st.generationTokens += o.newTokenIds.length;
      seq.group.completionTokens += o.newTokenIds.length;
      const stopped = this.emitText(seq, o.newTokenIds, lps, o.finishReason);
      if (stopped) this.finishSeq(seq, "stop");
      else if (o.finishReason) this.endSeq(seq, o.finishReason);
    }
    if (this.spec) this.propose();
  }

  /**
   * n-gram prompt lookup (speculative decoding without a draft model): for a decoding greedy
   * request, find the most recent earlier occurrence of its last n tokens and propose the
   * tokens that followed; the scheduler feeds them next step for verification. Sampled
   * requests are not speculated, so their outputs stay distributed exactly as without it.
   */
  private propose(): void {
    const spec = this.spec!;
    for (const seq of this.seqs.values()) {
      const r = this.scheduler.get(seq.id);
      if (!r || r.status !== "running" || seq.req.sampling.temperature !== 0 || r.outputTokens.length === 0) continue;
      const all = [...r.promptTokens, ...r.outputTokens];
      const room = Math.min(spec.numTokens, seq.req.maxTokens - r.outputTokens.length - 1, this.contextLength - all.length - 1);
      if (room <= 0) continue;
      let d: number[] = [];
      for (let n = Math.min(spec.ngramMax, all.length - 1); n >= 1 && !d.length; n--) {
        const tail = all.slice(all.length - n);
        for (let j = all.length - n - 1; j >= 0; j--) {
          let match = true;
          for (let k = 0; k < n; k++) if (all[j + k] !== tail[k]) { match = false; break; }
          if (match) {
            d = all.slice(j + n, j + n + room);
            break;
          }
        }
      }
      if (d.length) this.scheduler.setDraftTokens(seq.id, d);
    }
  }

  private buildBatch(out: SchedulerOutput, sampleSeqs: Array<{ seq: Seq; rows: number; drafts: number[] }>): RunnerBatch {
    const tokens: number[] = [], positions: number[] = [], seqIndex: number[] = [], slots: number[] = [], sampleRows: number[] = [];
    const bs = this.blocks.blockSize;
    const maxBlocks = Math.max(1, ...out.scheduled.map((s) => s.blockTable.length));
    const tables = new Int32Array(out.scheduled.length * maxBlocks);
    out.scheduled.forEach((s, i) => {
      tables.set(s.blockTable, i * maxBlocks);
      const firstSampled = s.tokenIds.length - 1 - s.numDraftTokens;
      s.tokenIds.forEach((t, k) => {
        const p = s.startPosition + k;
        tokens.push(t);
        positions.push(p);
        seqIndex.push(i);
        slots.push(s.blockTable[Math.floor(p / bs)]! * bs + (p % bs));
        if (s.samplesThisStep && k >= firstSampled) sampleRows.push(tokens.length - 1);
      });
      if (s.samplesThisStep) {
        sampleSeqs.push({ seq: this.seqs.get(s.requestId)!, rows: 1 + s.numDraftTokens, drafts: s.tokenIds.slice(s.tokenIds.length - s.numDraftTokens) });
      }
    });
    return {
      tokens: Int32Array.from(tokens), positions: Int32Array.from(positions), seqIndex: Int32Array.from(seqIndex),
      slotMapping: Int32Array.from(slots), blockTables: tables, maxBlocks, sampleRows,
    };
  }

  /**
   * Streams the text of newly generated tokens: incremental detokenization (an incomplete UTF-8
   * character is held back), stop strings (text from the first match on is dropped, and text
   * that may be the start of one is held back), and a final stop token is not printed.
   * Returns true when a stop string ended the request.
   */
  private emitText(seq: Seq, newIds: readonly number[], lps: TokenLogprob[], finish: string | null): boolean {
    const r = this.scheduler.get(seq.id);
    const ids = r ? [...r.outputTokens] : [...seq.ids, ...newIds];
    seq.ids = ids;
    const shown = finish === "stop" && ids.length && seq.req.stopTokenIds.includes(ids[ids.length - 1]!) ? ids.slice(0, -1) : ids;
    let text = this.tokenizer.decode(shown);
    let stopped = false;
    for (const s of seq.req.stop) {
      const at = text.indexOf(s);
      if (at >= 0) {
        text = text.slice(0, at);
        stopped = true;
      }
    }
    let safe = text.length;
    if (!stopped && !finish) {
      if (text.endsWith("\uFFFD")) safe = text.length - 1;
      for (const s of seq.req.stop) for (let k = Math.min(s.length - 1, text.length); k > 0; k--) if (text.endsWith(s.slice(0, k))) { safe = Math.min(safe, text.length - k); break; }
    }
    if (safe > seq.emitted) {
      this.push(seq.group, { type: "delta", index: seq.index, text: text.slice(seq.emitted, safe), tokenIds: [...newIds], logprobs: lps });
      seq.emitted = safe;
    }
    seq.text = text;
    return stopped;
  }

  /** Ends a sequence the scheduler still holds (stop string, abort, error): frees its blocks. */
  private finishSeq(seq: Seq, reason: "stop" | "length" | "abort" | "error", error?: string): void {
    if (seq.done) return;
    this.scheduler.finish(seq.id, reason);
    this.endSeq(seq, reason, error);
  }

  /** Reports a sequence's end (the scheduler has already released it, or just did). */
  private endSeq(seq: Seq, reason: "stop" | "length" | "abort" | "error", error?: string): void {
    if (seq.done) return;
    seq.done = true;
    this.seqs.delete(seq.id);
    const g = seq.group;
    this.push(g, { type: "finish", index: seq.index, reason, ...(error ? { error } : {}) });
    if (++g.finished === g.seqs.length) {
      this.record(this.st.e2e, (Date.now() - g.arrival) / 1000);
      this.push(g, { type: "done", usage: { promptTokens: g.req.promptTokens.length, completionTokens: g.completionTokens } });
    }
  }

  private record(arr: number[], v: number): void {
    arr.push(v);
    if (arr.length > SAMPLES_KEPT) arr.splice(0, arr.length - SAMPLES_KEPT);
  }
}

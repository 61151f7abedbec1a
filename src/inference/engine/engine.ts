/**
 * The inference engine: a step loop of schedule -> run -> sample -> stream.
 *
 * Requests arrive from the HTTP side at any time; the loop runs one scheduler step per
 * macrotask (setImmediate between steps), so the event loop keeps serving sockets while the
 * model works. A failure inside a step ends the requests of that step with an error event and
 * the engine keeps serving.
 *
 * n > 1: only the first choice is scheduled while the prompt is computed, once. In the step
 * where it samples its first token, each other choice draws its own first token from the same
 * logits (with its own seed, seed + i) and is forked from it (Scheduler.fork): the choices
 * share every prompt block, the partial last one included, until a write copies it.
 *
 * Ids the tokenizer cannot decode (a model vocabulary padded past the tokenizer's, as nanoGPT
 * pads GPT-2's 50257 tokens to 50304) get -Infinity logits, so they are never sampled.
 *
 * Speculative decoding (options.speculative): after each step, every decoding sequence gets up
 * to k drafts, from n-gram prompt lookup or from a draft model (spec/), fed next step after its
 * newest token; the target's k + 1 rows of logits verify them (spec/'s acceptance rule: exact
 * match for greedy requests, the speculative-sampling rule otherwise), so outputs are
 * distributed exactly as without speculation, and greedy outputs are identical.
 */
import { MegalithError, ValueError } from "../../core/errors.js";
import type { GPT } from "../../models/index.js";
import type { Tokenizer } from "../../tokenizers/index.js";
import { BlockManager, blocksForBudget } from "../kv_cache/index.js";
import { Scheduler, type SchedulerOutput } from "../scheduler/index.js";
import { ModelRunner, type RunnerBatch } from "../runner/index.js";
import { drawToken, toProbs, tokenDistribution, tokenLogprobs, type SamplingParams } from "../sample/index.js";
import { DraftModel, acceptDraft, acceptOneHot, proposeNgram, streamUniform, type Drafts } from "../spec/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type EngineStats, type GenerationRequest, type TokenLogprob } from "./types.js";

export interface EngineOptions {
  modelName?: string;
  /**
   * Longest sequence (prompt + generated tokens) a request may reach. Default and upper bound:
   * the model's block size (its learned positions end there).
   */
  maxModelLen?: number;
  /** Bytes for the KV cache. Default 256 MiB (capped at what maxNumSeqs full contexts need). */
  kvCacheBytes?: number;
  blockSize?: number;
  maxNumBatchedTokens?: number;
  maxNumSeqs?: number;
  maxWaiting?: number;
  enablePrefixCaching?: boolean;
  /** Speculative decoding (greedy and sampled requests). Off by default. */
  speculative?: SpeculativeOptions;
  /** dtype of the KV cache. Default: the model's compute dtype (bfloat16 after `model.to("bfloat16")`). */
  kvCacheDtype?: "float32" | "bfloat16" | "float16";
}

/** Speculative decoding: where drafts come from and how many per step. */
export interface SpeculativeOptions {
  /** "ngram" (prompt lookup, the default) or "draft" (a smaller GPT: draftModel). */
  method?: "ngram" | "draft";
  /** Draft tokens proposed per sequence per step (>= 1). */
  numTokens: number;
  /** n-gram: longest n-gram looked up. Default 3. */
  ngramMax?: number;
  /** draft: the draft model, with the target's vocabulary (same tokenizer). */
  draftModel?: GPT;
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
  /** The drafts proposed after its last step (draft mode: with q), and the history length they continue. */
  draft: (Drafts & { historyLength: number }) | null;
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
  /** Whether choices 1..n-1 exist in the scheduler (forked from choice 0 at its first token). */
  forked: boolean;
}

const SAMPLES_KEPT = 2000;

export class Engine implements EngineLike {
  readonly modelName: string;
  readonly contextLength: number;
  readonly eotToken: number;
  readonly vocabSize: number;
  readonly maxTokenBytes: number;
  readonly blocks: BlockManager;
  readonly scheduler: Scheduler;
  readonly runner: ModelRunner;
  /** The draft model and its KV cache (speculative method "draft"), else null. */
  readonly drafter: DraftModel | null;
  private readonly tokenizer: Tokenizer;
  /** Ids from here to the model's vocabulary size have no text: masked before sampling. */
  private readonly decodableVocab: number;
  private readonly seqs = new Map<string, Seq>();
  private readonly spec: { method: "ngram" | "draft"; numTokens: number; ngramMax: number } | null;
  private looping = false;
  private stopped = false;
  private readonly st: EngineStats = {
    running: 0, waiting: 0, kvUsage: 0, prefixCacheHitRate: 0, preemptions: 0, rejections: {}, ttft: [], itl: [], e2e: [],
    queueTime: [], promptTokens: 0, generationTokens: 0, steps: 0, lastStepAt: Date.now(),
  };

  constructor(model: GPT, tokenizer: Tokenizer, o: EngineOptions = {}) {
    const c = model.config;
    this.modelName = o.modelName ?? "megalith-gpt";
    const maxModelLen = o.maxModelLen ?? c.blockSize;
    if (!Number.isInteger(maxModelLen) || maxModelLen < 2 || maxModelLen > c.blockSize) {
      throw new ValueError(`max model length must be an integer in [2, ${c.blockSize}] (the model's block size: it has no positions beyond), got ${maxModelLen}`);
    }
    this.contextLength = maxModelLen;
    this.tokenizer = tokenizer;
    this.eotToken = tokenizer.eotToken;
    this.decodableVocab = Math.min(tokenizer.vocabSize, c.vocabSize);
    this.vocabSize = this.decodableVocab;
    // Byte-level BPE covers every byte of a text by exactly one token, so a text of B bytes has
    // at least B / maxTokenBytes tokens: the server refuses prompts that cannot fit on that bound
    // without tokenizing them.
    let longest = 1;
    for (let i = 0; i < this.decodableVocab; i++) longest = Math.max(longest, tokenizer.decodeBytes([i]).length);
    this.maxTokenBytes = longest;
    const blockSize = o.blockSize ?? 16;
    const maxNumSeqs = o.maxNumSeqs ?? 32;
    const kvCacheDtype = o.kvCacheDtype ?? ModelRunner.modelDtype(model);
    const wanted = blocksForBudget(o.kvCacheBytes ?? 256 * 2 ** 20, { nLayer: c.nLayer, nKvHeads: c.nHead, headDim: c.nEmbd / c.nHead, blockSize, dtypeBytes: kvCacheDtype === "float32" ? 4 : 2 });
    const cap = maxNumSeqs * Math.ceil(maxModelLen / blockSize) + 1;
    const numBlocks = Math.min(wanted, cap);
    if (numBlocks < Math.ceil(maxModelLen / blockSize)) {
      throw new ValueError(`Engine: the KV-cache budget holds ${numBlocks} blocks, fewer than one full context needs (${Math.ceil(maxModelLen / blockSize)}); raise kvCacheBytes`);
    }
    this.blocks = new BlockManager({ numBlocks, blockSize, enablePrefixCaching: o.enablePrefixCaching ?? true });
    this.scheduler = new Scheduler(this.blocks, {
      maxNumBatchedTokens: Math.max(o.maxNumBatchedTokens ?? 512, maxNumSeqs), maxNumSeqs, maxWaiting: o.maxWaiting ?? 256, maxModelLen,
    });
    this.runner = new ModelRunner(model, { numBlocks, blockSize, kvCacheDtype });
    this.spec = o.speculative ? checkSpeculative(o.speculative, model) : null;
    if (this.spec) this.st.speculativeProposed = this.st.speculativeAccepted = 0;
    // The draft's pool holds what the target's does, plus lookahead blocks for every sequence
    // (forks share no draft blocks beyond full prompt blocks, so a little more is welcome).
    this.drafter = this.spec?.method === "draft"
      ? new DraftModel(o.speculative!.draftModel!, { numBlocks: numBlocks + maxNumSeqs * (Math.ceil(this.spec.numTokens / blockSize) + 2), blockSize })
      : null;
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
    this.drafter?.dispose();
  }

  submit(req: GenerationRequest, signal?: AbortSignal): AsyncIterable<EngineEvent> {
    if (this.stopped) throw new EngineRejection("shutting_down", "the server is shutting down", 5);
    if (req.promptTokens.length >= this.contextLength) throw new ValueError(`the prompt has ${req.promptTokens.length} tokens but the model's context length is ${this.contextLength}`);
    const V = this.runner.model.config.vocabSize;
    for (const t of req.promptTokens) if (!Number.isInteger(t) || t < 0 || t >= V) throw new ValueError(`prompt token ${t} is outside the vocabulary (0..${V - 1})`);
    if (!Number.isInteger(req.n) || req.n < 1) throw new ValueError(`n must be a positive integer, got ${req.n}`);
    for (const [t] of req.sampling.logitBias ?? []) if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) throw new ValueError(`logit_bias token ${t} is outside the vocabulary (0..${this.vocabSize - 1})`);
    if (this.scheduler.numWaiting + 1 > this.scheduler.maxWaiting) {
      this.st.rejections.queue_full = (this.st.rejections.queue_full ?? 0) + 1;
      throw new EngineRejection("queue_full", `the waiting queue is full (${this.scheduler.maxWaiting} requests); retry later`, 1);
    }
    const group: Group = { req, seqs: [], pending: [], wake: null, finished: 0, completionTokens: 0, arrival: Date.now(), firstTokenAt: null, forked: req.n === 1 };
    for (let i = 0; i < req.n; i++) {
      const id = req.n === 1 ? req.requestId : `${req.requestId}#${i}`;
      group.seqs.push({ id, index: i, req: { ...req, sampling: { ...req.sampling, seed: req.sampling.seed + i } }, group, text: "", ids: [], emitted: 0, lastTokenAt: 0, done: false, draft: null });
    }
    // Only choice 0 is queued: the others are forked from it once the prompt is computed.
    const added = this.scheduler.addRequest(group.seqs[0]!.id, req.promptTokens, { maxTokens: req.maxTokens, stopTokenIds: req.stopTokenIds, arrivalTime: group.arrival });
    if (!added.accepted) {
      this.st.rejections.queue_full = (this.st.rejections.queue_full ?? 0) + 1;
      throw new EngineRejection("queue_full", added.message, 1);
    }
    for (const s of group.seqs) this.seqs.set(s.id, s);
    this.st.promptTokens += req.promptTokens.length;
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
    // A preempted sequence recomputes later; its draft cache is dropped until then.
    for (const id of out.preempted) {
      this.drafter?.free(id);
      const seq = this.seqs.get(id);
      if (seq) seq.draft = null;
    }
    if (!out.scheduled.length) return;
    try {
      this.runScheduled(out);
    } catch (e) {
      // Whatever failed (the forward, sampling, detokenization, drafting), the step's requests
      // end with an error and the engine goes on serving the rest.
      for (const s of out.scheduled) {
        const seq = this.seqs.get(s.requestId);
        if (seq) this.finishSeq(seq, "error", (e as Error).message);
      }
    }
  }

  /** The forward over a step's scheduled tokens, then sampling, streaming and drafting. */
  private runScheduled(out: SchedulerOutput): void {
    const sampleSeqs: Array<{ seq: Seq; rows: number; drafts: number[] }> = [];
    if (out.blockCopies.length) this.runner.copyBlocks(out.blockCopies);
    const logits = this.runner.execute(this.buildBatch(out, sampleSeqs));
    this.maskUndecodable(logits);
    const V = this.runner.model.config.vocabSize;
    const sampled = new Map<string, number[]>();
    const logprobs = new Map<string, TokenLogprob[]>();
    const forks: Array<{ seq: Seq; token: number; lp: TokenLogprob }> = [];
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
      const rowsOf = logits.subarray(row * V, (row + rows) * V);
      row += rows;
      let tokens: number[], lps: TokenLogprob[];
      try {
        tokens = this.verify(seq, r.promptTokens, r.outputTokens, rowsOf, drafts);
        lps = tokens.map((t, i) => this.logprobRecord(rowsOf.subarray(i * V, (i + 1) * V), t, seq.req.sampling.logprobs));
      } catch (e) {
        this.finishSeq(seq, "error", (e as Error).message);
        continue;
      }
      if (drafts.length) {
        this.st.speculativeProposed = (this.st.speculativeProposed ?? 0) + drafts.length;
        this.st.speculativeAccepted = (this.st.speculativeAccepted ?? 0) + tokens.length - 1;
      }
      seq.draft = null;
      sampled.set(seq.id, tokens);
      logprobs.set(seq.id, lps);
      // Choice 0's first token: the other choices draw theirs from the same row and fork.
      if (!g.forked && seq.index === 0) {
        g.forked = true;
        for (const c of g.seqs.slice(1)) {
          if (c.done) continue;
          const first = rowsOf.subarray(0, V);
          const token = this.verify(c, r.promptTokens, [], first, [])[0]!;
          c.lastTokenAt = now;
          forks.push({ seq: c, token, lp: this.logprobRecord(first, token, c.req.sampling.logprobs) });
        }
      }
    }
    // Forks go in before the update (the scheduler takes each child's first token with it).
    const forkReasons = forks.map(({ seq, token }) => this.scheduler.fork(seq.group.seqs[0]!.id, seq.id, { lastToken: token }));
    const { outputs } = this.scheduler.updateFromOutput(out, sampled);
    forks.forEach(({ seq, token, lp }, i) => this.applyOutput(seq, [token], [lp], forkReasons[i]!));
    for (const o of outputs) {
      const seq = this.seqs.get(o.requestId);
      if (!seq) continue;
      try {
        this.applyOutput(seq, o.newTokenIds, logprobs.get(o.requestId) ?? [], o.finishReason);
      } catch (e) {
        this.finishSeq(seq, "error", (e as Error).message);
      }
    }
    if (this.spec) this.propose();
  }

  /** Sets the logits of ids the tokenizer cannot decode to -Infinity, in every row. */
  private maskUndecodable(logits: Float32Array): void {
    const V = this.runner.model.config.vocabSize, n = this.decodableVocab;
    if (n >= V) return;
    for (let row = 0; row < logits.length; row += V) logits.fill(-Infinity, row + n, row + V);
  }

  /** Counts, streams and (when it ended) closes a sequence's new tokens. */
  private applyOutput(seq: Seq, newIds: readonly number[], lps: TokenLogprob[], finishReason: "stop" | "length" | "abort" | "error" | null): void {
    this.st.generationTokens += newIds.length;
    seq.group.completionTokens += newIds.length;
    const stopped = this.emitText(seq, newIds, lps.slice(0, newIds.length), finishReason);
    if (stopped) this.finishSeq(seq, "stop");
    else if (finishReason) this.endSeq(seq, finishReason);
  }

  /**
   * The tokens a sampling sequence emits from its rows of logits: with drafts, the accepted
   * drafts then the target's own token (a rejected draft's replacement, or the bonus token after
   * all were accepted); without, one token as sampleNext draws it. Random numbers come from the
   * sequence's seeded stream at the output position being decided (spec/'s streamUniform).
   */
  private verify(seq: Seq, prompt: readonly number[], output: readonly number[], rows: Float32Array, drafts: readonly number[]): number[] {
    const V = this.runner.model.config.vocabSize;
    const sp = seq.req.sampling;
    const greedy = sp.temperature === 0;
    const tokens: number[] = [];
    for (let i = 0; i <= drafts.length; i++) {
      const history = [...output, ...tokens];
      const j = history.length;
      const p = tokenDistribution(rows.subarray(i * V, (i + 1) * V), sp, prompt, history);
      const u = () => (greedy ? 0 : streamUniform(sp.seed, "sample", j));
      if (i === drafts.length) {
        tokens.push(drawToken(p, u()));
        break;
      }
      let q: Float64Array | null = null;
      if (this.spec?.method === "draft" && !greedy) {
        if (seq.draft?.tokens[i] !== drafts[i] || !seq.draft.probs[i]) {
          throw new MegalithError(`Engine: draft ${i} of '${seq.id}' (token ${drafts[i]}) has no recorded draft distribution`, "engine_internal");
        }
        q = seq.draft.probs[i]!;
      }
      const v = q
        ? acceptDraft(toProbs(p), q, drafts[i]!, streamUniform(sp.seed, "accept", j), streamUniform(sp.seed, "residual", j))
        : acceptOneHot(p, drafts[i]!, u());
      tokens.push(v.token);
      if (!v.accepted) break;
    }
    return tokens;
  }

  private logprobRecord(logits: Float32Array, token: number, k: number): TokenLogprob {
    const { logprob, top } = tokenLogprobs(logits, token, k);
    return {
      token: this.tokenizer.decode([token]), tokenId: token, logprob,
      top: top.map((t) => ({ token: this.tokenizer.decode([t.token]), tokenId: t.token, logprob: t.logprob })),
    };
  }

  /**
   * Proposes drafts for every sequence that decodes next step: the tokens after the most recent
   * earlier occurrence of its last n-gram, or k tokens of the draft model (all sequences in
   * one batch per draft position). The scheduler feeds them after the newest token.
   */
  private propose(): void {
    const spec = this.spec!;
    const wanted: Array<{ seq: Seq; tokens: number[]; k: number }> = [];
    for (const seq of this.seqs.values()) {
      const r = this.scheduler.get(seq.id);
      if (!r || r.status !== "running" || r.outputTokens.length === 0) continue;
      const all = [...r.promptTokens, ...r.outputTokens];
      if (r.numComputed !== all.length - 1) continue;  // still computing earlier tokens
      const k = Math.min(spec.numTokens, seq.req.maxTokens - r.outputTokens.length - 1, this.contextLength - all.length - 1);
      if (k <= 0) continue;
      if (spec.method === "ngram") {
        const d = proposeNgram(all, spec.ngramMax, k);
        if (d.length) this.scheduler.setDraftTokens(seq.id, d);
      } else if (seq.draft?.historyLength === all.length) {
        // Not scheduled since the proposal (budget): the same history gives the same drafts.
        this.scheduler.setDraftTokens(seq.id, seq.draft.tokens.slice(0, k));
      } else wanted.push({ seq, tokens: all, k });
    }
    if (!wanted.length) return;
    const drafts = this.drafter!.propose(wanted.map(({ seq, tokens, k }) => ({ id: seq.id, tokens, promptLength: seq.req.promptTokens.length, k, sampling: seq.req.sampling })));
    for (const { seq, tokens } of wanted) {
      const d = drafts.get(seq.id);
      if (!d?.tokens.length) continue;
      seq.draft = { ...d, historyLength: tokens.length };
      this.scheduler.setDraftTokens(seq.id, d.tokens);
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
    seq.draft = null;
    this.seqs.delete(seq.id);
    this.drafter?.free(seq.id, { keepCached: reason !== "error" });
    const g = seq.group;
    this.push(g, { type: "finish", index: seq.index, reason, ...(error ? { error } : {}) });
    if (++g.finished === g.seqs.length) {
      this.record(this.st.e2e, (Date.now() - g.arrival) / 1000);
      this.push(g, { type: "done", usage: { promptTokens: g.req.promptTokens.length, completionTokens: g.completionTokens } });
    }
    // Choice 0 ended before its first token (abort, error, no room): the others, never
    // forked, end with it.
    if (!g.forked && seq.index === 0) for (const c of g.seqs.slice(1)) this.endSeq(c, reason, error);
  }

  private record(arr: number[], v: number): void {
    arr.push(v);
    if (arr.length > SAMPLES_KEPT) arr.splice(0, arr.length - SAMPLES_KEPT);
  }
}

/** Validates the speculative options; errors name the value and what was expected. */
function checkSpeculative(o: SpeculativeOptions, model: GPT): { method: "ngram" | "draft"; numTokens: number; ngramMax: number } {
  const method = o.method ?? "ngram";
  if (method !== "ngram" && method !== "draft") throw new ValueError(`speculative.method must be "ngram" or "draft", got ${JSON.stringify(method)}`);
  if (!Number.isInteger(o.numTokens) || o.numTokens < 1) throw new ValueError(`speculative.numTokens must be a positive integer, got ${o.numTokens}`);
  const ngramMax = o.ngramMax ?? 3;
  if (!Number.isInteger(ngramMax) || ngramMax < 1) throw new ValueError(`speculative.ngramMax must be a positive integer, got ${o.ngramMax}`);
  if (method === "draft") {
    const d = o.draftModel;
    if (!d) throw new ValueError(`speculative.method "draft" needs speculative.draftModel (a GPT with the target's vocabulary)`);
    if (d.config.vocabSize !== model.config.vocabSize) {
      throw new ValueError(`the draft model's vocabulary has ${d.config.vocabSize} tokens but the target model's has ${model.config.vocabSize}; use a draft model trained with the same tokenizer`);
    }
  } else if (o.draftModel) throw new ValueError(`speculative.draftModel is given but speculative.method is "ngram"; set method: "draft" to use it`);
  return { method, numTokens: o.numTokens, ngramMax };
}

/**
 * Pipeline parallelism: the layer stack split into stages over the mesh's pp axis, and the
 * runtime that executes a schedule (schedules.ts: GPipe, 1F1B, interleaved 1F1B) with
 * asynchronous MPI send/recv between neighbouring stages.
 *
 * Splitting (`applyPipelineParallel`) removes from this rank's model every block it does not
 * hold, the embeddings unless it holds the first model chunk, and the final norm and head
 * unless it holds the last; parameter names stay the logical ones (`h.5.attn...`), so
 * checkpoints are layout-free. The head is tied to the token embedding, so the last stage
 * keeps its own copy of `wte` (Megatron's approach): both copies start equal (the same seeded
 * model) and their gradients are summed over the embedding group (first and last stage) after
 * backward, before the data-parallel reduction, so they stay equal.
 *
 * Execution follows the model's own three parts (GPT.embed / runBlocks / head): a forward on
 * model chunk k takes the embedding of the micro-batch (k = 0) or the activation received from
 * chunk k-1, runs the chunk's blocks, and sends the result on (or, on the last chunk, computes
 * the loss). A backward receives the output gradient from chunk k+1 (or starts from the scaled
 * loss) and sends its input's gradient back. Sends never block (they are posted and awaited
 * at the end of the step); a receive is awaited right away, so the order each rank issues
 * calls on the point-to-point communicator is its schedule's order, and a schedule that does
 * not deadlock as data (simulatePipeline) does not deadlock here.
 *
 * Gradient accumulation across micro-batches happens in `.grad` with data-parallel hooks off;
 * after the last backward the tied embedding is reduced, then DDP / ZeRO-1 reduce once.
 *
 * Mixture of experts: each MoE layer leaves its router losses (load balancing, z-loss) beside
 * its output, and their gradients are local to that layer's router (and, through it, the
 * layer's input). So every stage takes its own chunk's router term (GPT.takeRouterLosses:
 * aux_loss_coef x aux + z_loss_coef x z) and backpropagates it, scaled like the main loss,
 * in the same backward as its activation gradient: one root, sum(output * grad) + lossFactor
 * x term, whose gradient with respect to the output is exactly the received one. The reported
 * loss sums the last stage's loss and every stage's router terms (an all-reduce over pp
 * instead of a broadcast), so it equals the single-process `loss`. Routing metrics stay per
 * stage: rank 0 logs its own layers' expert loads.
 */
import { ValueError } from "../core/errors.js";
import { traceSpan, traceSpanAsync } from "../core/trace.js";
import { noGrad } from "../autograd/index.js";
import { Tensor, tensor, withScope, type DType } from "../tensor/index.js";
import { CAUSAL } from "../nn/index.js";
import type { GPT, Block } from "../models/index.js";
import { allReduce, broadcast, recvAsync, sendAsync, setCommThreadNice, splitGroup, type ProcessGroup, type Work } from "./collectives.js";
import type { GradSync } from "./grad_sync.js";
import { batchTensors, onStepStream, stepRandomKey, type MicroBatch, type StepFunctions, type TrainSchedule } from "./schedule.js";
import { locateModelChunk, modelChunkOf, pipelineActions, type PipelineScheduleName } from "./pipeline/schedules.js";

export interface PipelineOptions {
  /** Default "1f1b". */
  schedule?: PipelineScheduleName;
  /** Model chunks per rank (interleaved only). Default 1. */
  virtualStages?: number;
  /** Layers per model chunk (p x v entries summing to n_layer). Default: an even split. */
  layers?: readonly number[] | null;
  /** Sequence parallelism over tp shards the activations that cross stages: (B, T/tp, C). */
  sequenceShards?: number;
}

/** One model chunk this rank holds. */
export interface PipelineChunk {
  /** Global model chunk index 0..p*v-1. */
  modelChunk: number;
  /** Its blocks, in order, and their layer indices. */
  blocks: Block[];
  layers: number[];
  first: boolean;
  last: boolean;
}

/** Which layers each model chunk holds (explicit, or an even split). */
export function layerSplit(nLayer: number, chunks: number, layers?: readonly number[] | null): number[][] {
  const counts = layers ?? Array.from({ length: chunks }, () => nLayer / chunks);
  if (counts.length !== chunks) throw new ValueError(`pipeline: ${counts.length} layer counts for ${chunks} model chunks (parallel.pp_layers)`);
  if (counts.some((c) => !Number.isInteger(c) || c < 1)) throw new ValueError(`pipeline: every stage needs a whole number >= 1 of layers, got ${JSON.stringify(counts)} (n_layer ${nLayer} over ${chunks} chunks; set parallel.pp_layers)`);
  if (counts.reduce((a, b) => a + b, 0) !== nLayer) throw new ValueError(`pipeline: layers per stage ${JSON.stringify(counts)} must sum to n_layer (${nLayer})`);
  const out: number[][] = [];
  let next = 0;
  for (const c of counts) {
    out.push(Array.from({ length: c }, (_, i) => next + i));
    next += c;
  }
  return out;
}

/** A rank's stage: the model chunks it holds, under which schedule. */
export interface PipelineStagePlan {
  schedule: PipelineScheduleName;
  virtualStages: number;
  chunks: PipelineChunk[];
}

/**
 * Cuts `model` down to this rank's stage (see the file comment) and says which model chunks
 * it holds. Run before data parallelism, which then shards what is left; build the
 * `PipelineSchedule` with the resulting GradSync.
 * @example
 * const plan = splitPipelineStages(gpt, mesh.group("pp"), { schedule: "1f1b" });
 * const schedule = new PipelineSchedule(gpt, mesh.group("pp"), gradSync, plan);
 */
export function splitPipelineStages(model: GPT, group: ProcessGroup, opts: PipelineOptions = {}): PipelineStagePlan {
  const p = group.size, stage = group.rank;
  const schedule = opts.schedule ?? "1f1b";
  const v = schedule === "interleaved" ? opts.virtualStages ?? 2 : 1;
  if (schedule !== "interleaved" && (opts.virtualStages ?? 1) !== 1) throw new ValueError(`pipeline: ${opts.virtualStages} virtual stages need the interleaved schedule, got "${schedule}"`);
  const split = layerSplit(model.config.nLayer, p * v, opts.layers);
  const chunks: PipelineChunk[] = [];
  for (let c = 0; c < v; c++) {
    const k = modelChunkOf(stage, c, p);
    chunks.push({ modelChunk: k, layers: split[k]!, blocks: split[k]!.map((i) => model.h[i]!), first: k === 0, last: k === p * v - 1 });
  }
  const mine = new Set(chunks.flatMap((c) => c.layers));
  const holdsFirst = chunks.some((c) => c.first), holdsLast = chunks.some((c) => c.last);
  if (p > 1) {
    const dropped: Tensor[] = [];
    for (let i = model.h.length - 1; i >= 0; i--) {
      if (mine.has(i)) continue;
      dropped.push(...model.h[i]!.parameters());
      model.setModule(`h.${i}`, null);
    }
    const kept = model.h.filter((_, i) => mine.has(i));
    model.h.splice(0, model.h.length, ...kept);
    if (!holdsFirst) { dropped.push(...model.wpe.parameters()); model.setModule("wpe", null); }
    if (!holdsFirst && !holdsLast) { dropped.push(...model.wte.parameters()); model.setModule("wte", null); }
    if (!holdsLast) {
      dropped.push(...model.ln_f.parameters());
      model.setModule("ln_f", null);
      if (model.lm_head) model.setModule("lm_head", null);
    }
    // Parameters live outside tensor scopes: free what this stage no longer holds.
    for (const t of dropped) t.dispose();
  }
  return { schedule, virtualStages: v, chunks };
}

interface InFlight {
  /** The chunk's input: a received leaf (requires grad), or null on the first chunk. */
  input: Tensor | null;
  /** Its output activation, or the scalar loss on the last chunk. */
  output: Tensor;
  /** MoE models: the chunk's blocks' router-loss term (scalar, with its graph); null for dense chunks. */
  router: Tensor | null;
}

/** The schedule a pipeline stage runs (see the file comment). */
export class PipelineSchedule implements TrainSchedule {
  readonly name: string;
  /** Point-to-point communicator: a private copy of the pp group, so its FIFO thread sees only pipeline traffic. */
  private readonly p2p: ProcessGroup;
  /** First and last stage, for the tied embedding's gradient (null when one rank holds both, or p = 1). */
  private readonly embeddingGroup: ProcessGroup | null;
  /** Bytes this rank sent to the next stage and received from it, cumulative (the communication check). */
  readonly counters = { sentBytes: 0, recvBytes: 0, messages: 0 };

  readonly schedule: PipelineScheduleName;
  readonly virtualStages: number;
  readonly chunks: readonly PipelineChunk[];

  /** `sequenceShards`: tp under sequence parallelism (activations cross stages as (B, T/tp, C)), else 1. */
  constructor(private readonly model: GPT, readonly group: ProcessGroup, private readonly gradSync: GradSync, plan: PipelineStagePlan, private readonly sequenceShards = 1) {
    const chunks = plan.chunks;
    this.schedule = plan.schedule;
    this.virtualStages = plan.virtualStages;
    this.chunks = chunks;
    this.name = plan.schedule;
    const p = group.size;
    this.p2p = p > 1 ? splitGroup(group, 0, group.rank, "pp-p2p") : group;
    // A stage waits on every receive: its peer's sends must not starve behind compute.
    if (p > 1) setCommThreadNice(this.p2p, 0);
    const holdsFirst = chunks.some((c) => c.first), holdsLast = chunks.some((c) => c.last);
    if (p > 1) {
      const member = group.rank === 0 || group.rank === p - 1;
      // Every rank joins the split; the middle stages get a group of their own they never use.
      this.embeddingGroup = splitGroup(group, member ? 0 : 1, group.rank, "pp-embedding");
      if (!member || (holdsFirst && holdsLast)) this.embeddingGroup = null;
    } else this.embeddingGroup = null;
  }

  get stages(): number {
    return this.group.size;
  }

  /** Whether this rank computes the loss (holds the last model chunk). */
  get holdsLoss(): boolean {
    return this.chunks.some((c) => c.last);
  }

  /**
   * Which parameters count toward the global gradient norm on this rank: the tied embedding's
   * copy on the last stage does not (the first stage counts it).
   */
  countsForNorm(param: Tensor): boolean {
    const holdsFirst = this.chunks.some((c) => c.first);
    return !(param === this.model.wte?.weight && !holdsFirst);
  }

  private activationShape(b: MicroBatch): number[] {
    return [b.batchSize, b.blockSize / this.sequenceShards, this.model.config.nEmbd];
  }

  /** Distinct tags per (direction, sending model chunk, micro-batch), so no message can match another's receive. */
  private tag(dir: number, senderChunk: number, mb: number, m: number): number {
    return ((dir * this.stages * this.virtualStages + senderChunk) * m + mb) % 16000;
  }

  private async receive(shape: number[], dtype: DType, fromChunk: number, dir: number, mb: number, m: number): Promise<Tensor> {
    const from = locateModelChunk(fromChunk, this.stages).stage;
    const buf = Tensor.empty(shape, dtype);
    const work = recvAsync(buf, this.p2p, from, { tag: this.tag(dir, fromChunk, mb, m) });
    // The stage has nothing to compute until this arrives: the pipeline bubble, as the trace shows it.
    await traceSpanAsync(dir === 1 ? "wait for gradient" : "wait for activation", "idle", () => work.wait(), { fromStage: from, microBatch: mb });
    this.counters.recvBytes += buf.numel * (dtype === "float32" ? 4 : 2);
    return buf;
  }

  private post(t: Tensor, toChunk: number, fromChunk: number, dir: number, mb: number, m: number, sends: Work[]): void {
    const to = locateModelChunk(toChunk, this.stages).stage;
    sends.push(sendAsync(t, this.p2p, to, { tag: this.tag(dir, fromChunk, mb, m) }));
    this.counters.sentBytes += t.numel * (t.dtype === "float32" ? 4 : 2);
    this.counters.messages++;
  }

  async run(batches: readonly MicroBatch[], fns: StepFunctions): Promise<number> {
    // One span around the schedule: the bubble is its time not spent in forward or backward.
    const lossSum = await traceSpanAsync("pipeline", "step", () => this.runSchedule(batches, fns), { schedule: this.schedule, microBatches: batches.length });
    return this.finish(lossSum);
  }

  private async runSchedule(batches: readonly MicroBatch[], fns: StepFunctions): Promise<number> {
    const m = batches.length;
    const dtype = fns.activationDtype ?? "float32";
    const actions = pipelineActions(this.schedule, { stages: this.stages, microBatches: m, virtualStages: this.virtualStages }, this.group.rank);
    const inflight = new Map<string, InFlight>();
    const sends: Work[] = [];
    let lossSum = 0;
    const streamKey = stepRandomKey();
    // Accumulate locally; the data-parallel reduction runs once, after the tied embedding's.
    this.gradSync.beforeMicroStep(false);
    try {
      for (const a of actions) {
        const chunk = this.chunks[a.chunk]!;
        const key = `${a.chunk}/${a.microBatch}`;
        const b = batches[a.microBatch]!;
        if (a.kind === "forward") {
          const input = chunk.first ? null : await this.receive(this.activationShape(b), dtype, chunk.modelChunk - 1, 0, a.microBatch, m);
          const state = traceSpan("forward", "forward", () => withScope(() => {
            if (input) input.requiresGrad_(true);
            return onStepStream(streamKey, b, () => fns.forward(() => {
              const { x, y } = batchTensors(b);
              let h = chunk.first ? this.model.embed(x) : input!;
              h = this.model.runBlocks(h, CAUSAL, chunk.blocks);
              const router = this.model.takeRouterLosses(chunk.blocks)?.term ?? null;
              if (chunk.last) {
                const out = this.model.head(h, y, CAUSAL);
                fns.onOutput?.(out, a.microBatch);
                return { input, output: out.loss!, router };
              }
              return { input, output: h.dtype === dtype ? h : h.to(dtype), router };
            }));
          }), { microBatch: a.microBatch, chunk: chunk.modelChunk });
          if (state.router) lossSum += state.router.item();
          if (chunk.last) lossSum += state.output.item();
          else this.post(noGrad(() => state.output.contiguous()), chunk.modelChunk + 1, chunk.modelChunk, 0, a.microBatch, m, sends);
          inflight.set(key, state);
        } else {
          const state = inflight.get(key);
          if (!state) throw new ValueError(`pipeline: backward of micro-batch ${a.microBatch} chunk ${a.chunk} before its forward (schedule ${this.schedule})`);
          inflight.delete(key);
          const grad = chunk.last ? null : await this.receive([...state.output.shape], state.output.dtype, chunk.modelChunk + 1, 1, a.microBatch, m);
          traceSpan("backward", "backward", () => withScope(() => {
            const router = state.router;
            if (chunk.last) {
              const total = router ? state.output.add(router) : state.output;
              const scaled = fns.lossFactor === 1 ? total : total.mul(fns.lossFactor);
              scaled.backward();
            } else if (router) {
              // One root for both gradients (see the file comment): d/d(output) of sum(output * grad) is grad.
              state.output.mul(grad!).sum().add(router.mul(fns.lossFactor)).backward();
            } else state.output.backward(grad!);
          }), { microBatch: a.microBatch, chunk: chunk.modelChunk });
          grad?.dispose();
          state.output.dispose();
          state.router?.dispose();
          if (state.input) {
            const g = state.input.grad;
            if (!g) throw new ValueError(`pipeline: no gradient reached the input of chunk ${chunk.modelChunk} (micro-batch ${a.microBatch})`);
            this.post(g, chunk.modelChunk - 1, chunk.modelChunk, 1, a.microBatch, m, sends);
            state.input.grad = null;
            g.dispose();
            state.input.dispose();
          }
        }
      }
      for (const w of sends) await w.wait();
    } finally {
      for (const s of inflight.values()) { s.output.dispose(); s.input?.dispose(); s.router?.dispose(); }
    }
    return lossSum;
  }

  /** After the schedule: the tied embedding's and the data-parallel reductions, and the loss to every stage. */
  private async finish(lossSum: number): Promise<number> {
    this.reduceTiedEmbedding();
    this.gradSync.beforeMicroStep(true);
    await this.gradSync.afterBackward(true);
    return this.shareLoss(lossSum);
  }

  /** Sums the tied embedding's gradient over its first-stage and last-stage copies. */
  private reduceTiedEmbedding(): void {
    const g = this.embeddingGroup;
    const w = this.model.wte?.weight;
    if (!g || !w) return;
    if (!w.grad) w.grad = noGrad(() => w.mul(0)).keep();
    allReduce(w.grad as Tensor, g, "sum");
  }

  /**
   * The loss on every stage (it is reported on rank 0, as in one process): the last stage's,
   * broadcast, or for MoE models the sum over stages of each one's part (the last stage's loss
   * plus every stage's router terms).
   */
  private shareLoss(value: number): number {
    if (this.stages === 1) return value;
    const moe = this.model.config.moe !== null;
    const t = tensor([this.holdsLoss || moe ? value : 0]);
    if (moe) allReduce(t, this.group, "sum");
    else broadcast(t, this.group, { root: this.stages - 1 });
    const out = t.item();
    t.dispose();
    return out;
  }

  async evalLoss(batch: MicroBatch, fns: Pick<StepFunctions, "forward" | "activationDtype">): Promise<number> {
    const dtype = fns.activationDtype ?? "float32";
    const K = this.stages * this.virtualStages;
    let loss = 0;
    const sends: Work[] = [];
    for (let k = 0; k < K; k++) {
      const chunk = this.chunks.find((c) => c.modelChunk === k);
      if (!chunk) continue;
      const input = chunk.first ? null : await this.receive(this.activationShape(batch), dtype, k - 1, 2, 0, 1);
      const out = noGrad(() => withScope(() => fns.forward(() => {
        const { x, y } = batchTensors(batch);
        let h = chunk.first ? this.model.embed(x) : input!;
        h = this.model.runBlocks(h, CAUSAL, chunk.blocks);
        const router = this.model.takeRouterLosses(chunk.blocks)?.term.item() ?? 0;
        if (chunk.last) return { loss: this.model.head(h, y, CAUSAL).loss!.item() + router, h: null };
        return { loss: router, h: (h.dtype === dtype ? h : h.to(dtype)).contiguous() };
      })));
      input?.dispose();
      loss += out.loss;
      if (out.h) {
        this.post(out.h, k + 1, k, 2, 0, 1, sends);
        out.h.dispose();
      }
    }
    for (const w of sends) await w.wait();
    return this.shareLoss(loss);
  }
}

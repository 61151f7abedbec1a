/**
 * GPT-2 with a sequence-classification head: Hugging Face's GPT2ForSequenceClassification
 * (`transformer.*` + `score.weight`, no bias). The class logits come from the hidden state of
 * each row's last real token (right padding: with causal attention no real token sees the
 * padding, so the last one summarises the row), or from the mean over real tokens.
 *
 * Shape legend: B batch, T padded length, C width, L labels.
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import { Tensor, F, Module, Linear, tensor, noGrad, normal, type AttentionContext } from "./_deps.js";
import { GPT, type ActivationCheckpointing } from "./model.js";

/** Class logits and, with labels, the mean cross-entropy. */
export interface ClassifierOutput {
  /** (B, L). */
  logits: Tensor;
  loss: Tensor | null;
}

/** How a row's token states become one vector. */
export type SequencePooling = "last" | "mean";

/**
 * @example
 * const clf = new GPT2ForSequenceClassification(gpt, 2, { seed: 1 });
 * const { logits, loss } = clf.forward(ids, lengths, labels);   // (B, 2)
 */
export class GPT2ForSequenceClassification extends Module {
  readonly transformer: GPT;
  readonly score: Linear;
  readonly pooling: SequencePooling;
  constructor(transformer: GPT, readonly numLabels: number, opts: { seed?: number; pooling?: SequencePooling } = {}) {
    super();
    if (!Number.isInteger(numLabels) || numLabels < 2) throw new ValueError(`GPT2ForSequenceClassification: numLabels must be an integer >= 2, got ${numLabels}`);
    this.transformer = this.module("transformer", transformer);
    // HF: N(0, initializer_range = 0.02), no bias.
    this.score = this.module("score", new Linear(transformer.config.nEmbd, numLabels, { bias: false, seed: opts.seed ?? 1337 }));
    this.pooling = opts.pooling ?? "last";
  }

  /** The transformer blocks: ZeRO/FSDP units (parallelize's BlockModel). */
  get blocks(): readonly Module[] {
    return this.transformer.h;
  }

  get activationCheckpointing(): ActivationCheckpointing {
    return this.transformer.activationCheckpointing;
  }

  set activationCheckpointing(v: ActivationCheckpointing) {
    this.transformer.activationCheckpointing = v;
  }

  /** Final hidden states (after ln_f): idx (B, T) -> (B, T, C). */
  hidden(idx: Tensor, ctx?: AttentionContext): Tensor {
    const g = this.transformer;
    const x = g.embed(idx, ctx);                                                // (B, T, C)
    const h = g.runBlocks(x, ctx);                                              // (B, T, C)
    return g.ln_f.forward(h);                                                   // (B, T, C)
  }

  /** One vector per row from its first `lengths[b]` tokens: (B, T, C) -> (B, C). */
  pool(h: Tensor, lengths: Int32Array): Tensor {
    const [B, T, C] = h.shape as [number, number, number];
    if (lengths.length !== B) throw new ValueError(`pool: ${lengths.length} lengths for ${B} rows`);
    for (const n of lengths) if (!(n >= 1 && n <= T)) throw new ValueError(`pool: lengths must be in [1, ${T}], got ${n}`);
    if (this.pooling === "last") {
      const rows = tensor(Int32Array.from(lengths, (n, b) => b * T + n - 1), { shape: [B], dtype: "int32" });
      return F.embedding(rows, h.view([B * T, C]));                           // (B, C) gather
    }
    const w = new Float32Array(B * T);
    lengths.forEach((n, b) => w.fill(1 / n, b * T, b * T + n));
    const weights = tensor(w, { shape: [B, T, 1] });                          // (B, T, 1)
    return h.mul(weights).sum(1);                                               // (B, C)
  }

  /** idx (B, T) int32 right-padded, lengths (B) real tokens per row, labels (B) int32 (optional). */
  forward(idx: Tensor, lengths: Int32Array, labels?: Tensor | null): ClassifierOutput {
    const h = this.hidden(idx);                                                 // (B, T, C)
    const pooled = this.pool(h, lengths);                                       // (B, C)
    const logits = this.score.forward(pooled);                                  // (B, L)
    if (!labels) return { logits, loss: null };
    if (labels.ndim !== 1 || labels.shape[0] !== idx.shape[0]) throw new ValueError(`GPT2ForSequenceClassification: labels shape ${fmtShape(labels.shape)} must be (${idx.shape[0]})`);
    return { logits, loss: F.crossEntropy(logits, labels) };
  }

  /** Re-draws the head N(0, 0.02) from `seed` (a fresh head on a pretrained transformer). */
  resetHead(seed: number): void {
    noGrad(() => {
      const w = normal(this.score.weight.shape, 0, 0.02, { seed });
      this.score.weight.copy_(w);
      w.dispose();
    });
  }

  /**
   * Training FLOPs per token: 6 x the blocks' and final norm's parameters (the embeddings are
   * lookups here: no LM head multiplies by wte) plus attention's 12 L C T; the head once per row.
   */
  flopsPerToken(T: number): number {
    const c = this.transformer.config;
    const embeddings = this.transformer.wte.weight.numel + this.transformer.wpe.weight.numel;
    return 6 * (this.transformer.numParameters() - embeddings + this.score.weight.numel / T) + 12 * c.nLayer * c.nEmbd * T;
  }
}

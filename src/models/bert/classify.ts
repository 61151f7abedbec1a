/**
 * BERT with a sequence-classification head: Hugging Face's BertForSequenceClassification
 * (`bert.*` + `classifier.{weight,bias}`): dropout on the [CLS] pooler output, then a linear
 * layer to the classes.
 *
 * Shape legend: B batch, T padded length, C width, L labels.
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import { F, Module, Linear, Dropout } from "../../nn/index.js";
import type { Tensor } from "../../tensor/index.js";
import { BertModel, type BERTActivationCheckpointing } from "./model.js";

/** Options of BertForSequenceClassification.forward(). */
export interface BertClassifyOptions {
  tokenTypeIds?: Tensor;
  /** (B, T) 1 = token, 0 = padding. */
  attentionMask?: Tensor;
  /** (B) int32 classes: the loss is their mean cross-entropy. */
  labels?: Tensor | null;
}

/**
 * @example
 * const clf = new BertForSequenceClassification(pretrained.bert, 2, { seed: 1 });
 * const { logits, loss } = clf.forward(ids, { attentionMask, labels });   // (B, 2)
 */
export class BertForSequenceClassification extends Module {
  readonly bert: BertModel;
  readonly dropout: Dropout;
  readonly classifier: Linear;
  constructor(bert: BertModel, readonly numLabels: number, opts: { seed?: number; dropout?: number } = {}) {
    super();
    if (!Number.isInteger(numLabels) || numLabels < 2) throw new ValueError(`BertForSequenceClassification: numLabels must be an integer >= 2, got ${numLabels}`);
    this.bert = this.module("bert", bert);
    this.dropout = this.module("dropout", new Dropout(opts.dropout ?? bert.config.dropout));
    // HF: N(0, initializer_range) weights, zero bias.
    this.classifier = this.module("classifier", new Linear(bert.config.nEmbd, numLabels, { seed: opts.seed ?? 1337, std: bert.config.initializerRange }));
  }

  /** The encoder layers: ZeRO/FSDP units (parallelize's BlockModel). */
  get blocks(): readonly Module[] {
    return this.bert.encoder.layer;
  }

  get activationCheckpointing(): BERTActivationCheckpointing {
    return this.bert.activationCheckpointing;
  }

  set activationCheckpointing(v: BERTActivationCheckpointing) {
    this.bert.activationCheckpointing = v;
  }

  /**
   * Training FLOPs per token: 6 x the encoder layers' and embedding LayerNorm's parameters (the
   * embeddings are lookups), attention's 12 L C T, and the pooler and classifier once per row.
   */
  flopsPerToken(T: number): number {
    const count = (prefix: string) => this.namedParameters().filter(([n]) => n.startsWith(prefix)).reduce((s, [, p]) => s + p.numel, 0);
    const c = this.bert.config;
    const perToken = count("bert.encoder.") + count("bert.embeddings.LayerNorm.");
    const perRow = count("bert.pooler.") + count("classifier.");
    return 6 * (perToken + perRow / T) + 12 * c.nLayer * c.nEmbd * T;
  }

  /** idx (B, T) int32 -> class logits (B, L) and, with labels, the loss. */
  forward(idx: Tensor, opts: BertClassifyOptions = {}): { logits: Tensor; loss: Tensor | null } {
    const h = this.bert.encode(idx, { ...(opts.tokenTypeIds ? { tokenTypeIds: opts.tokenTypeIds } : {}), ...(opts.attentionMask ? { attentionMask: opts.attentionMask } : {}) });   // (B, T, C)
    const pooled = this.bert.pool(h);                                           // (B, C)
    const x = this.dropout.p > 0 ? this.dropout.forward(pooled) : pooled;
    const logits = this.classifier.forward(x);                                  // (B, L)
    const labels = opts.labels;
    if (!labels) return { logits, loss: null };
    if (labels.ndim !== 1 || labels.shape[0] !== idx.shape[0]) throw new ValueError(`BertForSequenceClassification: labels shape ${fmtShape(labels.shape)} must be (${idx.shape[0]})`);
    return { logits, loss: F.crossEntropy(logits, labels) };
  }
}

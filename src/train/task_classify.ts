/**
 * Sequence classification (`megalith finetune --task classify`): a labelled JSONL/CSV file,
 * split train/validation by a seeded shuffle, a classification head on GPT (last-token
 * pooling, HF GPT2ForSequenceClassification) or BERT ([CLS] pooler, HF
 * BertForSequenceClassification), cross-entropy on the class. Validation reports accuracy,
 * macro-F1 and the confusion matrix beside the loss.
 */
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ValueError } from "../core/errors.js";
import {
  GPT, GPT2ForSequenceClassification, BertForSequenceClassification, BertForPreTraining, BertModel, loadGPTWeights, gptToRecords, hfConfig,
  loadBERTWeights, hfBertConfig, isBERTDir, type SequencePooling,
} from "../models/index.js";
import { readLabelledTexts, seededSplit } from "../data/index.js";
import { loadTokenizer, saveHfTokenizer, type Tokenizer } from "../tokenizers/index.js";
import { writeSafetensors, type TensorRecord } from "../checkpoint/index.js";
import { tensor, withScope } from "../tensor/index.js";
import { noGrad } from "../autograd/index.js";
import type { MicroBatch } from "../parallel/index.js";
import type { TrainConfig } from "./config.js";
import { ExampleLoader, collatePadded, type TokenizedExample } from "./_examples.js";
import { applyFinetuneLoRA, loadNamedTensors, tensorRecords, saveAdapters, type LoRAInfo } from "./_finetune.js";
import type { TaskContext, TrainTask } from "./task.js";

/** Accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted). */
export interface ClassificationReport {
  accuracy: number;
  macro_f1: number;
  /** confusion[t][p]: examples of class t predicted as p. */
  confusion: number[][];
  labels: string[];
  examples: number;
}

/**
 * The report for predictions against true classes (classes 0..L-1). Macro-F1 averages each
 * class's F1 (2PR / (P + R), 0 where undefined) with equal weight, as scikit-learn's
 * f1_score(average="macro") with zero_division=0.
 * @example
 * classificationReport([0, 1, 1], [0, 1, 0], ["ham", "spam"]).accuracy   // 2/3
 */
export function classificationReport(truth: ArrayLike<number>, pred: ArrayLike<number>, labels: readonly string[]): ClassificationReport {
  const L = labels.length;
  const confusion = Array.from({ length: L }, () => new Array<number>(L).fill(0));
  let right = 0;
  for (let i = 0; i < truth.length; i++) {
    confusion[truth[i]!]![pred[i]!]!++;
    if (truth[i] === pred[i]) right++;
  }
  let f1Sum = 0;
  for (let c = 0; c < L; c++) {
    const tp = confusion[c]![c]!;
    const predicted = confusion.reduce((a, row) => a + row[c]!, 0);
    const actual = confusion[c]!.reduce((a, x) => a + x, 0);
    const p = predicted ? tp / predicted : 0, r = actual ? tp / actual : 0;
    f1Sum += p + r > 0 ? (2 * p * r) / (p + r) : 0;
  }
  return { accuracy: truth.length ? right / truth.length : NaN, macro_f1: f1Sum / L, confusion, labels: [...labels], examples: truth.length };
}

/** Class names in a stable order: numerically when every label is an integer, else by string. */
function labelSet(labels: readonly string[]): string[] {
  const set = [...new Set(labels)];
  return set.every((l) => /^-?\d+$/.test(l)) ? set.sort((a, b) => Number(a) - Number(b)) : set.sort();
}

/** A sequence classifier: GPT or BERT with its head. */
export type Classifier = GPT2ForSequenceClassification | BertForSequenceClassification;

/**
 * A classifier's tensors under Hugging Face's names: GPT2ForSequenceClassification's
 * `transformer.*` (Conv1D layout) + `score.weight`, or BertForSequenceClassification's names as
 * they are.
 */
export function classifierRecords(model: Classifier): Record<string, TensorRecord> {
  if (model instanceof GPT2ForSequenceClassification) {
    const base = Object.entries(gptToRecords(model.transformer)).map(([k, v]) => [`transformer.${k}`, v] as const);
    return { ...Object.fromEntries(base), ...tensorRecords(model, (n) => n.startsWith("score.")) };
  }
  return tensorRecords(model, () => true);
}

/** config.json of a classifier: the base architecture's fields, the class names and counts. */
export function classifierConfig(model: Classifier, labels: readonly string[], eot?: number): Record<string, unknown> {
  const id2label = Object.fromEntries(labels.map((l, i) => [String(i), l]));
  const label2id = Object.fromEntries(labels.map((l, i) => [l, i]));
  if (model instanceof GPT2ForSequenceClassification) {
    const ids = eot !== undefined ? { bosTokenId: eot, eosTokenId: eot } : {};
    return { ...hfConfig(model.transformer.config, ids), architectures: ["GPT2ForSequenceClassification"], ...(eot !== undefined ? { pad_token_id: eot } : {}), num_labels: labels.length, id2label, label2id };
  }
  return { ...hfBertConfig(model.bert.config), architectures: ["BertForSequenceClassification"], num_labels: labels.length, id2label, label2id };
}

/** The class names of a classifier's config.json (id2label in id order). */
export function configLabels(cfg: Record<string, unknown>, file: string): string[] {
  const m = cfg.id2label as Record<string, unknown> | undefined;
  const n = typeof cfg.num_labels === "number" ? cfg.num_labels : m ? Object.keys(m).length : 0;
  if (!m || n < 2) throw new ValueError(`${file}: a classifier config needs id2label with at least 2 classes`);
  return Array.from({ length: n }, (_, i) => String(m[String(i)] ?? i));
}

/**
 * The classification task.
 * @example
 * const task = await ClassifyTask.create(config, ctx);   // config.finetune.task === "classify"
 */
export class ClassifyTask implements TrainTask {
  readonly kind = "classify" as const;
  readonly checkpointKind = "classify-train";
  readonly tokensPerMicroBatch: number;
  readonly flopsPerToken: number;
  readonly loader: ExampleLoader<TokenizedExample>;
  /** The last validation report (after evalExtras). */
  lastReport: ClassificationReport | null = null;

  private constructor(
    private readonly c: TrainConfig,
    readonly model: Classifier,
    readonly tokenizer: Tokenizer,
    readonly labels: string[],
    private readonly train: TokenizedExample[],
    private readonly val: TokenizedExample[],
    private readonly padId: number,
    private readonly maxLen: number,
    private readonly lora: LoRAInfo | null,
    ctx: TaskContext,
  ) {
    this.tokensPerMicroBatch = c.train.micro_batch_size * maxLen;
    this.flopsPerToken = model.flopsPerToken(maxLen);
    this.loader = new ExampleLoader({
      examples: train, microBatchSize: c.train.micro_batch_size, seed: c.train.seed, rank: ctx.rank, worldSize: ctx.dpSize,
      collate: (ex, rows) => collatePadded(ex, rows, padId, maxLen),
    });
  }

  static async create(c: TrainConfig, ctx: TaskContext): Promise<ClassifyTask> {
    const f = c.finetune!;
    const from = c.model.init_from;
    const isBert = c.model.type === "bert";
    if (from && isBERTDir(from) !== isBert) {
      throw new ValueError(`model.init_from ${from} holds a ${isBert ? "GPT" : "BERT"} model but model.type is "${c.model.type}"; set model.type to match (megalith finetune does)`);
    }
    const tokenizer = loadTokenizer(from ?? c.data.tokenizer);
    const maxLen = Math.min(f.max_len ?? c.model.block_size, c.model.block_size);
    const rows = readLabelledTexts(f.data, { textField: f.text_field, labelField: f.label_field });
    const labels = labelSet(rows.map((r) => r.label));
    if (labels.length < 2) throw new ValueError(`finetune.data ${f.data}: every example has the label ${JSON.stringify(labels[0])}; classification needs at least 2 classes`);
    const index = new Map(labels.map((l, i) => [l, i]));
    const special = tokenizer as Tokenizer & { cls?: number; sep?: number };
    const encode = (text: string): number[] => {
      const ids = tokenizer.encode(text);
      // BERT: [CLS] text [SEP]; GPT: text <|endoftext|>, whose state (last token) is pooled.
      if (isBert) return [special.cls!, ...ids.slice(0, maxLen - 2), special.sep!];
      return [...ids.slice(0, maxLen - 1), tokenizer.eotToken];
    };
    if (isBert && (special.cls === undefined || special.sep === undefined)) throw new ValueError(`model.type "bert" needs a WordPiece tokenizer with [CLS] and [SEP]; ${tokenizer.name} has none`);
    const t0 = performance.now();
    const all = rows.map((r) => ({ ids: encode(r.text), label: index.get(r.label)! }));
    const { train, val } = seededSplit(all, f.val_fraction, c.train.seed);
    ctx.say(`data: ${f.data}: ${rows.length} examples (${train.length} train, ${val.length} val), ${labels.length} classes [${labels.join(", ")}], ` +
      `tokenized in ${((performance.now() - t0) / 1000).toFixed(1)}s, at most ${maxLen} tokens each`);
    ctx.beforeModel();
    const pooling = f.pooling;
    let model: Classifier;
    if (isBert) {
      if (pooling !== "auto" && pooling !== "cls") throw new ValueError(`finetune.pooling "${pooling}": BERT classifies from its [CLS] pooler; use "auto" or "cls"`);
      const pre = new BertForPreTraining({
        nLayer: c.model.n_layer, nHead: c.model.n_head, nEmbd: c.model.n_embd, maxPositions: c.model.block_size, vocabSize: c.model.vocab_size,
        typeVocabSize: c.model.type_vocab_size, dropout: c.model.dropout, ...(c.model.intermediate_size ? { intermediateSize: c.model.intermediate_size } : {}),
      }, { seed: c.train.seed });
      if (from) await loadBERTWeights(pre, from, { allowSymlinks: ctx.allowSymlinks, skip: (n) => n.startsWith("classifier."), onNewlyInitialized: () => {} });
      model = new BertForSequenceClassification(pre.bert, labels.length, { seed: c.train.seed, dropout: c.model.dropout });
    } else {
      if (pooling === "cls") throw new ValueError(`finetune.pooling "cls" is BERT's; a GPT pools its "last" token (or "mean")`);
      const gpt = new GPT({ nLayer: c.model.n_layer, nHead: c.model.n_head, nEmbd: c.model.n_embd, blockSize: c.model.block_size, vocabSize: c.model.vocab_size, dropout: c.model.dropout, bias: c.model.bias }, { seed: c.train.seed });
      if (from) await loadGPTWeights(gpt, from, { allowSymlinks: ctx.allowSymlinks, skip: (n) => n.startsWith("score.") });
      model = new GPT2ForSequenceClassification(gpt, labels.length, { seed: c.train.seed, pooling: (pooling === "auto" ? "last" : pooling) as SequencePooling });
    }
    // A directory that already holds this head (a fine-tuned model) continues with it.
    if (from) await loadNamedTensors(model, from, { only: (n) => n.startsWith(isBert ? "classifier." : "score."), optional: true });
    const lora = f.lora ? applyFinetuneLoRA(model, f.lora, isBert ? "bert" : "gpt", c.train.seed, ctx.say) : null;
    const padId = isBert ? (tokenizer.tokenToId("[PAD]") ?? 0) : tokenizer.eotToken;
    return new ClassifyTask(c, model, tokenizer, labels, train, val, padId, maxLen, lora, ctx);
  }

  describe(): string {
    const m = this.c.model;
    const kind = this.model instanceof GPT2ForSequenceClassification ? "GPT2ForSequenceClassification" : "BertForSequenceClassification";
    return `${kind} (${this.labels.length} classes) ${m.n_layer} layers, ${m.n_head} heads, ${m.n_embd} wide, ${(this.model.numParameters() / 1e6).toFixed(2)}M parameters` +
      (this.c.model.init_from ? `, from ${this.c.model.init_from}` : ", random init");
  }

  /** The micro-batch's forward: logits and cross-entropy on each row's class. */
  readonly forwardBatch = (b: MicroBatch) => {
    const idx = tensor(b.inputs, { shape: [b.batchSize, b.blockSize], dtype: "int32" });
    const labels = tensor(b.targets, { shape: [b.batchSize], dtype: "int32" });
    if (this.model instanceof GPT2ForSequenceClassification) return this.model.forward(idx, b.fields!.lengths!, labels);
    const mask = tensor(b.fields!.attention_mask!, { shape: [b.batchSize, b.blockSize], dtype: "int32" });
    return this.model.forward(idx, { attentionMask: mask, labels });
  };

  valBatchCount(): number {
    return Math.ceil(this.val.length / this.c.train.micro_batch_size);
  }

  *evalBatches(n: number): Iterable<MicroBatch> {
    const B = this.c.train.micro_batch_size;
    for (let i = 0; i < n && i * B < this.val.length; i++) {
      const ex = this.val.slice(i * B, (i + 1) * B);
      yield collatePadded(ex, ex.map((_, j) => i * B + j), this.padId, this.maxLen);
    }
  }

  /** Predicted classes of every validation example (argmax of the logits), in order. */
  predictVal(): Int32Array {
    const out = new Int32Array(this.val.length);
    let k = 0;
    for (const b of this.evalBatches(this.valBatchCount())) {
      withScope(() => noGrad(() => {
        const { logits } = this.forwardBatch(b);
        const am = logits.argmax(-1).data();
        for (let i = 0; i < b.batchSize; i++) out[k++] = Number(am[i]);
      }));
    }
    return out;
  }

  /** Accuracy, macro-F1 and the confusion matrix on the whole validation split. */
  evalExtras(): Record<string, unknown> | undefined {
    if (this.val.length === 0) return undefined;
    const pred = this.predictVal();
    const r = classificationReport(this.val.map((e) => e.label!), pred, this.labels);
    this.lastReport = r;
    return { accuracy: r.accuracy, macro_f1: r.macro_f1, confusion: r.confusion };
  }

  records(model: Classifier = this.model): Record<string, TensorRecord> {
    return classifierRecords(model);
  }

  hfConfig(): Record<string, unknown> {
    return classifierConfig(this.model, this.labels, this.model instanceof GPT2ForSequenceClassification ? this.tokenizer.eotToken : undefined);
  }

  async loadWeights(dir: string, model: Classifier = this.model): Promise<void> {
    if (model instanceof GPT2ForSequenceClassification) {
      await loadGPTWeights(model.transformer, dir, { skip: (n) => !n.startsWith("transformer.") });
      await loadNamedTensors(model, dir, { only: (n) => n.startsWith("score.") || n.includes(".lora_") });
      return;
    }
    await loadNamedTensors(model, dir, { only: () => true });
  }

  /** Without LoRA adapters (whose frozen base and adapters a logical copy would not hold). */
  logicalModel(): Classifier {
    if (this.lora) throw new ValueError("a logical copy of a LoRA classifier is not supported: LoRA runs with data parallelism and ZeRO only (parallel.tp=1)");
    const m = this.model;
    if (m instanceof GPT2ForSequenceClassification) return new GPT2ForSequenceClassification(new GPT(m.transformer.config), m.numLabels, { pooling: m.pooling });
    return new BertForSequenceClassification(new BertModel(m.bert.config), m.numLabels);
  }

  /**
   * final/: the whole fine-tuned model (weights, config.json with id2label, tokenizer files);
   * with LoRA, the adapters and the head in PEFT's layout (adapter_config.json +
   * adapter_model.safetensors) instead, beside config.json (the classes, which
   * `megalith export --merge-lora` needs to rebuild the classifier as a plain model).
   */
  async saveModelDir(dir: string, model: Classifier = this.model): Promise<void> {
    mkdirSync(dir, { recursive: true });
    if (this.lora) await saveAdapters(this.model, dir, this.lora, { baseModel: this.c.model.init_from ?? "", taskType: "SEQ_CLS" });
    else await writeSafetensors(join(dir, "model.safetensors"), this.records(model), { format: "pt" });
    writeFileSync(join(dir, "config.json"), JSON.stringify(this.hfConfig(), null, 2) + "\n");
    saveHfTokenizer(dir, this.tokenizer, { modelMaxLength: this.c.model.block_size });
  }
}

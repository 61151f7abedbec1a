/**
 * BERT pretraining: masked-language modelling + next-sentence prediction (model.type "bert") on
 * sentence-pair shards made by `megalith prepare --task mlm`. Masks are drawn at load time
 * (data/mlm_loader.ts), keyed by seed, epoch and example, so they do not depend on the
 * data-parallel layout and a resumed run draws the same ones.
 */
import { ValueError } from "../core/errors.js";
import { BertForPreTraining, bertToRecords, hfBertConfig, loadBERTWeights, saveBERT } from "../models/index.js";
import { MlmLoader, mlmEvalBatches, mlmEvalBatchCount, readMeta, type MlmBatch, type MlmLoaderState } from "../data/index.js";
import { saveHfTokenizer, type Tokenizer } from "../tokenizers/index.js";
import type { TensorRecord } from "../checkpoint/index.js";
import { tensor } from "../tensor/index.js";
import type { MicroBatch } from "../parallel/index.js";
import type { TrainConfig } from "./config.js";
import { resolveDataDir, dataTokenizer } from "./task_lm.js";
import type { TaskContext, TaskLoader, TrainTask } from "./task.js";

/** An MLM batch as the schedule's MicroBatch: inputs = masked ids, targets = MLM labels, the rest in fields. */
export function mlmMicroBatch(b: MlmBatch): MicroBatch {
  return {
    inputs: b.inputIds, targets: b.mlmLabels, batchSize: b.rows, blockSize: b.seqLen, rows: Array.from(b.sampleIds),
    fields: { token_type_ids: b.tokenTypeIds, attention_mask: b.attentionMask, next_sentence_label: b.nspLabels },
  };
}

/** MlmLoader behind the TaskLoader interface. */
class MlmTaskLoader implements TaskLoader {
  constructor(readonly inner: MlmLoader) {}
  nextBatch(): MicroBatch {
    return mlmMicroBatch(this.inner.nextBatch());
  }
  state(): unknown {
    return this.inner.state();
  }
  restore(s: unknown): void {
    this.inner.restore(s as MlmLoaderState);
  }
}

/**
 * The BERT pretraining task.
 * @example
 * const task = await MaskedLanguageModelTask.create(config, ctx);   // config.model.type === "bert"
 */
export class MaskedLanguageModelTask implements TrainTask {
  readonly kind = "mlm" as const;
  readonly checkpointKind = "bert-train";
  readonly tokensPerMicroBatch: number;
  readonly flopsPerToken: number;

  private constructor(
    private readonly c: TrainConfig,
    readonly model: BertForPreTraining,
    readonly tokenizer: Tokenizer | null,
    readonly loader: MlmTaskLoader,
    readonly dataDir: string,
    private readonly seqLen: number,
  ) {
    this.tokensPerMicroBatch = c.train.micro_batch_size * seqLen;
    this.flopsPerToken = model.flopsPerToken(seqLen);
  }

  static async create(c: TrainConfig, ctx: TaskContext): Promise<MaskedLanguageModelTask> {
    const dataDir = await resolveDataDir(c, ctx.say);
    const meta = readMeta(dataDir) as ReturnType<typeof readMeta> & { task?: string; mlm?: { max_seq_len?: number } };
    if (meta.task !== "mlm") {
      throw new ValueError(`data.source ${dataDir} holds ${meta.task ?? "lm"} token shards; model.type "bert" pretrains on sentence pairs from \`megalith prepare --task mlm\``);
    }
    if (meta.tokenizer.vocabSize > c.model.vocab_size) {
      throw new ValueError(`model.vocab_size ${c.model.vocab_size} is smaller than the data's vocabulary (${meta.tokenizer.vocabSize}); BERT's uncased vocabulary has 30522`);
    }
    const probe = mlmEvalBatchCount({ dir: dataDir, split: "train", microBatchSize: 1 });
    if (probe === 0) throw new ValueError(`data.source ${dataDir} has no training examples`);
    const first = mlmEvalBatches({ dir: dataDir, split: "train", microBatchSize: 1, numBatches: 1 }).next().value as MlmBatch;
    const seqLen = first.seqLen;
    if (seqLen > c.model.block_size) {
      throw new ValueError(`the data's examples are ${seqLen} tokens (prepare --max-seq-len) but model.block_size (BERT's max_position_embeddings) is ${c.model.block_size}; raise model.block_size`);
    }
    const tokenizer = dataTokenizer(c, meta.tokenizer.spec);
    ctx.beforeModel();
    const model = new BertForPreTraining({
      nLayer: c.model.n_layer, nHead: c.model.n_head, nEmbd: c.model.n_embd, maxPositions: c.model.block_size, vocabSize: c.model.vocab_size,
      typeVocabSize: c.model.type_vocab_size, dropout: c.model.dropout, ...(c.model.intermediate_size ? { intermediateSize: c.model.intermediate_size } : {}),
      ...(tokenizer?.tokenToId("[PAD]") !== undefined ? { padTokenId: tokenizer.tokenToId("[PAD]")! } : {}),
    }, { seed: c.train.seed });
    if (c.model.init_from) await loadBERTWeights(model, c.model.init_from, { allowSymlinks: ctx.allowSymlinks });
    const loader = new MlmTaskLoader(new MlmLoader({ dir: dataDir, split: "train", microBatchSize: c.train.micro_batch_size, seed: c.train.seed, rank: ctx.rank, worldSize: ctx.dpSize }));
    return new MaskedLanguageModelTask(c, model, tokenizer, loader, dataDir, seqLen);
  }

  describe(): string {
    const m = this.c.model;
    return `BERT ${m.n_layer} layers, ${m.n_head} heads, ${m.n_embd} wide, ${(this.model.numParameters() / 1e6).toFixed(2)}M parameters, MLM + NSP on ${this.seqLen}-token pairs`;
  }

  /** Masked ids, token types and padding mask in; MLM + NSP loss out (HF's total loss). */
  readonly forwardBatch = (b: MicroBatch) => {
    const shape = [b.batchSize, b.blockSize];
    const f = b.fields!;
    const ids = tensor(b.inputs, { shape, dtype: "int32" });
    return this.model.forward(ids, {
      tokenTypeIds: tensor(f.token_type_ids!, { shape, dtype: "int32" }),
      attentionMask: tensor(f.attention_mask!, { shape, dtype: "int32" }),
      mlmLabels: tensor(b.targets, { shape, dtype: "int32" }),
      nspLabels: tensor(f.next_sentence_label!, { shape: [b.batchSize], dtype: "int32" }),
    });
  };

  valBatchCount(): number {
    try {
      return mlmEvalBatchCount({ dir: this.dataDir, split: "val", microBatchSize: this.c.train.micro_batch_size });
    } catch {
      return 0;
    }
  }

  *evalBatches(n: number): Iterable<MicroBatch> {
    for (const b of mlmEvalBatches({ dir: this.dataDir, split: "val", microBatchSize: this.c.train.micro_batch_size, numBatches: n, seed: this.c.train.seed })) yield mlmMicroBatch(b);
  }

  records(model: BertForPreTraining = this.model): Record<string, TensorRecord> {
    return bertToRecords(model);
  }

  hfConfig(): Record<string, unknown> {
    return hfBertConfig(this.model.config);
  }

  async loadWeights(dir: string, model: BertForPreTraining = this.model): Promise<void> {
    await loadBERTWeights(model, dir);
  }

  async saveModelDir(dir: string, model: BertForPreTraining = this.model): Promise<void> {
    await saveBERT(model, dir);
    if (this.tokenizer) saveHfTokenizer(dir, this.tokenizer, { modelMaxLength: this.c.model.block_size });
  }

  logicalModel(): BertForPreTraining {
    return new BertForPreTraining(this.model.config);
  }
}

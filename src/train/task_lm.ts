/**
 * GPT language modelling: next-token prediction on token shards made by `megalith prepare`
 * (or the built-in Brown corpus, prepared and cached on first use). The default task.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ValueError } from "../core/errors.js";
import { GPT, loadGPTWeights, gptToRecords, hfConfig, type SpecialTokenIds } from "../models/index.js";
import { TokenLoader, evalBatches, evalBatchCount, ensurePreparedBrown, readMeta } from "../data/index.js";
import { loadTokenizer, saveHfTokenizer, type Tokenizer } from "../tokenizers/index.js";
import type { TensorRecord } from "../checkpoint/index.js";
import type { MicroBatch } from "../parallel/index.js";
import { type TrainConfig, moeConfigOf } from "./config.js";
import { bitsPerByte, bytesPerToken } from "./bits_per_byte.js";
import type { TaskContext, TrainTask } from "./task.js";

/** The data directory of `data.source`: the prepared Brown corpus or a `megalith prepare` output. */
export async function resolveDataDir(c: TrainConfig, say: (m: string) => void): Promise<string> {
  if (c.data.source === "brown") {
    const { dir, reused } = await ensurePreparedBrown(c.data.cache_dir, c.data.tokenizer);
    say(`data: Brown corpus ${reused ? "(cached)" : "prepared"} at ${dir}`);
    return dir;
  }
  if (!existsSync(join(c.data.source, "meta.json"))) {
    throw new ValueError(`data.source ${JSON.stringify(c.data.source)} is neither "brown" nor a directory prepared by \`megalith prepare\` (no meta.json)`);
  }
  return c.data.source;
}

/** The tokenizer a prepared directory names, or null when it cannot be loaded (sampling then needs one given explicitly). */
export function dataTokenizer(c: TrainConfig, spec: string): Tokenizer | null {
  try {
    return loadTokenizer(c.data.source === "brown" ? c.data.tokenizer : spec);
  } catch {
    return null;
  }
}

/** bos/eos ids for config.json and generation_config.json: the tokenizer's end-of-text. */
export function specialTokenIds(tok: Tokenizer | null): SpecialTokenIds {
  return tok ? { bosTokenId: tok.eotToken, eosTokenId: tok.eotToken } : {};
}

/**
 * The GPT language-model task.
 * @example
 * const task = await LanguageModelTask.create(config, ctx);
 * const batch = task.loader.nextBatch();   // (B, T) inputs and next-token targets
 */
export class LanguageModelTask implements TrainTask {
  readonly kind = "lm" as const;
  readonly checkpointKind = "gpt-train";
  readonly tokensPerMicroBatch: number;
  readonly flopsPerToken: number;
  /** UTF-8 bytes per validation target token, for val_bpb (computed at the first eval). */
  private valBytesPerToken: number | undefined;

  private constructor(
    private readonly c: TrainConfig,
    readonly model: GPT,
    readonly tokenizer: Tokenizer | null,
    readonly loader: TokenLoader,
    /** The prepared token shards trained on. */
    readonly dataDir: string,
  ) {
    this.tokensPerMicroBatch = c.train.micro_batch_size * c.model.block_size;
    this.flopsPerToken = model.flopsPerToken(c.model.block_size);
  }

  static async create(c: TrainConfig, ctx: TaskContext): Promise<LanguageModelTask> {
    const dataDir = await resolveDataDir(c, ctx.say);
    const meta = readMeta(dataDir);
    const kind = (meta as { task?: string }).task ?? "lm";
    if (kind !== "lm") {
      throw new ValueError(`data.source ${dataDir} holds ${kind} examples; GPT language modelling needs token shards from \`megalith prepare\` (--task lm)`);
    }
    if (meta.tokenizer.vocabSize > c.model.vocab_size) {
      throw new ValueError(`model.vocab_size ${c.model.vocab_size} is smaller than the data's vocabulary (${meta.tokenizer.vocabSize}); raise it (GPT-2 uses 50257, padded to 50304)`);
    }
    const tokenizer = dataTokenizer(c, meta.tokenizer.spec);
    ctx.beforeModel();
    const model = new GPT(
      { nLayer: c.model.n_layer, nHead: c.model.n_head, nEmbd: c.model.n_embd, blockSize: c.model.block_size, vocabSize: c.model.vocab_size, dropout: c.model.dropout, bias: c.model.bias, moe: moeConfigOf(c) },
      { seed: c.train.seed },
    );
    if (c.model.init_from) await loadGPTWeights(model, c.model.init_from, { allowSymlinks: ctx.allowSymlinks });
    const loader = new TokenLoader({
      dir: dataDir, split: "train", blockSize: c.model.block_size, microBatchSize: c.train.micro_batch_size,
      seed: c.train.seed, rank: ctx.rank, worldSize: ctx.dpSize,
    });
    const task = new LanguageModelTask(c, model, tokenizer, loader, dataDir);
    if (c.eval.batches > 0 && task.valBatchCount() === 0) {
      ctx.say(`warning: the val split of ${dataDir} holds no full window of ${c.model.block_size + 1} tokens; eval is skipped (prepare with a larger --val-fraction)`);
    }
    return task;
  }

  describe(): string {
    const m = this.c.model;
    return `GPT ${m.n_layer} layers, ${m.n_head} heads, ${m.n_embd} wide, ${(this.model.numParameters() / 1e6).toFixed(2)}M parameters`;
  }

  private get evalLayout() {
    return { dir: this.dataDir, split: "val" as const, blockSize: this.c.model.block_size, microBatchSize: this.c.train.micro_batch_size };
  }

  valBatchCount(): number {
    try {
      return evalBatchCount(this.evalLayout);
    } catch {
      return 0;
    }
  }

  evalBatches(n: number): Iterable<MicroBatch> {
    return evalBatches({ ...this.evalLayout, numBatches: n });
  }

  /** The val loss in bits per byte (bits_per_byte.ts): comparable across tokenizers. */
  evalExtras(loss: number): Record<string, unknown> | undefined {
    if (!this.tokenizer || !Number.isFinite(loss)) return undefined;
    this.valBytesPerToken ??= bytesPerToken(this.tokenizer, { ...this.evalLayout, numBatches: Math.min(this.c.eval.batches, this.valBatchCount()) });
    return { val_bpb: bitsPerByte(loss, this.valBytesPerToken) };
  }

  records(model: GPT = this.model): Record<string, TensorRecord> {
    return gptToRecords(model);
  }

  hfConfig(): Record<string, unknown> {
    return hfConfig(this.model.config);
  }

  async loadWeights(dir: string, model: GPT = this.model): Promise<void> {
    await loadGPTWeights(model, dir);
  }

  async saveModelDir(dir: string, model: GPT = this.model): Promise<void> {
    await model.savePretrained(dir, specialTokenIds(this.tokenizer));
    if (this.tokenizer) saveHfTokenizer(dir, this.tokenizer, { modelMaxLength: this.c.model.block_size });
  }

  logicalModel(): GPT {
    return new GPT(this.model.config);
  }
}

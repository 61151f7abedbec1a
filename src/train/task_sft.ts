/**
 * Supervised fine-tuning (`megalith finetune --task sft`): a GPT trained on prompt/completion
 * pairs or chat transcripts with the loss on the completion (assistant) tokens only: prompt
 * tokens get target -100, so they condition the model but are not learned.
 *
 * Chat examples are rendered as "role: content" lines (the serving default, see
 * serve/chat_template.ts) ending with the end-of-text token after each assistant turn; the loss
 * covers each assistant turn's content and its end-of-text.
 */
import { ValueError } from "../core/errors.js";
import { GPT, loadGPTWeights, gptToRecords, hfConfig, generationConfig } from "../models/index.js";
import { readSftExamples, seededSplit, type SftExample } from "../data/index.js";
import { loadTokenizer, saveHfTokenizer, type Tokenizer } from "../tokenizers/index.js";
import { writeSafetensors, type TensorRecord } from "../checkpoint/index.js";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MicroBatch } from "../parallel/index.js";
import type { TrainConfig } from "./config.js";
import { ExampleLoader, collatePadded, type TokenizedExample } from "./_examples.js";
import { applyFinetuneLoRA, saveAdapters, paddedVocab, unpadVocab, type LoRAInfo } from "./_finetune.js";
import { specialTokenIds } from "./task_lm.js";
import type { TaskContext, TrainTask } from "./task.js";

/**
 * Token ids and next-token targets of one SFT example: targets[t] = ids[t + 1] where that next
 * token belongs to a completion (or an assistant turn), else -100. Truncated to `maxLen` + 1
 * tokens (maxLen inputs).
 * @example
 * sftTokens(tok, { prompt: "Q: 2+2?\nA:", completion: " 4" }, 64)   // targets -100 except " 4" and <|endoftext|>
 */
export function sftTokens(tok: Tokenizer, ex: SftExample, maxLen: number): TokenizedExample {
  const ids: number[] = [];
  const learn: boolean[] = [];
  const add = (part: number[], train: boolean) => {
    for (const id of part) {
      ids.push(id);
      learn.push(train);
    }
  };
  if ("messages" in ex) {
    for (const m of ex.messages) {
      add(tok.encode(`${m.role}: `), false);
      const assistant = m.role === "assistant";
      add(tok.encode(m.content), assistant);
      add(assistant ? [tok.eotToken] : tok.encode("\n"), assistant);
    }
  } else {
    add(tok.encode(ex.prompt), false);
    add(tok.encode(ex.completion), true);
    add([tok.eotToken], true);
  }
  const n = Math.min(ids.length - 1, maxLen);
  const targets = new Array<number>(n);
  for (let t = 0; t < n; t++) targets[t] = learn[t + 1] ? ids[t + 1]! : -100;
  return { ids: ids.slice(0, n), targets };
}

/**
 * The SFT task.
 * @example
 * const task = await SftTask.create(config, ctx);   // config.finetune.task === "sft"
 */
export class SftTask implements TrainTask {
  readonly kind = "sft" as const;
  readonly checkpointKind = "sft-train";
  readonly tokensPerMicroBatch: number;
  readonly flopsPerToken: number;
  readonly loader: ExampleLoader<TokenizedExample>;

  private constructor(
    private readonly c: TrainConfig,
    readonly model: GPT,
    readonly tokenizer: Tokenizer,
    private readonly val: TokenizedExample[],
    private readonly maxLen: number,
    private readonly lora: LoRAInfo | null,
    train: TokenizedExample[],
    ctx: TaskContext,
  ) {
    this.tokensPerMicroBatch = c.train.micro_batch_size * maxLen;
    this.flopsPerToken = model.flopsPerToken(maxLen);
    this.loader = new ExampleLoader({
      examples: train, microBatchSize: c.train.micro_batch_size, seed: c.train.seed, rank: ctx.rank, worldSize: ctx.dpSize,
      collate: (ex, rows) => collatePadded(ex, rows, tokenizer.eotToken, maxLen),
    });
  }

  static async create(c: TrainConfig, ctx: TaskContext): Promise<SftTask> {
    const f = c.finetune!;
    const tokenizer = loadTokenizer(c.model.init_from ?? c.data.tokenizer);
    const maxLen = Math.min(f.max_len ?? c.model.block_size, c.model.block_size);
    const rows = readSftExamples(f.data, { promptField: f.prompt_field, completionField: f.completion_field, messagesField: f.messages_field });
    const all = rows.map((r) => sftTokens(tokenizer, r, maxLen)).filter((e) => e.targets!.some((t) => t !== -100));
    if (all.length < rows.length) ctx.say(`warning: ${rows.length - all.length} example(s) keep no completion token within ${maxLen} tokens (the prompt fills the context) and are skipped`);
    if (all.length === 0) throw new ValueError(`finetune.data ${f.data}: no example has a completion token within ${maxLen} tokens; raise finetune.max_len`);
    const { train, val } = seededSplit(all, f.val_fraction, c.train.seed);
    ctx.say(`data: ${f.data}: ${rows.length} examples (${train.length} train, ${val.length} val), loss on ${train.reduce((a, e) => a + e.targets!.filter((t) => t !== -100).length, 0)} completion tokens`);
    ctx.beforeModel();
    // The real vocabulary (GPT-2: 50257) is padded to a multiple of 64 inside and cut back on export.
    const model = new GPT({ nLayer: c.model.n_layer, nHead: c.model.n_head, nEmbd: c.model.n_embd, blockSize: c.model.block_size, vocabSize: paddedVocab(c.model.vocab_size), dropout: c.model.dropout, bias: c.model.bias }, { seed: c.train.seed });
    if (c.model.init_from) await loadGPTWeights(model, c.model.init_from, { allowSymlinks: ctx.allowSymlinks, padVocab: true });
    const lora = f.lora ? applyFinetuneLoRA(model, f.lora, "gpt", c.train.seed, ctx.say, []) : null;
    return new SftTask(c, model, tokenizer, val, maxLen, lora, train, ctx);
  }

  describe(): string {
    const m = this.c.model;
    return `GPT (SFT) ${m.n_layer} layers, ${m.n_head} heads, ${m.n_embd} wide, ${(this.model.numParameters() / 1e6).toFixed(2)}M parameters` +
      (this.c.model.init_from ? `, from ${this.c.model.init_from}` : ", random init");
  }

  valBatchCount(): number {
    return Math.ceil(this.val.length / this.c.train.micro_batch_size);
  }

  *evalBatches(n: number): Iterable<MicroBatch> {
    const B = this.c.train.micro_batch_size;
    for (let i = 0; i < n && i * B < this.val.length; i++) {
      const ex = this.val.slice(i * B, (i + 1) * B);
      yield collatePadded(ex, ex.map((_, j) => i * B + j), this.tokenizer.eotToken, this.maxLen);
    }
  }

  /** HF GPT-2 tensors with the real vocabulary (the padding rows cut off). */
  records(): Record<string, TensorRecord> {
    return unpadVocab(gptToRecords(this.model), this.c.model.vocab_size, "wte.weight");
  }

  hfConfig(): Record<string, unknown> {
    return hfConfig({ ...this.model.config, vocabSize: this.c.model.vocab_size }, specialTokenIds(this.tokenizer));
  }

  async loadWeights(dir: string): Promise<void> {
    await loadGPTWeights(this.model, dir, { padVocab: true });
  }

  /**
   * final/: the tuned model as a GPT-2 directory; with LoRA, the adapters in PEFT's layout
   * (adapter_config.json + adapter_model.safetensors, as PEFT's save_pretrained writes them):
   * `megalith export --model BASE --adapter final --merge-lora --out DIR` makes a plain model.
   */
  async saveModelDir(dir: string): Promise<void> {
    if (this.lora) await saveAdapters(this.model, dir, this.lora, { baseModel: this.c.model.init_from ?? "", taskType: "CAUSAL_LM" });
    else {
      mkdirSync(dir, { recursive: true });
      await writeSafetensors(join(dir, "model.safetensors"), this.records(), { format: "pt" });
      writeFileSync(join(dir, "config.json"), JSON.stringify(this.hfConfig(), null, 2) + "\n");
      writeFileSync(join(dir, "generation_config.json"), JSON.stringify(generationConfig(specialTokenIds(this.tokenizer)), null, 2) + "\n");
    }
    saveHfTokenizer(dir, this.tokenizer, { modelMaxLength: this.c.model.block_size });
  }
}

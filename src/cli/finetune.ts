/**
 * `megalith finetune --model DIR --task classify|sft --data FILE [--out DIR] [--config FILE]
 *   [--set key=value ...] [--epochs N | --steps N] [--lr X] [--batch-size N] [--max-len N]
 *   [--text-field F --label-field F] [--lora-r N [--lora-alpha A] [--lora-targets a,b]]
 *   [--from-scratch] [--resume | --overwrite]`
 *
 * Builds a training config from the model directory (its architecture and weights become
 * model.* with model.init_from = DIR) and the flags, then runs the same Trainer as `train`:
 * the same checkpoints, resume, signals, metrics.jsonl, data parallelism and ZeRO. `--config`
 * gives a base config (any keys, the `finetune` section included) that the flags then
 * override; `--set` overrides last. `--from-scratch` keeps the architecture and drops the
 * weights: the baseline a pretrained model should beat.
 */
import type { Command } from "commander";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { ValueError, FormatError } from "../core/errors.js";
import { readGPTConfig, readBERTConfig, isBERTDir } from "../models/index.js";
import { readRows } from "../data/index.js";
import { applyOverrides, validateConfig } from "../train/config.js";
import { ClassifyTask } from "../train/tasks.js";
import { runTraining } from "./train.js";

interface FinetuneFlags {
  model: string;
  task: string;
  data: string;
  out?: string;
  config?: string;
  set: string[];
  epochs?: string;
  steps?: string;
  lr?: string;
  batchSize?: string;
  maxLen?: string;
  textField?: string;
  labelField?: string;
  valFraction?: string;
  loraR?: string;
  loraAlpha?: string;
  loraTargets?: string;
  fromScratch: boolean;
  resume: boolean;
  overwrite: boolean;
  allowConfigChange: boolean;
  allowSymlinks: boolean;
}

/** Deep merge of plain objects (b wins). */
function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] = v && typeof v === "object" && !Array.isArray(v) && cur && typeof cur === "object" && !Array.isArray(cur)
      ? merge(cur as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

/** model.* of the training config from a model directory's config.json. */
function modelSection(dir: string): Record<string, unknown> {
  if (!existsSync(join(dir, "config.json"))) throw new ValueError(`--model ${dir} has no config.json; pass a model directory (a run's final/, a checkpoint, or a Hugging Face GPT-2 / BERT directory)`);
  if (isBERTDir(dir)) {
    const b = readBERTConfig(dir);
    return { type: "bert", n_layer: b.nLayer, n_head: b.nHead, n_embd: b.nEmbd, block_size: b.maxPositions, vocab_size: b.vocabSize, intermediate_size: b.intermediateSize ?? null, type_vocab_size: b.typeVocabSize ?? 2 };
  }
  const g = readGPTConfig(dir);
  return { type: "gpt", n_layer: g.nLayer, n_head: g.nHead, n_embd: g.nEmbd, block_size: g.blockSize, vocab_size: g.vocabSize, bias: g.bias ?? true };
}

const num = (name: string, v: string | undefined, int = false): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || (int && !Number.isInteger(n))) throw new ValueError(`--${name} must be a positive ${int ? "integer" : "number"}, got ${JSON.stringify(v)}`);
  return n;
};

/**
 * The raw training config `megalith finetune` runs (before validation), from its flags.
 * @example
 * const raw = finetuneConfig({ model: "runs/pre/final", task: "classify", data: "spam.jsonl", set: [], ... });
 */
export function finetuneConfig(o: FinetuneFlags): Record<string, unknown> {
  if (o.task !== "classify" && o.task !== "sft") throw new ValueError(`--task must be "classify" or "sft", got ${JSON.stringify(o.task)}`);
  let base: Record<string, unknown> = {};
  if (o.config) {
    try {
      base = JSON.parse(readFileSync(o.config, "utf8")) as Record<string, unknown>;
    } catch (e) {
      throw new FormatError(o.config, `cannot read it as JSON (${(e as Error).message})`);
    }
  }
  const model = modelSection(o.model);   // a bad --model is named before the data is read
  const batch = num("batch-size", o.batchSize, true) ?? 8;
  const valFraction = o.valFraction !== undefined ? Number(o.valFraction) : 0.2;
  if (!(valFraction >= 0 && valFraction < 1)) throw new ValueError(`--val-fraction must be in [0, 1), got ${JSON.stringify(o.valFraction)}`);
  let steps = num("steps", o.steps, true);
  if (steps === undefined) {
    // --epochs (default 1) over the training split.
    const epochs = num("epochs", o.epochs) ?? 1;
    const n = Math.round(readRows(o.data).length * (1 - valFraction));
    steps = Math.max(1, Math.ceil((epochs * n) / batch));
  }
  const lora = o.loraR !== undefined
    ? { r: num("lora-r", o.loraR, true), alpha: num("lora-alpha", o.loraAlpha) ?? 2 * num("lora-r", o.loraR, true)!, target_modules: o.loraTargets ? o.loraTargets.split(",").map((s) => s.trim()).filter(Boolean) : null }
    : undefined;
  const flags: Record<string, unknown> = {
    out_dir: o.out ?? `runs/finetune-${basename(o.data).replace(/\.[^.]+$/, "")}`,
    model: { ...model, init_from: o.fromScratch ? null : o.model },
    data: { tokenizer: o.model },
    train: { max_steps: steps, micro_batch_size: batch, log_interval: Math.max(1, Math.floor(steps / 20)) },
    optimizer: { lr: num("lr", o.lr) ?? 5e-5, warmup_steps: Math.min(100, Math.floor(steps / 10)), weight_decay: 0.01, betas: [0.9, 0.999] },
    // Every validation example is scored at the end (the trainer caps batches at what exists).
    eval: { interval: 0, batches: 1_000_000 },
    finetune: {
      task: o.task, data: o.data, val_fraction: valFraction,
      ...(o.textField ? { text_field: o.textField } : {}), ...(o.labelField ? { label_field: o.labelField } : {}),
      ...(o.maxLen ? { max_len: num("max-len", o.maxLen, true) } : {}),
      ...(lora ? { lora } : {}),
    },
  };
  // The file is the base; flags the user typed win over it (steps/lr/... only when given).
  const typed = merge(base, flags);
  if (base.train && o.steps === undefined && o.epochs === undefined && (base.train as Record<string, unknown>).max_steps !== undefined) {
    (typed.train as Record<string, unknown>).max_steps = (base.train as Record<string, unknown>).max_steps;
  }
  if (base.optimizer && o.lr === undefined) typed.optimizer = merge(flags.optimizer as Record<string, unknown>, base.optimizer as Record<string, unknown>);
  return applyOverrides(typed, o.set);
}

export function register(program: Command): void {
  program
    .command("finetune")
    .description("fine-tune a model directory on labelled data: a classifier (classify) or instruction tuning (sft), optionally with LoRA")
    .requiredOption("--model <dir>", "model directory: a run's final/, a checkpoint, or a Hugging Face GPT-2 / BERT directory")
    .requiredOption("--task <task>", "classify | sft")
    .requiredOption("--data <file>", "JSONL (or CSV for classify): {text, label} rows, or {prompt, completion} / {messages} for sft")
    .option("--out <dir>", "run directory (default runs/finetune-<data name>)")
    .option("--config <file>", "base training config (JSON) the flags override")
    .option("--set <key=value...>", "override config keys last, e.g. --set train.grad_accum_steps=2", [])
    .option("--epochs <n>", "passes over the training split (default 1; ignored with --steps)")
    .option("--steps <n>", "optimizer steps")
    .option("--lr <x>", "peak learning rate (default 5e-5)")
    .option("--batch-size <n>", "examples per micro-batch (default 8)")
    .option("--max-len <n>", "tokens per example; longer ones are truncated (default: the model's context)")
    .option("--text-field <name>", "classify: the text column/key (default text)")
    .option("--label-field <name>", "classify: the label column/key (default label)")
    .option("--val-fraction <f>", "held-out fraction for accuracy / F1 / confusion matrix (default 0.2)")
    .option("--lora-r <n>", "train LoRA adapters of rank n instead of every weight")
    .option("--lora-alpha <a>", "LoRA scale numerator (default 2r)")
    .option("--lora-targets <names>", "comma-separated Linear names to adapt (default c_attn for GPT, query,value for BERT)")
    .option("--from-scratch", "random initialisation with the model's architecture (the baseline)", false)
    .option("--resume", "continue from the newest complete checkpoint in --out", false)
    .option("--overwrite", "delete a previous run in --out first", false)
    .option("--allow-config-change", "with --resume: continue although the config changed", false)
    .option("--allow-symlinks", "follow a model.safetensors that links outside --model", false)
    .action(async (o: FinetuneFlags) => {
      const config = validateConfig(finetuneConfig(o), "megalith finetune flags", o.set);
      const { trainer, result } = await runTraining(config, o);
      if (result.stopped) return;
      const task = trainer.task;
      if (task instanceof ClassifyTask && task.lastReport) {
        const r = task.lastReport;
        const file = join(config.out_dir, "eval_results.json");
        writeFileSync(file, JSON.stringify(r, null, 2) + "\n");
        const w = Math.max(6, ...r.labels.map((l) => l.length));
        const lines = [
          `held-out: ${r.examples} examples | accuracy ${r.accuracy.toFixed(4)} | macro-F1 ${r.macro_f1.toFixed(4)}`,
          `confusion (rows: true, columns: predicted):`,
          `  ${"".padEnd(w)} ${r.labels.map((l) => l.padStart(w)).join(" ")}`,
          ...r.confusion.map((row, i) => `  ${r.labels[i]!.padEnd(w)} ${row.map((x) => String(x).padStart(w)).join(" ")}`),
          `written: ${file}`,
        ];
        process.stderr.write(lines.join("\n") + "\n");
      }
    });
}

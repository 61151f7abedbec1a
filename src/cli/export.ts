/**
 * `megalith export --adapter DIR [--model DIR] --merge-lora --out DIR`: folds a LoRA adapter
 * (PEFT's layout: adapter_config.json + adapter_model.safetensors) into its base model and
 * writes a plain model directory, the same files training's final/ holds: model.safetensors,
 * config.json, generation_config.json and the base directory's tokenizer files. The result
 * loads anywhere a model directory does (`megalith sample`, `serve`, HF's from_pretrained)
 * with no LoRA code and no LoRA cost.
 *
 * The output directory is written to a temporary sibling and renamed when complete, so a
 * crash never leaves half a model under --out.
 */
import type { Command } from "commander";
import { copyFileSync, existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { ValueError } from "../core/errors.js";
import { writeDirAtomic } from "../checkpoint/index.js";
import { GPT, isBERTDir, loadBERT, saveBERT, GPT2ForSequenceClassification, BertForSequenceClassification } from "../models/index.js";
import { writeSafetensors } from "../checkpoint/index.js";
import { classifierRecords, classifierConfig, configLabels } from "../train/task_classify.js";
import { writeFileSync } from "node:fs";
import { loadLoRAAdapters, mergeLoRA, readAdapterConfig, type Module } from "../nn/index.js";

/** Tokenizer files a model directory may hold (GPT-2's and BERT's); copied byte for byte. */
const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json"];

/** Options of `exportMergedLoRA` (the command's flags). */
export interface ExportLoRAOptions {
  /** The adapter directory (adapter_config.json + adapter_model.safetensors). */
  adapter: string;
  /** The base model directory. Default: adapter_config.json's base_model_name_or_path. */
  model?: string;
  /** Where the merged model directory goes. */
  out: string;
  /** Replace an existing --out. Default false. */
  force?: boolean;
  /** Follow model files that link outside the model directory. Default false. */
  allowSymlinks?: boolean;
}

/** What `exportMergedLoRA` did. */
export interface ExportLoRAResult {
  /** The base model directory used. */
  model: string;
  /** "gpt2" or "bert". */
  modelType: string;
  /** The merged modules' names. */
  merged: string[];
  /** Tokenizer files copied from the base directory. */
  tokenizerFiles: string[];
}

function _samePath(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return resolve(a) === resolve(b);
  }
}

/** The base directory's config.json fields (bos/eos ids, BERT's extras), or {}. */
function _baseConfig(dir: string): Record<string, unknown> {
  try {
    const raw = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as unknown;
    return raw && typeof raw === "object" && !Array.isArray(raw) ? (raw as Record<string, unknown>) : {};
  } catch {
    return {};  // the loader reports a missing or broken config.json with its own message
  }
}

/** The adapter directory's classifier config.json (written by `megalith finetune`), or null. */
function _classifierConfig(dir: string): Record<string, unknown> | null {
  const c = _baseConfig(dir);
  const arch = (c.architectures as unknown[] | undefined)?.[0];
  return arch === "GPT2ForSequenceClassification" || arch === "BertForSequenceClassification" ? c : null;
}

/**
 * Loads the base model, applies and merges the adapter, and writes the plain model directory.
 * @example
 * await exportMergedLoRA({ adapter: "runs/ft/adapter", model: "models/gpt2", out: "runs/ft/merged" });
 */
export async function exportMergedLoRA(o: ExportLoRAOptions): Promise<ExportLoRAResult> {
  const cfg = readAdapterConfig(o.adapter);
  // A classifier's head (modules_to_save) needs the task model class and its classes: `megalith
  // finetune` writes them as config.json beside the adapter; other SEQ_CLS adapters lack them.
  const headConfig = cfg.task_type === "SEQ_CLS" ? _classifierConfig(o.adapter) : null;
  if (cfg.task_type === "TOKEN_CLS" || cfg.task_type === "QUESTION_ANS" || (cfg.task_type === "SEQ_CLS" && !headConfig)) {
    throw new ValueError(`export: ${join(o.adapter, "adapter_config.json")} is a ${cfg.task_type} adapter (head: ${JSON.stringify(cfg.modules_to_save ?? [])}) ` +
      `without a classifier config.json beside it (architectures GPT2ForSequenceClassification / BertForSequenceClassification and id2label, as \`megalith finetune\` writes); ` +
      "export merges those, and adapters on the base architecture (CAUSAL_LM, FEATURE_EXTRACTION)");
  }
  const model = o.model ?? cfg.base_model_name_or_path;
  if (!model) throw new ValueError(`export: --model is required (${join(o.adapter, "adapter_config.json")} names no base_model_name_or_path)`);
  if (!existsSync(model) || !statSync(model).isDirectory()) {
    throw new ValueError(`export: the base model ${JSON.stringify(model)}${o.model ? "" : " (adapter_config.json's base_model_name_or_path)"} is not a directory here; pass --model DIR`);
  }
  for (const [flag, dir] of [["--model", model], ["--adapter", o.adapter]] as const) {
    if (_samePath(o.out, dir)) throw new ValueError(`export: --out ${JSON.stringify(o.out)} is the ${flag} directory; write the merged model somewhere else`);
  }
  if (existsSync(o.out) && !o.force) throw new ValueError(`export: --out ${JSON.stringify(o.out)} already exists; pass --force to replace it`);

  const base = _baseConfig(model);
  const bert = isBERTDir(model);
  let net: Module;
  let save: (dir: string) => Promise<void>;
  if (bert) {
    const m = await loadBERT(model, { allowSymlinks: o.allowSymlinks ?? false });
    net = m;
    save = (dir) => saveBERT(m, dir, { config: base });
  } else {
    const m = await GPT.fromPretrained(model, { allowSymlinks: o.allowSymlinks ?? false });
    net = m;
    const id = (k: string) => (typeof base[k] === "number" ? (base[k] as number) : undefined);
    save = (dir) => m.savePretrained(dir, { bosTokenId: id("bos_token_id"), eosTokenId: id("eos_token_id") });
  }
  if (headConfig) {
    // The classifier around the base: its head comes from the adapter file (modules_to_save).
    const labels = configLabels(headConfig, join(o.adapter, "config.json"));
    const clf = net instanceof GPT ? new GPT2ForSequenceClassification(net, labels.length) : new BertForSequenceClassification((net as Awaited<ReturnType<typeof loadBERT>>).bert, labels.length);
    const eot = typeof headConfig.pad_token_id === "number" ? headConfig.pad_token_id : undefined;
    net = clf;
    save = async (dir) => {
      await writeSafetensors(join(dir, "model.safetensors"), classifierRecords(clf), { format: "pt" });
      writeFileSync(join(dir, "config.json"), JSON.stringify(classifierConfig(clf, labels, eot), null, 2) + "\n");
    };
  }
  net.eval();
  await loadLoRAAdapters(net, o.adapter, { modelType: bert ? "bert" : "gpt2" });
  const merged = mergeLoRA(net);
  const copied: string[] = [];
  await writeDirAtomic(o.out, async (tmp) => {
    await save(tmp);
    // GPT's writer makes generation_config.json from the ids; anything else keeps the base's.
    const extra = bert && existsSync(join(model, "generation_config.json")) ? ["generation_config.json"] : [];
    for (const f of [...TOKENIZER_FILES, ...extra]) {
      if (!existsSync(join(model, f))) continue;
      copyFileSync(join(model, f), join(tmp, f));
      if (f !== "generation_config.json") copied.push(f);
    }
  });
  return { model, modelType: bert ? "bert" : "gpt2", merged, tokenizerFiles: copied };
}

export function register(program: Command): void {
  program
    .command("export")
    .description("fold a LoRA adapter (PEFT layout) into its base model and write a plain model directory")
    .requiredOption("--adapter <dir>", "adapter directory: adapter_config.json + adapter_model.safetensors")
    .option("--model <dir>", "base model directory (default: adapter_config.json's base_model_name_or_path)")
    .requiredOption("--out <dir>", "where to write the merged model directory")
    .option("--merge-lora", "merge the adapter into the weights (required: the only export there is for now)")
    .option("--force", "replace an existing --out directory")
    .option("--allow-symlinks", "follow a model.safetensors or config.json that links outside the model directory")
    .action(async (o: { adapter: string; model?: string; out: string; mergeLora?: boolean; force?: boolean; allowSymlinks?: boolean }) => {
      if (!o.mergeLora) {
        throw new ValueError("export: --merge-lora is required for now: export writes a plain model directory with the adapter folded into the weights " +
          "(to use the adapter unmerged, load it with loadLoRAAdapters or point PEFT at the adapter directory)");
      }
      const r = await exportMergedLoRA(o);
      process.stdout.write(`merged ${r.merged.length} LoRA adapter(s) from ${o.adapter} into ${r.model} (${r.modelType}) -> ${o.out}` +
        `${r.tokenizerFiles.length ? ` (tokenizer: ${r.tokenizerFiles.join(", ")})` : " (the base directory has no tokenizer files)"}\n`);
    });
}

/**
 * LoRA adapters on disk in PEFT's layout, so an adapter trained here loads with
 * `PeftModel.from_pretrained(AutoModelFor...("base"), dir)` and one trained with PEFT loads here:
 *
 *   adapter_config.json        PEFT's LoraConfig fields (peft_type "LORA", r, lora_alpha, ...)
 *   adapter_model.safetensors  base_model.model.<HF module path>.lora_A.weight  [r, in]
 *                              base_model.model.<HF module path>.lora_B.weight  [out, r]
 *                              base_model.model.<HF module path>.<param>        modules_to_save
 *
 * Names. PEFT's state dict holds `base_model.model.` + the HF model's own parameter names, with
 * the adapter name ("default") removed. The HF names are those of the task class the adapter was
 * trained on, which is why the task type matters: GPT-2 under CAUSAL_LM is GPT2LMHeadModel
 * (`transformer.h.0.attn.c_attn`), BERT under SEQ_CLS is BertForSequenceClassification
 * (`bert.encoder.layer.0.attention.self.query`, head `classifier`), and under
 * FEATURE_EXTRACTION the bare GPT2Model / BertModel (`h.0.attn.c_attn`, `encoder.layer.0...`).
 * `PeftNaming` maps our module names onto those; the two architectures we have are data in
 * PEFT_NAMINGS, chosen from the model's own module names unless `modelType` says otherwise.
 *
 * modules_to_save (a task head trained in full) are stored as PEFT stores them after stripping
 * its wrapper: PEFT keeps a copy at `<module>.modules_to_save.default.<param>` and saves it as
 * `<module>.<param>` (ModulesToSaveWrapper.adapter_state_dict, then the adapter name removed).
 *
 * Orientation. lora_A is [r, in] and lora_B [out, r] in the file for every base layer type:
 * PEFT builds both as nn.Linear even around HF GPT-2's Conv1D (whose weight is [in, out]); its
 * `fan_in_fan_out: true` only makes it transpose B @ A when merging into a Conv1D weight. Our
 * Linear weights are [out, in], so the adapter tensors are written and read as they are, and
 * adapter_config.json says fan_in_fan_out true for GPT-2 because that is what PEFT needs for
 * HF's GPT-2. Only full weights of Conv1D modules listed in modules_to_save are transposed.
 *
 * Files are written through temporary names and renamed (the tensors first, the config last).
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError, fmtShape } from "../core/errors.js";
import {
  readSafetensors, writeSafetensors, bf16BytesToFloat32, f16BytesToFloat32, type TensorRecord,
} from "../checkpoint/index.js";
import { tensor, type Tensor } from "../tensor/index.js";
import { noGradScope } from "./_deps.js";
import type { Module } from "./module.js";
import { applyLoRA, loraModules, loraTargets, mergeLoRA, validateLoRAConfig, type LoRASummary } from "./lora.js";

/** adapter_config.json: the file name PEFT reads. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
/** adapter_model.safetensors: the file name PEFT reads. */
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";

/** PEFT task types we write (PEFT's TaskType values). */
export type PeftTaskType = "CAUSAL_LM" | "SEQ_CLS" | "FEATURE_EXTRACTION" | "TOKEN_CLS" | "QUESTION_ANS";

/** The HF architectures PEFT_NAMINGS knows (config.json's model_type). */
export type PeftModelType = "gpt2" | "bert";

/** How our module names map onto the HF model PEFT wraps (see the file comment). */
export interface PeftNaming {
  /** HF module path of our module `name` under `task` ("h.0.attn.c_attn" -> "transformer.h.0.attn.c_attn"). */
  hfModuleName(name: string, task: PeftTaskType): string;
  /** Whether our parameter `name` is stored transposed in HF files (a Conv1D weight, [in, out]). */
  isConv1D(paramName: string): boolean;
  /** adapter_config.json's fan_in_fan_out: true where the HF base layers are Conv1D. */
  fanInFanOut: boolean;
}

/**
 * HF names for a body held under `prefix` in the task classes (GPT2LMHeadModel's `transformer.`,
 * BertFor*'s `bert.`): names under `roots` get the prefix, except under FEATURE_EXTRACTION,
 * where PEFT wraps the bare model and the prefix is dropped. Our names may carry the prefix
 * already (our BERT's do).
 */
function _prefixed(prefix: string, roots: RegExp): PeftNaming["hfModuleName"] {
  return (name, task) => {
    const bare = name.startsWith(prefix) && roots.test(name.slice(prefix.length)) ? name.slice(prefix.length) : name;
    if (!roots.test(bare)) return name;   // a head beside the body (lm_head, classifier, cls...)
    return task === "FEATURE_EXTRACTION" ? bare : prefix + bare;
  };
}

/** Our names for the two architectures we have; anything else maps one to one (a custom module). */
export const PEFT_NAMINGS: Readonly<Record<PeftModelType | "identity", PeftNaming>> = {
  gpt2: {
    // GPT2LMHeadModel / GPT2ForSequenceClassification: the body under `transformer.`, heads (lm_head, score) beside it.
    hfModuleName: _prefixed("transformer.", /^(wte|wpe|h|ln_f|drop)(\.|$)/),
    isConv1D: (n) => /(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/.test(n),
    fanInFanOut: true,
  },
  bert: {
    // BertFor*: the body under `bert.`, heads (classifier, cls) beside it.
    hfModuleName: _prefixed("bert.", /^(embeddings|encoder|pooler)(\.|$)/),
    isConv1D: () => false,
    fanInFanOut: false,
  },
  identity: { hfModuleName: (n) => n, isConv1D: () => false, fanInFanOut: false },
};

/** Which architecture a model is, from its module names (nn cannot see the model classes). */
export function detectPeftModelType(model: Module): PeftModelType | null {
  const names = model.namedModules().map(([n]) => n);
  if (names.some((n) => /^(transformer\.)?h\.\d+\.attn$/.test(n))) return "gpt2";
  if (names.some((n) => /^(bert\.)?encoder\.layer\.\d+\.attention\.self$/.test(n))) return "bert";
  return null;
}

function _naming(model: Module, modelType: PeftModelType | undefined): PeftNaming {
  const t = modelType ?? detectPeftModelType(model);
  return t ? PEFT_NAMINGS[t] : PEFT_NAMINGS.identity;
}

/** The fields of adapter_config.json we write and read (PEFT's LoraConfig names). */
export interface PeftLoraConfig {
  peft_type: "LORA";
  task_type: PeftTaskType;
  base_model_name_or_path: string;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[] | string;
  modules_to_save: string[] | null;
  bias: "none";
  fan_in_fan_out: boolean;
  inference_mode: boolean;
  init_lora_weights: boolean;
  use_rslora: boolean;
  use_dora: boolean;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  layers_to_transform: null;
  layers_pattern: null;
  revision: null;
}

/** Options of `saveLoRAAdapters`. */
export interface SaveLoRAOptions {
  /** The base model directory (adapter_config.json's base_model_name_or_path). */
  baseModel: string;
  /** What the adapters were trained as; picks the HF class, hence the names (file comment). */
  taskType: PeftTaskType;
  /** The targetModules the adapters were applied with; must select exactly the adapted modules. */
  targetModules: readonly string[] | string;
  /** The adapters' rank; must equal every adapter's. */
  r: number;
  /** lora_alpha; must equal every adapter's. */
  alpha: number;
  /** lora_dropout. Default 0. */
  dropout?: number;
  /** Modules trained in full beside the adapters (a task head, e.g. ["classifier"]). Default none. */
  modulesToSave?: readonly string[];
  /** The HF architecture, when the module names do not say (detectPeftModelType). */
  modelType?: PeftModelType;
}

/** Writes `value` as JSON to `file` through a temporary name. */
function _writeJson(file: string, value: unknown): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
  renameSync(tmp, file);
}

/** float32 bytes of `t` (transposed first when `transpose`), as a safetensors record. */
function _record(t: Tensor, transpose: boolean): TensorRecord {
  return noGradScope(() => {
    const src = transpose ? t.t() : t.float();                 // a view / an alias: read, then release the handle
    const data = Float32Array.from(src.data() as Float32Array);
    const shape = [...src.shape];
    src.dispose();
    return { dtype: "F32", shape, data: new Uint8Array(data.buffer) };
  });
}

/** Whether module `name` is one of `modulesToSave` (PEFT's rule: the name ends with an entry). */
function _isSaved(name: string, modulesToSave: readonly string[]): boolean {
  return name !== "" && modulesToSave.some((s) => name === s || name.endsWith(s));
}

/**
 * Writes adapter_config.json and adapter_model.safetensors (PEFT's layout) for the LoRA
 * adapters of `model`, plus the weights of `modulesToSave`.
 * @example
 * applyLoRA(model, { r: 8, alpha: 16, targetModules: ["c_attn"] });
 * // ... train ...
 * await saveLoRAAdapters(model, "runs/ft/adapter", { baseModel: "models/gpt2", taskType: "CAUSAL_LM", targetModules: ["c_attn"], r: 8, alpha: 16 });
 */
export async function saveLoRAAdapters(model: Module, dir: string, opts: SaveLoRAOptions): Promise<PeftLoraConfig> {
  const c = validateLoRAConfig({ r: opts.r, alpha: opts.alpha, dropout: opts.dropout }, "saveLoRAAdapters");
  const adapters = loraModules(model);
  if (adapters.length === 0) throw new ValueError("saveLoRAAdapters: the model has no LoRA adapters (applyLoRA first)");
  for (const [name, m] of adapters) {
    if (m.r !== c.r || m.alpha !== c.alpha || m.lora_dropout.p !== c.dropout) {
      throw new ValueError(`saveLoRAAdapters: ${name} has r=${m.r}, alpha=${m.alpha}, dropout=${m.lora_dropout.p}; the options say r=${c.r}, alpha=${c.alpha}, dropout=${c.dropout}`);
    }
  }
  const naming = _naming(model, opts.modelType);
  // The file must reproduce this model when loaded: targetModules has to select exactly the adapted modules.
  const probe = loraTargets(model, opts.targetModules, (n) => naming.hfModuleName(n, opts.taskType));
  const have = adapters.map(([n]) => n);
  const extra = probe.filter((n) => !have.includes(n)), lacking = have.filter((n) => !probe.includes(n));
  if (extra.length || lacking.length) {
    throw new ValueError(`saveLoRAAdapters: targetModules ${JSON.stringify(opts.targetModules)} would select ${JSON.stringify(extra.slice(0, 4))} (no adapter) ` +
      `and miss ${JSON.stringify(lacking.slice(0, 4))} (adapted); pass the targetModules the adapters were applied with`);
  }
  const save = [...(opts.modulesToSave ?? [])];
  const records: Record<string, TensorRecord> = {};
  for (const [name, m] of adapters) {
    const key = `base_model.model.${naming.hfModuleName(name, opts.taskType)}`;
    records[`${key}.lora_A.weight`] = _record(m.lora_A.weight, false);   // [r, in]
    records[`${key}.lora_B.weight`] = _record(m.lora_B.weight, false);   // [out, r]
  }
  if (save.length) {
    const mods = model.namedModules().filter(([n]) => _isSaved(n, save));
    const missing = save.filter((s) => !mods.some(([n]) => n === s || n.endsWith(s)));
    if (missing.length) throw new ValueError(`saveLoRAAdapters: modulesToSave ${JSON.stringify(missing)} match no module of this model`);
    for (const [mod, m] of mods) {
      for (const [local, p] of m.namedParameters()) {
        const full = `${mod}.${local}`;
        records[`base_model.model.${naming.hfModuleName(mod, opts.taskType)}.${local}`] = _record(p, naming.isConv1D(full));
      }
    }
  }
  const config: PeftLoraConfig = {
    peft_type: "LORA",
    task_type: opts.taskType,
    base_model_name_or_path: opts.baseModel,
    r: c.r,
    lora_alpha: c.alpha,
    lora_dropout: c.dropout,
    target_modules: typeof opts.targetModules === "string" ? opts.targetModules : [...opts.targetModules],
    modules_to_save: save.length ? save : null,
    bias: "none",
    fan_in_fan_out: naming.fanInFanOut,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: false,
    use_dora: false,
    rank_pattern: {},
    alpha_pattern: {},
    layers_to_transform: null,
    layers_pattern: null,
    revision: null,
  };
  mkdirSync(dir, { recursive: true });
  await writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), records, { format: "pt" });
  _writeJson(join(dir, ADAPTER_CONFIG_FILE), config);
  return config;
}

/**
 * Reads and checks dir/adapter_config.json: a LoRA adapter in the features we implement
 * (no DoRA, rsLoRA, per-layer ranks or trained biases); errors name the file and the field.
 * @example
 * const cfg = readAdapterConfig("runs/ft/adapter");   // cfg.base_model_name_or_path, cfg.r, ...
 */
export function readAdapterConfig(dir: string): PeftLoraConfig {
  const file = join(dir, ADAPTER_CONFIG_FILE);
  if (!existsSync(file)) throw new FormatError(file, "not found: an adapter directory needs adapter_config.json and adapter_model.safetensors (PEFT's layout)");
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new FormatError(file, `not valid JSON (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new FormatError(file, "must hold a JSON object");
  const bad = (k: string, want: string) => new FormatError(file, `${k} must be ${want}, got ${JSON.stringify(raw[k])}`);
  if (raw.peft_type !== "LORA") throw bad("peft_type", "\"LORA\" (only LoRA adapters are supported)");
  if (raw.bias !== undefined && raw.bias !== "none") throw bad("bias", "\"none\" (trained biases are not supported)");
  if (raw.use_dora) throw bad("use_dora", "false (DoRA is not supported)");
  if (raw.use_rslora) throw bad("use_rslora", "false (rank-stabilised scaling is not supported)");
  for (const k of ["rank_pattern", "alpha_pattern"]) {
    const v = raw[k];
    if (v !== undefined && v !== null && (typeof v !== "object" || Object.keys(v).length > 0)) throw bad(k, "empty (per-module ranks are not supported)");
  }
  for (const k of ["layers_to_transform", "layers_pattern"]) if (raw[k] !== undefined && raw[k] !== null) throw bad(k, "null (layer selection is not supported)");
  const tm = raw.target_modules;
  if (!(typeof tm === "string" && tm !== "") && !(Array.isArray(tm) && tm.length > 0 && tm.every((x) => typeof x === "string"))) {
    throw bad("target_modules", "a non-empty list of module names or a regular expression");
  }
  const mts = raw.modules_to_save;
  if (mts !== undefined && mts !== null && !(Array.isArray(mts) && mts.every((x) => typeof x === "string"))) throw bad("modules_to_save", "null or a list of module names");
  try {
    validateLoRAConfig({ r: raw.r as number, alpha: raw.lora_alpha as number, dropout: (raw.lora_dropout as number | undefined) ?? 0 }, "adapter_config.json");
  } catch (e) {
    throw new FormatError(file, (e as Error).message.replace("alpha", "lora_alpha").replace("dropout", "lora_dropout"));
  }
  return {
    ...(raw as unknown as PeftLoraConfig),
    lora_dropout: (raw.lora_dropout as number | undefined) ?? 0,
    modules_to_save: (mts as string[] | null | undefined) ?? null,
    task_type: ((raw.task_type as PeftTaskType | undefined | null) ?? "FEATURE_EXTRACTION"),
    base_model_name_or_path: typeof raw.base_model_name_or_path === "string" ? raw.base_model_name_or_path : "",
    fan_in_fan_out: raw.fan_in_fan_out === true,
  };
}

function _toFloat32(name: string, r: TensorRecord, file: string): Float32Array {
  switch (r.dtype) {
    case "F32": {
      const copy = new Uint8Array(r.data.byteLength);
      copy.set(r.data);
      return new Float32Array(copy.buffer);
    }
    case "BF16": return bf16BytesToFloat32(r.data);
    case "F16": return f16BytesToFloat32(r.data);
    default: throw new FormatError(file, `tensor ${name} has dtype ${r.dtype}; expected F32, BF16 or F16`);
  }
}

/** Options of `loadLoRAAdapters`. */
export interface LoadLoRAOptions {
  /** The HF architecture, when the module names do not say (detectPeftModelType). */
  modelType?: PeftModelType;
  /** Seed for the A initialisation before the file's values replace it (irrelevant to the result). Default 1337. */
  seed?: number;
}

/**
 * Applies LoRA to `model` as dir/adapter_config.json says, then loads dir/adapter_model.safetensors
 * into the adapters and the modules to save. On an error (a tensor missing, a shape that does
 * not fit this base model, a tensor the model has no place for) the model is left as it was.
 * @example
 * const model = await loadGPT("models/gpt2");
 * const { config } = await loadLoRAAdapters(model, "runs/ft/adapter");
 * mergeLoRA(model);                                    // a plain model again, adapters folded in
 */
export async function loadLoRAAdapters(model: Module, dir: string, opts: LoadLoRAOptions = {}): Promise<{ config: PeftLoraConfig; summary: LoRASummary }> {
  const config = readAdapterConfig(dir);
  const file = join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(file)) {
    const bin = existsSync(join(dir, "adapter_model.bin")) ? " (adapter_model.bin is a pickle file, which is never read; re-save it with safe_serialization=True)" : "";
    throw new FormatError(file, `not found${bin}`);
  }
  const { tensors } = await readSafetensors(file);
  const naming = _naming(model, opts.modelType);
  const task = config.task_type;
  const hf = (n: string) => naming.hfModuleName(n, task);
  const flags = new Map(model.parameters().map((p) => [p, p.requiresGrad] as const));
  const summary = applyLoRA(model, {
    r: config.r, alpha: config.lora_alpha, dropout: config.lora_dropout, targetModules: config.target_modules,
    modulesToSave: config.modules_to_save ?? [], seed: opts.seed, aliases: hf,
  });
  try {
    // Plan every copy first: nothing is written into the model unless the whole file fits.
    const plan: Array<{ dst: Tensor; key: string; shape: number[]; transpose: boolean }> = [];
    for (const [name, m] of loraModules(model)) {
      const key = `base_model.model.${hf(name)}`;
      plan.push({ dst: m.lora_A.weight, key: `${key}.lora_A.weight`, shape: [...m.lora_A.weight.shape], transpose: false });
      plan.push({ dst: m.lora_B.weight, key: `${key}.lora_B.weight`, shape: [...m.lora_B.weight.shape], transpose: false });
    }
    const save = config.modules_to_save ?? [];
    for (const [mod, m] of model.namedModules().filter(([n]) => _isSaved(n, save))) {
      for (const [local, p] of m.namedParameters()) {
        const t = naming.isConv1D(`${mod}.${local}`);
        plan.push({ dst: p, key: `base_model.model.${hf(mod)}.${local}`, shape: t ? [p.shape[1]!, p.shape[0]!] : [...p.shape], transpose: t });
      }
    }
    const missing = plan.filter((e) => !tensors.has(e.key)).map((e) => e.key);
    if (missing.length) {
      throw new FormatError(file, `missing ${missing.length} tensor(s) this model needs: ${JSON.stringify(missing.slice(0, 6))}${missing.length > 6 ? "..." : ""}; ` +
        `file has ${JSON.stringify([...tensors.keys()].slice(0, 4))}... (was the adapter saved for another architecture or task_type than ${JSON.stringify(task)}?)`);
    }
    const planned = new Set(plan.map((e) => e.key));
    const unexpected = [...tensors.keys()].filter((k) => !planned.has(k));
    if (unexpected.length) {
      throw new FormatError(file, `${unexpected.length} tensor(s) have no place in this model: ${JSON.stringify(unexpected.slice(0, 6))}${unexpected.length > 6 ? "..." : ""}`);
    }
    for (const e of plan) {
      const rec = tensors.get(e.key)!;
      if (rec.shape.length !== e.shape.length || rec.shape.some((s, i) => s !== e.shape[i])) {
        throw new FormatError(file, `tensor ${e.key} has shape ${fmtShape(rec.shape)}, this base model needs ${fmtShape(e.shape)} ` +
          `(r=${config.r}); was the adapter trained on a base model of another size?`);
      }
    }
    noGradScope(() => {
      for (const e of plan) {
        const t = tensor(_toFloat32(e.key, tensors.get(e.key)!, file), { shape: e.shape });
        const src = e.transpose ? t.t() : t;
        e.dst.copy_(src);
        if (src !== t) src.dispose();
        t.dispose();
      }
    });
  } catch (err) {
    // B is still zero everywhere, so merging puts back exactly the base weights.
    mergeLoRA(model);
    for (const [p, f] of flags) p.requiresGrad = f;
    throw err;
  }
  return { config, summary };
}

/**
 * What the fine-tuning tasks share: LoRA from `finetune.lora`, loading and writing tensors by
 * their module names, and the PEFT adapter directory.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { FormatError } from "../core/errors.js";
import { applyLoRA, saveLoRAAdapters, type Module, type PeftTaskType } from "../nn/index.js";
import { readSafetensors, type TensorRecord } from "../checkpoint/index.js";
import { tensor } from "../tensor/index.js";
import { noGrad } from "../autograd/index.js";
import { recordToFloat32 } from "../models/_shared/weights_io.js";
import type { TrainConfig } from "./config.js";

/** The LoRA settings a run applied (for the adapter files). */
export interface LoRAInfo {
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[];
  modulesToSave: string[];
}

/** PEFT's defaults per architecture: the attention projections. */
const DEFAULT_TARGETS = { gpt: ["c_attn"], bert: ["query", "value"] } as const;

/**
 * Applies `finetune.lora` to a task model: adapters on the target Linears, everything else
 * frozen except the task head (`modulesToSave`: score / classifier; none for SFT).
 */
export function applyFinetuneLoRA(
  model: Module, lora: NonNullable<NonNullable<TrainConfig["finetune"]>["lora"]>, arch: "gpt" | "bert", seed: number, say: (m: string) => void,
  modulesToSave: string[] = arch === "gpt" ? ["score"] : ["classifier"],
): LoRAInfo {
  const targetModules = lora.target_modules ?? [...DEFAULT_TARGETS[arch]];
  const saved = modulesToSave.filter((m) => model.namedModules().some(([n]) => n === m));
  const s = applyLoRA(model, { r: lora.r, alpha: lora.alpha, dropout: lora.dropout, targetModules, modulesToSave: saved, seed });
  say(`lora: r=${lora.r} alpha=${lora.alpha} on ${s.adapters.length} modules (${targetModules.join(", ")})${saved.length ? ` + ${saved.join(", ")}` : ""}: ` +
    `${s.trainable.toLocaleString("en-US")} of ${s.total.toLocaleString("en-US")} parameters train (${((100 * s.trainable) / s.total).toFixed(3)}%)`);
  return { r: lora.r, alpha: lora.alpha, dropout: lora.dropout, targetModules, modulesToSave: saved };
}

/** Writes adapter_config.json + adapter_model.safetensors (PEFT's layout) into `dir`. */
export async function saveAdapters(model: Module, dir: string, l: LoRAInfo, o: { baseModel: string; taskType: PeftTaskType }): Promise<void> {
  await saveLoRAAdapters(model, dir, {
    baseModel: o.baseModel, taskType: o.taskType, targetModules: l.targetModules, r: l.r, alpha: l.alpha, dropout: l.dropout, modulesToSave: l.modulesToSave,
  });
}

/** The float32 records of the model's parameters whose names pass `keep` (names as in the model). */
export function tensorRecords(model: Module, keep: (name: string) => boolean): Record<string, TensorRecord> {
  const out: Record<string, TensorRecord> = {};
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      if (!keep(name)) continue;
      const f = p.dtype === "float32" ? p.alias() : p.to("float32");
      const data = Float32Array.from(f.data() as Float32Array);
      f.dispose();
      out[name] = { dtype: "F32", shape: [...p.shape], data: new Uint8Array(data.buffer) };
    }
  });
  return out;
}

/**
 * Copies the tensors of `dir/model.safetensors` whose names pass `only` into the parameters of
 * the same names. Missing ones are an error unless `optional` (a head a base model lacks).
 */
export async function loadNamedTensors(model: Module, dir: string, o: { only: (name: string) => boolean; optional?: boolean }): Promise<string[]> {
  const file = join(dir, "model.safetensors");
  if (!existsSync(file)) throw new FormatError(file, "not found");
  const { tensors } = await readSafetensors(file);
  const loaded: string[] = [];
  const own = model.namedParameters().filter(([n]) => o.only(n));
  noGrad(() => {
    for (const [name, p] of own) {
      const rec = tensors.get(name);
      if (!rec) continue;
      if (rec.shape.length !== p.ndim || rec.shape.some((s, i) => s !== p.shape[i])) {
        throw new FormatError(file, `tensor ${name} has shape [${rec.shape.join(", ")}], the model's is [${p.shape.join(", ")}] (a different number of classes or sizes?)`);
      }
      const t = tensor(recordToFloat32(name, rec, file), { shape: [...p.shape] });
      p.copy_(t);
      t.dispose();
      loaded.push(name);
    }
  });
  const missing = own.map(([n]) => n).filter((n) => !loaded.includes(n));
  if (missing.length && !o.optional) throw new FormatError(file, `missing tensors ${JSON.stringify(missing.slice(0, 8))}`);
  return loaded;
}

/**
 * The vocabulary a GPT is built with for fine-tuning: `v` rounded up to a multiple of 64 (GPT-2's
 * 50257 becomes 50304, nanoGPT's padding: the LM-head GEMM runs on aligned rows). The padding
 * rows start at zero and no target ever names them; exports cut them off (`unpadVocab`).
 */
export function paddedVocab(v: number): number {
  return Math.ceil(v / 64) * 64;
}

/** The records with the token embedding (`key`) cut back to its first `v` rows. */
export function unpadVocab(records: Record<string, TensorRecord>, v: number, key: string): Record<string, TensorRecord> {
  const r = records[key];
  if (!r || r.shape[0] === v) return records;
  const C = r.shape[1]!;
  const bytes = r.data.subarray(0, v * C * 4);
  return { ...records, [key]: { ...r, shape: [v, C], data: bytes } };
}

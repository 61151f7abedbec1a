/**
 * Hugging Face BERT directories: config.json + model.safetensors with BertForPreTraining names.
 *
 * Every tensor keeps its HF name and layout (HF's BERT uses nn.Linear [out, in], as we do), so
 * nothing is transposed. The MLM decoder is tied to the word embeddings: we write neither
 * `cls.predictions.decoder.weight` nor `cls.predictions.decoder.bias` (the bias is
 * `cls.predictions.bias`), which is what HF's own safetensors save_pretrained writes for tied
 * weights, and HF re-ties them on load. On load both are accepted and ignored, as are the
 * `embeddings.position_ids` / `token_type_ids` buffers older HF checkpoints carry, and TF-era
 * `LayerNorm.gamma/beta` names map to `weight/bias`.
 *
 * A checkpoint written by HF's BertModel (names without the `bert.` prefix, no heads) or
 * BertForMaskedLM (no pooler, no NSP head) loads too: the encoder must be complete, and the
 * pooler and heads it lacks keep their fresh initialisation and are reported.
 */
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError, fmtShape } from "../../core/errors.js";
import { readSafetensors, writeSafetensors, type TensorRecord } from "../../checkpoint/index.js";
import {
  checkInsideDir, warnNonFinite, hasNonFinite, recordToFloat32, readConfigJson, writeJsonFile, type LoadWeightsOptions,
} from "../_shared/weights_io.js";
import { tensor, noGrad } from "./_deps.js";
import { BertForPreTraining, resolveBERTConfig, type BERTConfig, type BERTOptions } from "./model.js";

/** Tensors HF checkpoints may carry that are not parameters here (tied copies, buffers). */
const IGNORED = /^(bert\.)?(cls\.predictions\.decoder\.(weight|bias)|embeddings\.(position_ids|token_type_ids))$/;
/** Parameters a checkpoint may lack (BertModel without pooler, BertForMaskedLM, ...): they keep their init. */
const OPTIONAL = /^(bert\.pooler\.|cls\.)/;

/** Whether `dir` holds a BERT model directory (config.json with model_type "bert"). Never throws. */
export function isBERTDir(dir: string): boolean {
  try {
    return readConfigJson(dir).raw.model_type === "bert";
  } catch {
    return false;
  }
}

/**
 * Reads config.json (HF BertConfig field names) into a BERTConfig, with errors naming the file
 * and field. hidden_act must be "gelu" (exact GELU, the only activation this model has) and
 * position_embedding_type "absolute" when present.
 * @example
 * const cfg = readBERTConfig("runs/bert/final");   // { nLayer: 2, nHead: 4, nEmbd: 32, ... }
 */
export function readBERTConfig(dir: string): BERTConfig {
  const { file, raw } = readConfigJson(dir);
  if (raw.model_type !== undefined && raw.model_type !== "bert") throw new FormatError(file, `model_type must be "bert", got ${JSON.stringify(raw.model_type)}`);
  const int = (k: string, fallback?: number): number => {
    const v = raw[k] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw new FormatError(file, `${k} must be a positive integer, got ${JSON.stringify(raw[k])}`);
    return v;
  };
  const num = (k: string, fallback: number): number => {
    const v = raw[k] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) throw new FormatError(file, `${k} must be a number, got ${JSON.stringify(raw[k])}`);
    return v;
  };
  const act = raw.hidden_act ?? "gelu";
  if (act !== "gelu") throw new FormatError(file, `hidden_act must be "gelu" (exact GELU), got ${JSON.stringify(act)}`);
  const posType = raw.position_embedding_type ?? "absolute";
  if (posType !== "absolute") throw new FormatError(file, `position_embedding_type must be "absolute", got ${JSON.stringify(posType)}`);
  if (raw.pad_token_id !== undefined && raw.pad_token_id !== null && typeof raw.pad_token_id !== "number") {
    throw new FormatError(file, `pad_token_id must be an integer or null, got ${JSON.stringify(raw.pad_token_id)}`);
  }
  const hidden = int("hidden_size");
  const cfg: BERTConfig = {
    nLayer: int("num_hidden_layers"),
    nHead: int("num_attention_heads"),
    nEmbd: hidden,
    intermediateSize: int("intermediate_size", 4 * hidden),
    maxPositions: int("max_position_embeddings"),
    vocabSize: int("vocab_size"),
    typeVocabSize: int("type_vocab_size", 2),
    dropout: num("hidden_dropout_prob", 0),
    attentionDropout: num("attention_probs_dropout_prob", num("hidden_dropout_prob", 0)),
    layerNormEpsilon: num("layer_norm_eps", 1e-12),
    padTokenId: raw.pad_token_id === undefined ? 0 : (raw.pad_token_id as number | null),
    initializerRange: num("initializer_range", 0.02),
  };
  try {
    resolveBERTConfig(cfg);
  } catch (e) {
    throw new FormatError(file, (e as Error).message);
  }
  return cfg;
}

/**
 * HF config.json fields for a BERT config (BertForPreTraining, float32). `extra` fields are
 * merged in last (e.g. a tokenizer's `tokenizer_class`).
 * @example
 * writeFileSync("config.json", JSON.stringify(hfBertConfig(model.config), null, 2));
 */
export function hfBertConfig(c: BERTConfig, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const r = resolveBERTConfig(c);
  return {
    architectures: ["BertForPreTraining"],
    model_type: "bert",
    hidden_size: r.nEmbd,
    num_hidden_layers: r.nLayer,
    num_attention_heads: r.nHead,
    intermediate_size: r.intermediateSize,
    hidden_act: "gelu",
    hidden_dropout_prob: r.dropout,
    attention_probs_dropout_prob: r.attentionDropout,
    max_position_embeddings: r.maxPositions,
    type_vocab_size: r.typeVocabSize,
    vocab_size: r.vocabSize,
    layer_norm_eps: r.layerNormEpsilon,
    pad_token_id: r.padTokenId,
    initializer_range: r.initializerRange,
    position_embedding_type: "absolute",
    tie_word_embeddings: true,
    torch_dtype: "float32",
    ...extra,
  };
}

/** The model's parameters as float32 safetensors records under their HF names (no tied decoder copy). */
export function bertToRecords(model: BertForPreTraining): Record<string, TensorRecord> {
  const out: Record<string, TensorRecord> = {};
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      const f = p.dtype === "float32" ? p.alias() : p.to("float32");
      const data = Float32Array.from(f.data() as Float32Array);
      f.dispose();
      out[name] = { dtype: "F32", shape: [...p.shape], data: new Uint8Array(data.buffer) };
    }
  });
  return out;
}

/** Options of `saveBERT()`. */
export interface SaveBERTOptions {
  /** Extra config.json fields, merged over the model's (see hfBertConfig). Default none. */
  config?: Record<string, unknown>;
}

/**
 * Writes config.json and model.safetensors (HF BertForPreTraining names, float32), each through
 * a temporary name renamed when complete.
 * @example
 * await saveBERT(model, "runs/bert/final");
 */
export async function saveBERT(model: BertForPreTraining, dir: string, opts: SaveBERTOptions = {}): Promise<void> {
  if (!dir) throw new ValueError("saveBERT: a directory is required");
  mkdirSync(dir, { recursive: true });
  await writeSafetensors(join(dir, "model.safetensors"), bertToRecords(model), { format: "pt" });
  writeJsonFile(dir, "config.json", hfBertConfig(model.config, opts.config ?? {}));
}

/** Options for loading BERT weights. */
export interface BERTLoadOptions extends LoadWeightsOptions {
  /**
   * Called with the parameters the checkpoint lacks (pooler, MLM or NSP head), which keep their
   * fresh initialisation. Default: a `megalith: warning:` line on stderr naming them.
   */
  onNewlyInitialized?: (file: string, names: string[]) => void;
}

/** What a load found. */
export interface BERTLoadReport {
  /** Parameters absent from the checkpoint, left at their initialisation. */
  newlyInitialized: string[];
  /** Checkpoint tensors skipped on purpose (tied decoder copies, position-id buffers). */
  ignored: string[];
}

/**
 * Loads a BertForPreTraining from a Hugging Face style directory (config.json + model.safetensors).
 * @example
 * const model = await loadBERT("runs/bert/final");
 */
export async function loadBERT(dir: string, opts: BERTOptions & BERTLoadOptions = {}): Promise<BertForPreTraining> {
  checkInsideDir(join(dir, "config.json"), dir, opts.allowSymlinks);
  const model = new BertForPreTraining(readBERTConfig(dir), opts);
  await loadBERTWeights(model, dir, opts);
  return model;
}

/** `name` with HF's legacy spellings normalised and the `bert.` prefix added where a bare BertModel left it out. */
function _ourName(raw: string): string {
  let n = raw.replace(/\.LayerNorm\.gamma$/, ".LayerNorm.weight").replace(/\.LayerNorm\.beta$/, ".LayerNorm.bias");
  if (/^(embeddings|encoder|pooler)\./.test(n)) n = `bert.${n}`;
  return n;
}

/**
 * Copies `dir`/model.safetensors into an existing model of the same config. The embeddings and
 * encoder must all be present; a missing pooler or head keeps its initialisation and is
 * reported (BERTLoadOptions.onNewlyInitialized). A tensor whose shape differs from the model's
 * is refused, naming it; so is a tensor this model has no place for. A model.safetensors
 * linking outside `dir` is refused (allowSymlinks); NaN/Inf tensors are reported (onNonFinite).
 * @example
 * const report = await loadBERTWeights(model, "hf/bert-base-uncased");   // report.newlyInitialized
 */
export async function loadBERTWeights(model: BertForPreTraining, dir: string, opts: BERTLoadOptions = {}): Promise<BERTLoadReport> {
  const file = join(dir, "model.safetensors");
  if (!existsSync(file)) throw new FormatError(file, "not found");
  checkInsideDir(file, dir, opts.allowSymlinks);
  const { tensors } = await readSafetensors(file);
  const own = new Map(model.namedParameters());
  const seen = new Set<string>(), unexpected: string[] = [], ignored: string[] = [], nonFinite: string[] = [];
  noGrad(() => {
    for (const [rawName, rec] of tensors) {
      if (opts.skip?.(rawName)) continue;
      if (IGNORED.test(rawName)) {
        ignored.push(rawName);
        continue;
      }
      const name = _ourName(rawName);
      const p = own.get(name);
      if (!p) {
        unexpected.push(rawName);
        continue;
      }
      if (seen.has(name)) throw new FormatError(file, `tensor ${name} appears twice (as ${rawName} and another spelling)`);
      if (rec.shape.length !== p.ndim || rec.shape.some((s, i) => s !== p.shape[i])) {
        throw new FormatError(file, `tensor ${rawName} has shape ${fmtShape(rec.shape)}, expected ${fmtShape(p.shape)} for this config`);
      }
      const values = recordToFloat32(rawName, rec, file);
      if (hasNonFinite(values)) nonFinite.push(rawName);
      const t = tensor(values, { shape: [...p.shape] });
      p.copy_(t);
      t.dispose();
      seen.add(name);
    }
  });
  const missing = [...own.keys()].filter((k) => !seen.has(k));
  const required = missing.filter((k) => !OPTIONAL.test(k));
  if (required.length || unexpected.length) {
    throw new FormatError(file, `weights do not match the config: missing ${JSON.stringify(required.slice(0, 8))}${required.length > 8 ? "..." : ""}, ` +
      `unexpected ${JSON.stringify(unexpected.slice(0, 8))}${unexpected.length > 8 ? "..." : ""}`);
  }
  if (nonFinite.length) (opts.onNonFinite ?? warnNonFinite)(file, nonFinite);
  if (missing.length) (opts.onNewlyInitialized ?? _warnNewlyInitialized)(file, missing);
  return { newlyInitialized: missing, ignored };
}

function _warnNewlyInitialized(file: string, names: string[]): void {
  process.stderr.write(`megalith: warning: ${file} has no weights for ${names.length} parameter(s), which keep their initialisation: ` +
    `${names.slice(0, 8).join(", ")}${names.length > 8 ? ", ..." : ""} (a checkpoint without the pooler or pre-training heads; train them before use)\n`);
}

/**
 * Hugging Face GPT-2 directories: config.json + model.safetensors.
 *
 * HF stores the four projection matrices of each block as Conv1D weights [in, out]; Megalith's
 * Linear is [out, in] like nn.Linear, so those four are transposed on the way in and out.
 * Names may carry HF's `transformer.` prefix; the causal-mask buffers `h.N.attn.bias` /
 * `h.N.attn.masked_bias` and the tied `lm_head.weight` are accepted and ignored.
 */
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError, fmtShape } from "../../core/errors.js";
import { readSafetensors, writeSafetensors, type TensorRecord } from "../../checkpoint/index.js";
import {
  checkInsideDir, warnNonFinite, hasNonFinite, recordToFloat32 as toFloat32, readConfigJson, writeJsonFile, type LoadWeightsOptions,
} from "../_shared/weights_io.js";
import { tensor, noGrad, type Tensor } from "./_deps.js";
import { GPT, type GPTConfig, type GPTMoEConfig, type GPTOptions, resolveGPTConfig } from "./model.js";

const CONV1D = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;
const IGNORED = /^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$/;

/** Reads config.json into a GPTConfig (HF field names), with errors naming the file and field. */
export function readGPTConfig(dir: string): GPTConfig {
  const { file, raw } = readConfigJson(dir);
  const int = (k: string, fallback?: string): number => {
    const v = raw[k] ?? (fallback ? raw[fallback] : undefined);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw new FormatError(file, `${k} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const cfg: GPTConfig = {
    nLayer: int("n_layer"),
    nHead: int("n_head"),
    nEmbd: int("n_embd"),
    blockSize: int("n_positions", "n_ctx"),
    vocabSize: int("vocab_size"),
    layerNormEpsilon: typeof raw.layer_norm_epsilon === "number" ? raw.layer_norm_epsilon : 1e-5,
    bias: raw.bias === false ? false : true,
    dropout: 0,
    moe: readMoEConfig(raw),
  };
  try {
    resolveGPTConfig(cfg);
  } catch (e) {
    throw new FormatError(file, (e as Error).message);
  }
  return cfg;
}

/**
 * The MoE fields of config.json (Mixtral's names where it has one; resolveGPTConfig checks the
 * values), or null for a dense model. Experts' tensors are `h.{i}.mlp.experts.{j}.c_fc.weight`
 * etc. in nn.Linear [out, in] layout (Mixtral's), the router `h.{i}.mlp.gate.weight`.
 */
function readMoEConfig(raw: Record<string, unknown>): GPTMoEConfig | null {
  if (raw.num_local_experts === undefined || raw.num_local_experts === null) return null;
  const num = (k: string) => (typeof raw[k] === "number" ? raw[k] : undefined);
  return {
    numExperts: raw.num_local_experts as number, topK: raw.num_experts_per_tok as 1 | 2,
    capacityFactor: num("moe_capacity_factor"), evalCapacityFactor: num("moe_eval_capacity_factor"),
    auxLossCoef: num("router_aux_loss_coef"), zLossCoef: num("router_z_loss_coef"), every: num("moe_layer_frequency"),
    routerJitter: num("router_jitter_noise"),
  };
}

/** config.json fields for a resolved MoE section (see readMoEConfig). */
function moeFields(m: Required<GPTMoEConfig> | null): Record<string, unknown> {
  if (!m) return {};
  return {
    num_local_experts: m.numExperts, num_experts_per_tok: m.topK, moe_capacity_factor: m.capacityFactor,
    moe_eval_capacity_factor: m.evalCapacityFactor, router_aux_loss_coef: m.auxLossCoef, router_z_loss_coef: m.zLossCoef,
    moe_layer_frequency: m.every, router_jitter_noise: m.routerJitter,
  };
}

export type { LoadWeightsOptions } from "../_shared/weights_io.js";

/**
 * Loads a GPT from a Hugging Face style directory.
 * @example
 * const model = await GPT.fromPretrained("runs/tiny/final");
 */
export async function loadGPT<M extends GPT>(dir: string, opts: GPTOptions & LoadWeightsOptions = {}, make: (c: GPTConfig, o: GPTOptions) => M = (c, o) => new GPT(c, o) as M): Promise<M> {
  checkInsideDir(join(dir, "config.json"), dir, opts.allowSymlinks);
  const config = readGPTConfig(dir);
  const model = make(config, opts);
  await loadGPTWeights(model, dir, opts);
  return model;
}

/**
 * Copies the weights of `dir`/model.safetensors into an existing model of the same shape.
 * A model.safetensors linking outside `dir` is refused (see LoadWeightsOptions.allowSymlinks);
 * tensors holding NaN or Inf are reported (LoadWeightsOptions.onNonFinite).
 */
export async function loadGPTWeights(model: GPT, dir: string, opts: LoadWeightsOptions = {}): Promise<void> {
  const file = join(dir, "model.safetensors");
  if (!existsSync(file)) throw new FormatError(file, "not found");
  checkInsideDir(file, dir, opts.allowSymlinks);
  const { tensors } = await readSafetensors(file);
  const nonFinite: string[] = [];
  const own = new Map(model.namedParameters());
  const seen = new Set<string>();
  const unexpected: string[] = [];
  noGrad(() => {
    for (const [rawName, rec] of tensors) {
      const name = rawName.startsWith("transformer.") ? rawName.slice("transformer.".length) : rawName;
      if (IGNORED.test(name) || opts.skip?.(rawName)) continue;
      const p = own.get(name);
      if (!p) {
        unexpected.push(rawName);
        continue;
      }
      const conv = CONV1D.test(name);
      const want = conv ? [p.shape[1]!, p.shape[0]!] : [...p.shape];
      if (name === "wte.weight" && opts.padVocab && rec.shape.length === 2 && rec.shape[1] === want[1] && rec.shape[0]! < want[0]!) {
        // A padded vocabulary (e.g. GPT-2's 50257 as 50304): the file's rows first, zero rows after.
        const values = toFloat32(rawName, rec, file);
        if (hasNonFinite(values)) nonFinite.push(rawName);
        const padded = new Float32Array(want[0]! * want[1]!);
        padded.set(values);
        const t = tensor(padded, { shape: want });
        p.copy_(t);
        t.dispose();
        seen.add(name);
        continue;
      }
      if (rec.shape.length !== want.length || rec.shape.some((s, i) => s !== want[i])) {
        throw new FormatError(file, `tensor ${rawName} has shape ${fmtShape(rec.shape)}, expected ${fmtShape(want)} for this config`);
      }
      const values = toFloat32(rawName, rec, file);
      if (hasNonFinite(values)) nonFinite.push(rawName);
      const t = tensor(values, { shape: want });
      if (conv) {
        const tt = t.t();
        p.copy_(tt);
        tt.dispose();
      } else p.copy_(t);
      t.dispose();
      seen.add(name);
    }
  });
  const missing = [...own.keys()].filter((k) => !seen.has(k));
  if (missing.length || unexpected.length) {
    throw new FormatError(file, `weights do not match the config: missing ${JSON.stringify(missing.slice(0, 8))}${missing.length > 8 ? "..." : ""}, unexpected ${JSON.stringify(unexpected.slice(0, 8))}`);
  }
  if (nonFinite.length) (opts.onNonFinite ?? warnNonFinite)(file, nonFinite);
}

/** Special token ids recorded in config.json and generation_config.json. */
export interface SpecialTokenIds {
  /** Beginning of sequence. GPT-2 uses its end-of-text token for both. Default 50256. */
  bosTokenId?: number;
  /** End of sequence (generation stops here). Default 50256. */
  eosTokenId?: number;
}

/**
 * HF config.json fields for a GPT config. The bos/eos ids default to GPT-2's 50256; pass the
 * tokenizer's end-of-text id for another vocabulary.
 */
export function hfConfig(c: GPTConfig, ids: SpecialTokenIds = {}): Record<string, unknown> {
  const r = resolveGPTConfig(c);
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    n_layer: r.nLayer,
    n_head: r.nHead,
    n_embd: r.nEmbd,
    n_positions: r.blockSize,
    n_ctx: r.blockSize,
    vocab_size: r.vocabSize,
    layer_norm_epsilon: r.layerNormEpsilon,
    activation_function: "gelu_new",
    resid_pdrop: r.dropout,
    embd_pdrop: r.dropout,
    attn_pdrop: r.dropout,
    bias: r.bias,
    bos_token_id: ids.bosTokenId ?? 50256,
    eos_token_id: ids.eosTokenId ?? 50256,
    tie_word_embeddings: true,
    ...moeFields(r.moe),
  };
}

/**
 * HF generation_config.json: the token ids `generate()` starts and stops with.
 * @example
 * writeFileSync("final/generation_config.json", JSON.stringify(generationConfig({ eosTokenId: 0 }), null, 2));
 */
export function generationConfig(ids: SpecialTokenIds = {}): Record<string, unknown> {
  return { _from_model_config: true, bos_token_id: ids.bosTokenId ?? 50256, eos_token_id: ids.eosTokenId ?? 50256 };
}

/** The model's tensors as safetensors records with HF names and layouts. */
export function gptToRecords(model: GPT): Record<string, TensorRecord> {
  const out: Record<string, TensorRecord> = {};
  noGrad(() => {
    for (const [name, p] of model.namedParameters()) {
      let src: Tensor = p;
      if (CONV1D.test(name)) src = p.t();
      const data = src.data() as Float32Array;
      if (src !== p) src.dispose();
      out[name] = { dtype: "F32", shape: CONV1D.test(name) ? [p.shape[1]!, p.shape[0]!] : [...p.shape], data: new Uint8Array(data.buffer) };
    }
  });
  return out;
}

/**
 * Writes config.json, generation_config.json and model.safetensors (HF GPT-2 names, Conv1D
 * layout). Each file is written to a temporary name and renamed when complete. `ids` are the
 * tokenizer's special tokens (GPT-2's 50256 by default).
 */
export async function saveGPT(model: GPT, dir: string, ids: SpecialTokenIds = {}): Promise<void> {
  if (!dir) throw new ValueError("savePretrained: a directory is required");
  mkdirSync(dir, { recursive: true });
  await writeSafetensors(join(dir, "model.safetensors"), gptToRecords(model), { format: "pt" });
  writeJsonFile(dir, "config.json", hfConfig(model.config, ids));
  writeJsonFile(dir, "generation_config.json", generationConfig(ids));
}

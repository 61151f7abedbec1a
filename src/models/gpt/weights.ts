/**
 * Hugging Face GPT-2 directories: config.json + model.safetensors.
 *
 * HF stores the four projection matrices of each block as Conv1D weights [in, out]; Megalith's
 * Linear is [out, in] like nn.Linear, so those four are transposed on the way in and out.
 * Names may carry HF's `transformer.` prefix; the causal-mask buffers `h.N.attn.bias` /
 * `h.N.attn.masked_bias` and the tied `lm_head.weight` are accepted and ignored.
 */
import { mkdirSync, readFileSync, writeFileSync, renameSync, existsSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError, fmtShape } from "../../core/errors.js";
import { readSafetensors, writeSafetensors, type TensorRecord } from "../../checkpoint/index.js";
import { bf16BytesToFloat32, f16BytesToFloat32 } from "../../checkpoint/_dtype.js";
import { tensor, noGrad, type Tensor } from "./_deps.js";
import { GPT, type GPTConfig, type GPTOptions, resolveGPTConfig } from "./model.js";

const CONV1D = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;
const IGNORED = /^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$/;

/** Reads config.json into a GPTConfig (HF field names), with errors naming the file and field. */
export function readGPTConfig(dir: string): GPTConfig {
  const file = join(dir, "config.json");
  if (!existsSync(file)) throw new FormatError(file, "not found: a model directory needs config.json and model.safetensors");
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new FormatError(file, `not valid JSON (${(e as Error).message})`);
  }
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
  };
  try {
    resolveGPTConfig(cfg);
  } catch (e) {
    throw new FormatError(file, (e as Error).message);
  }
  return cfg;
}

function toFloat32(name: string, r: TensorRecord, file: string): Float32Array {
  const bytes = r.data;
  switch (r.dtype) {
    case "F32": {
      const copy = new Uint8Array(bytes.byteLength);
      copy.set(bytes);
      return new Float32Array(copy.buffer);
    }
    case "BF16": return bf16BytesToFloat32(bytes);
    case "F16": return f16BytesToFloat32(bytes);
    default: throw new FormatError(file, `tensor ${name} has dtype ${r.dtype}; expected F32, BF16 or F16`);
  }
}

/**
 * Loads a GPT from a Hugging Face style directory.
 * @example
 * const model = await GPT.fromPretrained("runs/tiny/final");
 */
export async function loadGPT<M extends GPT>(dir: string, opts: GPTOptions = {}, make: (c: GPTConfig, o: GPTOptions) => M = (c, o) => new GPT(c, o) as M): Promise<M> {
  const config = readGPTConfig(dir);
  const model = make(config, opts);
  await loadGPTWeights(model, dir);
  return model;
}

/** Copies the weights of `dir`/model.safetensors into an existing model of the same shape. */
export async function loadGPTWeights(model: GPT, dir: string): Promise<void> {
  const file = join(dir, "model.safetensors");
  if (!existsSync(file)) throw new FormatError(file, "not found");
  const { tensors } = await readSafetensors(file);
  const own = new Map(model.namedParameters());
  const seen = new Set<string>();
  const unexpected: string[] = [];
  noGrad(() => {
    for (const [rawName, rec] of tensors) {
      const name = rawName.startsWith("transformer.") ? rawName.slice("transformer.".length) : rawName;
      if (IGNORED.test(name)) continue;
      const p = own.get(name);
      if (!p) {
        unexpected.push(rawName);
        continue;
      }
      const conv = CONV1D.test(name);
      const want = conv ? [p.shape[1]!, p.shape[0]!] : [...p.shape];
      if (rec.shape.length !== want.length || rec.shape.some((s, i) => s !== want[i])) {
        throw new FormatError(file, `tensor ${rawName} has shape ${fmtShape(rec.shape)}, expected ${fmtShape(want)} for this config`);
      }
      const t = tensor(toFloat32(rawName, rec, file), { shape: want });
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
}

/** HF config.json fields for a GPT config. */
export function hfConfig(c: GPTConfig): Record<string, unknown> {
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
    bos_token_id: 50256,
    eos_token_id: 50256,
    tie_word_embeddings: true,
  };
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
 * Writes config.json and model.safetensors (HF GPT-2 names, Conv1D layout). Each file is written
 * to a temporary name and renamed when complete.
 */
export async function saveGPT(model: GPT, dir: string): Promise<void> {
  if (!dir) throw new ValueError("savePretrained: a directory is required");
  mkdirSync(dir, { recursive: true });
  await writeSafetensors(join(dir, "model.safetensors"), gptToRecords(model), { format: "pt" });
  const tmp = join(dir, `.config.json.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(hfConfig(model.config), null, 2) + "\n");
  renameSync(tmp, join(dir, "config.json"));
}

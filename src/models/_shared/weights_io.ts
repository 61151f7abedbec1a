/**
 * What every model's Hugging Face directory I/O shares (models/gpt/weights.ts,
 * models/bert/weights.ts): the safety checks on a directory someone else handed over (symlinks
 * leaving it, NaN/Inf weights), record -> float32 conversion, and atomic JSON writes.
 */
import { readFileSync, writeFileSync, renameSync, existsSync, lstatSync, realpathSync } from "node:fs";
import { join, relative, isAbsolute } from "node:path";
import { FormatError, ValueError } from "../../core/errors.js";
import type { TensorRecord } from "../../checkpoint/index.js";
import { bf16BytesToFloat32, f16BytesToFloat32 } from "../../checkpoint/_dtype.js";

/** Options for reading a model directory's weights. */
export interface LoadWeightsOptions {
  /**
   * Follow a model.safetensors (or config.json) that is a symlink resolving outside the model
   * directory. Default false: such a link is refused, so a directory handed over by someone
   * else cannot make us read an arbitrary file. Links that stay inside the directory are fine.
   */
  allowSymlinks?: boolean;
  /**
   * Called with the names of tensors that hold NaN or Inf (a diverged run's export, a corrupted
   * file). Default: a `megalith: warning:` line on stderr naming them. The model still loads.
   */
  onNonFinite?: (file: string, tensors: string[]) => void;
  /**
   * Tensors of the file that belong to something else and are skipped, not refused: e.g. a
   * classification head (`score.weight`) when loading a fine-tuned model's transformer.
   */
  skip?: (name: string) => boolean;
  /**
   * GPT: accept a token embedding with fewer rows than the model's (a vocabulary padded to a
   * multiple of 64 for GEMM speed, as nanoGPT pads GPT-2's 50257 to 50304): the file's rows are
   * copied first and the padding rows are zero. Default false (a row-count mismatch is an error).
   */
  padVocab?: boolean;
}

/** Refuses `file` when it is a symlink that resolves outside `dir` (unless allowed). */
export function checkInsideDir(file: string, dir: string, allow: boolean | undefined): void {
  let st;
  try {
    st = lstatSync(file);
  } catch {
    return;  // missing: the caller reports it
  }
  if (!st.isSymbolicLink() || allow) return;
  const target = realpathSync(file), root = realpathSync(dir);
  const rel = relative(root, target);
  if (rel === "" || rel.startsWith("..") || isAbsolute(rel)) {
    throw new ValueError(`${file} is a symlink to ${target}, outside the model directory ${dir}; refusing to follow it. ` +
      "Copy the file into the directory, or pass --allow-symlinks if you trust the link.");
  }
}

/** The default onNonFinite: one warning line on stderr naming (up to 8 of) the tensors. */
export function warnNonFinite(file: string, names: string[]): void {
  process.stderr.write(`megalith: warning: ${file}: ${names.length} tensor(s) hold NaN or Inf values: ${names.slice(0, 8).join(", ")}${names.length > 8 ? ", ..." : ""}; ` +
    "the model will produce NaN (was it saved from a diverged run?)\n");
}

/** Whether a float32 array holds a NaN or an infinity. */
export function hasNonFinite(x: Float32Array): boolean {
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v - v !== 0) return true;  // NaN - NaN and Inf - Inf are NaN; finite - finite is 0
  }
  return false;
}

/** A floating record's values as float32 (F32 copied, BF16/F16 widened); other dtypes are refused, naming the tensor. */
export function recordToFloat32(name: string, r: TensorRecord, file: string): Float32Array {
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

/** Parses `dir`/config.json, with FormatErrors naming the file (missing, not JSON, not an object). */
export function readConfigJson(dir: string): { file: string; raw: Record<string, unknown> } {
  const file = join(dir, "config.json");
  if (!existsSync(file)) throw new FormatError(file, "not found: a model directory needs config.json and model.safetensors");
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new FormatError(file, `not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new FormatError(file, `expected a JSON object, got ${JSON.stringify(raw)?.slice(0, 40)}`);
  return { file, raw: raw as Record<string, unknown> };
}

/** Writes `value` as JSON to `dir/name` through a temporary name. */
export function writeJsonFile(dir: string, name: string, value: unknown): void {
  const tmp = join(dir, `.${name}.tmp-${process.pid}`);
  writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
  renameSync(tmp, join(dir, name));
}

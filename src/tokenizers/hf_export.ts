/**
 * The tokenizer files of a Hugging Face model directory besides tokenizer.json:
 * `tokenizer_config.json` and `special_tokens_map.json`, in GPT-2's conventions (its
 * end-of-text token is bos, eos and unk; no padding token; no prefix space). With them,
 * `AutoTokenizer.from_pretrained(dir)` and tokenizers.js load an exported directory as they
 * load `gpt2` from the Hub.
 */
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { END_OF_TEXT } from "./byte_level_bpe.js";
import type { Tokenizer } from "./tokenizer.js";

/** Options for the exported tokenizer files. */
export interface HfTokenizerOptions {
  /** The longest sequence the model takes (its block size): `model_max_length`. */
  modelMaxLength: number;
}

/** The end-of-text token's text (what GPT-2 calls `<|endoftext|>`). */
function eotText(tok: Tokenizer): string {
  return tok.idToToken(tok.eotToken) ?? END_OF_TEXT;
}

/**
 * tokenizer_config.json for a byte-level BPE tokenizer, as `transformers` writes it for GPT-2.
 * @example
 * hfTokenizerConfig(loadTokenizer("gpt2"), { modelMaxLength: 1024 }).eos_token // "<|endoftext|>"
 */
export function hfTokenizerConfig(tok: Tokenizer, o: HfTokenizerOptions): Record<string, unknown> {
  const eot = eotText(tok);
  return {
    add_bos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: {
      [String(tok.eotToken)]: { content: eot, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
    },
    bos_token: eot,
    clean_up_tokenization_spaces: false,
    eos_token: eot,
    errors: "replace",
    model_max_length: o.modelMaxLength,
    pad_token: null,
    tokenizer_class: "GPT2Tokenizer",
    unk_token: eot,
  };
}

/** special_tokens_map.json: GPT-2 names its end-of-text token as bos, eos and unk. */
export function hfSpecialTokensMap(tok: Tokenizer): Record<string, string> {
  const eot = eotText(tok);
  return { bos_token: eot, eos_token: eot, unk_token: eot };
}

/**
 * Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir` (each
 * through a temporary name).
 * @example
 * saveHfTokenizer("runs/x/final", tok, { modelMaxLength: 256 });
 */
export function saveHfTokenizer(dir: string, tok: Tokenizer, o: HfTokenizerOptions): void {
  tok.save(join(dir, "tokenizer.json"));
  for (const [name, value] of [["tokenizer_config.json", hfTokenizerConfig(tok, o)], ["special_tokens_map.json", hfSpecialTokensMap(tok)]] as const) {
    const tmp = join(dir, `.${name}.tmp-${process.pid}`);
    writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
    renameSync(tmp, join(dir, name));
  }
}

/**
 * The tokenizer files of a Hugging Face model directory besides tokenizer.json:
 * `tokenizer_config.json` and `special_tokens_map.json`, in GPT-2's conventions for a byte-level
 * BPE (its end-of-text token is bos, eos and unk; no padding token; no prefix space) and in
 * BERT's for a WordPiece (cls, sep, pad, mask, unk; do_lower_case; plus vocab.txt). With them,
 * `AutoTokenizer.from_pretrained(dir)` and tokenizers.js load an exported directory as they
 * load `gpt2` or `bert-base-uncased` from the Hub.
 */
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { END_OF_TEXT } from "./byte_level_bpe.js";
import type { Tokenizer } from "./tokenizer.js";
import { WordPiece } from "./wordpiece.js";

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
  if (tok instanceof WordPiece) return _bertTokenizerConfig(tok, o);
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

/**
 * tokenizer_config.json for a WordPiece, as `transformers` writes it for bert-base-uncased.
 * clean_up_tokenization_spaces is true, as there and as WordPiece.decode() does by default.
 */
function _bertTokenizerConfig(tok: WordPiece, o: HfTokenizerOptions): Record<string, unknown> {
  const { specialTokens, special, normalizer } = tok.model;
  const added: Record<string, unknown> = {};
  for (const [content, id] of [...special].sort((a, b) => a[1] - b[1])) {
    added[String(id)] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  }
  return {
    added_tokens_decoder: added,
    clean_up_tokenization_spaces: true,
    cls_token: specialTokens.cls,
    do_basic_tokenize: true,
    do_lower_case: normalizer?.lowercase ?? false,
    mask_token: specialTokens.mask,
    model_max_length: o.modelMaxLength,
    never_split: null,
    pad_token: specialTokens.pad,
    sep_token: specialTokens.sep,
    strip_accents: normalizer?.stripAccents ?? null,
    tokenize_chinese_chars: normalizer?.handleChineseChars ?? false,
    tokenizer_class: "BertTokenizer",
    unk_token: specialTokens.unk,
  };
}

/** special_tokens_map.json: GPT-2 names its end-of-text token as bos, eos and unk; BERT its five roles. */
export function hfSpecialTokensMap(tok: Tokenizer): Record<string, string> {
  if (tok instanceof WordPiece) {
    const { cls, mask, pad, sep, unk } = tok.model.specialTokens;
    return { cls_token: cls, mask_token: mask, pad_token: pad, sep_token: sep, unk_token: unk };
  }
  const eot = eotText(tok);
  return { bos_token: eot, eos_token: eot, unk_token: eot };
}

/**
 * Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir` (each
 * through a temporary name); for a WordPiece also BERT's vocab.txt.
 * @example
 * saveHfTokenizer("runs/x/final", tok, { modelMaxLength: 256 });
 */
export function saveHfTokenizer(dir: string, tok: Tokenizer, o: HfTokenizerOptions): void {
  tok.save(join(dir, "tokenizer.json"));
  // vocab.txt is for the slow BertTokenizer; tokenizer.json alone is complete, so a vocabulary
  // vocab.txt cannot express (ids with holes) goes without one rather than failing the export.
  if (tok instanceof WordPiece && tok.vocabTxtWritable()) tok.saveVocab(join(dir, "vocab.txt"));
  for (const [name, value] of [["tokenizer_config.json", hfTokenizerConfig(tok, o)], ["special_tokens_map.json", hfSpecialTokensMap(tok)]] as const) {
    const tmp = join(dir, `.${name}.tmp-${process.pid}`);
    writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
    renameSync(tmp, join(dir, name));
  }
}

/**
 * WordPiece, the tokenizer of BERT: text -> BertNormalizer (clean, space out CJK, strip accents,
 * lowercase) -> BertPreTokenizer (whitespace and punctuation split) -> greedy longest-match-first
 * WordPiece inside each word, with "##" marking a piece that continues a word. A word with a
 * piece not in the vocabulary, or longer than `maxInputCharsPerWord` characters, is one [UNK].
 * Ids match Hugging Face tokenizers for the same tokenizer.json (see _bert_normalize.ts for the
 * few places where its Rust and JavaScript implementations differ, and which is followed).
 *
 * `encode()` gives the ids of the text alone (HF's add_special_tokens=false); `encodePair()` and
 * `withSpecialTokens()` add [CLS] / [SEP] and the token type ids, as BERT's post-processor does.
 */
import { FormatError, ValueError } from "../core/errors.js";
import { bertNormalize, forEachBertWord, type BertNormalizerOptions } from "./_bert_normalize.js";
import { PieceCache } from "./_piece_cache.js";
import { SpecialTokenMatcher } from "./_special_tokens.js";
import { writeVocabTxt, writeWordPieceJson } from "./_wordpiece_formats.js";

// BERT's defaults live beside the file readers that use them; they are part of this module's API.
export { BERT_SPECIAL_TOKENS, bertNormalizer, bertWordPieceModel } from "./_wordpiece_formats.js";
import type { EncodeOptions, Tokenizer } from "./tokenizer.js";

/** The token text of each of BERT's special roles. */
export interface WordPieceSpecialTokens {
  /** Padding, "[PAD]". */
  pad: string;
  /** Unknown word, "[UNK]" (the model's unk_token). */
  unk: string;
  /** Start of the input, whose final hidden state classifies it, "[CLS]". */
  cls: string;
  /** End of each segment, "[SEP]"; also `eotToken`. */
  sep: string;
  /** Masked-language-model target, "[MASK]". */
  mask: string;
}

/** Everything a WordPiece tokenizer is made of, as stored in tokenizer.json (or vocab.txt + defaults). */
export interface WordPieceModel {
  /** token -> id: whole-word tokens, "##" continuations, and (in BERT's files) the special tokens. */
  vocab: Map<string, number>;
  /** Special (added) tokens: literal text -> id. Encoded only when allowed; skipped by decode(). */
  special: Map<string, number>;
  /** Which tokens play BERT's special roles. */
  specialTokens: WordPieceSpecialTokens;
  /** Marks a piece that continues a word. Default "##". */
  continuingSubwordPrefix: string;
  /** Longer words (in code points) are [UNK]. Default 100. */
  maxInputCharsPerWord: number;
  /** The BertNormalizer's settings, or null for none. */
  normalizer: BertNormalizerOptions | null;
  /** The WordPiece decoder's `cleanup`: no space before . , ! ? in decoded text. Default true. */
  decoderCleanup: boolean;
}

/** Options of the WordPiece constructor. */
export interface WordPieceOptions {
  /** Name shown in logs. Default "wordpiece". */
  name?: string;
  /** Where the model came from, named in FormatErrors. Default "<memory>". */
  source?: string;
  /** Most words kept in the encode cache before it is emptied. Default 100,000. */
  cacheSize?: number;
}

/** Options of `WordPiece.decode()`. */
export interface WordPieceDecodeOptions {
  /** Leave out special tokens ([CLS], [SEP], [PAD], ...). Default true. */
  skipSpecialTokens?: boolean;
  /**
   * Also remove the spaces before "'s", "n't", " ' " and the like over the whole text, as
   * transformers' `clean_up_tokenization_spaces` (true in BERT's tokenizer_config.json). Default true.
   */
  cleanUpTokenizationSpaces?: boolean;
}

/** Ids of one or two segments with BERT's special tokens, and the segment (token type) of each. */
export interface EncodedPair {
  /** [CLS] A [SEP], or [CLS] A [SEP] B [SEP]. */
  ids: number[];
  /** 0 for [CLS], A and its [SEP]; 1 for B and its [SEP]. Same length as `ids`. */
  typeIds: number[];
}

/** Upper bound on token ids (16M): far above any real vocabulary. */
const MAX_ID = 1 << 24;

/** Words longer than this (in UTF-16 units) are not cached: they rarely repeat. */
const CACHE_MAX_WORD = 64;

/**
 * A WordPiece tokenizer. Usually obtained from `loadTokenizer()` or `trainWordPiece()`.
 * @example
 * const bert = loadTokenizer("bert-base-uncased") as WordPiece;
 * bert.encode("Hello, world!");                 // [7592, 1010, 2088, 999]
 * bert.encodePair("Who?", "Me.").ids;           // [101, 2040, 1029, 102, 2033, 1012, 102]
 * bert.decode(bert.encode("Café au lait"));     // "cafe au lait"
 */
export class WordPiece implements Tokenizer {
  readonly name: string;
  readonly vocabSize: number;
  /** The [SEP] id: it ends every segment, so it is what separates documents in a token stream. */
  readonly eotToken: number;
  /** Id of [PAD]. */
  readonly pad: number;
  /** Id of [UNK]. */
  readonly unk: number;
  /** Id of [CLS]. */
  readonly cls: number;
  /** Id of [SEP]. */
  readonly sep: number;
  /** Id of [MASK]. */
  readonly mask: number;
  /** The model this tokenizer was built from (read-only by convention; used by save()). */
  readonly model: WordPieceModel;

  private readonly tokens: Array<string | undefined>;
  private readonly specialIds: Set<number>;
  private readonly matcher: SpecialTokenMatcher;
  private readonly cache: PieceCache;
  /** Longest vocabulary entry in UTF-16 units: no longer piece is worth looking up. */
  private readonly maxTokenUnits: number;
  private readonly utf8 = new TextEncoder();

  constructor(model: WordPieceModel, options: WordPieceOptions = {}) {
    const source = options.source ?? "<memory>";
    function fail(msg: string): never {
      throw new FormatError(source, msg);
    }
    this.model = model;
    this.name = options.name ?? "wordpiece";
    this.cache = new PieceCache(options.cacheSize ?? 100_000);
    if (model.continuingSubwordPrefix === "") fail('continuing_subword_prefix is empty; WordPiece needs one, such as "##"');
    if (!Number.isInteger(model.maxInputCharsPerWord) || model.maxInputCharsPerWord < 1) {
      fail(`max_input_chars_per_word is ${model.maxInputCharsPerWord}; expected an integer >= 1 (BERT uses 100)`);
    }

    let maxId = -1;
    let maxUnits = 0;
    const byId = new Map<number, string>();
    const claim = (token: string, id: number, what: string) => {
      if (!Number.isInteger(id) || id < 0 || id >= MAX_ID) fail(`${what} ${JSON.stringify(token)} has id ${id}; ids must be integers in [0, ${MAX_ID})`);
      const other = byId.get(id);
      if (other !== undefined && other !== token) fail(`id ${id} is used by both ${JSON.stringify(other)} and ${JSON.stringify(token)}`);
      byId.set(id, token);
      maxId = Math.max(maxId, id);
    };
    for (const [token, id] of model.vocab) {
      claim(token, id, "vocab token");
      maxUnits = Math.max(maxUnits, token.length);
    }
    for (const [token, id] of model.special) {
      if (token === "") fail(`special token with id ${id} is empty`);
      const inVocab = model.vocab.get(token);
      if (inVocab !== undefined && inVocab !== id) fail(`special token ${JSON.stringify(token)} has id ${id} but the vocab gives it ${inVocab}`);
      claim(token, id, "special token");
    }
    this.vocabSize = maxId + 1;
    this.maxTokenUnits = maxUnits;
    this.tokens = new Array(this.vocabSize);
    for (const [id, token] of byId) this.tokens[id] = token;
    this.specialIds = new Set(model.special.values());
    this.matcher = new SpecialTokenMatcher(model.special, this.name);

    const role = (key: keyof WordPieceSpecialTokens): number => {
      const token = model.specialTokens[key];
      const id = model.special.get(token) ?? model.vocab.get(token);
      if (id === undefined) fail(`the ${key} token ${JSON.stringify(token)} is in neither the vocab nor the added tokens; a BERT WordPiece needs [PAD], [UNK], [CLS], [SEP] and [MASK]`);
      return id;
    };
    this.pad = role("pad");
    this.unk = role("unk");
    this.cls = role("cls");
    this.sep = role("sep");
    this.mask = role("mask");
    this.eotToken = this.sep;
  }

  /**
   * Token ids of `text`, without [CLS] / [SEP]. Special tokens in the text ("[MASK]") are text
   * unless allowed (EncodeOptions): Hugging Face always treats them as special, which is
   * `allowedSpecial: "all"` here.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const out: number[] = [];
    this.matcher.split(
      text,
      options,
      (start, end) => {
        if (end > start) this.encodeOrdinary(start === 0 && end === text.length ? text : text.slice(start, end), out);
      },
      (id) => out.push(id),
    );
    return out;
  }

  /**
   * Ids of one segment or a pair, with BERT's special tokens and token type ids:
   * `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (HF's encode(a, b) with add_special_tokens).
   * @example tok.encodePair("the cat", "sat down", { allowedSpecial: "all" }).typeIds // [0, 0, 0, 0, 1, 1, 1]
   */
  encodePair(a: string, b?: string, options: EncodeOptions = {}): EncodedPair {
    return this.withSpecialTokens(this.encode(a, options), b === undefined ? undefined : this.encode(b, options));
  }

  /**
   * Adds [CLS] and [SEP] around already encoded segments (BERT's TemplateProcessing).
   * @example tok.withSpecialTokens([7592], [2088]) // { ids: [101, 7592, 102, 2088, 102], typeIds: [0, 0, 0, 1, 1] }
   */
  withSpecialTokens(idsA: readonly number[], idsB?: readonly number[]): EncodedPair {
    const ids = [this.cls, ...idsA, this.sep];
    const typeIds = new Array<number>(ids.length).fill(0);
    if (idsB !== undefined) {
      ids.push(...idsB, this.sep);
      for (let i = 0; i <= idsB.length; i++) typeIds.push(1);
    }
    return { ids, typeIds };
  }

  /**
   * Text of `ids`: pieces joined with spaces, "##" continuations glued to the piece before, no
   * space before punctuation (HF's WordPiece decoder with cleanup), special tokens left out.
   * Lower-casing and accent stripping are not undone. Throws ValueError on an id outside the vocab.
   */
  decode(ids: ArrayLike<number>, options: WordPieceDecodeOptions = {}): string {
    const skip = options.skipSpecialTokens ?? true;
    const prefix = this.model.continuingSubwordPrefix;
    let out = "";
    let first = true;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const token = this.tokens[id];
      if (token === undefined) throw new ValueError(`decode: ids[${i}] = ${id} is not a token of "${this.name}" (vocabSize ${this.vocabSize})`);
      if (skip && this.specialIds.has(id)) continue;
      // Like HF, the first piece is kept whole even when it is a continuation.
      let piece = first ? token : token.startsWith(prefix) ? token.slice(prefix.length) : ` ${token}`;
      first = false;
      if (this.model.decoderCleanup) piece = cleanUpTokenization(piece);
      out += piece;
    }
    return (options.cleanUpTokenizationSpaces ?? true) ? cleanUpTokenization(out) : out;
  }

  /** UTF-8 bytes of `decode(ids)`: pieces are whole characters, so no character is ever split. */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    return this.utf8.encode(this.decode(ids));
  }

  idToToken(id: number): string | undefined {
    return this.tokens[id];
  }

  tokenToId(token: string): number | undefined {
    return this.model.special.get(token) ?? this.model.vocab.get(token);
  }

  /** Writes a Hugging Face tokenizer.json (atomically: temporary file, then rename). */
  save(path: string): void {
    writeWordPieceJson(path, this.model);
  }

  /**
   * Writes BERT's vocab.txt: one token per line, the id is the line number. Throws ValueError
   * when the ids have holes or a token contains a line break (vocab.txt cannot say that).
   */
  saveVocab(path: string): void {
    writeVocabTxt(path, this.model);
  }

  /** Whether `saveVocab()` can write this vocabulary: ids 0..vocabSize-1 all used, no line breaks. */
  vocabTxtWritable(): boolean {
    for (let id = 0; id < this.vocabSize; id++) {
      const t = this.tokens[id];
      if (t === undefined || t.includes("\n") || t.includes("\r")) return false;
    }
    return true;
  }

  /** Normalizes, splits into words and WordPieces `text` (which holds no special token). */
  private encodeOrdinary(text: string, out: number[]): void {
    const norm = this.model.normalizer === null ? text : bertNormalize(text, this.model.normalizer);
    const cache = this.cache;
    forEachBertWord(norm, (i, j) => {
      const slot = cache.find(norm, i, j);
      if (slot >= 0) {
        cache.emit(slot, out);
        return;
      }
      const word = norm.slice(i, j);
      const at = out.length;
      this.wordPiece(word, out);
      if (j - i <= CACHE_MAX_WORD) cache.insert(word, out.slice(at));
    });
  }

  /** Greedy longest-match-first WordPiece of one word, appended to `out` ([UNK] if any part fails). */
  private wordPiece(word: string, out: number[]): void {
    const { vocab, continuingSubwordPrefix: prefix, maxInputCharsPerWord: maxChars } = this.model;
    if (word.length > maxChars && codePointCount(word) > maxChars) {
      out.push(this.unk);
      return;
    }
    const at = out.length;
    for (let start = 0; start < word.length; ) {
      let end = Math.min(word.length, start + this.maxTokenUnits);
      let id: number | undefined;
      while (end > start) {
        id = vocab.get(start === 0 ? word.slice(0, end) : prefix + word.slice(start, end));
        if (id !== undefined) break;
        // Back off one code point (two units for a surrogate pair).
        const c = word.charCodeAt(end - 1);
        end -= c >= 0xdc00 && c <= 0xdfff && end - 2 >= start && isHighSurrogate(word.charCodeAt(end - 2)) ? 2 : 1;
      }
      if (id === undefined) {
        out.length = at;
        out.push(this.unk);
        return;
      }
      out.push(id);
      start = end;
    }
  }
}

function isHighSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}

function codePointCount(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    if (!(isHighSurrogate(s.charCodeAt(i)) && i + 1 < s.length && s.charCodeAt(i + 1) >= 0xdc00 && s.charCodeAt(i + 1) <= 0xdfff)) n++;
  }
  return n;
}

/** transformers' clean_up_tokenization (also what HF's WordPiece decoder applies to each piece). */
function cleanUpTokenization(s: string): string {
  if (!s.includes(" ")) return s;
  return s
    .replaceAll(" .", ".")
    .replaceAll(" ?", "?")
    .replaceAll(" !", "!")
    .replaceAll(" ,", ",")
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

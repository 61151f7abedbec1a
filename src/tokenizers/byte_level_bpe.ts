/**
 * Byte-level BPE, the tokenizer of GPT-2: text -> UTF-8 bytes -> pre-tokens (GPT-2's regex) ->
 * BPE merges by rank inside each pre-token. Ids match GPT-2 / tiktoken's "gpt2" exactly.
 *
 * Speed comes from three things, in order of effect:
 * 1. a cache from pre-token string to ids (a corpus has far fewer distinct words than words);
 * 2. a hand-written pre-tokenizer scanner instead of regex match objects (see _pretokenize.ts);
 * 3. merges over an array with per-pair ranks, or a heap for long pieces (see _merge.ts).
 */
import { ValueError, FormatError } from "../core/errors.js";
import { BYTE_TO_CHAR, tokenStringToBytes, utf8EncodeInto } from "./_byte_level.js";
import { applyMerges, PairRanks } from "./_merge.js";
import { PieceCache } from "./_piece_cache.js";
import { pieceEnd } from "./_pretokenize.js";
import { writeTokenizerJson } from "./_formats.js";
import { SpecialTokenMatcher } from "./_special_tokens.js";
import type { EncodeOptions, Tokenizer } from "./tokenizer.js";

/** The end-of-text token of GPT-2 and of every vocabulary trained here. */
export const END_OF_TEXT = "<|endoftext|>";

/**
 * Everything a byte-level BPE tokenizer is made of, as stored in vocab.json + merges.txt or a
 * tokenizer.json. Tokens are in GPT-2's byte-character form ("Ġthe" is " the").
 */
export interface BpeModel {
  /** token -> id, for the 256 byte tokens, every merge result, and optionally special tokens. */
  vocab: Map<string, number>;
  /** Merges in rank order: merges[r] = [left, right] makes the token left + right. */
  merges: Array<readonly [string, string]>;
  /** Special (added) tokens: literal text -> id. Encoded only when allowed. */
  special: Map<string, number>;
}

/** Options of the ByteLevelBpe constructor. */
export interface ByteLevelBpeOptions {
  /** Name shown in logs. Default "bpe". */
  name?: string;
  /** The special token used as `eotToken`. Default "<|endoftext|>". */
  eot?: string;
  /** Where the model came from, named in FormatErrors. Default "<memory>". */
  source?: string;
  /** Most pre-tokens kept in the encode cache before it is emptied. Default 100,000. */
  cacheSize?: number;
}

/** Upper bound on token ids (16M): far above any real vocabulary. */
const MAX_ID = 1 << 24;

/** Pre-tokens longer than this (in UTF-16 units) are not cached: they rarely repeat. */
const CACHE_MAX_PIECE = 128;

/**
 * A byte-level BPE tokenizer. Usually obtained from `loadTokenizer()` or `trainBpe()`.
 * @example
 * const tok = new ByteLevelBpe(model, { name: "mine" });
 * tok.decode(tok.encode("héllo 👋")) === "héllo 👋";
 */
export class ByteLevelBpe implements Tokenizer {
  readonly name: string;
  readonly vocabSize: number;
  readonly eotToken: number;
  /** The model this tokenizer was built from (read-only by convention; used by save()). */
  readonly model: BpeModel;

  private readonly tokens: Array<string | undefined>;
  // Bytes of every id, flat: id's bytes are tokenData[tokenStart[id], tokenEnd[id]).
  // Ids that are not tokens (holes in a sparse vocab) have tokenStart[id] = -1.
  private readonly tokenStart: Int32Array;
  private readonly tokenEnd: Int32Array;
  private readonly tokenData: Uint8Array;
  private readonly byteIds = new Int32Array(256);
  private readonly ranks: PairRanks;
  private readonly mergeResults: Int32Array;
  private readonly cache: PieceCache;
  // ignoreBOM: keep a leading U+FEFF (the default strips it, and decode(encode(x)) would lose it).
  private readonly textDecoder = new TextDecoder("utf-8", { ignoreBOM: true });
  private readonly specialMatcher: SpecialTokenMatcher;
  // Scratch buffers for one pre-token: UTF-8 bytes and the symbols being merged.
  private bytes = new Uint8Array(3 * 256);
  private symbols = new Int32Array(3 * 256);
  private decodeBuffer = new Uint8Array(1 << 16);

  constructor(model: BpeModel, options: ByteLevelBpeOptions = {}) {
    const source = options.source ?? "<memory>";
    function fail(msg: string): never {
      throw new FormatError(source, msg);
    }
    this.model = model;
    this.name = options.name ?? "bpe";
    this.cache = new PieceCache(options.cacheSize ?? 100_000);

    let maxId = -1;
    const byId = new Map<number, string>();
    const claim = (token: string, id: number, what: string) => {
      if (!Number.isInteger(id) || id < 0) fail(`${what} "${token}" has id ${id}; ids must be integers >= 0`);
      // Tables are indexed by id, so a stray huge id would allocate gigabytes.
      if (id >= MAX_ID) fail(`${what} "${token}" has id ${id}; ids must be below ${MAX_ID}`);
      const other = byId.get(id);
      if (other !== undefined && other !== token) fail(`id ${id} is used by both "${other}" and "${token}"`);
      byId.set(id, token);
      maxId = Math.max(maxId, id);
    };
    for (const [token, id] of model.vocab) claim(token, id, "vocab token");
    for (const [token, id] of model.special) {
      const inVocab = model.vocab.get(token);
      if (inVocab !== undefined && inVocab !== id) fail(`special token "${token}" has id ${id} but the vocab gives it ${inVocab}`);
      claim(token, id, "special token");
    }
    this.vocabSize = maxId + 1;
    this.tokens = new Array(this.vocabSize);
    const tokenBytes = new Array<Uint8Array | undefined>(this.vocabSize);
    const utf8 = new TextEncoder();
    for (const [token, id] of model.vocab) {
      this.tokens[id] = token;
      if (model.special.has(token)) continue;
      const bytes = tokenStringToBytes(token);
      if (bytes === undefined) {
        fail(`vocab token ${JSON.stringify(token)} (id ${id}) is not in GPT-2's byte-character form; is this a byte-level BPE?`);
      }
      tokenBytes[id] = bytes;
    }
    for (const [token, id] of model.special) {
      this.tokens[id] = token;
      tokenBytes[id] = utf8.encode(token);
    }
    this.tokenStart = new Int32Array(this.vocabSize).fill(-1);
    this.tokenEnd = new Int32Array(this.vocabSize);
    this.tokenData = new Uint8Array(tokenBytes.reduce((sum, b) => sum + (b?.length ?? 0), 0));
    let at = 0;
    for (let id = 0; id < this.vocabSize; id++) {
      const bytes = tokenBytes[id];
      if (bytes === undefined) continue;
      this.tokenStart[id] = at;
      this.tokenData.set(bytes, at);
      at += bytes.length;
      this.tokenEnd[id] = at;
    }
    for (let b = 0; b < 256; b++) {
      const id = model.vocab.get(BYTE_TO_CHAR[b]!);
      if (id === undefined) fail(`vocab has no token for byte 0x${b.toString(16).padStart(2, "0")} ("${BYTE_TO_CHAR[b]}"); a byte-level BPE needs all 256`);
      this.byteIds[b] = id;
    }

    const pairs: Array<[number, number]> = [];
    this.mergeResults = new Int32Array(model.merges.length);
    const seen = new Set<string>();
    model.merges.forEach(([a, b], r) => {
      const ia = model.vocab.get(a);
      const ib = model.vocab.get(b);
      const ir = model.vocab.get(a + b);
      if (ia === undefined) fail(`merges[${r}] ("${a} ${b}"): "${a}" is not in the vocab`);
      if (ib === undefined) fail(`merges[${r}] ("${a} ${b}"): "${b}" is not in the vocab`);
      if (ir === undefined) fail(`merges[${r}] ("${a} ${b}"): the merged token "${a + b}" is not in the vocab`);
      const key = `${a} ${b}`;
      if (seen.has(key)) fail(`merges[${r}] ("${key}") repeats an earlier merge`);
      seen.add(key);
      pairs.push([ia!, ib!]);
      this.mergeResults[r] = ir!;
    });
    this.ranks = new PairRanks(pairs);

    const eot = options.eot ?? END_OF_TEXT;
    const eotId = model.special.get(eot);
    if (eotId === undefined) {
      fail(`no special token "${eot}" to use as end-of-text; add it to the added tokens, or name another one with the eot option`);
    }
    this.eotToken = eotId!;
    this.specialMatcher = new SpecialTokenMatcher(model.special, this.name);
  }

  /** Token ids of `text`; see EncodeOptions for special tokens. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const out: number[] = [];
    this.specialMatcher.split(
      text,
      options,
      (start, end) => this.encodeOrdinary(text, start, end, out),
      (id) => out.push(id),
    );
    return out;
  }

  /** Text of `ids`; bytes that are not valid UTF-8 decode to U+FFFD, as with TextDecoder. */
  decode(ids: ArrayLike<number>): string {
    const n = this.decodeInto(ids);
    return this.textDecoder.decode(this.decodeBuffer.subarray(0, n));
  }

  /** Raw bytes of `ids`. Throws ValueError on an id outside the vocabulary. */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    return this.decodeBuffer.slice(0, this.decodeInto(ids));
  }

  /** Writes the bytes of `ids` to the front of `decodeBuffer` (grown as needed); returns the count. */
  private decodeInto(ids: ArrayLike<number>): number {
    const start = this.tokenStart;
    const end = this.tokenEnd;
    const data = this.tokenData;
    let out = this.decodeBuffer;
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const s = id < this.vocabSize ? start[id] : undefined; // undefined for negative or fractional ids
      if (s === undefined || s < 0) {
        throw new ValueError(`decode: ids[${i}] = ${id} is not a token of "${this.name}" (vocabSize ${this.vocabSize})`);
      }
      const e = end[id]!;
      if (at + e - s > out.length) {
        const bigger = new Uint8Array(Math.max(2 * out.length, at + e - s));
        bigger.set(out.subarray(0, at));
        out = this.decodeBuffer = bigger;
      }
      for (let k = s; k < e; k++) out[at++] = data[k]!;
    }
    return at;
  }

  idToToken(id: number): string | undefined {
    return this.tokens[id];
  }

  tokenToId(token: string): number | undefined {
    return this.model.vocab.get(token) ?? this.model.special.get(token);
  }

  /** Writes a Hugging Face tokenizer.json (atomically: temporary file, then rename). */
  save(path: string): void {
    writeTokenizerJson(path, this.model);
  }

  /** Encodes text[start, end) with no special tokens, appending to `out`. */
  private encodeOrdinary(text: string, start: number, end: number, out: number[]): void {
    const byteIds = this.byteIds;
    const cache = this.cache;
    let i = start;
    while (i < end) {
      const j = pieceEnd(text, i, end);
      const c = text.charCodeAt(i);
      if (j === i + 1 && c < 0x80) {
        out.push(byteIds[c]!); // one ASCII byte: nothing to merge
      } else {
        const slot = cache.find(text, i, j);
        if (slot >= 0) cache.emit(slot, out);
        else this.encodePiece(text, i, j, out);
      }
      i = j;
    }
  }

  /** BPE of the pre-token text[i, j) (a cache miss), appended to `out` and cached. */
  private encodePiece(text: string, i: number, j: number, out: number[]): void {
    const units = j - i;
    if (this.bytes.length < 3 * units) {
      this.bytes = new Uint8Array(3 * units);
      this.symbols = new Int32Array(3 * units);
    }
    const n = utf8EncodeInto(text, i, j, this.bytes);
    for (let k = 0; k < n; k++) this.symbols[k] = this.byteIds[this.bytes[k]!]!;
    const ids = applyMerges(this.symbols, n, this.ranks, this.mergeResults);
    for (let k = 0; k < ids.length; k++) out.push(ids[k]!);
    if (units <= CACHE_MAX_PIECE) this.cache.insert(text.slice(i, j), ids);
  }
}

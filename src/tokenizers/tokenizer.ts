/**
 * The contract every Megalith tokenizer meets: text <-> token ids, the vocabulary size the model's
 * embedding must cover, and the end-of-text id that separates documents in a token stream.
 */

/** Which special tokens may appear in the text given to `encode()`. Same shape as js-tiktoken's. */
export type SpecialTokenSet = "all" | readonly string[];

/** Options of `Tokenizer.encode()`. */
export interface EncodeOptions {
  /**
   * Special tokens (such as `<|endoftext|>`) that are encoded as their single special id where
   * they occur in the text. Default: none, so `<|endoftext|>` in user text is ordinary text and
   * encodes to the same ids as any other string ("<", "|", "end", "of", "text", "|", ">").
   * `"all"` allows every special token, as in js-tiktoken's `encode(text, "all")`.
   */
  allowedSpecial?: SpecialTokenSet;
  /**
   * Special tokens whose presence in the text (when not allowed) raises a ValueError instead of
   * being encoded as text. Default: none. `"all"` gives js-tiktoken's default behaviour (every
   * special token not in `allowedSpecial` is an error).
   *
   * Why the default differs from js-tiktoken's: documents are joined with `eotToken` by id in
   * data preparation, and a stray "<|endoftext|>" in scraped text should neither stop a
   * multi-hour job nor be promoted to a document boundary. Pass "all" to get tiktoken's guard.
   */
  disallowedSpecial?: SpecialTokenSet;
}

/**
 * A tokenizer: encode text to ids, decode ids to text.
 * @example
 * const tok = loadTokenizer("gpt2");
 * tok.encode("Hello world");            // [15496, 995]
 * tok.decode([15496, 995]);             // "Hello world"
 * tok.encode("<|endoftext|>", { allowedSpecial: "all" }); // [50256]
 */
export interface Tokenizer {
  /** Short name for logs and configs ("gpt2", or the file/directory name it was loaded from). */
  readonly name: string;
  /** Number of ids: every id in [0, vocabSize) can be decoded. */
  readonly vocabSize: number;
  /** Id of `<|endoftext|>`, the document separator (50256 for GPT-2). */
  readonly eotToken: number;
  /** Token ids of `text`. Special tokens are text unless allowed (see EncodeOptions). */
  encode(text: string, options?: EncodeOptions): number[];
  /** Text of `ids`. Invalid UTF-8 (e.g. a multi-byte character cut between ids) becomes U+FFFD. */
  decode(ids: ArrayLike<number>): string;
  /** Raw bytes of `ids`, for streaming decoders that must not split characters. */
  decodeBytes(ids: ArrayLike<number>): Uint8Array;
  /** The vocabulary entry of an id (GPT-2's byte-character form, e.g. "Ġworld"), or undefined. */
  idToToken(id: number): string | undefined;
  /** The id of a vocabulary entry (byte-character form), or undefined. */
  tokenToId(token: string): number | undefined;
  /** Writes a Hugging Face compatible tokenizer.json that `loadTokenizer(path)` reads back. */
  save(path: string): void;
}

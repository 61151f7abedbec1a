/**
 * Structural copy of `Tokenizer` from src/tokenizers/index.ts, used until that module lands.
 * Data code only needs encode/decode, the vocabulary size and the end-of-text id.
 */
export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: ArrayLike<number>): string;
  vocabSize: number;
  eotToken: number;
  name: string;
  save(path: string): void;
}

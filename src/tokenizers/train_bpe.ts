/**
 * Training a byte-level BPE vocabulary (the algorithm of GPT-2 and Hugging Face's BpeTrainer):
 *
 * 1. Count words: stream the text, split it with GPT-2's pre-tokenizer and count each distinct
 *    pre-token. Merges never cross pre-token boundaries, so the corpus reduces to (word, count).
 * 2. Learn merges: start from the 256 byte tokens; repeatedly merge the most frequent adjacent
 *    pair (summed over word counts) into a new token, until the vocabulary has `vocabSize` ids.
 *
 * Step 2 is the incremental merge loop of _learn_merges.ts, shared with the WordPiece trainer.
 */
import { statSync } from "node:fs";
import { Progress } from "../core/progress.js";
import { ValueError } from "../core/errors.js";
import { BYTE_ORDER, BYTE_TO_CHAR, utf8EncodeInto } from "./_byte_level.js";
import { countFile, countText } from "./_word_counts.js";
import { learnMerges as learnMergesLoop } from "./_learn_merges.js";
import { ByteLevelBpe, END_OF_TEXT } from "./byte_level_bpe.js";

/** Options of `trainBpe()`. */
export interface TrainBpeOptions {
  /** UTF-8 text files, streamed in chunks (invalid UTF-8 is read as U+FFFD). */
  files?: readonly string[];
  /** In-memory texts, each complete on its own (counted after the files). */
  texts?: Iterable<string>;
  /** Total ids: 256 byte tokens + learned merges + `<|endoftext|>`. At least 257. */
  vocabSize: number;
  /** Pairs seen fewer times than this are never merged. Default 2. */
  minFrequency?: number;
  /** Name of the resulting tokenizer. Default `bpe-<vocabSize>`. */
  name?: string;
  /** Print progress lines to stderr. Default true. */
  progress?: boolean;
  /** Bytes read per file chunk. Default 1 MiB. */
  chunkBytes?: number;
}

/**
 * Trains a byte-level BPE tokenizer. Deterministic: the same inputs give the same vocabulary
 * (ties between equally frequent pairs go to the pair with the smaller ids).
 * Throws ValueError when the text supports fewer merges than `vocabSize` asks for.
 *
 * `<|endoftext|>` in the text is a boundary, not text: it is never part of a counted word.
 * @example
 * const tok = await trainBpe({ files: ["data/tiny.txt"], vocabSize: 4096 });
 * tok.save("runs/tok.json");
 */
export async function trainBpe(options: TrainBpeOptions): Promise<ByteLevelBpe> {
  const { vocabSize } = options;
  const minFrequency = options.minFrequency ?? 2;
  const chunkBytes = options.chunkBytes ?? 1 << 20;
  const showProgress = options.progress ?? true;
  if (!Number.isInteger(vocabSize) || vocabSize < 257) {
    throw new ValueError(`trainBpe: vocabSize must be an integer >= 257 (256 bytes + <|endoftext|>), got ${vocabSize}`);
  }
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new ValueError(`trainBpe: minFrequency must be an integer >= 1, got ${minFrequency}`);
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1) throw new ValueError(`trainBpe: chunkBytes must be an integer >= 1, got ${chunkBytes}`);
  const files = options.files ?? [];
  if (files.length === 0 && options.texts === undefined) throw new ValueError("trainBpe: give files or texts to train on");

  const counts = new Map<string, number>();
  const fileBytes = files.reduce((sum, f) => sum + fileSize(f), 0);
  // The total is known only for files; in-memory texts are counted as they come.
  const total = options.texts === undefined ? fileBytes : undefined;
  const progress = showProgress ? new Progress("tokenizer: counting words", { total, unit: "MB", unitScale: 1e6 }) : undefined;
  for (const file of files) await countFile(file, counts, chunkBytes, progress);
  for (const text of options.texts ?? []) {
    countText(text, counts);
    progress?.tick(Buffer.byteLength(text, "utf8"));
  }
  progress?.done();

  const model = learnByteMerges(counts, vocabSize, minFrequency, showProgress);
  return new ByteLevelBpe(model, { name: options.name ?? `bpe-${vocabSize}` });
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch (err) {
    throw new ValueError(`trainBpe: cannot read input file ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

function learnByteMerges(wordCounts: Map<string, number>, vocabSize: number, minFrequency: number, showProgress: boolean) {
  // Token strings by id: the 256 bytes in GPT-2's order, so byte ids match GPT-2's.
  const tokens: string[] = BYTE_ORDER.map((b) => BYTE_TO_CHAR[b]!);
  const byteId = new Int32Array(256);
  BYTE_ORDER.forEach((b, id) => (byteId[b] = id));

  // Words as arrays of token ids. Single-byte words have no pairs and are left out.
  const words: number[][] = [];
  const counts: number[] = [];
  let bytes = new Uint8Array(64);
  for (const [word, count] of wordCounts) {
    if (bytes.length < 3 * word.length) bytes = new Uint8Array(3 * word.length);
    const n = utf8EncodeInto(word, 0, word.length, bytes);
    if (n < 2) continue;
    const symbols = new Array<number>(n);
    for (let i = 0; i < n; i++) symbols[i] = byteId[bytes[i]!]!;
    words.push(symbols);
    counts.push(count);
  }

  const target = vocabSize - 1; // the last id is <|endoftext|>
  const progress = showProgress ? new Progress("tokenizer: learning merges", { total: target - 256, unit: "tok" }) : undefined;
  const { merges, exhausted } = learnMergesLoop({ tokens, words, counts, target, minFrequency, join: (l, r) => l + r, progress });
  if (exhausted) throw exhaustedError(merges.length, tokens.length, vocabSize, minFrequency);
  progress?.done();

  const vocab = new Map(tokens.map((t, id) => [t, id] as [string, number]));
  vocab.set(END_OF_TEXT, target);
  return { vocab, merges, special: new Map([[END_OF_TEXT, target]]) };
}

function exhaustedError(merges: number, tokens: number, vocabSize: number, minFrequency: number): ValueError {
  return new ValueError(
    `trainBpe: the text supports only ${merges} merges with minFrequency ${minFrequency} (a vocabulary of ${tokens + 1} ids), but vocabSize ${vocabSize} was asked for; train on more text or ask for a smaller vocabSize`,
  );
}

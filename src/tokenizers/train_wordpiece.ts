/**
 * Training a WordPiece vocabulary the way Hugging Face's WordPieceTrainer does: BPE over
 * characters, where every character but a word's first carries the "##" continuation prefix,
 * and the vocabulary (not the merges) is kept.
 *
 * 1. Count words: normalize the text with BertNormalizer, split it with BertPreTokenizer and
 *    count each distinct word. Pieces never cross words, so the corpus reduces to (word, count).
 * 2. Initial vocabulary, in this order: the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK], so
 *    their ids are 0-4), every character seen (by code point), then each of them with "##".
 * 3. Learn merges (the loop of _learn_merges.ts): the most frequent adjacent pair becomes a new
 *    token, "##" dropped from the right part ("##i" + "##ng" is "##ing", "p" + "##ing" "ping").
 *
 * One deliberate difference from HF: HF adds "##c" only for characters seen inside a word, in
 * hash-map order; here every character gets both forms, in code-point order, so training is
 * deterministic and a word made of seen characters never falls back to [UNK] whole.
 */
import { createReadStream, statSync } from "node:fs";
import { Progress } from "../core/progress.js";
import { ValueError } from "../core/errors.js";
import { bertNormalize, forEachBertWord, type BertNormalizerOptions } from "./_bert_normalize.js";
import { learnMerges } from "./_learn_merges.js";
import { BERT_SPECIAL_TOKENS, bertNormalizer } from "./_wordpiece_formats.js";
import { WordPiece } from "./wordpiece.js";

/** Options of `trainWordPiece()`. */
export interface TrainWordPieceOptions {
  /** UTF-8 text files, streamed in chunks (invalid UTF-8 is read as U+FFFD, which is dropped). */
  files?: readonly string[];
  /** In-memory texts (counted after the files). */
  texts?: Iterable<string>;
  /** Words already normalized and split, with their counts (added to those of files and texts). */
  wordCounts?: ReadonlyMap<string, number>;
  /** Most ids in the vocabulary. Fewer when the text runs out of pairs seen `minFrequency` times. */
  vocabSize: number;
  /** Pairs seen fewer times than this are never merged. Default 2. */
  minFrequency?: number;
  /** Lower-case (and strip accents from) the text, as bert-base-uncased. Default true. */
  lowercase?: boolean;
  /** Strip accents; default null = same as `lowercase`. */
  stripAccents?: boolean | null;
  /** Special tokens, given ids 0, 1, ... in this order. Must include BERT's five. Default BERT's five. */
  specialTokens?: readonly string[];
  /** Keep only this many distinct characters (the most frequent; ties to the lower code point). Default all. */
  limitAlphabet?: number;
  /** Name of the resulting tokenizer. Default `wordpiece-<vocabSize>`. */
  name?: string;
  /** Print progress lines to stderr. Default true. */
  progress?: boolean;
  /** Bytes read per file chunk. Default 1 MiB. */
  chunkBytes?: number;
}

const PREFIX = "##";

/**
 * Trains a WordPiece (BERT) tokenizer. Deterministic: the same inputs give the same vocabulary.
 * The vocabulary has at most `vocabSize` ids; it stops short when no pair is seen `minFrequency`
 * times any more (as HF's trainer does). Throws ValueError when the special tokens and the
 * alphabet alone need more than `vocabSize` ids.
 * @example
 * const tok = await trainWordPiece({ files: ["data/wiki.txt"], vocabSize: 30522 });
 * tok.save("runs/bert-tok.json");
 */
export async function trainWordPiece(options: TrainWordPieceOptions): Promise<WordPiece> {
  const { vocabSize } = options;
  const minFrequency = options.minFrequency ?? 2;
  const chunkBytes = options.chunkBytes ?? 1 << 20;
  const showProgress = options.progress ?? true;
  const specialTokens = [...(options.specialTokens ?? Object.values(BERT_SPECIAL_TOKENS))];
  if (!Number.isInteger(vocabSize) || vocabSize < 1) throw new ValueError(`trainWordPiece: vocabSize must be an integer >= 1, got ${vocabSize}`);
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new ValueError(`trainWordPiece: minFrequency must be an integer >= 1, got ${minFrequency}`);
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1) throw new ValueError(`trainWordPiece: chunkBytes must be an integer >= 1, got ${chunkBytes}`);
  const limit = options.limitAlphabet;
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) throw new ValueError(`trainWordPiece: limitAlphabet must be an integer >= 1, got ${limit}`);
  for (const t of Object.values(BERT_SPECIAL_TOKENS)) {
    if (!specialTokens.includes(t)) throw new ValueError(`trainWordPiece: specialTokens ${JSON.stringify(specialTokens)} lacks ${t}; BERT needs [PAD], [UNK], [CLS], [SEP] and [MASK]`);
  }
  if (new Set(specialTokens).size !== specialTokens.length || specialTokens.includes("")) {
    throw new ValueError(`trainWordPiece: specialTokens ${JSON.stringify(specialTokens)} has a repeated or empty token`);
  }
  const files = options.files ?? [];
  if (files.length === 0 && options.texts === undefined && options.wordCounts === undefined) {
    throw new ValueError("trainWordPiece: give files, texts or wordCounts to train on");
  }
  const normalizer: BertNormalizerOptions = { ...bertNormalizer(options.lowercase ?? true), stripAccents: options.stripAccents ?? null };

  const counts = new Map<string, number>();
  const total = options.texts === undefined ? files.reduce((sum, f) => sum + fileSize(f), 0) : undefined;
  const progress = showProgress ? new Progress("tokenizer: counting words", { total, unit: "MB", unitScale: 1e6 }) : undefined;
  for (const file of files) await countWordsInFile(file, normalizer, counts, chunkBytes, progress);
  for (const text of options.texts ?? []) {
    countWords(text, normalizer, counts);
    progress?.tick(Buffer.byteLength(text, "utf8"));
  }
  progress?.done();
  for (const [word, count] of options.wordCounts ?? []) {
    if (word !== "") counts.set(word, (counts.get(word) ?? 0) + count);
  }

  const tokens = [...specialTokens];
  const alphabet = _alphabet(counts, limit);
  const taken = new Set(tokens);
  const idOf = new Map<string, number>();
  for (const form of [(c: string) => c, (c: string) => PREFIX + c]) {
    for (const c of alphabet) {
      const t = form(c);
      if (!taken.has(t)) {
        taken.add(t);
        tokens.push(t);
      }
    }
  }
  tokens.forEach((t, id) => idOf.set(t, id));
  if (tokens.length > vocabSize) {
    throw new ValueError(`trainWordPiece: ${specialTokens.length} special tokens and ${alphabet.length} characters (each also as "##c") already need ${tokens.length} ids, more than vocabSize ${vocabSize}; ask for a larger vocabSize or pass limitAlphabet`);
  }

  // Words as symbol ids: the first character bare, the rest "##"-prefixed. A character left out
  // of the alphabet is skipped, as HF does. Words of one symbol have no pairs and are left out.
  const words: number[][] = [];
  const wordCounts: number[] = [];
  for (const [word, count] of counts) {
    const symbols: number[] = [];
    let first = true;
    for (const c of word) {
      const id = idOf.get(first ? c : PREFIX + c);
      first = false;
      if (id !== undefined) symbols.push(id);
    }
    if (symbols.length < 2) continue;
    words.push(symbols);
    wordCounts.push(count);
  }

  const mergeProgress = showProgress ? new Progress("tokenizer: learning merges", { total: vocabSize - tokens.length, unit: "tok" }) : undefined;
  const join = (left: string, right: string) => left + (right.startsWith(PREFIX) ? right.slice(PREFIX.length) : right);
  learnMerges({ tokens, words, counts: wordCounts, target: vocabSize, minFrequency, join, progress: mergeProgress });
  mergeProgress?.done();

  const vocab = new Map(tokens.map((t, id) => [t, id] as [string, number]));
  const special = new Map(specialTokens.map((t, id) => [t, id] as [string, number]));
  return new WordPiece(
    { vocab, special, specialTokens: { ...BERT_SPECIAL_TOKENS }, continuingSubwordPrefix: PREFIX, maxInputCharsPerWord: 100, normalizer, decoderCleanup: true },
    { name: options.name ?? `wordpiece-${vocabSize}` },
  );
}

/** Adds the words of `text` (BertNormalizer, then BertPreTokenizer) to `counts`. */
export function countWords(text: string, normalizer: BertNormalizerOptions, counts: Map<string, number>): void {
  const norm = bertNormalize(text, normalizer);
  forEachBertWord(norm, (i, j) => {
    const w = norm.slice(i, j);
    counts.set(w, (counts.get(w) ?? 0) + 1);
  });
}

/** Past this many UTF-16 units without a space, tab or line break, the tail is counted as is. */
const MAX_CARRY = 1 << 24;

/**
 * Adds the words of a UTF-8 file to `counts`, `chunkBytes` at a time. Each chunk is cut after its
 * last space, tab or line break: those are never dropped by the normalizer and always end a
 * word, so the counts are those of the whole file at once, whatever the chunk size.
 */
async function countWordsInFile(file: string, normalizer: BertNormalizerOptions, counts: Map<string, number>, chunkBytes: number, progress?: Progress): Promise<void> {
  const decoder = new TextDecoder("utf-8");
  let carry = "";
  for await (const chunk of createReadStream(file, { highWaterMark: chunkBytes })) {
    const text = carry + decoder.decode(chunk as Buffer, { stream: true });
    const cut = Math.max(text.lastIndexOf(" "), text.lastIndexOf("\n"), text.lastIndexOf("\t"), text.lastIndexOf("\r")) + 1;
    if (cut > 0 || text.length > MAX_CARRY) {
      const end = cut > 0 ? cut : text.length;
      countWords(text.slice(0, end), normalizer, counts);
      carry = text.slice(end);
    } else {
      carry = text;
    }
    progress?.tick((chunk as Buffer).length);
  }
  countWords(carry + decoder.decode(), normalizer, counts);
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch (err) {
    throw new ValueError(`trainWordPiece: cannot read input file ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

/** The characters of the words, each once, by code point; with `limit`, only the most frequent. */
function _alphabet(counts: Map<string, number>, limit: number | undefined): string[] {
  const seen = new Map<string, number>();
  for (const [word, count] of counts) for (const c of word) seen.set(c, (seen.get(c) ?? 0) + count);
  const byCodePoint = (a: string, b: string) => a.codePointAt(0)! - b.codePointAt(0)!;
  let chars = [...seen.keys()];
  if (limit !== undefined && chars.length > limit) {
    chars = chars.sort((a, b) => seen.get(b)! - seen.get(a)! || byCodePoint(a, b)).slice(0, limit);
  }
  return chars.sort(byCodePoint);
}

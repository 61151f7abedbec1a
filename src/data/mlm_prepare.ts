/**
 * prepareMlmData: text in, BERT pretraining examples out (`megalith prepare --task mlm`).
 *
 * Each example is a sentence pair `[CLS] A [SEP] B [SEP]` with a next-sentence label, built the
 * way Google's create_pretraining_data.py builds them, with masking left to load time
 * (mlm_masking.ts), so one pass over the text serves every epoch (no dupe_factor copies).
 *
 * 1. Documents (same boundaries as prepareData: JSONL lines, `docSeparator`, in-memory strings)
 *    go to train or val by isValDocument, like `--task lm`.
 * 2. A document is cut into sentences by SentenceSplitter (end punctuation followed by
 *    whitespace, or a line break; see there), each sentence tokenized on its own. A sentence
 *    longer than max_seq_len - 3 tokens is cut into pieces of that length, so it feeds several
 *    examples rather than being truncated into one. For Google-style input (one sentence per
 *    line, a blank line between documents) pass `docSeparator: "\n\n"`.
 * 3. Per document, as Google does: a target length (max_seq_len - 3, or with probability
 *    shortSeqProb a uniform one in [2, max_seq_len - 3]); sentences accumulate into a chunk
 *    until it reaches the target or the document ends; A = the chunk's first k sentences
 *    (k uniform in [1, sentences - 1]); B = the rest of the chunk (label 0, "is next"), or with
 *    probability 0.5 a span starting at a random sentence of another document (label 1, the
 *    unused sentences go back to the document). The pair is then truncated to max_seq_len - 3
 *    tokens, each step removing one token from the longer side, from its front or back at random.
 *    One deliberate difference: Google makes every one-sentence chunk a random pair, which on
 *    short-sentence text gives far more than half random pairs. Here the label is drawn first
 *    and a one-sentence chunk that should continue takes the next sentence as B (or, at the end
 *    of a document, is cut in two at a random token), so labels stay a fair coin.
 * 4. Random second segments come from other documents in the same buffer of about
 *    `bufferTokens` tokens (Google holds the whole corpus in memory; this keeps memory bounded).
 *    A buffer with a single document takes the random span from that document; a document
 *    longer than a buffer is handled in buffer-sized parts.
 *
 * Output per split: token shards of whole examples (shards.ts format, named
 * `<split>_000000.bin`...), an example index `<split>_index.bin` (mlm_shards.ts) and meta.json
 * with `task: "mlm"` and an `mlm` block (meta.ts). All randomness comes from `seed`, so the
 * same inputs and options give byte-identical shards. Writing is atomic as in prepareData.
 */

import { randomBytes } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { ValueError } from "../core/errors.js";
import { Progress } from "../core/progress.js";
import type { Tokenizer } from "../tokenizers/index.js";
import { hashWords, splitU53 } from "./_permutation.js";
import { DEFAULT_PIECE_SIZES } from "./_text_sources.js";
import { META_FILE, PREPARED_FORMAT, PREPARED_FORMAT_VERSION, type MlmSpecialIds, type MlmSplitInfo, type PreparedMeta, type ShardInfo, type Split, type SplitInfo } from "./meta.js";
import { MlmIndexWriter } from "./mlm_shards.js";
import {
  installDir,
  isNonEmptyDir,
  isValDocument,
  resolveInputs,
  tokenizerFingerprint,
  writeFileSynced,
  type DataTokenizer,
  type PrepareOptions,
} from "./prepare.js";
import { ShardWriter, tokenDtypeFor, type TokenDtype } from "./shards.js";

/** What mlm preparation needs of a tokenizer: prepareData's part plus looking up the special tokens. */
export type MlmTokenizer = DataTokenizer & Pick<Tokenizer, "tokenToId">;

/** Options for prepareMlmData: prepareData's, plus the example layout. */
export interface MlmPrepareOptions extends PrepareOptions {
  /** A tokenizer with [CLS], [SEP], [MASK] and [PAD] (e.g. bert-base-uncased). */
  tokenizer: MlmTokenizer;
  /** Tokens per example at most, specials included (BERT: 128 for 90% of pretraining, then 512). Default 128. */
  maxSeqLen?: number;
  /** Probability that a document's target length is drawn short, uniform in [2, maxSeqLen - 3]. Default 0.1. */
  shortSeqProb?: number;
  /** Seed of the pairing and truncation randomness (not of masking: that is the loader's). Default 12345, Google's. */
  seed?: number;
  /** Tokens of documents held at once; random second segments come from the same buffer. Default 4 Mi. */
  bufferTokens?: number;
}

const NEEDS_SPECIALS = "--task mlm needs a tokenizer with [CLS], [SEP], [MASK] and [PAD], e.g. bert-base-uncased or a WordPiece tokenizer.json";

/**
 * The BERT special ids of a tokenizer, looked up by their strings. Throws a ValueError naming
 * the missing ones.
 * @example const { cls, sep, mask, pad } = mlmSpecialIds(loadTokenizer("bert-base-uncased"));
 */
export function mlmSpecialIds(tok: MlmTokenizer): MlmSpecialIds {
  const get = (t: string): number | undefined => {
    const id = tok.tokenToId(t);
    return id !== undefined && Number.isInteger(id) && id >= 0 && id < tok.vocabSize ? id : undefined;
  };
  const ids = { cls: get("[CLS]"), sep: get("[SEP]"), mask: get("[MASK]"), pad: get("[PAD]") };
  const missing = Object.entries(ids).filter(([, id]) => id === undefined).map(([k]) => `[${k.toUpperCase()}]`);
  if (missing.length > 0) throw new ValueError(`${NEEDS_SPECIALS}; tokenizer ${tok.name} has no ${missing.join(", ")}`);
  const distinct = new Set(Object.values(ids));
  if (distinct.size !== 4) throw new ValueError(`${NEEDS_SPECIALS}; tokenizer ${tok.name} maps them to ids ${JSON.stringify(ids)}, which must be distinct`);
  return { ...(ids as Omit<MlmSpecialIds, "unk">), unk: get("[UNK]") ?? null };
}

/** A sentence this long (UTF-16 units) without a boundary is emitted anyway, at its last space. */
const MAX_SENTENCE_CHARS = 1 << 16;
/**
 * Sentence ends: [.!?] (then any closing quotes or brackets) followed by whitespace, a CJK full
 * stop, or a line break. The whitespace is dropped.
 */
const BOUNDARY = /(?<=[.!?]["'\u2019\u201d)\]]*)\s+|(?<=[\u3002\uff01\uff1f])\s*|\s*\n\s*/;

/**
 * Cuts streamed text into sentences. The rule is deliberately simple and documented rather than
 * linguistic: a sentence ends at [.!?] (with closing quotes/brackets) before whitespace, at a CJK
 * full stop, or at a line break, so "e.g. this" splits after "e.g." and a hard-wrapped paragraph
 * gives one sentence per line. Both only move where A may end inside a chunk; examples still
 * fill up to the target length. Sentences are trimmed; empty ones are dropped.
 * @example
 * const s = new SentenceSplitter();
 * s.push("One. Two"); // ["One."]
 * s.push("!\nThree");  // ["Two!"]
 * s.flush();           // ["Three"]
 */
export class SentenceSplitter {
  private pending = "";

  /** Adds text; returns the sentences now complete. */
  push(text: string): string[] {
    const parts = (this.pending + text).split(BOUNDARY);
    this.pending = parts.pop() ?? "";
    const out = parts.map((p) => p.trim()).filter((p) => p.length > 0);
    while (this.pending.length > MAX_SENTENCE_CHARS) {
      const space = this.pending.lastIndexOf(" ", MAX_SENTENCE_CHARS);
      const cut = space > 0 ? space : MAX_SENTENCE_CHARS;
      const head = this.pending.slice(0, cut).trim();
      if (head.length > 0) out.push(head);
      this.pending = this.pending.slice(cut);
    }
    return out;
  }

  /** Ends the text: returns the last sentence, if any. */
  flush(): string[] {
    const rest = this.pending.trim();
    this.pending = "";
    return rest.length > 0 ? [rest] : [];
  }
}

/** A seeded sequential generator for preparation (mulberry32 started from a hash of the key). */
class _Rng {
  private a: number;
  constructor(key: readonly number[]) {
    this.a = hashWords(key);
  }
  /** Uniform in [0, 1). */
  random(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform integer in [lo, hi], both included (Python's randint). */
  randint(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }
}

/** A document as its tokenized sentences (each non-empty). */
type Doc = Int32Array[];

/** One sentence pair before the specials are added. */
interface Pair {
  a: number[];
  b: number[];
  random: boolean;
}

/** Concatenates segments into one array. */
function _concat(segments: readonly Int32Array[]): number[] {
  const out: number[] = [];
  for (const s of segments) for (let i = 0; i < s.length; i++) out.push(s[i]);
  return out;
}

/**
 * Google's truncate_seq_pair: trims the longer side (B on a tie), one token at a time from its
 * front or back at random, until the pair fits; the kept spans are sliced out once at the end.
 */
function _truncatePair(a: number[], b: number[], maxTokens: number, rng: _Rng): [number[], number[]] {
  let [aLo, aHi, bLo, bHi] = [0, a.length, 0, b.length];
  while (aHi - aLo + (bHi - bLo) > maxTokens) {
    const front = rng.random() < 0.5;
    if (aHi - aLo > bHi - bLo) {
      if (front) aLo++;
      else aHi--;
    } else if (front) bLo++;
    else bHi--;
  }
  return [a.slice(aLo, aHi), b.slice(bLo, bHi)];
}

/** The sentence pairs of document `docs[d]`, following the steps in the file comment. */
function _documentPairs(docs: readonly Doc[], d: number, maxTokens: number, shortSeqProb: number, rng: _Rng): Pair[] {
  const doc = docs[d];
  const target = rng.random() < shortSeqProb ? rng.randint(2, maxTokens) : maxTokens;
  const pairs: Pair[] = [];
  let chunk: Int32Array[] = [];
  let chunkLen = 0;
  for (let i = 0; i < doc.length; i++) {
    chunk.push(doc[i]);
    chunkLen += doc[i].length;
    if (i < doc.length - 1 && chunkLen < target) continue;
    let random = rng.random() < 0.5;
    let a: number[];
    let b: number[];
    if (!random && chunk.length === 1 && i + 1 < doc.length) chunk.push(doc[++i]); // B = the next sentence
    if (!random && chunk.length === 1 && chunk[0].length >= 2) {
      // The document's last sentence, alone: its two halves are still consecutive text.
      const all = _concat(chunk);
      const cut = rng.randint(1, all.length - 1);
      a = all.slice(0, cut);
      b = all.slice(cut);
    } else {
      if (chunk.length === 1) random = true; // a one-token last sentence cannot be split
      const aEnd = chunk.length >= 2 ? rng.randint(1, chunk.length - 1) : 1;
      a = _concat(chunk.slice(0, aEnd));
      if (random) {
        b = _randomSpan(docs, d, target - a.length, rng);
        i -= chunk.length - aEnd; // the unused sentences start the next chunk
      } else {
        b = _concat(chunk.slice(aEnd));
      }
    }
    [a, b] = _truncatePair(a, b, maxTokens, rng);
    pairs.push({ a, b, random });
    chunk = [];
    chunkLen = 0;
  }
  return pairs;
}

/** Sentences from a random start in another document (the same one if it is alone) until `targetLen` tokens. */
function _randomSpan(docs: readonly Doc[], d: number, targetLen: number, rng: _Rng): number[] {
  let r = d;
  if (docs.length > 1) {
    r = rng.randint(0, docs.length - 2);
    if (r >= d) r++;
  }
  const other = docs[r];
  const out: number[] = [];
  for (let j = rng.randint(0, other.length - 1); j < other.length; j++) {
    for (let t = 0; t < other[j].length; t++) out.push(other[j][t]);
    if (out.length >= targetLen) break;
  }
  return out;
}

interface _SplitConfig {
  dir: string;
  split: Split;
  dtype: TokenDtype;
  eotToken: number;
  vocabSize: number;
  shardTokens: number;
  maxSeqLen: number;
  shortSeqProb: number;
  bufferTokens: number;
  special: MlmSpecialIds;
  rng: _Rng;
}

/** Buffers one split's documents, turns them into examples and writes shards plus the index. */
class _MlmSplitWriter {
  private buffer: Doc[] = [];
  private bufferedTokens = 0;
  private current: Doc = [];
  private currentTokens = 0;
  private documents = 0;
  private tokens = 0;
  private randomNext = 0;
  private readonly shards: ShardInfo[] = [];
  private shard: ShardWriter | undefined;
  private index: MlmIndexWriter | undefined;

  constructor(private readonly c: _SplitConfig) {}

  /** Ends the previous document (if any) and starts a new one. */
  async startDocument(): Promise<void> {
    await this.endDocument();
    this.documents++;
  }

  /** Adds one tokenized sentence to the current document, cut into pieces of at most max_seq_len - 3. */
  async addSentence(ids: Int32Array): Promise<void> {
    const max = this.c.maxSeqLen - 3;
    for (let at = 0; at < ids.length; at += max) this.current.push(ids.subarray(at, Math.min(ids.length, at + max)));
    this.currentTokens += ids.length;
    // A document bigger than the buffer is handled in buffer-sized parts (memory stays bounded).
    if (this.currentTokens >= this.c.bufferTokens) await this.endDocument();
  }

  private async endDocument(): Promise<void> {
    if (this.current.length > 0) {
      this.buffer.push(this.current);
      this.bufferedTokens += this.currentTokens;
    }
    this.current = [];
    this.currentTokens = 0;
    if (this.bufferedTokens >= this.c.bufferTokens) await this.flushBuffer();
  }

  private async flushBuffer(): Promise<void> {
    const { special, maxSeqLen, shortSeqProb, rng } = this.c;
    for (let d = 0; d < this.buffer.length; d++) {
      for (const { a, b, random } of _documentPairs(this.buffer, d, maxSeqLen - 3, shortSeqProb, rng)) {
        const example = [special.cls, ...a, special.sep, ...b, special.sep];
        await this.writeExample(example, a.length + 2, random);
      }
    }
    this.buffer = [];
    this.bufferedTokens = 0;
  }

  private async writeExample(tokens: number[], bStart: number, random: boolean): Promise<void> {
    if (this.index === undefined) this.index = await MlmIndexWriter.create(join(this.c.dir, `${this.c.split}_index.bin`), this.c.maxSeqLen);
    if (this.shard === undefined || this.shard.tokenCount + tokens.length > this.c.shardTokens) await this.rotate();
    await this.index.append({ offset: this.tokens, length: tokens.length, bStart, nspLabel: random ? 1 : 0 });
    await this.shard!.append(tokens);
    this.tokens += tokens.length;
    if (random) this.randomNext++;
  }

  private async rotate(): Promise<void> {
    await this.closeShard();
    const file = `${this.c.split}_${String(this.shards.length).padStart(6, "0")}.bin`;
    this.shard = await ShardWriter.create(join(this.c.dir, file), { dtype: this.c.dtype, eotToken: this.c.eotToken, vocabSize: this.c.vocabSize });
    this.shards.push({ file, tokens: 0 });
  }

  private async closeShard(): Promise<void> {
    if (this.shard === undefined) return;
    const { tokenCount } = await this.shard.close();
    this.shards[this.shards.length - 1].tokens = tokenCount;
    this.shard = undefined;
  }

  /** Writes what is buffered and closes the files. An empty split still gets an (empty) index. */
  async close(): Promise<{ split: SplitInfo; mlm: MlmSplitInfo }> {
    await this.endDocument();
    await this.flushBuffer();
    await this.closeShard();
    this.index ??= await MlmIndexWriter.create(join(this.c.dir, `${this.c.split}_index.bin`), this.c.maxSeqLen);
    const { exampleCount } = await this.index.close();
    this.index = undefined;
    return {
      split: { documents: this.documents, tokens: this.tokens, shards: this.shards },
      mlm: { examples: exampleCount, randomNext: this.randomNext, index: `${this.c.split}_index.bin` },
    };
  }

  async abort(): Promise<void> {
    await this.shard?.abort();
    await this.index?.abort();
    this.shard = undefined;
    this.index = undefined;
  }
}

function _checkOptions(opts: MlmPrepareOptions): { maxSeqLen: number; shortSeqProb: number; seed: number; bufferTokens: number } {
  const maxSeqLen = opts.maxSeqLen ?? 128;
  const shortSeqProb = opts.shortSeqProb ?? 0.1;
  const seed = opts.seed ?? 12345;
  const bufferTokens = opts.bufferTokens ?? 1 << 22;
  if (!Number.isSafeInteger(maxSeqLen) || maxSeqLen < 5 || maxSeqLen > 65535) {
    throw new ValueError(`maxSeqLen must be an integer in [5, 65535] (room for [CLS] A [SEP] B [SEP]), got ${maxSeqLen}`);
  }
  if (typeof shortSeqProb !== "number" || !(shortSeqProb >= 0 && shortSeqProb <= 1)) throw new ValueError(`shortSeqProb must be in [0, 1], got ${shortSeqProb}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ValueError(`seed must be a non-negative safe integer, got ${seed}`);
  if (!Number.isSafeInteger(bufferTokens) || bufferTokens < 1) throw new ValueError(`bufferTokens must be a positive integer, got ${bufferTokens}`);
  const shardTokens = opts.shardTokens ?? 100_000_000;
  if (Number.isSafeInteger(shardTokens) && shardTokens < maxSeqLen) {
    throw new ValueError(`shardTokens ${shardTokens} is smaller than maxSeqLen ${maxSeqLen}: an example must fit in one shard`);
  }
  return { maxSeqLen, shortSeqProb, seed, bufferTokens };
}

/**
 * Tokenizes the inputs into sentence-pair examples (train/val shards, example indexes and
 * meta.json under `outDir`, written atomically) and returns the meta.
 * @example
 * const meta = await prepareMlmData({ tokenizer: loadTokenizer("bert-base-uncased"), tokenizerSpec: "bert-base-uncased",
 *   inputs: ["wiki.txt"], docSeparator: "\n\n", outDir: "data/wiki-mlm", maxSeqLen: 128 });
 * console.log(meta.mlm!.splits.train.examples);
 */
export async function prepareMlmData(opts: MlmPrepareOptions): Promise<PreparedMeta> {
  const tok = opts.tokenizer;
  const valFraction = opts.valFraction ?? 0.005;
  const shardTokens = opts.shardTokens ?? 100_000_000;
  if (!(valFraction >= 0 && valFraction < 1)) throw new ValueError(`valFraction must be in [0, 1), got ${valFraction}`);
  if (!Number.isSafeInteger(shardTokens) || shardTokens < 1) throw new ValueError(`shardTokens must be a positive integer, got ${shardTokens}`);
  if (opts.inputs.length === 0) throw new ValueError("no inputs given: pass at least one file (or a document source)");
  if (opts.format !== undefined && !["auto", "text", "jsonl"].includes(opts.format)) {
    throw new ValueError(`format must be "auto", "text" or "jsonl", got ${JSON.stringify(opts.format)}`);
  }
  if (opts.docSeparator === "") throw new ValueError("docSeparator must not be empty (omit it to treat each file as one document)");
  const { maxSeqLen, shortSeqProb, seed, bufferTokens } = _checkOptions(opts);
  const special = mlmSpecialIds(tok);
  // The shard header wants an end-of-text id; mlm shards hold none, so any valid id serves.
  const eotToken = Number.isInteger(tok.eotToken) && tok.eotToken >= 0 && tok.eotToken < tok.vocabSize ? tok.eotToken : special.sep;
  const dtype = tokenDtypeFor(tok.vocabSize);
  const outDir = resolve(opts.outDir);
  const existing = await isNonEmptyDir(outDir);
  if (existing === "file") throw new ValueError(`output path ${outDir} is a file; choose a directory`);
  if (existing && !opts.overwrite) throw new ValueError(`output directory ${outDir} already exists and is not empty; pass --overwrite to replace it`);

  const inputs = await resolveInputs(opts, opts.pieceSizes ?? DEFAULT_PIECE_SIZES);
  const totalBytes = inputs.reduce((s, i) => s + i.info.bytes, 0);
  await mkdir(dirname(outDir), { recursive: true });
  const tmpDir = join(dirname(outDir), `.${basename(outDir)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  await mkdir(tmpDir);
  const [seedLo, seedHi] = splitU53(seed);
  const writer = (split: Split, code: number): _MlmSplitWriter =>
    new _MlmSplitWriter({ dir: tmpDir, split, dtype, eotToken, vocabSize: tok.vocabSize, shardTokens, maxSeqLen, shortSeqProb, bufferTokens, special, rng: new _Rng([seedLo, seedHi, code]) });
  const writers: Record<Split, _MlmSplitWriter> = { train: writer("train", 0), val: writer("val", 1) };
  // Specials inside a sentence (a tokenizer that adds [CLS]/[SEP] itself, or text that spells
  // "[MASK]") would break the pair layout and the masking rule, so they are dropped.
  const drop = new Set([special.cls, special.sep, special.mask, special.pad]);
  const progress = opts.progress === false ? undefined : new Progress("prepare", { total: totalBytes || undefined, unit: "MB", unitScale: 1e6 });
  try {
    let docIndex = 0;
    let current = writers.train;
    const splitter = new SentenceSplitter();
    const addSentences = async (sentences: string[]): Promise<void> => {
      for (const s of sentences) {
        const ids = Int32Array.from(tok.encode(s).filter((id) => !drop.has(id)));
        if (ids.length > 0) await current.addSentence(ids);
      }
    };
    const onBytes = (n: number): void => progress?.tick(n);
    for (const input of inputs) {
      for await (const piece of input.pieces(onBytes)) {
        if (piece.first) {
          await addSentences(splitter.flush());
          current = isValDocument(docIndex++, valFraction) ? writers.val : writers.train;
          await current.startDocument();
        }
        await addSentences(splitter.push(piece.text));
      }
      if (input.utf8 && input.utf8.invalidBytes > 0) opts.onInvalidUtf8?.(input.info.path, input.utf8.invalidBytes);
    }
    await addSentences(splitter.flush());
    const train = await writers.train.close();
    const val = await writers.val.close();
    progress?.done();
    const meta: PreparedMeta = {
      format: PREPARED_FORMAT,
      version: PREPARED_FORMAT_VERSION,
      task: "mlm",
      tokenizer: { spec: opts.tokenizerSpec ?? tok.name, name: tok.name, vocabSize: tok.vocabSize, eotToken, fingerprint: tokenizerFingerprint(tok) },
      dtype,
      eotPlacement: "none",
      valFraction,
      shardTokens,
      docSeparator: opts.docSeparator ?? null,
      splits: { train: train.split, val: val.split },
      sources: inputs.map((i) => i.info),
      createdAt: new Date().toISOString(),
      mlm: { maxSeqLen, shortSeqProb, seed, special, bufferTokens, splits: { train: train.mlm, val: val.mlm } },
    };
    await writeFileSynced(join(tmpDir, META_FILE), `${JSON.stringify(meta, null, 2)}\n`);
    if (!(await installDir(tmpDir, outDir, opts.overwrite ?? false))) {
      throw new ValueError(`output directory ${outDir} was created by someone else while preparing; pass --overwrite to replace it`);
    }
    return meta;
  } catch (err) {
    await writers.train.abort();
    await writers.val.abort();
    await rm(tmpDir, { recursive: true, force: true });
    throw err;
  }
}

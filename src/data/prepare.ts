/**
 * prepareData: text in, token shards out (what `megalith prepare` runs).
 *
 * Inputs are streamed: plain text files are read in 1 MiB chunks and JSONL files line by line,
 * and long documents are tokenized in bounded pieces, so memory stays constant however much
 * text goes in. Documents are split between train and val deterministically by their index
 * (see isValDocument), then written with an eot before each document into shards of at most
 * `shardTokens` tokens (a document may continue into the next shard).
 *
 * Everything is written into `<outDir>.tmp-<pid>-<hex>`; meta.json is written last and the
 * directory is renamed to `outDir` only when complete. A directory with a valid meta.json is
 * therefore always whole, and a crashed run leaves only a `.tmp-` sibling behind.
 *
 * Document boundaries:
 * - JSONL (`.jsonl` / `.ndjson`, or format "jsonl"): one document per line, from its string
 *   `text` field. Blank lines are skipped.
 * - Plain text: the whole file is one document, unless `docSeparator` is given: then the file is
 *   split at each occurrence of that exact string (e.g. "\n\n" for paragraphs, or
 *   "<|endoftext|>"), which is dropped.
 * - In-memory sources (DocumentSource, e.g. the Brown corpus): one document per string.
 * Empty documents are skipped everywhere.
 */

import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { ValueError } from "../core/errors.js";
import { Progress } from "../core/progress.js";
import type { Tokenizer } from "../tokenizers/index.js";
import { DEFAULT_PIECE_SIZES, documentPieces, jsonlFilePieces, textFilePieces, type PieceSizes, type TextPiece } from "./_text_sources.js";
import {
  META_FILE,
  PREPARED_FORMAT,
  PREPARED_FORMAT_VERSION,
  type PreparedMeta,
  type ShardInfo,
  type SourceInfo,
  type Split,
  type SplitInfo,
} from "./meta.js";
import { ShardWriter, tokenDtypeFor, type TokenDtype } from "./shards.js";
import { Utf8Checker } from "./_utf8.js";

/**
 * The part of a Tokenizer that data preparation uses: any object with these members works
 * (tests use a tiny byte-level one).
 */
export type DataTokenizer = Pick<Tokenizer, "name" | "vocabSize" | "eotToken" | "encode">;

/** Documents held in memory (or produced lazily), e.g. a built-in corpus. One string = one document. */
export interface DocumentSource {
  /** Recorded in meta.json's sources, e.g. "brown". */
  name: string;
  documents: Iterable<string> | AsyncIterable<string>;
  /** Total UTF-8 bytes, for the progress bar's percentage; omit if unknown. */
  bytes?: number;
}

/** An input: a file path, or in-memory documents. */
export type PrepareInput = string | DocumentSource;

/** How to read input files. "auto" picks jsonl for `.jsonl`/`.ndjson` names, text otherwise. */
export type InputFormat = "auto" | "text" | "jsonl";

/** Options for prepareData. */
export interface PrepareOptions {
  /** Tokenizer to encode with, e.g. loadTokenizer("gpt2"). */
  tokenizer: DataTokenizer;
  /** What identifies the tokenizer for a user (`gpt2` or a path); recorded in meta.json. Default tokenizer.name. */
  tokenizerSpec?: string;
  /** Files (text or JSONL) and/or in-memory document sources, read in order. */
  inputs: PrepareInput[];
  /** Output directory; created (atomically) by this call. */
  outDir: string;
  /** Fraction of documents sent to the val split, in [0, 1). Default 0.005. */
  valFraction?: number;
  /** Maximum tokens per shard. Default 100,000,000 (200 MB as uint16). */
  shardTokens?: number;
  /** Input file format. Default "auto". */
  format?: InputFormat;
  /** Splits plain text files into documents at this string. Default: one file = one document. */
  docSeparator?: string;
  /** Replace `outDir` if it exists. Default false (an existing non-empty outDir is an error). */
  overwrite?: boolean;
  /** Show a progress line (MB of input per second) on stderr. Default true. */
  progress?: boolean;
  /** Piece sizes for tokenizing long documents; tests shrink them. Default 256 Ki / 8 Mi chars. */
  pieceSizes?: PieceSizes;
  /**
   * Refuse input files that are not valid UTF-8 (a FormatError naming the file and byte
   * offset). Default false: invalid bytes become U+FFFD, as any decoder does, and are counted.
   */
  strictUtf8?: boolean;
  /** Called once per input file that held invalid UTF-8, with the number of bytes replaced. */
  onInvalidUtf8?: (file: string, bytes: number) => void;
}

/**
 * Whether document `index` goes to val: spreads val documents evenly, so that among the first n
 * documents exactly round(n * valFraction) are val (half rounds up). No randomness, no seed:
 * the split depends only on the document order, and adding documents at the end never moves an
 * earlier document between splits.
 * @example isValDocument(99, 0.005) // true: the first val document is the 100th
 */
export function isValDocument(index: number, valFraction: number): boolean {
  return Math.floor((index + 1) * valFraction + 0.5) > Math.floor(index * valFraction + 0.5);
}

const FINGERPRINT_PROBE =
  "Megalith tokenizer fingerprint.\nThe quick brown fox jumps over the lazy dog; 0123456789 times!\n\n" +
  "  Indented\ttabs, CamelCase, don't, URLs like https://example.com/a?b=c, émigré, 日本語, 🙂.";

/**
 * A short hash of the ids a tokenizer gives a fixed probe text (plus its vocabSize and eot):
 * two tokenizers with the same fingerprint encode text the same way in all likelihood. Used to
 * check that a cached prepared directory matches the tokenizer in use.
 * @example tokenizerFingerprint(tok) // "3f1c0a9e5b7d2e44"
 */
export function tokenizerFingerprint(tokenizer: DataTokenizer): string {
  const ids = tokenizer.encode(FINGERPRINT_PROBE);
  const h = createHash("sha256").update(JSON.stringify({ ids, vocabSize: tokenizer.vocabSize, eot: tokenizer.eotToken }));
  return h.digest("hex").slice(0, 16);
}

/** Writes one split: an eot before each document, rotating shards at `shardTokens`. */
class SplitWriter {
  private readonly shards: ShardInfo[] = [];
  private current: ShardWriter | undefined;
  private documents = 0;
  private tokens = 0;

  constructor(
    private readonly dir: string,
    private readonly split: Split,
    private readonly dtype: TokenDtype,
    private readonly tokenizer: DataTokenizer,
    private readonly shardTokens: number,
  ) {}

  async startDocument(): Promise<void> {
    this.documents++;
    await this.append([this.tokenizer.eotToken]);
  }

  async append(ids: number[]): Promise<void> {
    let at = 0;
    while (at < ids.length) {
      if (this.current === undefined || this.current.tokenCount === this.shardTokens) await this.rotate();
      const cur = this.current!;
      const n = Math.min(ids.length - at, this.shardTokens - cur.tokenCount);
      await cur.append(at === 0 && n === ids.length ? ids : ids.slice(at, at + n));
      at += n;
      this.tokens += n;
    }
  }

  private async rotate(): Promise<void> {
    await this.closeCurrent();
    const file = `${this.split}_${String(this.shards.length).padStart(6, "0")}.bin`;
    this.current = await ShardWriter.create(join(this.dir, file), {
      dtype: this.dtype,
      eotToken: this.tokenizer.eotToken,
      vocabSize: this.tokenizer.vocabSize,
    });
    this.shards.push({ file, tokens: 0 });
  }

  private async closeCurrent(): Promise<void> {
    if (this.current === undefined) return;
    const { tokenCount } = await this.current.close();
    this.shards[this.shards.length - 1].tokens = tokenCount;
    this.current = undefined;
  }

  async close(): Promise<SplitInfo> {
    await this.closeCurrent();
    return { documents: this.documents, tokens: this.tokens, shards: this.shards };
  }

  async abort(): Promise<void> {
    await this.current?.abort();
    this.current = undefined;
  }
}

/** An input ready to stream. Exported (not from index.ts) for mlm_prepare.ts, which reads inputs the same way. */
export interface ResolvedInput {
  info: SourceInfo;
  pieces: (onBytes: (n: number) => void) => AsyncGenerator<TextPiece>;
  /** Files only: counts (or, strict, refuses) invalid UTF-8 as the file is read. */
  utf8?: Utf8Checker;
}

/** Checks the inputs (files exist, formats) and wraps each as a piece stream; shared with mlm_prepare.ts. */
export async function resolveInputs(opts: PrepareOptions, sizes: PieceSizes): Promise<ResolvedInput[]> {
  const format = opts.format ?? "auto";
  return Promise.all(
    opts.inputs.map(async (input): Promise<ResolvedInput> => {
      if (typeof input !== "string") {
        const bytes = input.bytes ?? 0;
        return { info: { path: input.name, bytes, format: "documents" }, pieces: (on) => documentPieces(input.documents, on, sizes) };
      }
      let st;
      try {
        st = await stat(input);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new ValueError(`input file not found: ${input}`);
        throw err;
      }
      if (!st.isFile()) throw new ValueError(`input is not a regular file: ${input}`);
      const fmt = format === "auto" ? (/\.(jsonl|ndjson)$/i.test(input) ? "jsonl" : "text") : format;
      const info: SourceInfo = { path: input, bytes: st.size, format: fmt };
      const utf8 = new Utf8Checker(input, opts.strictUtf8 ?? false);
      return fmt === "jsonl"
        ? { info, utf8, pieces: (on) => jsonlFilePieces(input, on, sizes, utf8) }
        : { info, utf8, pieces: (on) => textFilePieces(input, opts.docSeparator, on, sizes, utf8) };
    }),
  );
}

/** Whether `path` is a non-empty directory ("file" when it is a file). */
export async function isNonEmptyDir(path: string): Promise<boolean | "file"> {
  try {
    return (await readdir(path)).length > 0;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return false;
    if (code === "ENOTDIR") return "file";
    throw err;
  }
}

/**
 * Moves a complete directory `tmp` to `out`. If `out` exists: with `overwrite`, the old one is
 * renamed aside, the new one renamed in, and the old one deleted; otherwise a ValueError. Returns
 * false (leaving `tmp` in place) if `out` appeared meanwhile and `overwrite` is off.
 */
export async function installDir(tmp: string, out: string, overwrite: boolean): Promise<boolean> {
  try {
    await rename(tmp, out);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOTDIR" && code !== "EISDIR") throw err;
  }
  if (!overwrite) return false;
  const old = `${out}.old-${process.pid}-${randomBytes(4).toString("hex")}`;
  await rename(out, old);
  await rename(tmp, out);
  await rm(old, { recursive: true, force: true });
  return true;
}

/** Writes `text` to `path` and fsyncs it. */
export async function writeFileSynced(path: string, text: string): Promise<void> {
  const fh = await open(path, "wx");
  try {
    await fh.writeFile(text, "utf8");
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Tokenizes the inputs into train/val shards plus meta.json under `outDir`, and returns the meta.
 * @example
 * const meta = await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2",
 *   inputs: ["corpus.jsonl"], outDir: "data/corpus" });
 * console.log(meta.splits.train.tokens, meta.splits.val.tokens);
 */
export async function prepareData(opts: PrepareOptions): Promise<PreparedMeta> {
  const valFraction = opts.valFraction ?? 0.005;
  const shardTokens = opts.shardTokens ?? 100_000_000;
  const sizes = opts.pieceSizes ?? DEFAULT_PIECE_SIZES;
  const tok = opts.tokenizer;
  if (!(valFraction >= 0 && valFraction < 1)) throw new ValueError(`valFraction must be in [0, 1), got ${valFraction}`);
  if (!Number.isSafeInteger(shardTokens) || shardTokens < 1) throw new ValueError(`shardTokens must be a positive integer, got ${shardTokens}`);
  if (opts.inputs.length === 0) throw new ValueError("no inputs given: pass at least one file (or a document source)");
  if (opts.format !== undefined && !["auto", "text", "jsonl"].includes(opts.format)) {
    throw new ValueError(`format must be "auto", "text" or "jsonl", got ${JSON.stringify(opts.format)}`);
  }
  if (opts.docSeparator === "") throw new ValueError("docSeparator must not be empty (omit it to treat each file as one document)");
  if (!Number.isInteger(tok.eotToken) || tok.eotToken < 0 || tok.eotToken >= tok.vocabSize) {
    throw new ValueError(`tokenizer ${tok.name}: eotToken ${tok.eotToken} is not an id below vocabSize ${tok.vocabSize}`);
  }
  const dtype = tokenDtypeFor(tok.vocabSize);
  const outDir = resolve(opts.outDir);
  const existing = await isNonEmptyDir(outDir);
  if (existing === "file") throw new ValueError(`output path ${outDir} is a file; choose a directory`);
  if (existing && !opts.overwrite) throw new ValueError(`output directory ${outDir} already exists and is not empty; pass --overwrite to replace it`);

  const inputs = await resolveInputs(opts, sizes);
  const totalBytes = inputs.reduce((s, i) => s + i.info.bytes, 0);
  await mkdir(dirname(outDir), { recursive: true });
  const tmpDir = join(dirname(outDir), `.${basename(outDir)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  await mkdir(tmpDir);

  const writers: Record<Split, SplitWriter> = {
    train: new SplitWriter(tmpDir, "train", dtype, tok, shardTokens),
    val: new SplitWriter(tmpDir, "val", dtype, tok, shardTokens),
  };
  const progress = opts.progress === false ? undefined : new Progress("prepare", { total: totalBytes || undefined, unit: "MB", unitScale: 1e6 });
  try {
    let docIndex = 0;
    let current = writers.train;
    const onBytes = (n: number): void => progress?.tick(n);
    for (const input of inputs) {
      for await (const piece of input.pieces(onBytes)) {
        if (piece.first) {
          current = isValDocument(docIndex++, valFraction) ? writers.val : writers.train;
          await current.startDocument();
        }
        await current.append(tok.encode(piece.text));
      }
      if (input.utf8 && input.utf8.invalidBytes > 0) opts.onInvalidUtf8?.(input.info.path, input.utf8.invalidBytes);
    }
    const splits = { train: await writers.train.close(), val: await writers.val.close() };
    progress?.done();
    const meta: PreparedMeta = {
      format: PREPARED_FORMAT,
      version: PREPARED_FORMAT_VERSION,
      tokenizer: {
        spec: opts.tokenizerSpec ?? tok.name,
        name: tok.name,
        vocabSize: tok.vocabSize,
        eotToken: tok.eotToken,
        fingerprint: tokenizerFingerprint(tok),
      },
      dtype,
      eotPlacement: "before-document",
      valFraction,
      shardTokens,
      docSeparator: opts.docSeparator ?? null,
      splits,
      sources: inputs.map((i) => i.info),
      createdAt: new Date().toISOString(),
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

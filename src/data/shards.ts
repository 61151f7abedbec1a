/**
 * The token shard format: one file per shard, a 64-byte header then the tokens.
 *
 * ```
 * offset  size  field
 *      0     8  magic "MGLTOKS\0"
 *      8     4  u32 format version (1)
 *     12     4  u32 token dtype: 1 = uint16, 2 = uint32
 *     16     8  u64 token count
 *     24     4  u32 end-of-text token id
 *     28    36  reserved, zero
 *     64     -  tokens, little-endian, `count * bytesPerToken` bytes
 * ```
 *
 * Documents are separated by the end-of-text token, placed *before* each document (as nanoGPT
 * and llm.c do), so every document starts right after an eot and a model learns to begin a
 * document from the eot. uint16 is used whenever every id fits (vocabSize <= 65536), halving
 * disk and page-cache use; bigger vocabularies get uint32.
 *
 * The writer streams: tokens go through a fixed buffer to a temporary file, the count is patched
 * into the header at close, and the file is renamed to its final name only when complete, so a
 * shard under its final name is always whole. The reader checks the magic, version, dtype and
 * that the file size is exactly header + count * bytesPerToken (a truncated copy is caught
 * before any training step reads garbage).
 */

import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { FormatError, ValueError } from "../core/errors.js";

/** The 8 magic bytes every shard starts with. */
export const SHARD_MAGIC = "MGLTOKS\0";
/** The shard format version this code writes and reads. */
export const SHARD_VERSION = 1;
/** Size of the fixed header, in bytes. */
export const SHARD_HEADER_BYTES = 64;

/** How token ids are stored in a shard. */
export type TokenDtype = "uint16" | "uint32";

const DTYPE_CODE: Record<TokenDtype, number> = { uint16: 1, uint32: 2 };
const CODE_DTYPE: Record<number, TokenDtype | undefined> = { 1: "uint16", 2: "uint32" };
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Bytes per token for a dtype. */
export function bytesPerToken(dtype: TokenDtype): number {
  return dtype === "uint16" ? 2 : 4;
}

/**
 * The smallest dtype that holds every id of a vocabulary: uint16 when vocabSize <= 65536.
 * @example tokenDtypeFor(50257) // "uint16"
 */
export function tokenDtypeFor(vocabSize: number): TokenDtype {
  if (!Number.isInteger(vocabSize) || vocabSize <= 0 || vocabSize > 2 ** 32) {
    throw new ValueError(`vocabSize must be an integer in [1, 2^32], got ${vocabSize}`);
  }
  return vocabSize <= 65536 ? "uint16" : "uint32";
}

/** What a shard header says. */
export interface ShardHeader {
  /** Format version (always SHARD_VERSION today). */
  version: number;
  /** Storage type of the tokens. */
  dtype: TokenDtype;
  /** Number of tokens after the header. */
  tokenCount: number;
  /** End-of-text id that separates documents. */
  eotToken: number;
}

function encodeHeader(h: ShardHeader): Uint8Array {
  const bytes = new Uint8Array(SHARD_HEADER_BYTES);
  for (let i = 0; i < SHARD_MAGIC.length; i++) bytes[i] = SHARD_MAGIC.charCodeAt(i);
  const view = new DataView(bytes.buffer);
  view.setUint32(8, h.version, true);
  view.setUint32(12, DTYPE_CODE[h.dtype], true);
  view.setBigUint64(16, BigInt(h.tokenCount), true);
  view.setUint32(24, h.eotToken, true);
  return bytes;
}

function decodeHeader(file: string, bytes: Uint8Array): ShardHeader {
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== SHARD_MAGIC) {
    throw new FormatError(file, `not a Megalith token shard: magic is ${JSON.stringify(magic)}, expected ${JSON.stringify(SHARD_MAGIC)}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== SHARD_VERSION) {
    throw new FormatError(file, `shard format version ${version} is not supported (this build reads version ${SHARD_VERSION}); re-run \`megalith prepare\``);
  }
  const code = view.getUint32(12, true);
  const dtype = CODE_DTYPE[code];
  if (dtype === undefined) throw new FormatError(file, `unknown token dtype code ${code} (expected 1 = uint16 or 2 = uint32)`);
  const count = view.getBigUint64(16, true);
  if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(file, `token count ${count} is not plausible; the header is corrupted`);
  return { version, dtype, tokenCount: Number(count), eotToken: view.getUint32(24, true) };
}

/** Checks `size` against the header; a mismatch is a truncated or padded file. */
function checkSize(file: string, header: ShardHeader, size: number): void {
  const expected = SHARD_HEADER_BYTES + header.tokenCount * bytesPerToken(header.dtype);
  if (size !== expected) {
    throw new FormatError(
      file,
      `file is ${size} bytes but its header promises ${header.tokenCount} ${header.dtype} tokens = ${expected} bytes ` +
        `(${size < expected ? "truncated" : "trailing data"}); re-run \`megalith prepare\` or copy the file again`,
    );
  }
}

/**
 * Reads and validates a shard's header, including that the file size matches it.
 * @example const { tokenCount, dtype } = readShardHeader("data/train_000000.bin");
 */
export function readShardHeader(path: string): ShardHeader {
  const fd = openSync(path, "r");
  try {
    return readHeaderFd(path, fd);
  } finally {
    closeSync(fd);
  }
}

function readHeaderFd(path: string, fd: number): ShardHeader {
  const size = fstatSync(fd).size;
  if (size < SHARD_HEADER_BYTES) throw new FormatError(path, `file is ${size} bytes, shorter than the ${SHARD_HEADER_BYTES}-byte shard header (truncated)`);
  const bytes = new Uint8Array(SHARD_HEADER_BYTES);
  readExactly(path, fd, bytes, 0);
  const header = decodeHeader(path, bytes);
  checkSize(path, header, size);
  return header;
}

function readExactly(path: string, fd: number, dst: Uint8Array, position: number): void {
  let done = 0;
  while (done < dst.length) {
    const n = readSync(fd, dst, done, Math.min(dst.length - done, 1 << 30), position + done);
    if (n === 0) throw new FormatError(path, `unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/** Reinterprets little-endian bytes as token ids (copying only on big-endian hosts). */
function tokensFromBytes(bytes: Uint8Array, dtype: TokenDtype): Uint16Array | Uint32Array {
  const n = bytes.byteLength / bytesPerToken(dtype);
  if (LITTLE_ENDIAN && bytes.byteOffset % bytesPerToken(dtype) === 0) {
    return dtype === "uint16" ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = dtype === "uint16" ? new Uint16Array(n) : new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = dtype === "uint16" ? view.getUint16(2 * i, true) : view.getUint32(4 * i, true);
  return out;
}

/**
 * Reads a whole shard into memory (shards are bounded by `--shard-tokens`, 100M tokens by
 * default = 200 MB as uint16). For random access without loading, use ShardReader.
 * @example const { tokens } = readShard("data/val_000000.bin");
 */
export function readShard(path: string): { header: ShardHeader; tokens: Uint16Array | Uint32Array } {
  const reader = new ShardReader(path);
  try {
    return { header: reader.header, tokens: reader.read(0, reader.header.tokenCount) };
  } finally {
    reader.close();
  }
}

/**
 * Random access to a shard's tokens through an open file descriptor. Node has no mmap; positional
 * reads of a window through the OS page cache do the same job with constant memory.
 * @example
 * const r = new ShardReader("data/train_000000.bin");
 * const window = r.read(1024, 257); // 257 tokens starting at token 1024
 * r.close();
 */
export class ShardReader {
  /** The validated header. */
  readonly header: ShardHeader;
  readonly path: string;
  private fd: number | undefined;

  constructor(path: string) {
    this.path = path;
    const fd = openSync(path, "r");
    try {
      this.header = readHeaderFd(path, fd);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    this.fd = fd;
  }

  /** Reads `count` tokens starting at token `start` into a fresh typed array. */
  read(start: number, count: number): Uint16Array | Uint32Array {
    if (this.fd === undefined) throw new ValueError(`ShardReader for ${this.path} is closed`);
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.header.tokenCount) {
      throw new ValueError(`read(${start}, ${count}) is outside ${this.path}, which holds ${this.header.tokenCount} tokens`);
    }
    const bpt = bytesPerToken(this.header.dtype);
    const bytes = new Uint8Array(count * bpt);
    readExactly(this.path, this.fd, bytes, SHARD_HEADER_BYTES + start * bpt);
    return tokensFromBytes(bytes, this.header.dtype);
  }

  /** Closes the file descriptor. Safe to call twice. */
  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Options for ShardWriter.create. */
export interface ShardWriterOptions {
  /** Token storage type; pick with tokenDtypeFor(vocabSize). */
  dtype: TokenDtype;
  /** End-of-text id recorded in the header. */
  eotToken: number;
  /** When given, every id must be below it (catches a tokenizer/vocabulary mismatch early). */
  vocabSize?: number;
  /** Tokens buffered in memory between writes. Default 1M (2-4 MB). */
  bufferTokens?: number;
}

/**
 * Streams tokens into a new shard. Data goes to `<path>.tmp-<pid>-<hex>` and is renamed to
 * `path` by close(), after the token count is patched into the header and the file is fsynced.
 * @example
 * const w = await ShardWriter.create("out/train_000000.bin", { dtype: "uint16", eotToken: 50256 });
 * await w.append([50256, 464, 2068]);
 * const { tokenCount } = await w.close();
 */
export class ShardWriter {
  readonly path: string;
  readonly dtype: TokenDtype;
  readonly eotToken: number;
  private readonly tmpPath: string;
  private fh: FileHandle | undefined;
  private readonly buffer: Uint16Array | Uint32Array;
  private buffered = 0;
  private written = 0;
  private readonly maxId: number;

  private constructor(path: string, tmpPath: string, fh: FileHandle, opts: ShardWriterOptions) {
    this.path = path;
    this.tmpPath = tmpPath;
    this.fh = fh;
    this.dtype = opts.dtype;
    this.eotToken = opts.eotToken;
    const n = opts.bufferTokens ?? 1 << 20;
    this.buffer = opts.dtype === "uint16" ? new Uint16Array(n) : new Uint32Array(n);
    this.maxId = Math.min(opts.dtype === "uint16" ? 0xffff : 0xffffffff, (opts.vocabSize ?? Infinity) - 1);
  }

  /** Opens the temporary file and writes a provisional header (count 0). */
  static async create(path: string, opts: ShardWriterOptions): Promise<ShardWriter> {
    const maxId = opts.dtype === "uint16" ? 0xffff : 0xffffffff;
    if (!Number.isInteger(opts.eotToken) || opts.eotToken < 0 || opts.eotToken > maxId) {
      throw new ValueError(`eotToken ${opts.eotToken} does not fit the shard dtype ${opts.dtype}`);
    }
    if (opts.bufferTokens !== undefined && (!Number.isInteger(opts.bufferTokens) || opts.bufferTokens <= 0)) {
      throw new ValueError(`bufferTokens must be a positive integer, got ${opts.bufferTokens}`);
    }
    const tmpPath = `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    const fh = await open(tmpPath, "wx");
    const w = new ShardWriter(path, tmpPath, fh, opts);
    await w.writeAt(encodeHeader({ version: SHARD_VERSION, dtype: opts.dtype, tokenCount: 0, eotToken: opts.eotToken }), 0);
    return w;
  }

  /** Tokens appended so far (buffered or written). */
  get tokenCount(): number {
    return this.written + this.buffered;
  }

  /** Appends token ids. Throws ValueError for an id that is negative, fractional or too big for the dtype. */
  async append(tokens: ArrayLike<number>): Promise<void> {
    if (this.fh === undefined) throw new ValueError(`ShardWriter for ${this.path} is closed`);
    let i = 0;
    while (i < tokens.length) {
      const n = Math.min(tokens.length - i, this.buffer.length - this.buffered);
      for (let j = 0; j < n; j++) {
        const t = tokens[i + j];
        // One comparison chain per token: cheap next to tokenization, and it turns a silent
        // wrap-around (70000 stored as 4464 in a uint16) into an error.
        if (!(t >= 0 && t <= this.maxId && Math.floor(t) === t)) {
          throw new ValueError(
            `token id ${t} at index ${i + j} is not a valid id for ${this.path} (dtype ${this.dtype}, ids must be integers in [0, ${this.maxId}])`,
          );
        }
        this.buffer[this.buffered + j] = t;
      }
      this.buffered += n;
      i += n;
      if (this.buffered === this.buffer.length) await this.flush();
    }
  }

  /** Flushes, patches the count into the header, fsyncs and renames to the final path. */
  async close(): Promise<{ path: string; tokenCount: number }> {
    if (this.fh === undefined) throw new ValueError(`ShardWriter for ${this.path} is already closed`);
    await this.flush();
    await this.writeAt(encodeHeader({ version: SHARD_VERSION, dtype: this.dtype, tokenCount: this.written, eotToken: this.eotToken }), 0);
    await this.fh.sync();
    await this.fh.close();
    this.fh = undefined;
    await rename(this.tmpPath, this.path);
    return { path: this.path, tokenCount: this.written };
  }

  /** Closes and deletes the temporary file; the final path is never created. */
  async abort(): Promise<void> {
    if (this.fh !== undefined) await this.fh.close();
    this.fh = undefined;
    await unlink(this.tmpPath).catch(() => undefined);
  }

  private async flush(): Promise<void> {
    if (this.buffered === 0) return;
    const bpt = bytesPerToken(this.dtype);
    const src = this.buffer.subarray(0, this.buffered);
    let bytes: Uint8Array;
    if (LITTLE_ENDIAN) {
      bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    } else {
      bytes = new Uint8Array(src.length * bpt);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < src.length; i++) {
        if (bpt === 2) view.setUint16(2 * i, src[i], true);
        else view.setUint32(4 * i, src[i], true);
      }
    }
    await this.writeAt(bytes, SHARD_HEADER_BYTES + this.written * bpt);
    this.written += this.buffered;
    this.buffered = 0;
  }

  private async writeAt(bytes: Uint8Array, position: number): Promise<void> {
    const fh = this.fh!;
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
      done += bytesWritten;
    }
  }
}

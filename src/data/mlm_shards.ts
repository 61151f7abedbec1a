/**
 * The example index of an mlm directory: where each sentence-pair example sits in the split's
 * token shards, where its second segment starts, and its next-sentence label.
 *
 * An mlm split is stored as ordinary token shards (shards.ts) holding the examples back to back,
 * each `[CLS] A [SEP] B [SEP]` exactly as the model sees it before masking and padding, plus one
 * index file per split (`train_index.bin`, `val_index.bin`):
 *
 * ```
 * offset  size  field
 *      0     8  magic "MGLMLMX\0"
 *      8     4  u32 format version (1)
 *     12     4  u32 record size in bytes (16)
 *     16     8  u64 example count
 *     24     4  u32 max_seq_len the examples were built for
 *     28    36  reserved, zero
 *     64     -  one 16-byte record per example, in file order:
 *                 0  8  u64 offset: first token of the example in the split (shards concatenated)
 *                 8  4  u32 length: tokens, [CLS] and both [SEP] included (<= max_seq_len)
 *                12  2  u16 segment B start: index of B's first token in the example (len(A) + 2)
 *                         (A and B hold at least one token each, so 5 <= length, 3 <= B start <= length - 2)
 *                14  1  u8  next-sentence label: 0 = B follows A in the text, 1 = B is random
 *                15  1  reserved, zero
 * ```
 *
 * An example never straddles two shards, so it is one positional read. Tokens are kept
 * unmasked and unpadded: masking is drawn at load time (mlm_masking.ts) and padding costs no
 * disk. Like a token shard, the index is written to a temporary name, its count patched in at
 * close, fsynced and renamed, and the reader checks that the file size matches the count.
 */

import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { FormatError, ValueError } from "../core/errors.js";

/** The 8 magic bytes every example index starts with. */
export const MLM_INDEX_MAGIC = "MGLMLMX\0";
/** The index format version this code writes and reads. */
export const MLM_INDEX_VERSION = 1;
/** Size of the index header, in bytes. */
export const MLM_INDEX_HEADER_BYTES = 64;
/** Size of one example record, in bytes. */
export const MLM_INDEX_RECORD_BYTES = 16;

/** Where one example is and what its label is. */
export interface MlmExampleRecord {
  /** Token offset of the example's [CLS] in the split, its shards concatenated in order. */
  offset: number;
  /** Tokens in the example, specials included. */
  length: number;
  /** Index of segment B's first token within the example: A spans [1, bStart - 1), B spans [bStart, length - 1). */
  bStart: number;
  /** Next-sentence label as Hugging Face's next_sentence_label: 0 = B is A's continuation, 1 = random. */
  nspLabel: 0 | 1;
}

/** What an index header says. */
export interface MlmIndexHeader {
  version: number;
  exampleCount: number;
  maxSeqLen: number;
}

function encodeHeader(h: MlmIndexHeader): Uint8Array {
  const bytes = new Uint8Array(MLM_INDEX_HEADER_BYTES);
  for (let i = 0; i < MLM_INDEX_MAGIC.length; i++) bytes[i] = MLM_INDEX_MAGIC.charCodeAt(i);
  const view = new DataView(bytes.buffer);
  view.setUint32(8, h.version, true);
  view.setUint32(12, MLM_INDEX_RECORD_BYTES, true);
  view.setBigUint64(16, BigInt(h.exampleCount), true);
  view.setUint32(24, h.maxSeqLen, true);
  return bytes;
}

function decodeHeader(file: string, bytes: Uint8Array, size: number): MlmIndexHeader {
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== MLM_INDEX_MAGIC) {
    throw new FormatError(file, `not a Megalith mlm example index: magic is ${JSON.stringify(magic)}, expected ${JSON.stringify(MLM_INDEX_MAGIC)}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== MLM_INDEX_VERSION) {
    throw new FormatError(file, `mlm index version ${version} is not supported (this build reads version ${MLM_INDEX_VERSION}); re-run \`megalith prepare --task mlm\``);
  }
  const recordBytes = view.getUint32(12, true);
  if (recordBytes !== MLM_INDEX_RECORD_BYTES) throw new FormatError(file, `record size is ${recordBytes} bytes, expected ${MLM_INDEX_RECORD_BYTES}; the header is corrupted`);
  const count = view.getBigUint64(16, true);
  if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(file, `example count ${count} is not plausible; the header is corrupted`);
  const exampleCount = Number(count);
  const expected = MLM_INDEX_HEADER_BYTES + exampleCount * MLM_INDEX_RECORD_BYTES;
  if (size !== expected) {
    throw new FormatError(
      file,
      `file is ${size} bytes but its header promises ${exampleCount} examples = ${expected} bytes ` +
        `(${size < expected ? "truncated" : "trailing data"}); re-run \`megalith prepare --task mlm\` or copy the file again`,
    );
  }
  return { version, exampleCount, maxSeqLen: view.getUint32(24, true) };
}

function readExactly(path: string, fd: number, dst: Uint8Array, position: number): void {
  let done = 0;
  while (done < dst.length) {
    const n = readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) throw new FormatError(path, `unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/**
 * Random access to an example index through an open file descriptor (one 16-byte positional
 * read per example: constant memory however many examples the split holds).
 * @example
 * const idx = new MlmIndexReader("data/bert/train_index.bin");
 * const { offset, length, bStart, nspLabel } = idx.read(0);
 * idx.close();
 */
export class MlmIndexReader {
  readonly header: MlmIndexHeader;
  readonly path: string;
  private fd: number | undefined;
  private readonly record = new Uint8Array(MLM_INDEX_RECORD_BYTES);
  private readonly view = new DataView(this.record.buffer);

  constructor(path: string) {
    this.path = path;
    const fd = openSync(path, "r");
    try {
      const size = fstatSync(fd).size;
      if (size < MLM_INDEX_HEADER_BYTES) throw new FormatError(path, `file is ${size} bytes, shorter than the ${MLM_INDEX_HEADER_BYTES}-byte index header (truncated)`);
      const bytes = new Uint8Array(MLM_INDEX_HEADER_BYTES);
      readExactly(path, fd, bytes, 0);
      this.header = decodeHeader(path, bytes, size);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    this.fd = fd;
  }

  /** The record of example `i` (0 <= i < exampleCount). */
  read(i: number): MlmExampleRecord {
    if (this.fd === undefined) throw new ValueError(`MlmIndexReader for ${this.path} is closed`);
    if (!Number.isSafeInteger(i) || i < 0 || i >= this.header.exampleCount) {
      throw new ValueError(`example ${i} is outside ${this.path}, which holds ${this.header.exampleCount} examples`);
    }
    readExactly(this.path, this.fd, this.record, MLM_INDEX_HEADER_BYTES + i * MLM_INDEX_RECORD_BYTES);
    const v = this.view;
    const offset = v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32;
    const length = v.getUint32(8, true);
    const bStart = v.getUint16(12, true);
    const nspLabel = v.getUint8(14);
    if (nspLabel > 1 || length < 5 || length > this.header.maxSeqLen || bStart < 3 || bStart > length - 2) {
      throw new FormatError(this.path, `record ${i} is corrupted (length ${length}, segment B start ${bStart}, label ${nspLabel}, max_seq_len ${this.header.maxSeqLen})`);
    }
    return { offset, length, bStart, nspLabel: nspLabel as 0 | 1 };
  }

  /** Closes the file descriptor. Safe to call twice. */
  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Streams example records into a new index file, written to `<path>.tmp-<pid>-<hex>` and
 * renamed to `path` by close() once the count is patched in and the file fsynced.
 * @example
 * const w = await MlmIndexWriter.create("out/train_index.bin", 128);
 * await w.append({ offset: 0, length: 9, bStart: 5, nspLabel: 0 });
 * await w.close();
 */
export class MlmIndexWriter {
  readonly path: string;
  readonly maxSeqLen: number;
  private readonly tmpPath: string;
  private fh: FileHandle | undefined;
  private readonly buffer: Uint8Array;
  private readonly view: DataView;
  private buffered = 0; // records in the buffer
  private written = 0; // records on disk

  private constructor(path: string, tmpPath: string, fh: FileHandle, maxSeqLen: number, bufferRecords: number) {
    this.path = path;
    this.tmpPath = tmpPath;
    this.fh = fh;
    this.maxSeqLen = maxSeqLen;
    this.buffer = new Uint8Array(bufferRecords * MLM_INDEX_RECORD_BYTES);
    this.view = new DataView(this.buffer.buffer);
  }

  /** Opens the temporary file and writes a provisional header (count 0). */
  static async create(path: string, maxSeqLen: number, bufferRecords = 1 << 16): Promise<MlmIndexWriter> {
    if (!Number.isInteger(maxSeqLen) || maxSeqLen < 5 || maxSeqLen > 65535) throw new ValueError(`maxSeqLen must be an integer in [5, 65535], got ${maxSeqLen}`);
    const tmpPath = `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    const fh = await open(tmpPath, "wx");
    const w = new MlmIndexWriter(path, tmpPath, fh, maxSeqLen, bufferRecords);
    await w.writeAt(encodeHeader({ version: MLM_INDEX_VERSION, exampleCount: 0, maxSeqLen }), 0);
    return w;
  }

  /** Records appended so far. */
  get exampleCount(): number {
    return this.written + this.buffered;
  }

  /** Appends one record; throws a ValueError for a record the format cannot hold. */
  async append(r: MlmExampleRecord): Promise<void> {
    if (this.fh === undefined) throw new ValueError(`MlmIndexWriter for ${this.path} is closed`);
    if (!Number.isSafeInteger(r.offset) || r.offset < 0 || !(r.length >= 5 && r.length <= this.maxSeqLen) || !(r.bStart >= 3 && r.bStart <= r.length - 2) || (r.nspLabel !== 0 && r.nspLabel !== 1)) {
      throw new ValueError(`example record ${JSON.stringify(r)} is invalid for ${this.path} (max_seq_len ${this.maxSeqLen})`);
    }
    const at = this.buffered * MLM_INDEX_RECORD_BYTES;
    const v = this.view;
    v.setUint32(at, r.offset % 2 ** 32, true);
    v.setUint32(at + 4, Math.floor(r.offset / 2 ** 32), true);
    v.setUint32(at + 8, r.length, true);
    v.setUint16(at + 12, r.bStart, true);
    v.setUint8(at + 14, r.nspLabel);
    v.setUint8(at + 15, 0);
    if (++this.buffered * MLM_INDEX_RECORD_BYTES === this.buffer.length) await this.flush();
  }

  /** Flushes, patches the count into the header, fsyncs and renames to the final path. */
  async close(): Promise<{ path: string; exampleCount: number }> {
    if (this.fh === undefined) throw new ValueError(`MlmIndexWriter for ${this.path} is already closed`);
    await this.flush();
    await this.writeAt(encodeHeader({ version: MLM_INDEX_VERSION, exampleCount: this.written, maxSeqLen: this.maxSeqLen }), 0);
    await this.fh.sync();
    await this.fh.close();
    this.fh = undefined;
    await rename(this.tmpPath, this.path);
    return { path: this.path, exampleCount: this.written };
  }

  /** Closes and deletes the temporary file; the final path is never created. */
  async abort(): Promise<void> {
    if (this.fh !== undefined) await this.fh.close();
    this.fh = undefined;
    await unlink(this.tmpPath).catch(() => undefined);
  }

  private async flush(): Promise<void> {
    if (this.buffered === 0) return;
    await this.writeAt(this.buffer.subarray(0, this.buffered * MLM_INDEX_RECORD_BYTES), MLM_INDEX_HEADER_BYTES + this.written * MLM_INDEX_RECORD_BYTES);
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

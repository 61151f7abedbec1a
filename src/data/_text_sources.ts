/**
 * Streaming readers that turn input files into documents, delivered as bounded text pieces.
 *
 * Memory stays constant in the input size: files are read in chunks, and a document longer than
 * `pieceChars` is cut into pieces that are tokenized one at a time. Pieces are cut only where a
 * GPT-2-style pre-tokenizer would split anyway, so tokenizing the pieces one by one gives the
 * same ids as tokenizing the whole document (see PieceSplitter).
 */

import { createReadStream } from "node:fs";
import { FormatError } from "../core/errors.js";
import { Utf8Checker } from "./_utf8.js";

/** A bounded piece of a document's text. `first` marks the start of a new document. */
export interface TextPiece {
  text: string;
  first: boolean;
}

/** Sizes for PieceSplitter, in UTF-16 code units. */
export interface PieceSizes {
  /** Cut a piece once this much text is pending. Default 256 Ki. */
  pieceChars: number;
  /** Cut anywhere (not only at a safe boundary) once this much is pending. Default 8 Mi. */
  hardChars: number;
}

export const DEFAULT_PIECE_SIZES: PieceSizes = { pieceChars: 1 << 18, hardChars: 1 << 23 };

/** `\s` as the GPT-2 pre-tokenizer's regex means it, with an ASCII fast path. */
function isSpace(s: string, i: number): boolean {
  const c = s.charCodeAt(i);
  if (c < 128) return c === 32 || (c >= 9 && c <= 13);
  return /\s/u.test(s[i]);
}

/** Whether cutting `s` before index `i` is safe (see lastSafeCut). Needs 2 <= i <= s.length - 2. */
function isSafeCut(s: string, i: number): boolean {
  if (s.charCodeAt(i) === 32) return !isSpace(s, i - 1) && !isSpace(s, i + 1);
  return s.charCodeAt(i - 1) === 10 && !isSpace(s, i - 2) && !isSpace(s, i);
}

/**
 * Finds the last index `i <= from` (2 <= i <= s.length - 2) where cutting `s` into s[0:i] and
 * s[i:] cannot change a GPT-2 pre-tokenization: either s[i-1] is "\n" after a non-space and
 * s[i] is not a space ("x\n|y"), or s[i] is " " between two non-spaces ("x| y"). The GPT-2
 * regex never matches across those points, and the matches on each side are the same with or
 * without the other side present. Returns -1 if there is none.
 */
export function lastSafeCut(s: string, from = s.length - 2): number {
  for (let i = Math.min(from, s.length - 2); i >= 2; i--) if (isSafeCut(s, i)) return i;
  return -1;
}

/** Like lastSafeCut, but the first safe index in [from, to). */
function firstSafeCut(s: string, from: number, to: number): number {
  for (let i = Math.max(from, 2); i < Math.min(to, s.length - 1); i++) if (isSafeCut(s, i)) return i;
  return -1;
}

/**
 * Accumulates a document's text and hands out pieces of about `pieceChars`, cut at safe points
 * (lastSafeCut). A document without any safe point for `hardChars` (one enormous "word") is cut
 * there anyway (never inside a UTF-16 surrogate pair): the only case where piecewise
 * tokenization can differ from whole-document tokenization, by a token or two at the cut.
 */
export class PieceSplitter {
  private pending = "";
  constructor(private readonly sizes: PieceSizes = DEFAULT_PIECE_SIZES) {}

  /** Adds text; returns the pieces now ready (possibly none). */
  push(text: string): string[] {
    this.pending += text;
    const out: string[] = [];
    const { pieceChars, hardChars } = this.sizes;
    while (this.pending.length >= pieceChars) {
      let cut = lastSafeCut(this.pending, pieceChars);
      if (cut < 0) cut = firstSafeCut(this.pending, pieceChars, hardChars);
      if (cut < 0) {
        if (this.pending.length < hardChars) break; // wait for more text
        cut = hardChars;
        const code = this.pending.charCodeAt(cut - 1);
        if (code >= 0xd800 && code <= 0xdbff) cut -= 1;
      }
      out.push(this.pending.slice(0, cut));
      this.pending = this.pending.slice(cut);
    }
    return out;
  }

  /** Ends the document: returns what is left (possibly ""). */
  flush(): string {
    const rest = this.pending;
    this.pending = "";
    return rest;
  }
}

/** Reads a file as raw byte chunks, calling `onBytes` with each chunk's size (for progress). */
async function* byteChunks(path: string, onBytes: (n: number) => void): AsyncGenerator<Buffer> {
  const stream = createReadStream(path, { highWaterMark: 1 << 20 });
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    onBytes(chunk.length);
    yield chunk;
  }
}

/**
 * A plain text file as documents. Without `separator` the whole file is one document; with it,
 * the file is split at every occurrence of the separator string (which is dropped). Empty
 * documents (two separators in a row, or a separator at the start or end) are skipped.
 */
export async function* textFilePieces(
  path: string,
  separator: string | undefined,
  onBytes: (n: number) => void,
  sizes: PieceSizes = DEFAULT_PIECE_SIZES,
  utf8: Utf8Checker = new Utf8Checker(path),
): AsyncGenerator<TextPiece> {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  const splitter = new PieceSplitter(sizes);
  let first = true; // the next piece yielded starts a document
  function* emit(pieces: string[]): Generator<TextPiece> {
    for (const text of pieces) {
      if (text.length === 0) continue;
      yield { text, first };
      first = false;
    }
  }
  let carry = "";
  const handle = function* (text: string, final: boolean): Generator<TextPiece> {
    if (separator === undefined || separator === "") {
      yield* emit(splitter.push(text));
      return;
    }
    carry += text;
    for (;;) {
      const at = carry.indexOf(separator);
      if (at < 0) break;
      yield* emit(splitter.push(carry.slice(0, at)));
      yield* emit([splitter.flush()]);
      first = true;
      carry = carry.slice(at + separator.length);
    }
    // Keep a tail that could be the start of a separator split across chunks.
    const keep = final ? 0 : separator.length - 1;
    if (carry.length > keep) {
      yield* emit(splitter.push(carry.slice(0, carry.length - keep)));
      carry = carry.slice(carry.length - keep);
    }
  };
  for await (const chunk of byteChunks(path, onBytes)) {
    utf8.push(chunk);
    yield* handle(decoder.decode(chunk, { stream: true }), false);
  }
  utf8.end();
  yield* handle(decoder.decode(), true);
  yield* emit([splitter.flush()]);
}

/**
 * A JSONL file as documents: one JSON object per line with a string `text` field. Blank lines
 * are skipped, as are documents whose text is "". A malformed line is a FormatError naming
 * `file:line`.
 */
export async function* jsonlFilePieces(
  path: string,
  onBytes: (n: number) => void,
  sizes: PieceSizes = DEFAULT_PIECE_SIZES,
  utf8: Utf8Checker = new Utf8Checker(path),
): AsyncGenerator<TextPiece> {
  let lineNo = 0;
  let rest: Buffer[] = [];
  const splitter = new PieceSplitter(sizes);
  function* parse(bytes: Buffer): Generator<TextPiece> {
    lineNo++;
    let line = bytes.toString("utf8");
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === "") return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      throw new FormatError(`${path}:${lineNo}`, `invalid JSON (${(err as Error).message}); each line must be an object like {"text": "..."}`);
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new FormatError(`${path}:${lineNo}`, `expected a JSON object with a "text" field, got ${Array.isArray(obj) ? "an array" : JSON.stringify(obj)}`);
    }
    if (!("text" in obj)) throw new FormatError(`${path}:${lineNo}`, `missing the "text" field (keys: ${Object.keys(obj).slice(0, 8).join(", ") || "none"})`);
    const text = (obj as { text: unknown }).text;
    if (typeof text !== "string") throw new FormatError(`${path}:${lineNo}`, `"text" must be a string, got ${text === null ? "null" : typeof text}`);
    let first = true;
    for (const piece of [...splitter.push(text), splitter.flush()]) {
      if (piece.length === 0) continue;
      yield { text: piece, first };
      first = false;
    }
  }
  for await (const chunk of byteChunks(path, onBytes)) {
    utf8.push(chunk);
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      const line = rest.length ? Buffer.concat([...rest, piece]) : piece;
      rest = [];
      yield* parse(line);
      start = nl + 1;
    }
    if (start < chunk.length) rest.push(chunk.subarray(start));
  }
  utf8.end();
  if (rest.length) yield* parse(Buffer.concat(rest));
}

/** In-memory documents as pieces; `onBytes` gets each document's UTF-8 size. */
export async function* documentPieces(
  documents: Iterable<string> | AsyncIterable<string>,
  onBytes: (n: number) => void,
  sizes: PieceSizes = DEFAULT_PIECE_SIZES,
): AsyncGenerator<TextPiece> {
  const splitter = new PieceSplitter(sizes);
  for await (const doc of documents) {
    onBytes(Buffer.byteLength(doc, "utf8"));
    let first = true;
    for (const piece of [...splitter.push(doc), splitter.flush()]) {
      if (piece.length === 0) continue;
      yield { text: piece, first };
      first = false;
    }
  }
}

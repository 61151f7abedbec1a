/**
 * Step 1 of BPE training: counting pre-tokens ("words") in text, streamed from files in chunks.
 *
 * `<|endoftext|>` separates documents and is never counted. Chunk edges are the delicate part: a
 * chunk may end inside a word, inside a whitespace run whose split depends on what follows, or
 * inside an `<|endoftext|>`. So only the pre-tokens that more text cannot change are counted, and
 * the rest is carried into the next chunk (see countSafePrefix).
 */
import { createReadStream } from "node:fs";
import type { Progress } from "../core/progress.js";
import { END_OF_TEXT } from "./byte_level_bpe.js";
import { pieceEnd } from "./_pretokenize.js";

/**
 * Past this many UTF-16 units of uncounted tail (a single enormous "word"), the tail is counted
 * as if the file ended there. Only pathological inputs get near it.
 */
const MAX_CARRY = 1 << 24;

/**
 * Adds the pre-tokens of a UTF-8 file to `counts`, reading `chunkBytes` at a time. Gives the same
 * counts as `countText` on the whole file, whatever the chunk size.
 */
export async function countFile(file: string, counts: Map<string, number>, chunkBytes: number, progress?: Progress): Promise<void> {
  // Stream mode keeps characters split across chunks whole; invalid UTF-8 becomes U+FFFD; a
  // leading BOM is kept, so the counts are exactly those of the file's text.
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  let carry = "";
  for await (const chunk of createReadStream(file, { highWaterMark: chunkBytes })) {
    const text = carry + decoder.decode(chunk as Buffer, { stream: true });
    carry = countSafePrefix(text, counts);
    if (carry.length > MAX_CARRY) {
      countText(carry, counts);
      carry = "";
    }
    progress?.tick((chunk as Buffer).length);
  }
  countText(carry + decoder.decode(), counts);
}

/** Adds the pre-tokens of all of `text` (its end is a real end of text) to `counts`. */
export function countText(text: string, counts: Map<string, number>): void {
  let start = 0;
  for (let at = text.indexOf(END_OF_TEXT); at >= 0; at = text.indexOf(END_OF_TEXT, start)) {
    countRange(text, start, at, counts);
    start = at + END_OF_TEXT.length;
  }
  countRange(text, start, text.length, counts);
}

function countRange(text: string, start: number, end: number, counts: Map<string, number>): void {
  for (let i = start; i < end; ) {
    const j = pieceEnd(text, i, end);
    const piece = text.slice(i, j);
    counts.set(piece, (counts.get(piece) ?? 0) + 1);
    i = j;
  }
}

/**
 * Counts the pieces of `text` that more text cannot change, and returns the rest to be prefixed
 * to the next chunk. A piece is final when two more pieces follow it (its end and the whitespace
 * look-ahead are decided by characters already read) and it ends at least two units before where
 * an `<|endoftext|>` cut off by the chunk end could begin.
 */
function countSafePrefix(text: string, counts: Map<string, number>): string {
  let start = 0;
  for (let at = text.indexOf(END_OF_TEXT); at >= 0; at = text.indexOf(END_OF_TEXT, start)) {
    countRange(text, start, at, counts);
    start = at + END_OF_TEXT.length;
  }
  const limit = text.length - (END_OF_TEXT.length - 1) - 2;
  const ends: number[] = [];
  for (let i = start; i < text.length; ) {
    i = pieceEnd(text, i, text.length);
    ends.push(i);
  }
  // Count the final pieces from their boundaries: re-splitting text[start, cut) would treat the
  // cut as an end of text and could split a whitespace run differently.
  let from = start;
  for (let k = 0; k < ends.length - 2 && ends[k]! <= limit; k++) {
    const piece = text.slice(from, ends[k]);
    counts.set(piece, (counts.get(piece) ?? 0) + 1);
    from = ends[k]!;
  }
  return text.slice(from);
}

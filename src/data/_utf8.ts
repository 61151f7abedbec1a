/**
 * Counting invalid UTF-8 in a byte stream, the way the WHATWG decoder (TextDecoder, Buffer's
 * toString) replaces it: each maximal invalid subsequence becomes one U+FFFD, and its bytes are
 * what this counts. `prepare` reports the count per file, or refuses the file with `strict`.
 */
import { isUtf8 } from "node:buffer";
import { FormatError } from "../core/errors.js";

/**
 * A streaming UTF-8 checker: `push()` every chunk in order, then `end()`. `invalidBytes` is the
 * number of bytes a decoder replaced; with `strict`, the first invalid byte throws a FormatError
 * naming the file and the byte offset.
 * @example
 * const u = new Utf8Checker("a.txt");
 * u.push(Buffer.from([0x61, 0xff, 0x62])); u.end(); u.invalidBytes // 1
 */
export class Utf8Checker {
  /** Bytes that were not valid UTF-8 (each replaced, in maximal runs, by U+FFFD). */
  invalidBytes = 0;
  /** Offset of the first invalid byte, -1 while there is none. */
  firstInvalidAt = -1;
  private offset = 0;     // bytes seen before the current chunk
  private needed = 0;     // continuation bytes the current sequence still needs
  private seen = 0;       // continuation bytes of it seen so far
  private lower = 0x80;   // allowed range of the next continuation byte
  private upper = 0xbf;
  private start = 0;      // offset of the current sequence's lead byte
  private lead = 0;       // and its value

  constructor(private readonly file: string, private readonly strict = false) {}

  push(chunk: Uint8Array): void {
    if (this.needed === 0 && isUtf8(chunk)) {
      this.offset += chunk.length;
      return;
    }
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      const at = this.offset + i;
      if (this.needed === 0) {
        if (b <= 0x7f) continue;
        this.start = at;
        this.lead = b;
        if (b >= 0xc2 && b <= 0xdf) this.needed = 1;
        else if (b >= 0xe0 && b <= 0xef) {
          if (b === 0xe0) this.lower = 0xa0;
          if (b === 0xed) this.upper = 0x9f;
          this.needed = 2;
        } else if (b >= 0xf0 && b <= 0xf4) {
          if (b === 0xf0) this.lower = 0x90;
          if (b === 0xf4) this.upper = 0x8f;
          this.needed = 3;
        } else this.invalid(at, 1, b);
        continue;
      }
      if (b < this.lower || b > this.upper) {
        // The sequence so far is replaced; this byte starts afresh.
        this.invalid(this.start, this.seen + 1, this.lead);
        this.reset();
        i--;
        continue;
      }
      this.lower = 0x80;
      this.upper = 0xbf;
      if (++this.seen === this.needed) this.reset();
    }
    this.offset += chunk.length;
  }

  /** The end of the stream: a sequence cut short there is invalid too. */
  end(): void {
    if (this.needed > 0) {
      this.invalid(this.start, this.seen + 1, -1);
      this.reset();
    }
  }

  private reset(): void {
    this.needed = 0;
    this.seen = 0;
    this.lower = 0x80;
    this.upper = 0xbf;
  }

  private invalid(at: number, bytes: number, b: number): void {
    if (this.strict) {
      const what = b < 0 ? "a multi-byte character cut off by the end of the file" : `byte 0x${b.toString(16).padStart(2, "0")}`;
      throw new FormatError(this.file, `invalid UTF-8 at byte offset ${at} (${what}); is it Latin-1 or binary? ` +
        "Convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8), or leave out --strict-utf8 to replace invalid bytes with U+FFFD");
    }
    if (this.firstInvalidAt < 0) this.firstInvalidAt = at;
    this.invalidBytes += bytes;
  }
}

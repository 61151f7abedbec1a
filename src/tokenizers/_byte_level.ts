/**
 * Byte-level plumbing shared by encoding, decoding, loading and training: GPT-2's byte <-> unicode
 * map and a UTF-8 encoder that treats lone surrogates the way TextEncoder does.
 *
 * GPT-2 stores every token as a string of "byte characters": each of the 256 byte values is
 * mapped to a printable unicode character (printable Latin-1 bytes map to themselves, the rest
 * to U+0100 and up), so vocab.json / merges.txt never contain spaces or control characters.
 * A space is "Ġ" (U+0120), a newline "Ċ" (U+010A).
 */

/**
 * The 256 bytes in GPT-2's order: the printable ones first ("!".."~", "¡".."¬", "®".."ÿ"), then
 * the rest ascending. GPT-2's encoder.json gives byte BYTE_ORDER[i] the id i, and trained
 * vocabularies here keep that order so their first 256 ids match GPT-2's.
 */
export const BYTE_ORDER: readonly number[] = buildByteOrder();

/** byte value -> its unicode character (GPT-2's bytes_to_unicode). */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** unicode character code -> byte value, or -1 for characters that are not byte characters. */
const CHAR_TO_BYTE: Int16Array = buildCharToByte();

function buildByteOrder(): number[] {
  const order: number[] = [];
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  for (let b = 0; b < 256; b++) if (printable(b)) order.push(b);
  for (let b = 0; b < 256; b++) if (!printable(b)) order.push(b);
  return order;
}

function buildByteToChar(): string[] {
  const chars = new Array<string>(256);
  let n = 0;
  for (const b of BYTE_ORDER) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return chars;
}

function buildCharToByte(): Int16Array {
  const map = new Int16Array(512).fill(-1);
  for (let b = 0; b < 256; b++) map[BYTE_TO_CHAR[b]!.charCodeAt(0)] = b;
  return map;
}

/** Converts raw bytes to GPT-2's byte-character string ("Hello world" -> "HelloĠworld"). */
export function bytesToTokenString(bytes: ArrayLike<number>): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += BYTE_TO_CHAR[bytes[i]!]!;
  return s;
}

/** Converts a byte-character string back to bytes; undefined when a character is not a byte character. */
export function tokenStringToBytes(token: string): Uint8Array | undefined {
  const out = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    const b = c < 512 ? CHAR_TO_BYTE[c]! : -1;
    if (b < 0) return undefined;
    out[i] = b;
  }
  return out;
}

/**
 * UTF-8 encodes text[start, end) into `out` (which must hold 3 bytes per UTF-16 unit) and
 * returns the byte count. A lone surrogate becomes U+FFFD (EF BF BD), exactly as TextEncoder
 * and Buffer.from do, so encode() agrees with js-tiktoken on ill-formed strings.
 */
export function utf8EncodeInto(text: string, start: number, end: number, out: Uint8Array): number {
  let n = 0;
  for (let i = start; i < end; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      out[n++] = c;
    } else if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 63);
    } else if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < end ? text.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
        out[n++] = 0xf0 | (c >> 18);
        out[n++] = 0x80 | ((c >> 12) & 63);
        out[n++] = 0x80 | ((c >> 6) & 63);
        out[n++] = 0x80 | (c & 63);
      } else {
        out[n++] = 0xef;
        out[n++] = 0xbf;
        out[n++] = 0xbd;
      }
    } else {
      out[n++] = 0xe0 | (c >> 12);
      out[n++] = 0x80 | ((c >> 6) & 63);
      out[n++] = 0x80 | (c & 63);
    }
  }
  return n;
}

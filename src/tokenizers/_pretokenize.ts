/**
 * GPT-2's pre-tokenizer: splits text into "pieces" (words with their leading space, number runs,
 * punctuation runs, whitespace runs) that BPE then encodes independently.
 *
 * Two implementations of the same function live here:
 * - `GPT2_PATTERN` / `pretokenizeReference`: GPT-2's regex, run by the JS regex engine with the
 *   `u` flag. This is the definition (and exactly what js-tiktoken runs).
 * - `pieceEnd`: a hand-written scanner that returns where the piece starting at `i` ends. It avoids
 *   allocating a match object per piece, which is most of the regex's cost, and is tested against
 *   the reference on random hostile strings (test/tokenizers/pretokenize.test.ts).
 *
 * Semantics follow the JS engine: `\s` is JavaScript's whitespace set (it includes U+FEFF and not
 * U+0085, unlike the Rust/Python engines behind tiktoken and the original GPT-2 code), `\p{L}` and
 * `\p{N}` are Unicode general categories, a lone surrogate is a code point of its own (category Cs,
 * so it falls in the "other" class).
 */

/** GPT-2's pre-tokenization pattern, as published in GPT-2's encoder.py and tiktoken. */
export const GPT2_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** Splits text with the regex (the reference the fast scanner is checked against). */
export function pretokenizeReference(text: string): string[] {
  return Array.from(text.matchAll(new RegExp(GPT2_PATTERN, "gu")), (m) => m[0]);
}

// Character classes of the pattern. Every code point is exactly one of these.
const OTHER = 1;
const LETTER = 2;
const NUMBER = 3;
const SPACE = 4;

/**
 * Class of each code point, filled lazily (0 = not looked up yet). 1.1 MB, built once per process:
 * a pure cache of a fixed Unicode property, so it is shared rather than rebuilt per tokenizer.
 */
const classTable = new Uint8Array(0x110000);
const letterRe = /^\p{L}$/u;
const numberRe = /^\p{N}$/u;
const spaceRe = /^\s$/u;

function classifySlow(cp: number): number {
  const ch = String.fromCodePoint(cp);
  const cls = letterRe.test(ch) ? LETTER : numberRe.test(ch) ? NUMBER : spaceRe.test(ch) ? SPACE : OTHER;
  classTable[cp] = cls;
  return cls;
}
for (let cp = 0; cp < 0x100; cp++) classifySlow(cp);

/** Code point at i (a lone surrogate is returned as itself), reading no further than `end`. */
function codePointAt(text: string, i: number, end: number): number {
  const c = text.charCodeAt(i);
  if (c >= 0xd800 && c <= 0xdbff && i + 1 < end) {
    const d = text.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) return 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
  }
  return c;
}

function classOf(cp: number): number {
  const cls = classTable[cp]!;
  return cls !== 0 ? cls : classifySlow(cp);
}

/** Index just past the run of code points of class `cls` that starts at i. */
function runEnd(text: string, i: number, end: number, cls: number): number {
  while (i < end) {
    const c = text.charCodeAt(i);
    if (c < 0x80) {
      if (classTable[c] !== cls) return i;
      i++;
    } else {
      const cp = codePointAt(text, i, end);
      if (classOf(cp) !== cls) return i;
      i += cp > 0xffff ? 2 : 1;
    }
  }
  return i;
}

/**
 * End (exclusive) of the pre-token that starts at `i` in text[.., end), treating `end` as the end
 * of the string, exactly as `GPT2_PATTERN` would match on text.slice(start, end). Requires i < end.
 * @example
 * let i = 0; while (i < s.length) { const j = pieceEnd(s, i, s.length); use(s.slice(i, j)); i = j; }
 */
export function pieceEnd(text: string, i: number, end: number): number {
  const c0 = text.charCodeAt(i);
  // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, tried first).
  if (c0 === 0x27 && i + 1 < end) {
    const c1 = text.charCodeAt(i + 1);
    if (c1 === 0x73 || c1 === 0x74 || c1 === 0x6d || c1 === 0x64) return i + 2; // s t m d
    if (i + 2 < end) {
      const c2 = text.charCodeAt(i + 2);
      if ((c1 === 0x72 && c2 === 0x65) || (c1 === 0x76 && c2 === 0x65) || (c1 === 0x6c && c2 === 0x6c)) return i + 3; // re ve ll
    }
  }
  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional ASCII space, then a run of one class.
  let start = i;
  if (c0 === 0x20 && i + 1 < end) start = i + 1;
  const cls = classOf(codePointAt(text, start, end));
  if (cls !== SPACE) return runEnd(text, start, end, cls);
  // Whitespace: "\s+(?!\S)" keeps the last space of a run for the next word, "\s+" otherwise.
  // (Here start === i unless text[i] is a space followed by whitespace; both are whitespace.)
  const k = runEnd(text, i, end, SPACE);
  if (k === end) return k;
  // JS whitespace is all in the BMP, so the run's last code point is one unit long.
  return k - 1 > i ? k - 1 : k;
}

/** Splits text with the fast scanner; same result as `pretokenizeReference`. */
export function pretokenize(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; ) {
    const j = pieceEnd(text, i, text.length);
    out.push(text.slice(i, j));
    i = j;
  }
  return out;
}

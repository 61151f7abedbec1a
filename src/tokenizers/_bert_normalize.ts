/**
 * BERT's text handling before WordPiece, as Hugging Face tokenizers (Rust) defines it:
 * - `bertNormalize`: the BertNormalizer. In order: clean_text (drop NUL, U+FFFD and control
 *   characters; every whitespace character becomes a space), handle_chinese_chars (a space on
 *   each side of every CJK ideograph), strip_accents (NFD, then drop nonspacing marks Mn),
 *   lowercase. strip_accents defaults to `lowercase`, as in HF.
 * - `forEachBertWord`: the BertPreTokenizer. Splits on whitespace (dropped) and isolates every
 *   punctuation character as a word of its own. Punctuation is BERT's: ASCII 33-47, 58-64,
 *   91-96, 123-126 (so "$", "+", "^", "|" count) plus every Unicode P* character.
 *
 * Where implementations disagree, HF's Rust code is followed, not tokenizers.js:
 * - lowercase is per character (Rust's char::to_lowercase): a word-final "Σ" becomes "σ", not the
 *   final form "ς" that String.prototype.toLowerCase (and Python's str.lower) give;
 * - CJK ideographs outside the BMP (Extension B and later) are spaced out too;
 * - whitespace is Unicode White_Space (includes U+0085, excludes U+FEFF), not JavaScript's \s.
 * Character categories come from the JavaScript engine's Unicode tables, which are newer than
 * those of the Rust crate HF builds against; only characters assigned in recent Unicode versions
 * can differ.
 */

/** BertNormalizer's settings (tokenizer.json field names in the comments). */
export interface BertNormalizerOptions {
  /** `clean_text`: drop control characters, NUL and U+FFFD; whitespace becomes " ". */
  cleanText: boolean;
  /** `handle_chinese_chars`: put spaces around CJK ideographs so each is a word. */
  handleChineseChars: boolean;
  /** `strip_accents`: NFD then drop Mn. `null` means "same as lowercase" (HF's default). */
  stripAccents: boolean | null;
  /** `lowercase`. */
  lowercase: boolean;
}

// Per-code-point flags, filled lazily (bit 7 = looked up). 1.1 MB, shared by every tokenizer: a
// pure cache of fixed Unicode properties.
const CONTROL = 1; // removed by clean_text
const SPACE = 2; // whitespace (a word boundary; a space after clean_text)
const PUNCT = 4; // a word of its own
const CJK = 8; // spaced out by handle_chinese_chars
const KNOWN = 128;
const flagTable = new Uint8Array(0x110000);
const controlRe = /^[\p{Cc}\p{Cf}\p{Co}\p{Cs}]$/u;
const spaceRe = /^\p{White_Space}$/u;
const punctRe = /^\p{P}$/u;

function isAsciiPunct(cp: number): boolean {
  return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
}

/** HF's CJK ranges (0x2B920, not BERT's 0x2B820, starts the sixth: HF's Rust code has it so). */
function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

function _lookup(cp: number): number {
  const ch = String.fromCodePoint(cp);
  let f = KNOWN;
  // \t \n \r are Cc but count as whitespace; NUL is Cc anyway; U+FFFD is So, removed explicitly.
  if (cp === 9 || cp === 10 || cp === 13) f |= SPACE;
  else if (controlRe.test(ch) || cp === 0xfffd) f |= CONTROL;
  if (spaceRe.test(ch)) f |= SPACE;
  if (isAsciiPunct(cp) || punctRe.test(ch)) f |= PUNCT;
  if (isCjk(cp)) f |= CJK;
  flagTable[cp] = f;
  return f;
}

function flagsOf(cp: number): number {
  const f = flagTable[cp]!;
  return f !== 0 ? f : _lookup(cp);
}
for (let cp = 0; cp < 0x80; cp++) _lookup(cp);

/** Code point at i; a lone surrogate is returned as itself (category Cs). */
function codePointAt(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
    const d = text.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) return 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
  }
  return c;
}

/** Text without any ASCII control character and with nothing at or above U+0080. */
const PLAIN_ASCII = /^[\x20-\x7e]*$/;
const NON_ASCII = /[^\x00-\x7f]/;
const NONSPACING_MARK = /\p{Mn}/gu;

/**
 * BertNormalizer applied to `text`.
 * @example
 * bertNormalize("Héllo\tWORLD 中文", { cleanText: true, handleChineseChars: true, stripAccents: null, lowercase: true })
 * // "hello world  中  文 "
 */
export function bertNormalize(text: string, o: BertNormalizerOptions): string {
  let s = text;
  if ((o.cleanText || o.handleChineseChars) && !PLAIN_ASCII.test(s)) s = _cleanAndSpace(s, o.cleanText, o.handleChineseChars);
  if ((o.stripAccents ?? o.lowercase) && NON_ASCII.test(s)) s = s.normalize("NFD").replace(NONSPACING_MARK, "");
  if (o.lowercase) {
    // Per character, as Rust's char::to_lowercase: toLowerCase alone would give a word-final
    // capital sigma its final form. No other mapping of toLowerCase depends on context.
    if (s.includes("\u03a3")) s = s.replaceAll("\u03a3", "\u03c3");
    s = s.toLowerCase();
  }
  return s;
}

/** clean_text and handle_chinese_chars in one pass; copies runs of unchanged characters at once. */
function _cleanAndSpace(text: string, clean: boolean, cjk: boolean): string {
  let out = "";
  let run = 0; // start of the run of characters copied unchanged
  for (let i = 0; i < text.length; ) {
    const cp = codePointAt(text, i);
    const n = cp > 0xffff ? 2 : 1;
    const f = flagsOf(cp);
    if (clean && f & CONTROL) {
      out += text.slice(run, i);
      run = i + n;
    } else if (clean && f & SPACE && cp !== 0x20) {
      out += text.slice(run, i) + " ";
      run = i + n;
    } else if (cjk && f & CJK) {
      out += text.slice(run, i) + " " + text.slice(i, i + n) + " ";
      run = i + n;
    }
    i += n;
  }
  return run === 0 ? text : out + text.slice(run);
}

/**
 * BertPreTokenizer: calls `word(start, end)` for each word of `text`, in order: runs of
 * characters that are neither whitespace nor punctuation, and single punctuation characters.
 * @example
 * const s = "hi, there!";
 * const words: string[] = [];
 * forEachBertWord(s, (i, j) => words.push(s.slice(i, j)));  // ["hi", ",", "there", "!"]
 */
export function forEachBertWord(text: string, word: (start: number, end: number) => void): void {
  let start = -1; // start of the current word, -1 when between words
  for (let i = 0; i < text.length; ) {
    const c = text.charCodeAt(i);
    const cp = c < 0xd800 ? c : codePointAt(text, i);
    const n = cp > 0xffff ? 2 : 1;
    const f = cp < 0x80 ? flagTable[cp]! : flagsOf(cp);
    if (f & (SPACE | PUNCT)) {
      if (start >= 0) word(start, i);
      start = -1;
      if (f & PUNCT) word(i, i + n);
    } else if (start < 0) {
      start = i;
    }
    i += n;
  }
  if (start >= 0) word(start, text.length);
}

/** The words of `text` (BertPreTokenizer), as strings. */
export function bertPreTokenize(text: string): string[] {
  const out: string[] = [];
  forEachBertWord(text, (i, j) => out.push(text.slice(i, j)));
  return out;
}

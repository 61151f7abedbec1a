/**
 * Special tokens in the text given to encode(): which are allowed (encoded as their single id),
 * which are an error, and splitting the text around the allowed ones. Shared by every tokenizer
 * so EncodeOptions means the same thing for all of them.
 */
import { ValueError } from "../core/errors.js";
import type { EncodeOptions, SpecialTokenSet } from "./tokenizer.js";

/**
 * The special tokens of one tokenizer (literal text -> id) and the matching regexes, built once
 * per distinct allowed set.
 * @example
 * const m = new SpecialTokenMatcher(new Map([["[MASK]", 103]]), "bert-base-uncased");
 * m.split("a [MASK] b", { allowedSpecial: "all" }, (s, e) => text(s, e), (id) => ids.push(id));
 */
export class SpecialTokenMatcher {
  private readonly regexes = new Map<string, RegExp>();

  constructor(
    private readonly special: ReadonlyMap<string, number>,
    private readonly name: string,
  ) {}

  /**
   * Calls `text(start, end)` for each stretch of ordinary text and `token(id)` for each allowed
   * special token, in order. Throws ValueError when the text holds a disallowed special token.
   */
  split(input: string, options: EncodeOptions, text: (start: number, end: number) => void, token: (id: number) => void): void {
    const allowed = this.resolve(options.allowedSpecial);
    if (options.disallowedSpecial !== undefined) {
      const disallowed = this.resolve(options.disallowedSpecial).filter((s) => !allowed.includes(s));
      for (const s of disallowed) {
        if (input.includes(s)) {
          throw new ValueError(`encode: the text contains the special token "${s}", which is not allowed; pass allowedSpecial: ["${s}"] to encode it as a special token, or leave disallowedSpecial unset to encode it as text`);
        }
      }
    }
    if (allowed.length === 0) {
      text(0, input.length);
      return;
    }
    const re = this.regex(allowed);
    let start = 0;
    re.lastIndex = 0;
    for (let m = re.exec(input); m !== null; m = re.exec(input)) {
      text(start, m.index);
      token(this.special.get(m[0])!);
      start = m.index + m[0].length;
    }
    text(start, input.length);
  }

  private resolve(set: SpecialTokenSet | undefined): string[] {
    if (set === undefined) return [];
    if (set === "all") return [...this.special.keys()];
    for (const s of set) {
      if (!this.special.has(s)) {
        throw new ValueError(`encode: "${s}" is not a special token of "${this.name}"; it has ${JSON.stringify([...this.special.keys()])}`);
      }
    }
    return [...set];
  }

  /** A global regex matching any of `tokens`, longest first so a prefix never shadows a longer token. */
  private regex(tokens: string[]): RegExp {
    const key = tokens.join("\u0000");
    let re = this.regexes.get(key);
    if (re === undefined) {
      const escaped = [...tokens].sort((a, b) => b.length - a.length).map((s) => s.replace(/[\\^$*+?.()|[\]{}]/g, "\\$&"));
      re = new RegExp(escaped.join("|"), "g");
      this.regexes.set(key, re);
    }
    return re;
  }
}

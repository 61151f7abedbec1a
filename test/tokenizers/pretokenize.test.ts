import { test } from "node:test";
import assert from "node:assert/strict";
import { pieceEnd, pretokenize, pretokenizeReference } from "../../src/tokenizers/_pretokenize.js";
import { HOSTILE_ATOMS, randomText, rng } from "./_helpers.js";

test("`pretokenize()` splits like GPT-2's regex on hand-picked cases", () => {
  const cases: Array<[string, string[]]> = [
    ["", []],
    ["Hello world", ["Hello", " world"]],
    ["I'm don't we'll THEY'RE", ["I", "'m", " don", "'t", " we", "'ll", " THEY", "'", "RE"]],
    ["a  b", ["a", " ", " b"]],
    ["a \n\n  b", ["a", " \n\n ", " b"]],
    ["end   ", ["end", "   "]],
    ["x\ny", ["x", "\n", "y"]],
    ["abc123def", ["abc", "123", "def"]],
    [" 42 !?", [" 42", " !?"]],
    ["e\u0301t\u00e9", ["e", "\u0301", "t\u00e9"]],
  ];
  for (const [text, pieces] of cases) assert.deepEqual(pretokenize(text), pieces, JSON.stringify(text));
  for (const [text, pieces] of cases) assert.deepEqual(pretokenizeReference(text), pieces, JSON.stringify(text));
});

test("`pieceEnd()` agrees with the regex on random hostile strings", () => {
  const next = rng(1);
  for (let t = 0; t < 3000; t++) {
    const text = randomText(next, 24);
    assert.deepEqual(pretokenize(text), pretokenizeReference(text), JSON.stringify(text));
  }
});

test("`pieceEnd()` agrees with the regex on every BMP code point and some astral ones", () => {
  // Each code point alone, after a space, and between letters, in batches for speed.
  const points: number[] = [];
  for (let cp = 0; cp < 0x10000; cp += 1) points.push(cp);
  for (let cp = 0x10000; cp < 0x110000; cp += 97) points.push(cp);
  for (let i = 0; i < points.length; i += 512) {
    const chunk = points.slice(i, i + 512).map((cp) => String.fromCodePoint(cp));
    const text = chunk.map((c) => `x${c} ${c}${c}1 `).join("");
    assert.deepEqual(pretokenize(text), pretokenizeReference(text), `code points from U+${points[i]!.toString(16)}`);
  }
});

test("`pieceEnd()` treats the end argument as the end of the string", () => {
  const text = "ab  cd";
  // Cut after the two spaces: the regex on "ab  " gives "ab", "  ".
  assert.equal(pieceEnd(text, 2, 4), 4);
  assert.equal(pieceEnd(text, 2, text.length), 3);
  assert.ok(HOSTILE_ATOMS.length > 50);
});

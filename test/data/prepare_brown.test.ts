import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { brownCorpusDocuments } from "../../src/data/brown.js";
import { readMeta } from "../../src/data/meta.js";
import { BROWN_VAL_FRACTION, ensurePreparedBrown, prepareBrown } from "../../src/data/prepare_brown.js";
import { isValDocument } from "../../src/data/prepare.js";
import { readShard } from "../../src/data/shards.js";
import { TokenLoader } from "../../src/data/loader.js";
import { byteTokenizer, EOT_TEXT, tempDir } from "./_helpers.js";

const quiet = { progress: false };

test("`prepareBrown()` writes the 500 Brown documents, 10 of them in val, decodable back to the text", async (t) => {
  const dir = join(tempDir(t), "brown");
  const tok = byteTokenizer();
  const meta = await prepareBrown(dir, tok, quiet);
  const docs = brownCorpusDocuments();
  assert.equal(meta.splits.train.documents, 490);
  assert.equal(meta.splits.val.documents, 10);
  assert.equal(meta.valFraction, BROWN_VAL_FRACTION);
  assert.deepEqual(meta.sources, [{ path: "brown", bytes: docs.reduce((s, d) => s + d.length, 0), format: "documents" }]);
  const val = readShard(join(dir, meta.splits.val.shards[0].file)).tokens;
  const want = docs.filter((_, i) => isValDocument(i, BROWN_VAL_FRACTION)).map((d) => EOT_TEXT + d).join("");
  assert.equal(tok.decode(val), want);
});

test("`ensurePreparedBrown()` prepares on first use, then reuses the cache while the tokenizer matches", async (t) => {
  const cache = tempDir(t);
  const tok = byteTokenizer();
  const first = await ensurePreparedBrown(cache, tok, quiet);
  assert.equal(first.reused, false);
  assert.equal(first.dir, join(cache, "brown-bytes"));
  const again = await ensurePreparedBrown(cache, tok, quiet);
  assert.equal(again.reused, true);
  assert.equal(again.meta.createdAt, first.meta.createdAt);

  // Same name, different encoding: the fingerprint differs, so the cache is rebuilt in place.
  const other = { ...byteTokenizer(), encode: (s: string) => byteTokenizer().encode(s.toUpperCase()) };
  const rebuilt = await ensurePreparedBrown(cache, other, quiet);
  assert.equal(rebuilt.reused, false);
  assert.equal(rebuilt.dir, first.dir);
  assert.notEqual(rebuilt.meta.tokenizer.fingerprint, first.meta.tokenizer.fingerprint);

  // A damaged cache (bad meta.json) is rebuilt rather than trusted.
  writeFileSync(join(first.dir, "meta.json"), "{");
  const repaired = await ensurePreparedBrown(cache, tok, quiet);
  assert.equal(repaired.reused, false);
  assert.deepEqual(readMeta(repaired.dir), repaired.meta);
  assert.deepEqual(readdirSync(cache), ["brown-bytes"], "no temporary directories left behind");
});

test("`ensurePreparedBrown()` is safe to call from concurrent workers (like data-parallel ranks)", async (t) => {
  const cache = tempDir(t);
  const results = await Promise.all([0, 1, 2].map(() => ensurePreparedBrown(cache, byteTokenizer(), quiet)));
  assert.ok(results.every((r) => r.dir === results[0].dir));
  assert.deepEqual(readdirSync(cache), ["brown-bytes"]);
  const meta = readMeta(results[0].dir);
  assert.deepEqual(results.map((r) => r.meta.tokenizer), [meta.tokenizer, meta.tokenizer, meta.tokenizer]);
  const loader = new TokenLoader({ dir: results[0].dir, blockSize: 64, microBatchSize: 2 });
  assert.equal(loader.nextBatch().inputs.length, 128);
  loader.close();
});

test("`ensurePreparedBrown()` with the GPT-2 tokenizer spec records it in meta.json", async (t) => {
  const cache = tempDir(t);
  const { dir, meta } = await ensurePreparedBrown(cache, "gpt2", quiet);
  assert.equal(dir, join(cache, "brown-gpt2"));
  assert.deepEqual([meta.tokenizer.spec, meta.tokenizer.name, meta.tokenizer.vocabSize, meta.tokenizer.eotToken], ["gpt2", "gpt2", 50257, 50256]);
  assert.equal(meta.dtype, "uint16");
  assert.ok(meta.splits.train.tokens > 1_000_000, `${meta.splits.train.tokens} train tokens`);
  assert.equal(JSON.parse(readFileSync(join(dir, "meta.json"), "utf8")).tokenizer.spec, "gpt2");
  assert.equal((await ensurePreparedBrown(cache, "gpt2", quiet)).reused, true);
});

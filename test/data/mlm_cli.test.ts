// `megalith prepare --task mlm` through the real command line: the refusals of a tokenizer
// without BERT's special tokens and of mlm-only flags under --task lm, and (once the WordPiece
// tokenizer is there) a whole preparation with bert-base-uncased read back by MlmLoader.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { readMeta } from "../../src/data/meta.js";
import { MlmLoader } from "../../src/data/mlm_loader.js";
import { tempDir } from "./_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

interface Result { code: number; stdout: string; stderr: string }

function megalith(...args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Exit 2 with one `megalith: error:` line matching `pattern`, no stack trace. */
function assertOneLineError(r: Result, pattern: RegExp): void {
  assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at .+[:(]\d+/m, `stack trace on stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

const TEXT = [
  "The cat sat on the mat. It was a sunny day! Birds sang in the trees.",
  "Markets opened higher today. Investors were cautious? Analysts expect growth.\nRates stayed flat.",
  "The river flows to the sea. Fish swim upstream in spring. Bears wait for them.",
  "A new library opened downtown. It holds many books. Children read there after school.",
].join("\n\n");

test("`megalith prepare --task mlm` refuses a tokenizer without [CLS]/[SEP]/[MASK]/[PAD], and mlm flags under --task lm", async (t) => {
  const dir = tempDir(t);
  const input = join(dir, "a.txt");
  writeFileSync(input, TEXT);
  const [noSpecials, lmFlags] = await Promise.all([
    megalith("prepare", "--task", "mlm", "--tokenizer", "gpt2", "--input", input, "--out", join(dir, "o1"), "--no-progress"),
    megalith("prepare", "--tokenizer", "gpt2", "--input", input, "--out", join(dir, "o2"), "--max-seq-len", "64", "--no-progress"),
  ]);
  assertOneLineError(noSpecials, /--task mlm needs a tokenizer with \[CLS\], \[SEP\], \[MASK\] and \[PAD\], e\.g\. bert-base-uncased.*has no \[CLS\], \[SEP\], \[MASK\], \[PAD\]/);
  assertOneLineError(lmFlags, /--max-seq-len only applies to --task mlm/);
  assert.ok(!existsSync(join(dir, "o1")) && !existsSync(join(dir, "o2")));
});

test("`megalith prepare --task mlm --tokenizer bert-base-uncased` writes sentence pairs that MlmLoader reads", async (t) => {
  const spec = "../../src/tokenizers/index.js"; // a variable: the WordPiece work lands concurrently
  try {
    const mod = (await import(spec)) as { loadTokenizer(spec: string): unknown };
    mod.loadTokenizer("bert-base-uncased");
  } catch (err) {
    t.skip(`loadTokenizer("bert-base-uncased") is not available yet: ${(err as Error).message.slice(0, 120)}`);
    return;
  }
  const dir = tempDir(t);
  const input = join(dir, "a.txt");
  writeFileSync(input, TEXT);
  const out = join(dir, "bert");
  const r = await megalith("prepare", "--task", "mlm", "--tokenizer", "bert-base-uncased", "--input", input, "--out", out,
    "--doc-separator", "\\n\\n", "--val-fraction", "0", "--max-seq-len", "24", "--seed", "3", "--no-progress");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /mlm pairs of at most 24 tokens/);
  assert.match(r.stdout, /train: .*; \d+ sentence pairs/);
  const meta = readMeta(out);
  assert.equal(meta.task, "mlm");
  assert.equal(meta.splits.train.documents, 4);
  assert.deepEqual(meta.mlm!.special, { cls: 101, sep: 102, mask: 103, pad: 0, unk: 100 });
  const loader = new MlmLoader({ dir: out, microBatchSize: 2, seed: 1 });
  const batch = loader.nextBatch();
  assert.equal(batch.seqLen, 24);
  for (let b = 0; b < 2; b++) {
    const ids = Array.from(batch.inputIds.subarray(b * 24, (b + 1) * 24));
    assert.equal(ids[0], 101);
    assert.equal(ids.filter((id) => id === 102).length, 2, "two [SEP]s");
  }
  loader.close();
});

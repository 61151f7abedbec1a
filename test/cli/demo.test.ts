// `megalith demo`, shortened: it learns a BPE vocabulary on Brown when the config's tokenizer
// file is missing, trains, reports the val loss in bits per byte, prints samples and the
// fraction of sampled words found in the corpus. The full demo (configs/demo.json, ~5 minutes)
// is what reaches the README's figure; this run is ~40 steps of a smaller model, so it checks
// the pipeline and a floor on the fraction, not the goal of 0.9.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { words, wordFraction } from "../../src/cli/demo.js";
import { loadTokenizer } from "../../src/tokenizers/index.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

test("words() and wordFraction() count real words case-insensitively", () => {
  assert.deepEqual(words("The jury's over-all view, 1961: \"no\"."), ["the", "jury's", "over-all", "view", "no"]);
  assert.equal(wordFraction(words("The jury sayd"), new Set(["the", "jury", "said"])), 2 / 3);
  assert.equal(wordFraction([], new Set()), 1);
});

test("megalith demo (shortened) learns a vocabulary, reports bits per byte and the real-word fraction", { timeout: 170_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-demo-"));
  try {
    const tokenizer = join(dir, "tok", "brown-bpe-1024.json");
    const sets = [
      `out_dir=${join(dir, "run")}`, `data.tokenizer=${tokenizer}`, `data.cache_dir=${join(dir, "data")}`,
      "model.vocab_size=1024", "model.n_embd=64", "model.n_layer=2", "model.n_head=2", "model.block_size=64",
      "train.max_steps=40", "train.log_interval=10", "optimizer.warmup_steps=5", "eval.interval=0", "eval.batches=4",
    ];
    const t0 = performance.now();
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [BIN, "demo", "--tokens", "30", "--set", ...sets], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 160_000 },
        (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    });
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    assert.ok(existsSync(tokenizer), "the BPE vocabulary was learned and saved where the config names it");
    assert.equal(loadTokenizer(tokenizer).vocabSize, 1024);
    assert.match(r.stderr, /learning a 1024-token byte-level BPE/);
    const ev = /eval @ step 40: val loss ([\d.]+) \(([\d.]+) bits\/byte\)/.exec(r.stderr);
    assert.ok(ev, `an eval line with bits per byte:\n${r.stderr.slice(-1500)}`);
    assert.ok(Number(ev[2]) > 0.5 && Number(ev[2]) < 8, `bits per byte ${ev[2]}`);
    assert.equal((r.stdout.match(/^--- /gm) ?? []).length, 5, "a sample per prompt");
    const m = /words in the Brown vocabulary: ([\d.]+)% of (\d+) sampled words/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.ok(Number(m[2]) > 20, "the samples hold words");
    // 40 steps of a 2-layer model: mostly frequent words already; the full demo reaches the goal.
    assert.ok(Number(m[1]) >= 50, `real-word fraction ${m[1]}% after the shortened run (${seconds.toFixed(0)} s)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

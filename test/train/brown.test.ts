// The built-in Brown corpus path (data.source "brown"), once: prepared into data.cache_dir on
// first use with the GPT-2 tokenizer, reused by the next run, and trainable.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { Trainer } from "../../src/train/trainer.js";
import type { LanguageModelTask } from "../../src/train/tasks.js";
import { validateConfig } from "../../src/train/config.js";
import { tempDir, trainLosses } from "./_helpers.js";

test("`Trainer` on data.source brown prepares the corpus into cache_dir once and trains", async (t) => {
  const root = tempDir(t);
  const cache = join(root, "cache");
  const config = (out: string) => validateConfig({
    out_dir: out,
    model: { n_layer: 1, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 50304 },
    data: { source: "brown", tokenizer: "gpt2", cache_dir: cache },
    train: { max_steps: 2, micro_batch_size: 2 },
    eval: { batches: 1 },
  });
  const a = new Trainer(config(join(root, "a")), { log: false });
  await a.setup();
  assert.ok((a.task as LanguageModelTask).dataDir.startsWith(cache), `data dir ${(a.task as LanguageModelTask).dataDir} is under cache_dir`);
  const meta = join((a.task as LanguageModelTask).dataDir, "meta.json");
  assert.ok(existsSync(meta));
  const mtime = statSync(meta).mtimeMs;
  await a.run();
  const losses = trainLosses(join(root, "a"));
  assert.equal(losses.length, 2);
  // ln(50304) ~ 10.8 at initialisation.
  assert.ok(losses.every((m) => m.loss > 9 && m.loss < 12), JSON.stringify(losses));
  assert.equal(a.tokenizer?.name, "gpt2");
  assert.ok(existsSync(join(root, "a", "final", "tokenizer.json")));

  const b = new Trainer(config(join(root, "b")), { log: false });
  await b.setup();
  assert.equal((b.task as LanguageModelTask).dataDir, (a.task as LanguageModelTask).dataDir);
  assert.equal(statSync(meta).mtimeMs, mtime, "the cached preparation is reused, not rebuilt");
});

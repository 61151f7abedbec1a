// Checkpoints are never half-trusted: a corrupted or truncated newest checkpoint is skipped in
// favour of the previous complete one (and with none left, resuming refuses); an interrupted save leaves the previous one loadable;
// the config is validated with errors naming the dotted path.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync, statSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Trainer, validateConfig, applyOverrides, prepareData, loadTokenizer, GPT } from "../../src/index.js";

async function setup(root: string) {
  const dir = join(root, "data");
  const docs = Array.from({ length: 40 }, (_, i) => `Item ${i} is ${["red", "green", "blue"][i % 3]} and weighs ${i * 3} grams. `.repeat(5));
  await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2", inputs: [{ name: "gen", documents: docs }], outDir: dir, valFraction: 0.1, progress: false });
  return validateConfig({
    out_dir: join(root, "run"),
    model: { n_layer: 1, n_head: 2, n_embd: 16, block_size: 16, vocab_size: 50304 },
    data: { source: dir },
    train: { max_steps: 6, micro_batch_size: 2, seed: 3, log_interval: 100 },
    checkpoint: { interval: 3, keep: 5 },
  });
}

test("resume skips a corrupted newest checkpoint and uses the previous complete one", async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-ckpt-"));
  try {
    const cfg = await setup(root);
    const t = new Trainer(cfg, { log: false });
    await t.setup();
    await t.run();
    // Flip one byte in the newest checkpoint's weights: its checksum no longer matches.
    const newest = join(cfg.out_dir, "ckpt-000006", "model.safetensors");
    const bytes = readFileSync(newest);
    bytes[bytes.length - 3] ^= 0xff;
    writeFileSync(newest, bytes);
    const r = new Trainer(cfg, { log: false, resume: true });
    await r.setup();
    assert.equal(r.step, 3, "fell back to ckpt-000003");
    // Truncate the previous one too: nothing complete is left. Resuming refuses (naming both
    // damaged checkpoints) rather than silently starting over on top of them.
    truncateSync(join(cfg.out_dir, "ckpt-000003", "model.safetensors"), 100);
    const s = new Trainer(cfg, { log: false, resume: true });
    await assert.rejects(s.setup(), /holds 2 checkpoint\(s\) but none is complete.*ckpt-000003.*size 100.*ckpt-000006.*sha256/s);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("an interrupted save (a leftover temp dir without manifest) is never loaded", async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-ckpt-"));
  try {
    const cfg = await setup(root);
    const t = new Trainer({ ...cfg, train: { ...cfg.train, max_steps: 3 } }, { log: false });
    await t.setup();
    await t.run();
    mkdirSync(join(cfg.out_dir, "ckpt-000009"));  // a later step whose save never completed
    writeFileSync(join(cfg.out_dir, "ckpt-000009", "model.safetensors"), "partial");
    // Resumed with max_steps 6 instead of 3 (a schedule change, allowed: only what loads matters here).
    const r = new Trainer(cfg, { log: false, resume: true, allowConfigChange: true });
    await r.setup();
    assert.equal(r.step, 3);
    assert.ok(statSync(join(cfg.out_dir, "final", "model.safetensors")).size > 0);
    await assert.rejects(GPT.fromPretrained(join(cfg.out_dir, "ckpt-000009")), /config\.json/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("config errors name the dotted path; --set parses JSON values", () => {
  const base = { out_dir: "x", model: { n_layer: 1, n_head: 1, n_embd: 8, block_size: 8 }, train: { max_steps: 1 } };
  assert.throws(() => validateConfig({ ...base, train: { max_steps: "ten" } }), /train\.max_steps: Expected number/);
  assert.throws(() => validateConfig({ ...base, model: { ...base.model, n_head: 3 } }), /model\.n_embd: 8 must be divisible by model\.n_head \(3\)/);
  assert.throws(() => validateConfig({ ...base, bogus: 1 }), /Unrecognized key/);
  assert.throws(() => applyOverrides(base, ["train.max_steps"]), /expected key=value/);
  const o = applyOverrides(base, ["train.max_steps=20", "optimizer.betas=[0.9,0.99]", "out_dir=runs/y", "train.activation_checkpointing=true"]);
  const c = validateConfig(o);
  assert.equal(c.train.max_steps, 20);
  assert.deepEqual(c.optimizer.betas, [0.9, 0.99]);
  assert.equal(c.out_dir, "runs/y");
  assert.equal(c.train.activation_checkpointing, true);
});

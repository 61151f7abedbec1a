// Hugging Face directories: savePretrained -> fromPretrained round-trips logits exactly, and a
// damaged model.safetensors or config.json fails with an error naming the file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync, truncateSync, writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { GPT, readGPTConfig } from "../../src/models/index.js";
import { FormatError } from "../../src/core/errors.js";
import { readSafetensors } from "../../src/checkpoint/index.js";
import { ids, lastLogits, tempDir, tinyGPT } from "./_helpers.js";

/** Asserts `p` rejects with a FormatError for `file` whose message matches `pattern`. */
async function rejectsNaming(p: Promise<unknown>, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
    assert.equal(e.file, file);
    assert.ok(e.message.startsWith(file), e.message);
    assert.match(e.message, pattern);
    return true;
  });
}

test("`savePretrained` then `fromPretrained` round-trips the logits exactly", async (t) => {
  const dir = tempDir(t);
  for (const bias of [true, false]) {
    const model = tinyGPT({ bias, nLayer: 3, layerNormEpsilon: 1e-6 }, 11);
    const out = join(dir, `bias-${bias}`);
    await model.savePretrained(out);
    const cfg = JSON.parse(readFileSync(join(out, "config.json"), "utf8")) as Record<string, unknown>;
    assert.equal(cfg.model_type, "gpt2");
    assert.equal(cfg.n_layer, 3);
    assert.equal(cfg.n_positions, 32);
    assert.equal(cfg.vocab_size, 64);
    assert.equal(cfg.bias, bias);
    assert.equal(cfg.layer_norm_epsilon, 1e-6);
    const loaded = await GPT.fromPretrained(out);
    loaded.eval();
    assert.deepEqual(loaded.config, { ...model.config, dropout: 0 });
    assert.deepEqual(loaded.namedParameters().map(([n]) => n), model.namedParameters().map(([n]) => n));
    const seq = ids(17);
    const a = lastLogits(model, seq), b = lastLogits(loaded, seq);
    for (let i = 0; i < a.length; i++) assert.ok(Object.is(a[i], b[i]), `bias=${bias} logit ${i}: ${a[i]} vs ${b[i]}`);
    // Saving the loaded model again writes byte-identical weights.
    await loaded.savePretrained(join(out, "again"));
    assert.ok(readFileSync(join(out, "model.safetensors")).equals(readFileSync(join(out, "again", "model.safetensors"))));
  }
});

test("`savePretrained` stores Conv1D projections as [in, out] like Hugging Face", async (t) => {
  const dir = tempDir(t);
  const model = tinyGPT();
  await model.savePretrained(dir);
  const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
  assert.deepEqual(tensors.get("h.0.attn.c_attn.weight")!.shape, [32, 96]);
  assert.deepEqual(tensors.get("h.0.mlp.c_proj.weight")!.shape, [128, 32]);
  assert.deepEqual(tensors.get("wte.weight")!.shape, [64, 32]);
  assert.equal(tensors.has("lm_head.weight"), false, "the LM head is tied to wte");
});

test("`fromPretrained` on a truncated model.safetensors fails naming the file", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  const file = join(dir, "model.safetensors");
  const size = statSync(file).size;
  truncateSync(file, size - 1000);
  await rejectsNaming(GPT.fromPretrained(dir), file, /truncated/);
  truncateSync(file, 4);
  await rejectsNaming(GPT.fromPretrained(dir), file, /shorter than the 8-byte safetensors header length/);
  rmSync(file);
  await rejectsNaming(GPT.fromPretrained(dir), file, /not found/);
});

test("`fromPretrained` with a bad config.json fails naming the file and the field", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  const file = join(dir, "config.json");
  const good = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  const withField = (k: string, v: unknown) => writeFileSync(file, JSON.stringify({ ...good, [k]: v }));

  withField("n_layer", "two");
  await rejectsNaming(GPT.fromPretrained(dir), file, /n_layer must be a positive integer, got "two"/);
  withField("n_head", 0);
  await rejectsNaming(GPT.fromPretrained(dir), file, /n_head must be a positive integer, got 0/);
  withField("n_head", 3);
  await rejectsNaming(GPT.fromPretrained(dir), file, /nEmbd \(32\) must be divisible by nHead \(3\)/);
  const { n_positions: _p, n_ctx: _c, ...noPositions } = good;
  writeFileSync(file, JSON.stringify(noPositions));
  await rejectsNaming(GPT.fromPretrained(dir), file, /n_positions must be a positive integer, got undefined/);
  writeFileSync(file, "{ broken");
  await rejectsNaming(GPT.fromPretrained(dir), file, /not valid JSON/);
  assert.throws(() => readGPTConfig(dir), (e: unknown) => e instanceof FormatError && e.file === file);
  rmSync(file);
  await rejectsNaming(GPT.fromPretrained(dir), file, /not found: a model directory needs config\.json and model\.safetensors/);
});

test("`fromPretrained` with a config that disagrees with the weights fails naming model.safetensors", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  const file = join(dir, "config.json");
  const weights = join(dir, "model.safetensors");
  const good = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  writeFileSync(file, JSON.stringify({ ...good, vocab_size: 65 }));
  await rejectsNaming(GPT.fromPretrained(dir), weights, /tensor wte\.weight has shape \[64, 32\], expected \[65, 32\] for this config/);
  writeFileSync(file, JSON.stringify({ ...good, n_layer: 3 }));
  await rejectsNaming(GPT.fromPretrained(dir), weights, /weights do not match the config: missing \["h\.2\./);
  writeFileSync(file, JSON.stringify({ ...good, n_layer: 1 }));
  await rejectsNaming(GPT.fromPretrained(dir), weights, /unexpected \["h\.1\./);
  writeFileSync(file, JSON.stringify({ ...good, bias: false }));
  await rejectsNaming(GPT.fromPretrained(dir), weights, /unexpected \[".*bias/);
});

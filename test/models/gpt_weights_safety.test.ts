// Loading model directories that someone else handed over: weights holding NaN or Inf load with
// a warning naming the tensors; a model.safetensors (or config.json) that is a symlink leaving
// the directory is refused unless allowSymlinks; savePretrained writes generation_config.json.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { GPT, loadGPTWeights } from "../../src/models/index.js";
import { readSafetensors, writeSafetensors } from "../../src/checkpoint/index.js";
import { ValueError } from "../../src/core/errors.js";
import { tinyGPT, TINY } from "./_helpers.js";

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "megalith-weights-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("`loadGPTWeights` warns with the names of tensors holding NaN or Inf, and still loads", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  const file = join(dir, "model.safetensors");
  const { tensors } = await readSafetensors(file);
  const records = Object.fromEntries([...tensors].map(([n, r]) => [n, { ...r, data: Uint8Array.from(r.data) }]));
  new Float32Array(records["h.1.mlp.c_fc.weight"]!.data.buffer)[7] = NaN;
  new Float32Array(records["ln_f.bias"]!.data.buffer)[0] = -Infinity;
  await writeSafetensors(file, records, { format: "pt" });

  const seen: Array<[string, string[]]> = [];
  const model = new GPT(TINY);
  await loadGPTWeights(model, dir, { onNonFinite: (f, names) => seen.push([f, names]) });
  assert.equal(seen.length, 1);
  assert.equal(seen[0]![0], file);
  assert.deepEqual([...seen[0]![1]].sort(), ["h.1.mlp.c_fc.weight", "ln_f.bias"]);

  // The default reporter is one warning line on stderr.
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string) => (lines.push(String(s)), true)) as typeof process.stderr.write;
  try {
    await GPT.fromPretrained(dir);
  } finally {
    process.stderr.write = write;
  }
  assert.equal(lines.length, 1, lines.join(""));
  assert.match(lines[0]!, /^megalith: warning: .*model\.safetensors: 2 tensor\(s\) hold NaN or Inf values: (h\.1\.mlp\.c_fc\.weight, ln_f\.bias|ln_f\.bias, h\.1\.mlp\.c_fc\.weight);/);
});

test("a clean model loads without any warning", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  let warned = false;
  await loadGPTWeights(new GPT(TINY), dir, { onNonFinite: () => (warned = true) });
  assert.equal(warned, false);
});

test("`fromPretrained` refuses a model.safetensors symlinked outside the directory unless allowSymlinks", async (t) => {
  const root = tempDir(t);
  const elsewhere = join(root, "elsewhere"), dir = join(root, "model");
  await tinyGPT().savePretrained(elsewhere);
  await tinyGPT().savePretrained(dir);
  rmSync(join(dir, "model.safetensors"));
  symlinkSync(join(elsewhere, "model.safetensors"), join(dir, "model.safetensors"));
  await assert.rejects(GPT.fromPretrained(dir), (e: unknown) => e instanceof ValueError &&
    /model\.safetensors is a symlink to .*elsewhere\/model\.safetensors, outside the model directory .*; refusing to follow it\. .*--allow-symlinks/.test(e.message));
  const m = await GPT.fromPretrained(dir, { allowSymlinks: true });
  assert.equal(m.config.nLayer, TINY.nLayer);
  // config.json is checked the same way.
  rmSync(join(dir, "config.json"));
  symlinkSync(join(elsewhere, "config.json"), join(dir, "config.json"));
  await assert.rejects(GPT.fromPretrained(dir), /config\.json is a symlink to .*, outside the model directory/);
});

test("a symlink that stays inside the model directory is followed", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  renameSync(join(dir, "model.safetensors"), join(dir, "weights-v1.safetensors"));
  symlinkSync("weights-v1.safetensors", join(dir, "model.safetensors"));
  const m = await GPT.fromPretrained(dir);
  assert.equal(m.config.nEmbd, TINY.nEmbd);
});

test("`savePretrained` writes generation_config.json with the bos/eos ids, GPT-2's by default", async (t) => {
  const dir = tempDir(t);
  await tinyGPT().savePretrained(dir);
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "generation_config.json"), "utf8")), { _from_model_config: true, bos_token_id: 50256, eos_token_id: 50256 });
  await tinyGPT().savePretrained(dir, { bosTokenId: 0, eosTokenId: 0 });
  assert.equal(JSON.parse(readFileSync(join(dir, "generation_config.json"), "utf8")).eos_token_id, 0);
  assert.equal(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).eos_token_id, 0);
});

// `megalith export --merge-lora` end to end, as a user runs it (a child process of bin/megalith.js):
// a GPT model directory written by saveGPT plus a PEFT adapter directory in, a plain model
// directory out whose logits equal base + adapters, with the base's tokenizer files; and the
// refusals (no --merge-lora, an existing --out, a broken adapter) as one-line errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GPT, BertForPreTraining, saveBERT, loadBERT } from "../../src/models/index.js";
import { applyLoRA, loraModules, saveLoRAAdapters, type Module } from "../../src/nn/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { normal, randint, withScope, type Tensor } from "../../src/tensor/index.js";
import { readSafetensors } from "../../src/checkpoint/index.js";
import { loadTokenizer, saveHfTokenizer } from "../../src/tokenizers/index.js";
import { seedFor, seedNote } from "../_util/check.js";

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

/** Non-zero exit, the message on stderr, and no JavaScript stack trace. */
function assertCleanFailure(r: Result, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got exit 0; stdout: ${r.stdout}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /^\s+at .+[:(]\d+/m, `stack trace on stderr:\n${r.stderr}`);
}

const CONFIG = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 64 };
const seed = seedFor("export-lora") % 1_000_000;
let root = "", baseDir = "", adapterDir = "";
let idx: Tensor;
let want: Float32Array;

function logits(model: GPT): Float32Array {
  return noGrad(() => withScope(() => Float32Array.from(model.forward(idx).logits.data() as Float32Array)));
}

/** Random A and B for every adapter (B = 0 would make any merge trivially right). */
function randomizeAdapters(model: Module, s: number): void {
  noGrad(() => loraModules(model).forEach(([, m], i) => {
    for (const [j, p] of [m.lora_A.weight, m.lora_B.weight].entries()) {
      const v = normal(p.shape, 0, 0.2, { seed: s + 2 * i + j });
      p.copy_(v);
      v.dispose();
    }
  }));
}

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-export-"));
  baseDir = join(root, "base");
  adapterDir = join(root, "adapter");
  // The base: a model directory as training's final/ is, with the GPT-2 tokenizer files.
  const base = new GPT(CONFIG, { seed }).eval();
  await base.savePretrained(baseDir, { bosTokenId: 7, eosTokenId: 7 });
  saveHfTokenizer(baseDir, loadTokenizer("gpt2"), { modelMaxLength: CONFIG.blockSize });
  // Adapters with random A and B (B = 0 would make the merge trivially right).
  applyLoRA(base, { r: 4, alpha: 8, targetModules: ["c_attn", "c_proj"], seed });
  randomizeAdapters(base, seed);
  await saveLoRAAdapters(base, adapterDir, { baseModel: baseDir, taskType: "CAUSAL_LM", targetModules: ["c_attn", "c_proj"], r: 4, alpha: 8 });
  idx = randint(0, CONFIG.vocabSize, [2, 12], { seed });
  want = logits(base);
});

after(() => rmSync(root, { recursive: true, force: true }));

test("`megalith export --merge-lora` writes a plain model directory whose logits equal base + adapters within 1e-5", async () => {
  const out = join(root, "merged");
  const r = await megalith("export", "--model", baseDir, "--adapter", adapterDir, "--merge-lora", "--out", out);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /merged 6 LoRA adapter\(s\)/);
  for (const f of ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
    assert.ok(existsSync(join(out, f)), `merged/${f}`);
  }
  for (const f of ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
    assert.equal(readFileSync(join(out, f), "utf8"), readFileSync(join(baseDir, f), "utf8"), `${f} is the base's`);
  }
  assert.deepEqual(JSON.parse(readFileSync(join(out, "config.json"), "utf8")), JSON.parse(readFileSync(join(baseDir, "config.json"), "utf8")));
  assert.equal(JSON.parse(readFileSync(join(out, "generation_config.json"), "utf8")).eos_token_id, 7);
  const { tensors } = await readSafetensors(join(out, "model.safetensors"));
  assert.ok([...tensors.keys()].every((k) => !k.includes("lora_")), "no adapter tensors in a plain model");
  const merged = (await GPT.fromPretrained(out)).eval();
  const got = logits(merged);
  let d = 0;
  for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i]! - want[i]!));
  assert.ok(d <= 1e-5, `merged export vs base + adapters: max |diff| ${d} (${seedNote(seed)})`);
  const plain = await GPT.fromPretrained(baseDir);
  const p = logits(plain.eval());
  assert.ok(p.some((v, i) => Math.abs(v - want[i]!) > 1e-2), "the adapters change the logits (else the check proves nothing)");
});

test("`megalith export` takes the base model from adapter_config.json when --model is left out; --force replaces --out", async () => {
  const out = join(root, "merged-default");
  const r = await megalith("export", "--adapter", adapterDir, "--merge-lora", "--out", out);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(join(out, "model.safetensors")));
  // --force replaces the directory as a whole (written aside, then renamed).
  writeFileSync(join(out, "stale.txt"), "from before");
  const again = await megalith("export", "--adapter", adapterDir, "--merge-lora", "--out", out, "--force");
  assert.equal(again.code, 0, again.stderr);
  assert.ok(existsSync(join(out, "model.safetensors")) && !existsSync(join(out, "stale.txt")));
});

test("`megalith export` refuses without --merge-lora, onto an existing --out or the base, a DoRA adapter and a classifier adapter, in one line each", async () => {
  mkdirSync(join(root, "taken"), { recursive: true });
  const bad = join(root, "bad-adapter");
  mkdirSync(bad, { recursive: true });
  writeFileSync(join(bad, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", r: 4, lora_alpha: 8, target_modules: ["c_attn"], use_dora: true }));
  const cls = join(root, "cls-adapter");
  mkdirSync(cls, { recursive: true });
  writeFileSync(join(cls, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", task_type: "SEQ_CLS", r: 4, lora_alpha: 8, target_modules: ["c_attn"], modules_to_save: ["score"] }));
  // Independent refusals: run side by side (each is a Node start-up through tsx).
  const [noMerge, taken, onBase, broken, classifier] = await Promise.all([
    megalith("export", "--model", baseDir, "--adapter", adapterDir, "--out", join(root, "x")),
    megalith("export", "--model", baseDir, "--adapter", adapterDir, "--merge-lora", "--out", join(root, "taken")),
    megalith("export", "--model", baseDir, "--adapter", adapterDir, "--merge-lora", "--out", baseDir),
    megalith("export", "--model", baseDir, "--adapter", bad, "--merge-lora", "--out", join(root, "y")),
    megalith("export", "--model", baseDir, "--adapter", cls, "--merge-lora", "--out", join(root, "z")),
  ]);
  assertCleanFailure(classifier, /SEQ_CLS adapter \(head: \["score"\]\)/);
  assertCleanFailure(noMerge, /--merge-lora is required/);
  assertCleanFailure(taken, /already exists; pass --force/);
  assertCleanFailure(onBase, /is the --model directory/);
  assertCleanFailure(broken, /use_dora must be false/);
  assert.ok(!existsSync(join(root, "y")) && !existsSync(join(root, "z")), "nothing is written on failure");
});

test("`megalith export --merge-lora` merges a BERT adapter (query, value; PEFT's bare-model names) within 1e-5", async () => {
  const bseed = seedFor("export-lora-bert") % 1_000_000;
  const dir = join(root, "bert"), adapter = join(root, "bert-adapter"), out = join(root, "bert-merged");
  const bert = new BertForPreTraining({ nLayer: 2, nHead: 2, nEmbd: 32, intermediateSize: 48, maxPositions: 16, vocabSize: 64 }, { seed: bseed }).eval();
  await saveBERT(bert, dir);
  writeFileSync(join(dir, "vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n");
  applyLoRA(bert, { r: 4, alpha: 4, targetModules: ["query", "value"], seed: bseed });
  randomizeAdapters(bert, bseed);
  await saveLoRAAdapters(bert, adapter, { baseModel: dir, taskType: "FEATURE_EXTRACTION", targetModules: ["query", "value"], r: 4, alpha: 4 });
  const { tensors: ad } = await readSafetensors(join(adapter, "adapter_model.safetensors"));
  assert.ok(ad.has("base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"), `BertModel's names under FEATURE_EXTRACTION: ${[...ad.keys()][0]}`);
  const ids = randint(0, 64, [2, 10], { seed: bseed });
  const mlm = (m: BertForPreTraining) => noGrad(() => withScope(() => Float32Array.from(m.forward(ids).predictionLogits.data() as Float32Array)));
  const wantBert = mlm(bert);

  const r = await megalith("export", "--model", dir, "--adapter", adapter, "--merge-lora", "--out", out);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /merged 4 LoRA adapter\(s\).*\(bert\)/);
  assert.equal(readFileSync(join(out, "vocab.txt"), "utf8"), readFileSync(join(dir, "vocab.txt"), "utf8"));
  const got = mlm((await loadBERT(out)).eval());
  let d = 0;
  for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i]! - wantBert[i]!));
  assert.ok(d <= 1e-5, `merged BERT vs base + adapters: max |diff| ${d} (${seedNote(bseed)})`);
});

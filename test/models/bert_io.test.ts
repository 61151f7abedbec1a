// BERT directories (models/bert/weights.ts): save/load round trip, HF config.json, checkpoints of
// HF's BertModel (no `bert.` prefix, no heads), legacy names and tied copies, and the errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync, symlinkSync, renameSync } from "node:fs";
import { join } from "node:path";
import { readSafetensors, writeSafetensors, FormatError, ValueError, type TensorRecord } from "../../src/index.js";
import {
  BertForPreTraining, saveBERT, loadBERT, loadBERTWeights, readBERTConfig, isBERTDir, hfBertConfig, bertToRecords, resolveBERTConfig,
  GPT, type BERTConfig,
} from "../../src/models/index.js";
import { tempDir, TINY } from "./_helpers.js";

const CFG: BERTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, intermediateSize: 24, maxPositions: 12, vocabSize: 37, typeVocabSize: 3, dropout: 0.1, attentionDropout: 0.05, padTokenId: 1 };

const params = (m: BertForPreTraining) => new Map(m.namedParameters().map(([n, p]) => [n, Array.from(p.data())]));

async function records(file: string): Promise<Record<string, TensorRecord>> {
  const { tensors } = await readSafetensors(file);
  return Object.fromEntries([...tensors].map(([n, r]) => [n, { ...r, data: Uint8Array.from(r.data) }]));
}

test("`saveBERT()` then `loadBERT()` restores every parameter bit for bit and the config", async (t) => {
  const dir = tempDir(t);
  const m = new BertForPreTraining(CFG, { seed: 9 });
  await saveBERT(m, dir, { config: { tokenizer_class: "BertTokenizer" } });
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual(cfg, { ...hfBertConfig(CFG), tokenizer_class: "BertTokenizer" } as Record<string, unknown>);
  assert.deepEqual(cfg.architectures, ["BertForPreTraining"]);
  assert.equal(cfg.model_type, "bert");
  assert.equal(cfg.hidden_act, "gelu");
  assert.equal(cfg.torch_dtype, "float32");
  assert.equal(cfg.hidden_dropout_prob, 0.1);
  assert.equal(cfg.attention_probs_dropout_prob, 0.05);
  assert.equal(cfg.pad_token_id, 1);
  const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
  assert.deepEqual([...tensors.keys()].sort(), [...params(m).keys()].sort(), "HF names, no tied decoder copy");
  assert.ok(isBERTDir(dir));
  const newly: string[][] = [];
  const back = await loadBERT(dir, { onNewlyInitialized: (_f, n) => newly.push(n) });
  assert.deepEqual(newly, []);
  assert.deepEqual(back.config, resolveBERTConfig(CFG));
  assert.deepEqual(readBERTConfig(dir), { ...resolveBERTConfig(CFG) });
  assert.deepEqual(params(back), params(m));
  assert.equal(back.bert.embeddings.word_embeddings.weight, back.cls.predictions.decoderWeight, "the decoder stays tied after loading");
});

test("`loadBERTWeights()` loads an HF BertModel checkpoint (no `bert.` prefix, no heads) and reports the fresh heads", async (t) => {
  const dir = tempDir(t);
  const src = new BertForPreTraining(CFG, { seed: 9 });
  const recs = bertToRecords(src);
  const bare: Record<string, TensorRecord> = {};
  for (const [n, r] of Object.entries(recs)) if (n.startsWith("bert.") && !n.startsWith("bert.pooler.")) bare[n.slice(5)] = r;
  // Legacy spellings and tensors HF checkpoints carry: TF-era gamma/beta, the position-id buffer.
  bare["embeddings.LayerNorm.gamma"] = bare["embeddings.LayerNorm.weight"]!;
  bare["embeddings.LayerNorm.beta"] = bare["embeddings.LayerNorm.bias"]!;
  delete bare["embeddings.LayerNorm.weight"];
  delete bare["embeddings.LayerNorm.bias"];
  bare["embeddings.position_ids"] = { dtype: "I64", shape: [1, 12], data: new Uint8Array(96) };
  await writeSafetensors(join(dir, "model.safetensors"), bare, { format: "pt" });
  const dst = new BertForPreTraining(CFG, { seed: 10 });
  const fresh = params(dst);
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string) => (lines.push(String(s)), true)) as typeof process.stderr.write;
  let report;
  try {
    report = await loadBERTWeights(dst, dir);
  } finally {
    process.stderr.write = write;
  }
  const heads = [...params(dst).keys()].filter((n) => n.startsWith("bert.pooler.") || n.startsWith("cls."));
  assert.deepEqual(report.newlyInitialized.sort(), heads.sort());
  assert.deepEqual(report.ignored, ["embeddings.position_ids"]);
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^megalith: warning: .*model\.safetensors has no weights for 9 parameter\(s\), which keep their initialisation: /);
  const want = params(src), got = params(dst);
  for (const [n, v] of got) assert.deepEqual(v, heads.includes(n) ? fresh.get(n) : want.get(n), n);
});

test("`loadBERTWeights()` accepts the tied decoder copies a PyTorch state_dict holds", async (t) => {
  const dir = tempDir(t);
  const src = new BertForPreTraining(CFG, { seed: 9 });
  const recs = bertToRecords(src);
  recs["cls.predictions.decoder.weight"] = recs["bert.embeddings.word_embeddings.weight"]!;
  recs["cls.predictions.decoder.bias"] = recs["cls.predictions.bias"]!;
  await writeSafetensors(join(dir, "model.safetensors"), recs, { format: "pt" });
  const dst = new BertForPreTraining(CFG, { seed: 10 });
  const report = await loadBERTWeights(dst, dir);
  assert.deepEqual(report, { newlyInitialized: [], ignored: ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"] });
  assert.deepEqual(params(dst), params(src));
});

test("`loadBERTWeights()` refuses shape mismatches, unknown tensors and a missing encoder tensor, naming them", async (t) => {
  const dir = tempDir(t);
  const m = new BertForPreTraining(CFG, { seed: 9 });
  await saveBERT(m, dir);
  const file = join(dir, "model.safetensors");
  const good = await records(file);
  const cases: Array<[(r: Record<string, TensorRecord>) => void, RegExp]> = [
    [(r) => { r["bert.encoder.layer.1.intermediate.dense.weight"] = { dtype: "F32", shape: [16, 24], data: new Uint8Array(16 * 24 * 4) }; },
      /tensor bert\.encoder\.layer\.1\.intermediate\.dense\.weight has shape \[16, 24\], expected \[24, 16\] for this config/],
    [(r) => { r["bert.encoder.layer.2.output.dense.bias"] = { dtype: "F32", shape: [16], data: new Uint8Array(64) }; },
      /unexpected \["bert\.encoder\.layer\.2\.output\.dense\.bias"\]/],
    [(r) => { delete r["bert.encoder.layer.0.attention.self.value.bias"]; },
      /missing \["bert\.encoder\.layer\.0\.attention\.self\.value\.bias"\]/],
    [(r) => { r["bert.pooler.dense.bias"] = { dtype: "I32", shape: [16], data: new Uint8Array(64) }; },
      /tensor bert\.pooler\.dense\.bias has dtype I32; expected F32, BF16 or F16/],
  ];
  for (const [edit, re] of cases) {
    const r = { ...good };
    edit(r);
    await writeSafetensors(file, r, { format: "pt" });
    await assert.rejects(loadBERTWeights(new BertForPreTraining(CFG), dir), (e: Error) => e instanceof FormatError && re.test(e.message), String(re));
  }
});

test("`loadBERTWeights()` reports NaN tensors and refuses a model.safetensors symlinked outside the directory", async (t) => {
  const root = tempDir(t);
  const dir = join(root, "model"), elsewhere = join(root, "elsewhere");
  mkdirSync(elsewhere);
  await saveBERT(new BertForPreTraining(CFG), dir);
  const file = join(dir, "model.safetensors");
  const r = await records(file);
  new Float32Array(r["cls.predictions.bias"]!.data.buffer)[3] = NaN;
  await writeSafetensors(file, r, { format: "pt" });
  const seen: string[][] = [];
  await loadBERTWeights(new BertForPreTraining(CFG), dir, { onNonFinite: (_f, n) => seen.push(n) });
  assert.deepEqual(seen, [["cls.predictions.bias"]]);
  renameSync(file, join(elsewhere, "model.safetensors"));
  symlinkSync(join(elsewhere, "model.safetensors"), file);
  await assert.rejects(loadBERT(dir, { onNonFinite: () => {} }), (e: Error) => e instanceof ValueError && /symlink .* outside the model directory/.test(e.message));
  await loadBERT(dir, { allowSymlinks: true, onNonFinite: () => {} });
});

test("`readBERTConfig()` names the bad field; `isBERTDir()` tells BERT from GPT and missing directories", async (t) => {
  const dir = tempDir(t);
  const base = hfBertConfig(CFG);
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ hidden_act: "relu" }, /hidden_act must be "gelu" \(exact GELU\), got "relu"/],
    [{ hidden_size: undefined }, /hidden_size must be a positive integer, got undefined/],
    [{ model_type: "gpt2" }, /model_type must be "bert", got "gpt2"/],
    [{ position_embedding_type: "relative_key" }, /position_embedding_type must be "absolute", got "relative_key"/],
    [{ num_attention_heads: 3 }, /nEmbd \(16\) must be divisible by nHead \(3\)/],
    [{ layer_norm_eps: "1e-12" }, /layer_norm_eps must be a number, got "1e-12"/],
  ];
  for (const [patch, re] of cases) {
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...base, ...patch }));
    assert.throws(() => readBERTConfig(dir), (e: Error) => e instanceof FormatError && e.message.includes("config.json") && re.test(e.message), String(re));
  }
  // HF's defaults for fields older configs leave out.
  const { intermediate_size: _i, type_vocab_size: _t, layer_norm_eps: _l, pad_token_id: _p, hidden_dropout_prob: _h, attention_probs_dropout_prob: _a, ...minimal } = base;
  writeFileSync(join(dir, "config.json"), JSON.stringify(minimal));
  const c = resolveBERTConfig(readBERTConfig(dir));
  assert.deepEqual([c.intermediateSize, c.typeVocabSize, c.layerNormEpsilon, c.padTokenId, c.dropout], [64, 2, 1e-12, 0, 0]);
  assert.ok(isBERTDir(dir));
  const gptDir = join(dir, "gpt");
  await new GPT(TINY).savePretrained(gptDir);
  assert.equal(isBERTDir(gptDir), false);
  assert.equal(isBERTDir(join(dir, "nowhere")), false);
  assert.throws(() => readBERTConfig(gptDir), /model_type must be "bert", got "gpt2"/);
});

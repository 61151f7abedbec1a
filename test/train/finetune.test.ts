// Fine-tuning and BERT pretraining under the one Trainer: classificationReport, the SFT loss
// mask, the example loader's resume and data-parallel split, `megalith finetune --task classify`
// end to end on a GPT, BERT MLM + NSP pretraining, then a BERT classifier from that model, and
// LoRA fine-tuning that trains only the adapters and the head.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GPT } from "../../src/models/index.js";
import { loadTokenizer, saveHfTokenizer, type WordPiece } from "../../src/tokenizers/index.js";
import { brownCorpusDocuments, prepareMlmData } from "../../src/data/index.js";
import { Trainer } from "../../src/train/trainer.js";
import { validateConfig } from "../../src/train/config.js";
import { classificationReport, sftTokens, ClassifyTask } from "../../src/train/tasks.js";
import { ExampleLoader, collatePadded, type TokenizedExample } from "../../src/train/_examples.js";
import { tempDir } from "./_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

function megalith(...args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 120_000 }, (err, _out, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr });
    });
  });
}

/** A sentiment-like set whose label is decided by one of ten words (seeded). */
function sentimentRows(n: number, seed: number): string[] {
  const pos = ["great", "wonderful", "excellent", "happy", "love"], neg = ["awful", "terrible", "bad", "sad", "hate"];
  let s = seed;
  const r = () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  return Array.from({ length: n }, () => {
    const p = r() < 0.5;
    const w = (p ? pos : neg)[Math.floor(r() * 5)]!;
    return JSON.stringify({ text: `the film was ${w} from start to end`, label: p ? "pos" : "neg" });
  });
}

test("classificationReport() gives accuracy, macro-F1 and the confusion matrix", () => {
  // truth 0 0 1 1 2, predicted 0 1 1 1 0: class 0 P 1/2 R 1/2 F1 1/2; class 1 P 2/3 R 1 F1 4/5; class 2 F1 0.
  const r = classificationReport([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"]);
  assert.equal(r.accuracy, 3 / 5);
  assert.deepEqual(r.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 0]]);
  assert.ok(Math.abs(r.macro_f1 - (1 / 2 + 4 / 5 + 0) / 3) < 1e-12, String(r.macro_f1));
});

test("sftTokens() puts the loss on completion tokens (and the closing end-of-text) only", () => {
  const tok = loadTokenizer("gpt2");
  const prompt = tok.encode("Q: two plus two?\nA:"), completion = tok.encode(" four");
  const e = sftTokens(tok, { prompt: "Q: two plus two?\nA:", completion: " four" }, 64);
  const ids = [...prompt, ...completion, tok.eotToken];
  assert.deepEqual(e.ids, ids.slice(0, -1));
  // targets[t] predicts ids[t + 1]: -100 while the next token is still the prompt.
  const want = ids.slice(1).map((id, t) => (t + 1 >= prompt.length ? id : -100));
  assert.deepEqual(e.targets, want);
  assert.equal(e.targets!.filter((t) => t !== -100).length, completion.length + 1);
  // Chat: only the assistant's content and its end-of-text are learned.
  const chat = sftTokens(tok, { messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello there" }] }, 64);
  const learned = chat.targets!.filter((t) => t !== -100);
  assert.deepEqual(learned, [...tok.encode("hello there"), tok.eotToken]);
  // Truncation keeps maxLen inputs.
  assert.equal(sftTokens(tok, { prompt: "a ".repeat(50), completion: " b" }, 8).ids.length, 8);
});

test("ExampleLoader resumes exactly and two data-parallel ranks cover one rank's global batch", () => {
  const examples: TokenizedExample[] = Array.from({ length: 37 }, (_, i) => ({ ids: Array.from({ length: 1 + (i % 5) }, (_, j) => i * 10 + j), label: i % 3 }));
  const make = (rank: number, worldSize: number, B: number) => new ExampleLoader({ examples, microBatchSize: B, seed: 9, rank, worldSize, collate: (ex, rows) => collatePadded(ex, rows, 0, 16) });
  const one = make(0, 1, 4);
  const a = make(0, 2, 2), b = make(1, 2, 2);
  for (let step = 0; step < 25; step++) {   // crosses epoch boundaries (37 examples)
    const whole = one.nextBatch(), x = a.nextBatch(), y = b.nextBatch();
    assert.deepEqual([...x.rows!, ...y.rows!], whole.rows, `step ${step}: sample numbers`);
    assert.deepEqual([...x.targets, ...y.targets], [...whole.targets], `step ${step}: the same examples`);
  }
  const saved = one.state();
  const next = [one.nextBatch(), one.nextBatch()];
  const again = make(0, 1, 4);
  again.restore(saved);
  assert.deepEqual([again.nextBatch(), again.nextBatch()].map((m) => [...m.inputs]), next.map((m) => [...m.inputs]));
  assert.throws(() => again.restore({ samples: -1 }), /samples/);
});

test("megalith finetune --task classify trains a GPT classifier and reports held-out accuracy, F1 and the confusion matrix", async (t) => {
  const dir = tempDir(t, "megalith-ft-");
  const base = join(dir, "base");
  const gpt = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 50257 }, { seed: 3 });
  await gpt.savePretrained(base);
  saveHfTokenizer(base, loadTokenizer("gpt2"), { modelMaxLength: 32 });
  const data = join(dir, "sentiment.jsonl");
  writeFileSync(data, sentimentRows(300, 11).join("\n") + "\n");
  const out = join(dir, "run");
  const r = await megalith("finetune", "--model", base, "--task", "classify", "--data", data, "--out", out, "--steps", "50", "--lr", "2e-3", "--batch-size", "8");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /held-out: 60 examples \| accuracy/);
  const report = JSON.parse(readFileSync(join(out, "eval_results.json"), "utf8")) as { accuracy: number; macro_f1: number; confusion: number[][]; labels: string[] };
  assert.deepEqual(report.labels, ["neg", "pos"]);
  assert.equal(report.confusion.flat().reduce((a, b) => a + b, 0), 60, "every held-out example is counted once");
  assert.ok(report.accuracy >= 0.9, `accuracy ${report.accuracy}`);
  const cfg = JSON.parse(readFileSync(join(out, "final", "config.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual(cfg.architectures, ["GPT2ForSequenceClassification"]);
  assert.deepEqual(cfg.id2label, { 0: "neg", 1: "pos" });
  // The final directory is itself a model directory: fine-tuning continues from it, head included.
  const again = await megalith("finetune", "--model", join(out, "final"), "--task", "classify", "--data", data, "--out", join(dir, "run2"), "--steps", "1", "--lr", "1e-9");
  assert.equal(again.code, 0, again.stderr);
  const acc2 = (JSON.parse(readFileSync(join(dir, "run2", "eval_results.json"), "utf8")) as { accuracy: number }).accuracy;
  assert.ok(Math.abs(acc2 - report.accuracy) < 1e-9, `the loaded head predicts as before: ${acc2} vs ${report.accuracy}`);
});

test("BERT pretrains (MLM + NSP) under the Trainer, resumes bit-exactly, and its model fine-tunes into a classifier (full and LoRA)", async (t) => {
  const dir = tempDir(t, "megalith-bert-");
  const tok = loadTokenizer("bert-base-uncased");
  const dataDir = join(dir, "mlm");
  await prepareMlmData({ inputs: [{ name: "brown", documents: brownCorpusDocuments().slice(0, 30) }], outDir: dataDir, tokenizer: tok as WordPiece, tokenizerSpec: "bert-base-uncased", maxSeqLen: 48, valFraction: 0.1, progress: false });
  const cfg = (out: string, steps: number) => validateConfig({
    out_dir: out, model: { type: "bert", n_layer: 2, n_head: 2, n_embd: 64, block_size: 48, vocab_size: 30522 },
    data: { source: dataDir }, train: { max_steps: steps, micro_batch_size: 4, log_interval: 100 }, optimizer: { lr: 2e-3, decay_steps: 12 },
    eval: { batches: 2 }, checkpoint: { interval: 6 },
  });
  const full = new Trainer(cfg(join(dir, "a"), 12), { log: false });
  await full.setup();
  await full.run();
  const losses = (f: string) => readFileSync(f, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { step: number; loss: number; split?: string }).filter((m) => !m.split).map((m) => m.loss);
  const la = losses(join(dir, "a", "metrics.jsonl"));
  assert.equal(la.length, 12);
  assert.ok(la.every(Number.isFinite) && la[0]! > 9, `MLM + NSP starts near ln(30522) + ln 2: ${la[0]}`);
  assert.ok(la.slice(-3).reduce((a, b) => a + b) < la.slice(0, 3).reduce((a, b) => a + b), `loss falls: ${la.map((x) => x.toFixed(3)).join(" ")}`);
  assert.ok(existsSync(join(dir, "a", "final", "vocab.txt")) && existsSync(join(dir, "a", "final", "model.safetensors")));
  // Resume from step 6 in a copy of the run: the same losses (masks are keyed by example, not by process history).
  const half = new Trainer(cfg(join(dir, "b"), 6), { log: false });
  await half.setup();
  await half.run();
  const resumed = new Trainer(cfg(join(dir, "b"), 12), { log: false, resume: true, allowConfigChange: true });
  await resumed.setup();
  await resumed.run();
  assert.deepEqual(losses(join(dir, "b", "metrics.jsonl")), la, "resumed losses equal the uninterrupted run's");

  // Classification from the pretrained BERT directory.
  const data = join(dir, "sentiment.jsonl");
  writeFileSync(data, sentimentRows(320, 5).join("\n") + "\n");
  const ft = (out: string, lora: object | null) => validateConfig({
    out_dir: out, model: { type: "bert", n_layer: 2, n_head: 2, n_embd: 64, block_size: 48, vocab_size: 30522, init_from: join(dir, "a", "final") },
    train: { max_steps: 150, micro_batch_size: 8, log_interval: 100 }, optimizer: { lr: 2e-3, weight_decay: 0.01, betas: [0.9, 0.999], warmup_steps: 10 }, eval: { batches: 1000 },
    finetune: { task: "classify", data, max_len: 24, lora },
  });
  const clf = new Trainer(ft(join(dir, "clf"), null), { log: !!process.env.FT_LOG });
  await clf.setup();
  await clf.run();
  const report = (clf.task as ClassifyTask).lastReport!;
  assert.equal(report.examples, 64);
  assert.ok(report.accuracy >= 0.8, `BERT classifier accuracy ${report.accuracy}`);
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "clf", "final", "config.json"), "utf8")).architectures, ["BertForSequenceClassification"]);

  const lora = new Trainer(ft(join(dir, "lora"), { r: 4, alpha: 8 }), { log: false });
  await lora.setup();
  const trainable = lora.model.namedParameters().filter(([, p]) => p.requiresGrad).map(([n]) => n);
  assert.ok(trainable.length > 0 && trainable.every((n) => /lora_[AB]|^classifier\./.test(n)), `only adapters and the head train: ${trainable.join(", ")}`);
  const frozenBefore = Float32Array.from(lora.model.namedParameters().find(([n]) => n === "bert.encoder.layer.0.attention.self.query.weight")![1].data() as Float32Array);
  await lora.run();
  const frozenAfter = lora.model.namedParameters().find(([n]) => n === "bert.encoder.layer.0.attention.self.query.weight")![1].data() as Float32Array;
  assert.deepEqual(Float32Array.from(frozenAfter), frozenBefore, "the base weights did not move");
  assert.ok(existsSync(join(dir, "lora", "final", "adapter_config.json")) && existsSync(join(dir, "lora", "final", "adapter_model.safetensors")), "PEFT adapter files in final/");
});

test("megalith finetune --task sft pads GPT-2's 50257-token vocabulary inside and exports it unpadded; the completion loss falls", async (t) => {
  const dir = tempDir(t, "megalith-sft-");
  const base = join(dir, "base");
  const gpt = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 50257 }, { seed: 4 });
  await gpt.savePretrained(base);
  saveHfTokenizer(base, loadTokenizer("gpt2"), { modelMaxLength: 32 });
  const data = join(dir, "pairs.jsonl");
  const animals = ["cat", "dog", "owl", "fox"];
  writeFileSync(data, Array.from({ length: 40 }, (_, i) => JSON.stringify({ prompt: `Q: sound of the ${animals[i % 4]}?\nA:`, completion: ` the ${animals[i % 4]} says ${["meow", "woof", "hoot", "yip"][i % 4]}` })).join("\n") + "\n");
  const out = join(dir, "run");
  const r = await megalith("finetune", "--model", base, "--task", "sft", "--data", data, "--out", out, "--steps", "40", "--lr", "3e-3", "--batch-size", "4");
  assert.equal(r.code, 0, r.stderr);
  const rows = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { loss: number; split?: string }).filter((m) => !m.split);
  assert.ok(rows[rows.length - 1]!.loss < rows[0]!.loss - 2, `completion loss falls: ${rows[0]!.loss} -> ${rows[rows.length - 1]!.loss}`);
  const cfg = JSON.parse(readFileSync(join(out, "final", "config.json"), "utf8")) as { vocab_size: number };
  assert.equal(cfg.vocab_size, 50257, "exported with the real vocabulary");
  const back = await GPT.fromPretrained(join(out, "final"));
  assert.equal(back.wte.weight.shape[0], 50257);
  // The checkpoint (padded inside) resumes: one more step from it.
  const again = await megalith("finetune", "--model", base, "--task", "sft", "--data", data, "--out", out, "--steps", "41", "--lr", "3e-3", "--batch-size", "4", "--resume", "--allow-config-change");
  assert.equal(again.code, 0, again.stderr);
});

test("megalith finetune --lora-r on a GPT classifier trains adapters + head; export --merge-lora rebuilds the plain classifier with the same predictions", async (t) => {
  const dir = tempDir(t, "megalith-ft-lora-");
  const base = join(dir, "base");
  const gpt = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 50257 }, { seed: 8 });
  await gpt.savePretrained(base);
  saveHfTokenizer(base, loadTokenizer("gpt2"), { modelMaxLength: 32 });
  const data = join(dir, "sentiment.jsonl");
  writeFileSync(data, sentimentRows(200, 17).join("\n") + "\n");
  const out = join(dir, "lora");
  const r = await megalith("finetune", "--model", base, "--task", "classify", "--data", data, "--out", out, "--steps", "30", "--lr", "3e-3", "--lora-r", "4");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /lora: r=4 alpha=8 on 2 modules \(c_attn\) \+ score: [\d,]+ of [\d,]+ parameters train/);
  for (const f of ["adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"]) assert.ok(existsSync(join(out, "final", f)), f);
  const merged = join(dir, "merged");
  const e = await megalith("export", "--adapter", join(out, "final"), "--merge-lora", "--out", merged);
  assert.equal(e.code, 0, e.stderr);
  assert.deepEqual(JSON.parse(readFileSync(join(merged, "config.json"), "utf8")).architectures, ["GPT2ForSequenceClassification"]);
  // Scoring the merged classifier (one step at lr 1e-9 changes nothing visible) gives the same held-out predictions.
  const again = await megalith("finetune", "--model", merged, "--task", "classify", "--data", data, "--out", join(dir, "check"), "--steps", "1", "--lr", "1e-9");
  assert.equal(again.code, 0, again.stderr);
  const a = JSON.parse(readFileSync(join(out, "eval_results.json"), "utf8")) as { confusion: number[][] };
  const b = JSON.parse(readFileSync(join(dir, "check", "eval_results.json"), "utf8")) as { confusion: number[][] };
  assert.deepEqual(b.confusion, a.confusion);
});

// LoRA: the layer against a float64 reference (forward and both adapter gradients), the module
// swap on GPT (names, freezing, the trainable count on GPT-2 124M's shape), merging, and the
// PEFT-layout files (names, orientation, round trip, errors that leave the model untouched).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GPT, GPT2ForSequenceClassification, type GPTConfig } from "../../src/models/index.js";
import {
  Linear, LoRALinear, applyLoRA, mergeLoRA, loraModules, trainableParameters, countParameters, saveLoRAAdapters,
  loadLoRAAdapters, PEFT_NAMINGS, detectPeftModelType, type Module,
} from "../../src/nn/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { normal, randint, tensor, withScope, type Tensor } from "../../src/tensor/index.js";
import { readSafetensors, writeSafetensors } from "../../src/checkpoint/index.js";
import { assertClose, randArr, seedFor, seedNote, toTensor } from "../_util/check.js";

const root = mkdtempSync(join(tmpdir(), "megalith-lora-"));
after(() => rmSync(root, { recursive: true, force: true }));

const SMALL: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 48 };

function smallGPT(seed: number, config: Partial<GPTConfig> = {}): GPT {
  return new GPT({ ...SMALL, ...config }, { seed }).eval();
}

/** Logits (B, T, V) of a dense forward on `idx`, as plain numbers. */
function logits(model: GPT, idx: Tensor): Float32Array {
  return noGrad(() => withScope(() => Float32Array.from(model.forward(idx).logits.data() as Float32Array)));
}

function randomIds(seed: number, B = 2, T = 12, V = SMALL.vocabSize): Tensor {
  return randint(0, V, [B, T], { seed });
}

/** Gives every adapter random A and B (B is zero after applyLoRA, which would make the adapters invisible). */
function randomizeAdapters(model: Module, seed: number, std = 0.2): void {
  noGrad(() => {
    loraModules(model).forEach(([, m], i) => {
      for (const [j, p] of [m.lora_A.weight, m.lora_B.weight].entries()) {
        const v = normal(p.shape, 0, std, { seed: seed + 2 * i + j });
        p.copy_(v);
        v.dispose();
      }
    });
  });
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Row-major float64 matmul of [n, k] by [k, m]. */
function mm(a: ArrayLike<number>, b: ArrayLike<number>, n: number, k: number, m: number): Float64Array {
  const out = new Float64Array(n * m);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) {
    let s = 0;
    for (let t = 0; t < k; t++) s += a[i * k + t]! * b[t * m + j]!;
    out[i * m + j] = s;
  }
  return out;
}

function transpose(a: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j]!;
  return out;
}

test("`applyLoRA()` with r=8 on GPT-2 124M's shape trains 12 x 8 x (768 + 2304) parameters, 0.24% of the model", () => {
  // The real shape: n_layer 12, n_head 12, n_embd 768, vocab 50257, block 1024 (about 10 s to build on 2 cores).
  const model = new GPT({ nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257 }, { seed: 1 });
  const base = model.numParameters();
  assert.equal(base, 124_439_808, "GPT-2 small has 124,439,808 parameters (tied head)");
  const s = applyLoRA(model, { r: 8, alpha: 16, targetModules: ["c_attn"] });
  assert.equal(s.adapters.length, 12);
  assert.equal(s.trainable, 12 * 8 * (768 + 2304));                                // 294,912: PEFT prints the same
  assert.equal(s.total, base + s.trainable);
  assert.ok(s.trainable / s.total <= 0.01, `${s.trainable} / ${s.total}`);
  assert.equal(trainableParameters(model).reduce((n, p) => n + p.numel, 0), s.trainable);
  const names = new Map(model.namedParameters().map(([n, p]) => [n, p]));
  assert.deepEqual(names.get("h.0.attn.c_attn.weight")!.shape, [2304, 768], "the base weight keeps its name");
  assert.deepEqual(names.get("h.0.attn.c_attn.lora_A.weight")!.shape, [8, 768]);
  assert.deepEqual(names.get("h.0.attn.c_attn.lora_B.weight")!.shape, [2304, 8]);
  assert.equal(names.get("h.0.attn.c_attn.weight")!.requiresGrad, false);
  assert.equal(names.get("wte.weight")!.requiresGrad, false);

  // Back to the plain model (B = 0: nothing changes), then c_attn + every c_proj (attn's and mlp's, PEFT's suffix rule).
  assert.equal(mergeLoRA(model).length, 12);
  assert.equal(model.numParameters(), base);
  const s2 = applyLoRA(model, { r: 8, alpha: 16, targetModules: ["c_attn", "c_proj"] });
  assert.equal(s2.adapters.length, 36);
  assert.equal(s2.trainable, 12 * 8 * ((768 + 2304) + (768 + 768) + (3072 + 768)));   // 811,008
  assert.ok(s2.trainable / s2.total <= 0.01);
  for (const p of model.parameters()) p.dispose();
});

test("`LoRALinear.forward()` is x W^T + b + (x A^T B^T) alpha / r, and its gradients reach only A and B, matching float64", () => {
  const seed = seedFor("lora-linear");
  const [N, IN, OUT, R, ALPHA] = [5, 7, 6, 3, 6];
  const base = new Linear(IN, OUT, { seed });
  noGrad(() => {
    const b = toTensor(randArr([OUT], seed + 1));
    base.bias!.copy_(b);
    b.dispose();
  });
  const l = new LoRALinear(base, { r: R, alpha: ALPHA }, { name: "x" });
  assert.equal(l.scaling, 2);
  // Fresh: A is kaiming-uniform in +-1/sqrt(in), B zero.
  const a0 = l.lora_A.weight.data() as Float32Array;
  assert.ok(a0.every((v) => Math.abs(v) <= 1 / Math.sqrt(IN)) && a0.some((v) => v !== 0), "A ~ U(-1/sqrt(in), 1/sqrt(in))");
  assert.ok((l.lora_B.weight.data() as Float32Array).every((v) => v === 0), "B starts at zero");
  noGrad(() => {
    for (const [i, p] of [l.lora_A.weight, l.lora_B.weight].entries()) {
      const v = toTensor(randArr(p.shape, seed + 10 + i));
      p.copy_(v);
      v.dispose();
    }
  });
  const xa = randArr([N, IN], seed + 20), ga = randArr([N, OUT], seed + 21);
  const x = toTensor(xa), g = toTensor(ga);
  const y = l.forward(x);
  const loss = y.mul(g).sum();
  loss.backward();

  const W = base.weight.data(), b = base.bias!.data(), A = l.lora_A.weight.data(), B = l.lora_B.weight.data();
  const xA = mm(xa.data, transpose(A, R, IN), N, IN, R);                           // (N, r)
  const delta = mm(xA, transpose(B, OUT, R), N, R, OUT);                           // (N, out)
  const plain = mm(xa.data, transpose(W, OUT, IN), N, IN, OUT);
  const want = plain.map((v, i) => v + b[i % OUT]! + 2 * delta[i]!);
  assertClose(y, want, { what: "LoRALinear forward", seed, rtol: 1e-5, atol: 1e-5 });
  // d/dB = s g^T (x A^T); d/dA = s B^T g^T x
  const gT = transpose(ga.data, N, OUT);
  const dB = mm(gT, xA, OUT, N, R).map((v) => 2 * v);
  const dA = mm(mm(transpose(B, OUT, R), gT, R, OUT, N), xa.data, R, N, IN).map((v) => 2 * v);
  assertClose(l.lora_B.weight.grad!, dB, { what: "dL/dB", seed, rtol: 1e-4, atol: 1e-5 });
  assertClose(l.lora_A.weight.grad!, dA, { what: "dL/dA", seed, rtol: 1e-4, atol: 1e-5 });
  assert.equal(base.weight.grad, null, "the frozen base weight gets no gradient");
  assert.equal(base.bias!.grad, null);
  assert.deepEqual(l.namedParameters().map(([n]) => n), ["weight", "bias", "lora_A.weight", "lora_B.weight"]);
});

test("`LoRALinear` applies dropout to the adapter's input only, in training only", () => {
  const base = new Linear(16, 8, { seed: 4 });
  const l = new LoRALinear(base, { r: 4, alpha: 4, dropout: 0.5 }, { name: "d" });
  const x = toTensor(randArr([3, 16], seedFor("lora-dropout")));
  const plain = Float32Array.from(noGrad(() => base.forward(x)).data() as Float32Array);
  // B = 0: whatever dropout does to the adapter path, the output is the base's.
  assert.equal(maxAbsDiff(noGrad(() => l.forward(x)).data(), plain), 0);
  randomizeAdapters(l, 9);
  l.eval();
  const e1 = noGrad(() => l.forward(x)).data(), e2 = noGrad(() => l.forward(x)).data();
  assert.equal(maxAbsDiff(e1, e2), 0, "eval is deterministic");
  l.train();
  const t1 = noGrad(() => l.forward(x)).data();
  assert.ok(maxAbsDiff(t1, e1) > 1e-3, "training drops some adapter inputs");
});

test("`applyLoRA()` on a fresh GPT leaves logits unchanged; with trained adapters `mergeLoRA()` gives the same logits within 1e-5", () => {
  const seed = seedFor("lora-merge") % 1_000_000;
  const model = smallGPT(seed);
  const idx = randomIds(seed);
  const before = logits(model, idx);
  applyLoRA(model, { r: 4, alpha: 8, targetModules: ["c_attn", "c_proj", "c_fc"], seed });
  assert.equal(maxAbsDiff(logits(model, idx), before), 0, "B = 0 at init: the adapted model is the base model");
  randomizeAdapters(model, seed + 1);
  const adapted = logits(model, idx);
  assert.ok(maxAbsDiff(adapted, before) > 1e-2, "the adapters change the logits (else the merge check proves nothing)");
  const merged = mergeLoRA(model);
  assert.equal(merged.length, 8);
  assert.ok(model.getSubmodule("h.0.attn.c_attn") instanceof Linear && loraModules(model).length === 0);
  assert.ok(model.namedParameters().every(([n]) => !n.includes("lora_")));
  const d = maxAbsDiff(logits(model, idx), adapted);
  assert.ok(d <= 1e-5, `merged vs base + adapters: max |diff| ${d} (${seedNote(seed)})`);
});

test("`applyLoRA()` freezes the base: a backward pass leaves gradients on the adapters and modulesToSave only", () => {
  const seed = seedFor("lora-grad") % 1_000_000;
  const model = smallGPT(seed).train();
  const s = applyLoRA(model, { r: 2, alpha: 4, targetModules: ["c_attn"], modulesToSave: ["ln_f"], seed });
  assert.deepEqual(s.adapters, ["h.0.attn.c_attn", "h.1.attn.c_attn"]);
  assert.equal(s.trainable, 2 * 2 * (32 + 96) + 2 * 32);
  randomizeAdapters(model, seed + 1);
  const idx = randomIds(seed), targets = randomIds(seed + 7);
  const { loss } = model.forward(idx, targets);
  loss!.backward();
  for (const [name, p] of model.namedParameters()) {
    const trains = name.includes(".lora_") || name.startsWith("ln_f.");
    assert.equal(p.requiresGrad, trains, name);
    if (!trains) {
      assert.equal(p.grad, null, `${name} is frozen but got a gradient`);
      continue;
    }
    assert.ok(p.grad, `${name} has no gradient`);
    assert.ok((p.grad.data() as Float32Array).some((v) => v !== 0), `${name}'s gradient is all zero`);
  }
});

test("`applyLoRA()` errors name what was wrong: no match (listing the Linear names), a second application, an MoE expert, a bad rank", () => {
  const model = smallGPT(3);
  assert.throws(() => applyLoRA(model, { r: 4, alpha: 8, targetModules: ["query", "value"] }),
    (e: Error) => /match none/.test(e.message) && e.message.includes("h.*.attn.c_attn") && e.message.includes("h.*.mlp.c_fc"));
  assert.equal(loraModules(model).length, 0);
  assert.throws(() => applyLoRA(model, { r: 0, alpha: 8, targetModules: ["c_attn"] }), /r must be an integer >= 1, got 0/);
  assert.throws(() => applyLoRA(model, { r: 2, alpha: 8, targetModules: ["c_attn"], modulesToSave: ["classifier"] }), /modulesToSave \["classifier"\] match no module/);
  assert.equal(loraModules(model).length, 0, "a refused call leaves the model as it was");
  const s = applyLoRA(model, { r: 2, alpha: 8, targetModules: ["c_attn", "typo"] });
  assert.deepEqual(s.unmatched, ["typo"]);
  assert.throws(() => applyLoRA(model, { r: 2, alpha: 8, targetModules: ["c_attn"] }), /already has a LoRA adapter/);
  const moe = new GPT({ ...SMALL, moe: { numExperts: 2, topK: 1 } }, { seed: 1 });
  assert.throws(() => applyLoRA(moe, { r: 2, alpha: 4, targetModules: ["c_fc"] }), /MoE expert/);
  // A string is a regular expression over the whole name (PEFT's rule).
  const m2 = smallGPT(3);
  assert.deepEqual(applyLoRA(m2, { r: 2, alpha: 4, targetModules: "h\\.1\\..*c_proj" }).adapters, ["h.1.attn.c_proj", "h.1.mlp.c_proj"]);
});

test("`PEFT_NAMINGS` maps our module names to the HF task model's, per task type", () => {
  const g = PEFT_NAMINGS.gpt2, b = PEFT_NAMINGS.bert;
  assert.equal(g.hfModuleName("h.0.attn.c_attn", "CAUSAL_LM"), "transformer.h.0.attn.c_attn");
  assert.equal(g.hfModuleName("h.0.attn.c_attn", "FEATURE_EXTRACTION"), "h.0.attn.c_attn");
  assert.equal(g.hfModuleName("lm_head", "CAUSAL_LM"), "lm_head");
  assert.ok(g.isConv1D("h.3.mlp.c_fc.weight") && !g.isConv1D("h.3.mlp.c_fc.bias") && !g.isConv1D("lm_head.weight"));
  assert.equal(b.hfModuleName("bert.encoder.layer.0.attention.self.query", "SEQ_CLS"), "bert.encoder.layer.0.attention.self.query");
  assert.equal(b.hfModuleName("bert.encoder.layer.0.attention.self.query", "FEATURE_EXTRACTION"), "encoder.layer.0.attention.self.query");
  assert.equal(b.hfModuleName("encoder.layer.0.output.dense", "SEQ_CLS"), "bert.encoder.layer.0.output.dense");
  assert.equal(b.hfModuleName("classifier", "SEQ_CLS"), "classifier");
  assert.equal(b.hfModuleName("cls.predictions.transform.dense", "SEQ_CLS"), "cls.predictions.transform.dense");
  assert.equal(detectPeftModelType(smallGPT(1)), "gpt2");
});

test("`saveLoRAAdapters()` writes PEFT's layout and `loadLoRAAdapters()` restores identical logits", async () => {
  const seed = seedFor("lora-files") % 1_000_000;
  const dir = join(root, "adapter");
  const model = smallGPT(seed);
  const opts = { r: 4, alpha: 8, dropout: 0.1, targetModules: ["c_attn", "attn.c_proj"], modulesToSave: ["ln_f", "h.1.mlp.c_fc"] };
  applyLoRA(model, { ...opts, seed });
  randomizeAdapters(model, seed + 1);
  // The modules to save train in full: give them values of their own.
  noGrad(() => {
    for (const name of ["ln_f.weight", "h.1.mlp.c_fc.weight"]) {
      const p = model.stateDict().get(name)!;
      const v = normal(p.shape, 0, 0.5, { seed: seed + 99 });
      p.copy_(v);
      v.dispose();
    }
  });
  const idx = randomIds(seed);
  const want = logits(model, idx);
  const cfg = await saveLoRAAdapters(model, dir, { baseModel: "models/base", taskType: "CAUSAL_LM", ...opts });

  const json = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual(json, cfg);
  assert.equal(json.peft_type, "LORA");
  assert.equal(json.r, 4);
  assert.equal(json.lora_alpha, 8);
  assert.equal(json.lora_dropout, 0.1);
  assert.deepEqual(json.target_modules, ["c_attn", "attn.c_proj"]);
  assert.deepEqual(json.modules_to_save, ["ln_f", "h.1.mlp.c_fc"]);
  assert.equal(json.fan_in_fan_out, true, "HF GPT-2's projections are Conv1D");
  assert.equal(json.bias, "none");
  assert.equal(json.task_type, "CAUSAL_LM");
  assert.equal(json.base_model_name_or_path, "models/base");
  assert.equal(json.inference_mode, true);

  const { tensors } = await readSafetensors(join(dir, "adapter_model.safetensors"));
  const keys = [...tensors.keys()].sort();
  const want_keys = [0, 1].flatMap((i) => ["attn.c_attn", "attn.c_proj"].flatMap((m) => ["lora_A", "lora_B"].map((ab) => `base_model.model.transformer.h.${i}.${m}.${ab}.weight`)))
    .concat(["base_model.model.transformer.ln_f.weight", "base_model.model.transformer.ln_f.bias", "base_model.model.transformer.h.1.mlp.c_fc.weight", "base_model.model.transformer.h.1.mlp.c_fc.bias"]).sort();
  assert.deepEqual(keys, want_keys);
  assert.deepEqual(tensors.get("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight")!.shape, [4, 32], "lora_A is [r, in]");
  assert.deepEqual(tensors.get("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")!.shape, [96, 4], "lora_B is [out, r]");
  // A Conv1D module saved in full is in HF's [in, out] orientation.
  const fc = tensors.get("base_model.model.transformer.h.1.mlp.c_fc.weight")!;
  assert.deepEqual(fc.shape, [32, 128]);
  const ours = model.stateDict().get("h.1.mlp.c_fc.weight")!.data() as Float32Array;   // [128, 32]
  const file = new Float32Array(fc.data.slice().buffer);
  assert.equal(file[3 * 128 + 5], ours[5 * 32 + 3]);

  // A fresh copy of the base (same seed) with the adapters loaded computes the same logits, exactly.
  const fresh = smallGPT(seed);
  const { summary } = await loadLoRAAdapters(fresh, dir);
  assert.equal(summary.adapters.length, 4);
  assert.equal(maxAbsDiff(logits(fresh, idx), want), 0);
  assert.deepEqual(trainableParameters(fresh).length, 4 * 2 + 4, "adapters + ln_f's and c_fc's weight and bias train");
  mergeLoRA(fresh);
  const d = maxAbsDiff(logits(fresh, idx), want);
  assert.ok(d <= 1e-5, `merged after load: ${d}`);
});

test("`loadLoRAAdapters()` refuses an adapter for another base size or with a tensor missing, and leaves the model as it was", async () => {
  const seed = seedFor("lora-load-errors") % 1_000_000;
  const dir = join(root, "adapter-errors");
  const trained = smallGPT(seed);
  applyLoRA(trained, { r: 2, alpha: 2, targetModules: ["c_attn"] });
  await saveLoRAAdapters(trained, dir, { baseModel: "x", taskType: "CAUSAL_LM", targetModules: ["c_attn"], r: 2, alpha: 2 });

  const wider = smallGPT(seed, { nEmbd: 48 });
  const idx = randomIds(seed);
  const before = logits(wider, idx);
  const flagsBefore = wider.parameters().map((p) => p.requiresGrad);
  await assert.rejects(loadLoRAAdapters(wider, dir), (e: Error) => /has shape \[2, 32\], this base model needs \[2, 48\]/.test(e.message) && /another size/.test(e.message));
  assert.equal(loraModules(wider).length, 0);
  assert.deepEqual(wider.parameters().map((p) => p.requiresGrad), flagsBefore);
  assert.equal(maxAbsDiff(logits(wider, idx), before), 0);

  const { tensors } = await readSafetensors(join(dir, "adapter_model.safetensors"));
  const gone = "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight";
  tensors.delete(gone);
  await writeSafetensors(join(dir, "adapter_model.safetensors"), tensors);
  const same = smallGPT(seed);
  await assert.rejects(loadLoRAAdapters(same, dir), (e: Error) => e.message.includes("missing 1 tensor") && e.message.includes(gone));
  assert.equal(loraModules(same).length, 0);

  await assert.rejects(loadLoRAAdapters(same, join(root, "nowhere")), /adapter_config\.json: not found/);
  void tensor;
});

test("`saveLoRAAdapters()` on GPT2ForSequenceClassification writes HF's SEQ_CLS names (transformer.*, score) and loads back exactly", async () => {
  const seed = seedFor("lora-seq-cls") % 1_000_000;
  const dir = join(root, "adapter-cls");
  const make = () => new GPT2ForSequenceClassification(smallGPT(seed), 3, { seed }).eval();
  const clf = make();
  const opts = { r: 2, alpha: 4, targetModules: ["c_attn"], modulesToSave: ["score"] };
  const s = applyLoRA(clf, { ...opts, seed });
  assert.equal(s.trainable, 2 * 2 * (32 + 96) + 3 * 32, "adapters + the head");
  randomizeAdapters(clf, seed + 1);
  noGrad(() => {
    const v = normal(clf.score.weight.shape, 0, 0.5, { seed: seed + 5 });
    clf.score.weight.copy_(v);
    v.dispose();
  });
  const idx = randomIds(seed), lengths = Int32Array.from([12, 7]);
  const out = (m: GPT2ForSequenceClassification) => noGrad(() => withScope(() => Float32Array.from(m.forward(idx, lengths).logits.data() as Float32Array)));
  const want = out(clf);
  await saveLoRAAdapters(clf, dir, { baseModel: "b", taskType: "SEQ_CLS", ...opts });
  const { tensors } = await readSafetensors(join(dir, "adapter_model.safetensors"));
  assert.deepEqual([...tensors.keys()].sort(), [
    "base_model.model.score.weight",
    "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
    "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight", "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight",
  ]);
  const fresh = make();
  await loadLoRAAdapters(fresh, dir);
  assert.equal(maxAbsDiff(out(fresh), want), 0);
});

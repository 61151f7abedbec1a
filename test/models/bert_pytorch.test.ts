// BERT numerics pinned by a plain-PyTorch BertForPreTraining (scripts/torch_ref/bert_ref.py,
// fixtures from bert_fixtures.py, computed in float64): logits, MLM/NSP/total losses and every
// parameter gradient within 1e-5, relative to the largest magnitude of each reference tensor
// (measured: under 6e-7). The attention key biases are the exception: their gradient is zero in
// exact arithmetic (softmax ignores a shift shared by every key of a query), so theirs is judged
// against 1e-5 of the same layer's query-bias gradient instead. Then 3 AdamW steps (losses and
// every parameter within 1e-5), and the other direction: our saveBERT output loads into the
// PyTorch model (bert_load_check.py) and gives the same outputs within 1e-5.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AdamW, tensor, readSafetensors, noGrad, type Tensor } from "../../src/index.js";
import { loadBERT, saveBERT, BertForPreTraining, type BERTOutput } from "../../src/models/index.js";
import { tempDir } from "./_helpers.js";

const DIR = "test/fixtures/bert/tiny";
const REGEN = "regenerate with: /usr/bin/python3 scripts/torch_ref/bert_fixtures.py test/fixtures/bert";
const TOL = 1e-5;
const PY = "/usr/bin/python3";
const torchMissing = (() => {
  const r = spawnSync(PY, ["-c", "import torch"], { stdio: "ignore" });
  return r.status === 0 ? false : `${PY} cannot import torch (python3-torch, installed by scripts/setup.sh); skipping the PyTorch load check`;
})();

async function loadFixture() {
  const { metadata, tensors } = await readSafetensors(join(DIR, "fixture.safetensors"));
  assert.equal(metadata.magic, "megalith-bert-fixture", `wrong magic; ${REGEN}`);
  assert.equal(metadata.version, "1", `unsupported fixture version ${metadata.version}; ${REGEN}`);
  const get = (k: string) => {
    const r = tensors.get(k);
    assert.ok(r, `fixture tensor ${k} missing; ${REGEN}`);
    const copy = Uint8Array.from(r.data);
    return { shape: r.shape, f32: new Float32Array(copy.buffer), i32: new Int32Array(copy.buffer) };
  };
  const ids = (k: string) => { const g = get(k); return tensor(g.i32, { shape: g.shape, dtype: "int32" }); };
  const batch = {
    inputIds: ids("input_ids"), tokenTypeIds: ids("token_type_ids"), attentionMask: ids("attention_mask"),
    mlmLabels: ids("mlm_labels"), nspLabels: ids("nsp_labels"),
  };
  return { get, batch, parameters: JSON.parse(metadata.parameters!) as string[] };
}

/** max |a - b| / max |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-30);
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

function forward(model: BertForPreTraining, b: Awaited<ReturnType<typeof loadFixture>>["batch"], fullLogits = false): BERTOutput {
  return model.forward(b.inputIds, { tokenTypeIds: b.tokenTypeIds, attentionMask: b.attentionMask, mlmLabels: b.mlmLabels, nspLabels: b.nspLabels, fullLogits });
}

test("`loadBERT()` of the PyTorch fixture matches its logits, losses and every gradient within 1e-5", async () => {
  const newly: string[][] = [];
  const model = await loadBERT(DIR, { onNewlyInitialized: (_f, n) => newly.push(n) });
  assert.deepEqual(newly, [], "the PyTorch checkpoint holds every parameter");
  const fx = await loadFixture();
  assert.deepEqual(model.namedParameters().map(([n]) => n).sort(), [...fx.parameters].sort(), "parameter names equal the PyTorch module's");
  const out = forward(model, fx.batch, true);
  assert.deepEqual(out.predictionLogits.shape, [3, 12, 101]);
  const le = relErr(out.predictionLogits.data(), fx.get("prediction_logits").f32);
  assert.ok(le < TOL, `prediction logits: relative error ${le.toExponential(2)}`);
  const se = relErr(out.seqRelationshipLogits.data(), fx.get("seq_relationship_logits").f32);
  assert.ok(se < TOL, `NSP logits: relative error ${se.toExponential(2)}`);
  for (const [k, t] of [["loss", out.loss], ["mlm_loss", out.mlmLoss], ["nsp_loss", out.nspLoss]] as const) {
    const ref = fx.get(k).f32[0]!;
    assert.ok(Math.abs(t!.item() - ref) / ref < TOL, `${k}: ${t!.item()} vs PyTorch ${ref}`);
  }
  out.loss!.backward();
  const grads = new Map(model.namedParameters().map(([n, p]) => [n, p.grad!.data() as Float32Array]));
  for (const [name, g] of grads) {
    const ref = fx.get(`grad.${name}`).f32;
    if (/attention\.self\.key\.bias$/.test(name)) {
      const scale = maxAbs(fx.get(`grad.${name.replace(".key.", ".query.")}`).f32);
      assert.ok(maxAbs(ref) < 1e-12 * scale + 1e-15, `${name}: the reference gradient should be zero, got ${maxAbs(ref)}`);
      assert.ok(maxAbs(g) < TOL * scale, `${name}: |grad| ${maxAbs(g).toExponential(2)} not within 1e-5 of the query-bias gradient scale ${scale.toExponential(2)}`);
      continue;
    }
    const e = relErr(g, ref);
    assert.ok(e < TOL, `gradient of ${name}: relative error ${e.toExponential(2)}`);
  }
});

test("`forward()` with mlmLabels gathers the labelled rows: same losses, gradients and logit rows as fullLogits", async () => {
  const fx = await loadFixture();
  const run = async (full: boolean) => {
    const model = await loadBERT(DIR);
    const out = forward(model, fx.batch, full);
    out.loss!.backward();
    return { out, grads: new Map(model.namedParameters().map(([n, p]) => [n, Float32Array.from(p.grad!.data() as Float32Array)])) };
  };
  const full = await run(true), gathered = await run(false);
  const labels = fx.batch.mlmLabels.data() as Int32Array;
  const rows = [...labels.keys()].filter((i) => labels[i] !== -100);
  assert.ok(rows.length > 0 && rows.length < labels.length / 2);
  assert.deepEqual(Array.from(gathered.out.mlmPositions!.data()), rows);
  assert.deepEqual(gathered.out.predictionLogits.shape, [rows.length, 101]);
  const fullL = full.out.predictionLogits.data() as Float32Array, gl = gathered.out.predictionLogits.data() as Float32Array;
  const picked = rows.flatMap((r) => Array.from(fullL.subarray(r * 101, (r + 1) * 101)));
  assert.ok(relErr(gl, picked) < 1e-6, `gathered logits differ from the full logits' rows by ${relErr(gl, picked)}`);
  assert.ok(Math.abs(gathered.out.loss!.item() - full.out.loss!.item()) < 1e-6);
  for (const [name, g] of full.grads) {
    const scale = Math.max(maxAbs(g), 1e-3 * maxAbs(full.grads.get("bert.embeddings.word_embeddings.weight")!));
    const e = maxAbs(Array.from(g, (v, i) => v - gathered.grads.get(name)![i]!)) / scale;
    assert.ok(e < 1e-5, `gradient of ${name}: gathered vs full differ by ${e.toExponential(2)} (relative)`);
  }
});

test("AdamW on BERT follows PyTorch's 3 steps: losses and every parameter within 1e-5", async () => {
  const fx = await loadFixture();
  const adamw = { lr: 1e-3, betas: [0.9, 0.999] as [number, number], eps: 1e-6, weightDecay: 0.01 };
  const model = await loadBERT(DIR);
  const opt = new AdamW(model.parameters(), adamw);
  const ref = fx.get("adamw_losses").f32;
  assert.equal(ref.length, 4);
  const got: number[] = [];
  for (let s = 0; s < 3; s++) {
    opt.zeroGrad();
    const { loss } = forward(model, fx.batch);
    got.push(loss!.item());
    loss!.backward();
    opt.step();
  }
  got.push(noGrad(() => forward(model, fx.batch).loss!.item()));
  for (let s = 0; s < ref.length; s++) {
    const e = Math.abs(got[s]! - ref[s]!) / Math.abs(ref[s]!);
    assert.ok(e < TOL, `loss ${s}: ${got[s]} vs PyTorch ${ref[s]} (rel ${e.toExponential(2)}); all: ${got.map((v) => v.toFixed(6)).join(", ")}`);
  }
  for (const [name, p] of model.namedParameters()) {
    const e = relErr(p.data(), fx.get(`adamw.${name}`).f32);
    assert.ok(e < TOL, `${name} after 3 AdamW steps: relative error ${e.toExponential(2)}`);
  }
});

test("`saveBERT()` output loads into the PyTorch BertForPreTraining with the same outputs within 1e-5", { skip: torchMissing }, async (t) => {
  const fx = await loadFixture();
  // Our own init (not the fixture's weights), sharpened so the logits are not all near zero.
  const model = new BertForPreTraining({ nLayer: 2, nHead: 4, nEmbd: 32, intermediateSize: 48, maxPositions: 16, vocabSize: 101 }, { seed: 5 });
  noGrad(() => { for (const p of model.parameters()) if (p.ndim === 2) { const w = p.mul(5); p.copy_(w); w.dispose(); } });
  model.eval();
  const dir = tempDir(t);
  await saveBERT(model, dir);
  const b = fx.batch;
  const list2 = (x: Tensor) => { const d = Array.from(x.data()); return Array.from({ length: 3 }, (_, i) => d.slice(i * 12, (i + 1) * 12)); };
  const batch = {
    input_ids: list2(b.inputIds), token_type_ids: list2(b.tokenTypeIds), attention_mask: list2(b.attentionMask),
    mlm_labels: list2(b.mlmLabels), nsp_labels: Array.from(b.nspLabels.data()),
  };
  writeFileSync(join(dir, "batch.json"), JSON.stringify(batch));
  const r = spawnSync(PY, ["scripts/torch_ref/bert_load_check.py", dir, join(dir, "batch.json"), join(dir, "out.json")], { encoding: "utf8" });
  assert.equal(r.status, 0, `bert_load_check.py failed: ${r.stderr}`);
  const ref = JSON.parse(readFileSync(join(dir, "out.json"), "utf8")) as Record<string, number[]>;
  const out = noGrad(() => forward(model, b, true));
  const le = relErr(out.predictionLogits.data(), ref.prediction_logits!);
  assert.ok(le < TOL, `prediction logits: relative error ${le.toExponential(2)}`);
  const se = relErr(out.seqRelationshipLogits.data(), ref.seq_relationship_logits!);
  assert.ok(se < TOL, `NSP logits: relative error ${se.toExponential(2)}`);
  for (const [k, v] of [["loss", out.loss], ["mlm_loss", out.mlmLoss], ["nsp_loss", out.nspLoss]] as const) {
    assert.ok(Math.abs(v!.item() - ref[k]![0]!) / ref[k]![0]! < TOL, `${k}: ${v!.item()} vs PyTorch ${ref[k]![0]}`);
  }
});

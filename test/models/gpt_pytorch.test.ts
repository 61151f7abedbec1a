// GPT-2 numerics pinned by golden fixtures from PyTorch (scripts/torch_ref/gpt_fixtures.py):
// logits and loss within 1e-5, every parameter gradient within 1e-4, and a 10-step AdamW loss
// trajectory within 1e-5 (relative, against the largest magnitude of each tensor).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { GPT, AdamW, tensor, readSafetensors, type Tensor } from "../../src/index.js";

const ROOT = "test/fixtures/gpt";
const REGEN = "regenerate with: /usr/bin/python3 scripts/torch_ref/gpt_fixtures.py test/fixtures/gpt";
const CONV1D = /^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$/;

async function loadFixture(name: string) {
  const { metadata, tensors } = await readSafetensors(join(ROOT, name, "fixture.safetensors"));
  assert.equal(metadata.magic, "megalith-gpt-fixture", `fixture ${name}: wrong magic; ${REGEN}`);
  assert.equal(metadata.version, "1", `fixture ${name}: unsupported version ${metadata.version}; ${REGEN}`);
  const get = (k: string) => {
    const r = tensors.get(k);
    assert.ok(r, `fixture ${name}: tensor ${k} missing; ${REGEN}`);
    const copy = new Uint8Array(r.data.byteLength);
    copy.set(r.data);
    return { shape: r.shape, f32: new Float32Array(copy.buffer), i32: new Int32Array(copy.buffer) };
  };
  return { get, names: [...tensors.keys()] };
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-30);
}

for (const name of ["tiny", "odd"]) {
  test(`GPT.fromPretrained(${name}) matches PyTorch logits, loss and every gradient`, async () => {
    const model = await GPT.fromPretrained(join(ROOT, name));
    const fx = await loadFixture(name);
    const idxF = fx.get("idx"), tgtF = fx.get("targets");
    const idx = tensor(idxF.i32, { shape: idxF.shape, dtype: "int32" });
    const targets = tensor(tgtF.i32, { shape: tgtF.shape, dtype: "int32" });
    const { logits, loss } = model.forward(idx, targets);
    const le = relErr(logits.data(), fx.get("logits").f32);
    assert.ok(le < 1e-5, `logits relative error ${le.toExponential(2)}`);
    const lossRef = fx.get("loss").f32[0]!;
    assert.ok(Math.abs(loss!.item() - lossRef) / lossRef < 1e-5, `loss ${loss!.item()} vs ${lossRef}`);
    loss!.backward();
    for (const [pname, p] of model.namedParameters()) {
      const ref = fx.get(`grad.${pname}`).f32;
      let g: Tensor = p.grad!;
      if (CONV1D.test(pname)) g = g.t();
      const e = relErr(g.data(), ref);
      assert.ok(e < 1e-4, `gradient of ${pname}: relative error ${e.toExponential(2)}`);
    }
  });

  test(`AdamW on GPT (${name}) follows PyTorch's 10-step loss trajectory`, async () => {
    const model = await GPT.fromPretrained(join(ROOT, name));
    const fx = await loadFixture(name);
    const idxF = fx.get("idx"), tgtF = fx.get("targets");
    const idx = tensor(idxF.i32, { shape: idxF.shape, dtype: "int32" });
    const targets = tensor(tgtF.i32, { shape: tgtF.shape, dtype: "int32" });
    const opt = new AdamW(model.parameters(), { lr: 1e-3, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 });
    const ref = fx.get("adamw_losses").f32;
    const got: number[] = [];
    for (let s = 0; s < ref.length; s++) {
      opt.zeroGrad();
      const { loss } = model.forward(idx, targets);
      got.push(loss!.item());
      loss!.backward();
      opt.step();
    }
    for (let s = 0; s < ref.length; s++) {
      const e = Math.abs(got[s]! - ref[s]!) / Math.abs(ref[s]!);
      assert.ok(e < 1e-5, `step ${s}: loss ${got[s]} vs PyTorch ${ref[s]} (rel ${e.toExponential(2)}); all: ${got.map((v) => v.toFixed(6)).join(", ")}`);
    }
  });
}

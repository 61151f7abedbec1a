// Mixture-of-experts GPT numerics pinned by golden fixtures from a plain-PyTorch MoE
// (scripts/torch_ref/moe_fixtures.py: GShard's one-hot dispatch/combine, computed in float64):
// top-1 and top-2 with capacity dropping active; logits, the total loss, cross-entropy, aux
// and z-loss, every parameter gradient, and 3 AdamW steps' losses, all within 1e-5 (relative,
// against the largest magnitude of each tensor).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { GPT, AdamW, tensor, readSafetensors, noGrad, type GPTConfig } from "../../src/index.js";
import { MoE } from "../../src/nn/index.js";

const ROOT = "test/fixtures/moe";
const REGEN = "regenerate with: /usr/bin/python3 scripts/torch_ref/moe_fixtures.py test/fixtures/moe";
const TOL = 1e-5;

interface FixtureConfig {
  n_layer: number; n_head: number; n_embd: number; n_positions: number; vocab_size: number;
  num_experts: number; top_k: 1 | 2; capacity_factor: number; every: number; aux_loss_coef: number; z_loss_coef: number;
}

async function loadFixture(name: string) {
  const { metadata, tensors } = await readSafetensors(join(ROOT, name, "fixture.safetensors"));
  assert.equal(metadata.magic, "megalith-moe-fixture", `fixture ${name}: wrong magic; ${REGEN}`);
  assert.equal(metadata.version, "1", `fixture ${name}: unsupported version ${metadata.version}; ${REGEN}`);
  const get = (k: string) => {
    const r = tensors.get(k);
    assert.ok(r, `fixture ${name}: tensor ${k} missing; ${REGEN}`);
    const copy = new Uint8Array(r.data.byteLength);
    copy.set(r.data);
    return { shape: r.shape, f32: new Float32Array(copy.buffer), i32: new Int32Array(copy.buffer) };
  };
  const c = JSON.parse(metadata.config!) as FixtureConfig;
  const config: GPTConfig = {
    nLayer: c.n_layer, nHead: c.n_head, nEmbd: c.n_embd, blockSize: c.n_positions, vocabSize: c.vocab_size,
    moe: { numExperts: c.num_experts, topK: c.top_k, capacityFactor: c.capacity_factor, every: c.every, auxLossCoef: c.aux_loss_coef, zLossCoef: c.z_loss_coef },
  };
  return { get, config, names: [...tensors.keys()] };
}

/** A GPT with the fixture's weights; every parameter name must match the fixture's both ways. */
async function fixtureModel(name: string) {
  const fx = await loadFixture(name);
  const model = new GPT(fx.config);
  const own = model.namedParameters().map(([n]) => n).sort();
  const theirs = fx.names.filter((n) => n.startsWith("param.")).map((n) => n.slice(6)).sort();
  assert.deepEqual(own, theirs, "parameter names differ from the PyTorch reference's");
  noGrad(() => {
    for (const [pname, p] of model.namedParameters()) {
      const w = fx.get(`param.${pname}`);
      const t = tensor(w.f32, { shape: w.shape });
      p.copy_(t);
      t.dispose();
    }
  });
  const idxF = fx.get("idx"), tgtF = fx.get("targets");
  const idx = tensor(idxF.i32, { shape: idxF.shape, dtype: "int32" });
  const targets = tensor(tgtF.i32, { shape: tgtF.shape, dtype: "int32" });
  return { model, fx, idx, targets };
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

for (const name of ["top1", "top2"]) {
  test(`MoE GPT (${name}) matches PyTorch logits, losses (aux and z-loss included) and every gradient`, async () => {
    const { model, fx, idx, targets } = await fixtureModel(name);
    const out = model.forward(idx, targets);
    const le = relErr(out.logits.data(), fx.get("logits").f32);
    assert.ok(le < TOL, `logits relative error ${le.toExponential(2)}`);
    for (const [field, key] of [["loss", "loss"], ["lmLoss", "lm_loss"], ["auxLoss", "aux_loss"], ["zLoss", "z_loss"]] as const) {
      const got = out[field]!.item(), ref = fx.get(key).f32[0]!;
      assert.ok(Math.abs(got - ref) / Math.abs(ref) < TOL, `${field} ${got} vs PyTorch ${ref}`);
    }
    // Capacity dropping was active in every MoE layer (the reference asserts it too).
    const moes = model.h.map((b) => b.mlp).filter((m): m is MoE => m instanceof MoE);
    assert.ok(moes.length > 0);
    for (const m of moes) assert.ok(m.lastStats!.droppedFraction > 0, `dropped fraction ${m.lastStats!.droppedFraction}`);
    out.loss!.backward();
    for (const [pname, p] of model.namedParameters()) {
      const e = relErr(p.grad!.data(), fx.get(`grad.${pname}`).f32);
      assert.ok(e < TOL, `gradient of ${pname}: relative error ${e.toExponential(2)}`);
    }
  });

  test(`AdamW on an MoE GPT (${name}) follows PyTorch's 3-step loss trajectory`, async () => {
    const { model, fx, idx, targets } = await fixtureModel(name);
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
      assert.ok(e < TOL, `step ${s}: loss ${got[s]} vs PyTorch ${ref[s]} (rel ${e.toExponential(2)}); all: ${got.map((v) => v.toFixed(6)).join(", ")}`);
    }
  });
}

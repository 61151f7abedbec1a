// Composite check against PyTorch: linear -> layer_norm -> gelu -> attention -> cross_entropy
// with the same fresh random inputs gives the same loss and every gradient within 1e-5
// (relative to the largest magnitude of each gradient; float32 here vs float64 in PyTorch).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { F, randn, tensor, type Tensor } from "../../src/index.js";

const PY = "/usr/bin/python3";
const torchAvailable = existsSync(PY) && spawnSync(PY, ["-c", "import torch"]).status === 0;

function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-30);
}

for (const gelu of ["tanh", "none"] as const) {
  test(`composite graph matches PyTorch (gelu=${gelu})`, { skip: torchAvailable ? false : "python3-torch not installed (run scripts/setup.sh)" }, () => {
    const seed = Date.now() % 1_000_000;
    const B = 2, T = 19, C = 32, H = 4, V = 50;
    const mk = (shape: number[], i: number, scale = 1) => randn(shape, { seed: seed + i }).mul(scale).requiresGrad_();
    const inputs: Record<string, Tensor> = {
      x: mk([B, T, C], 1),
      w1: mk([C, C], 2, 0.2),
      b1: mk([C], 3, 0.1),
      ln_w: mk([C], 4, 0.5).add(1).detach().requiresGrad_(),
      ln_b: mk([C], 5, 0.1),
      w_qkv: mk([3 * C, C], 6, 0.2),
      w_out: mk([V, C], 7, 0.2),
    };
    const tg = new Int32Array(B * T);
    for (let i = 0; i < tg.length; i++) tg[i] = (i * 7 + seed) % V;
    tg[3] = -100; // one ignored position
    const targets = tensor(tg, { dtype: "int32" });

    let h = F.linear(inputs.x!, inputs.w1!, inputs.b1!);
    h = F.layerNorm(h, [C], inputs.ln_w!, inputs.ln_b!, 1e-5);
    h = F.gelu(h, { approximate: gelu });
    const qkv = F.linear(h, inputs.w_qkv!);
    const [q, k, v] = qkv.split(C, -1).map((z) => z.view([B, T, H, C / H]).transpose(1, 2));
    let y = F.scaledDotProductAttention(q!, k!, v!, { isCausal: true });
    y = y.transpose(1, 2).reshape([B * T, C]);
    const logits = F.linear(y, inputs.w_out!);
    const loss = F.crossEntropy(logits, targets);
    loss.backward();

    const req = {
      config: { B, T, C, H, gelu },
      inputs: {
        ...Object.fromEntries(Object.entries(inputs).map(([n, t]) => [n, { shape: t.shape, data: Array.from(t.data()) }])),
        targets: { shape: [B, T], data: Array.from(tg) },
      },
    };
    const res = spawnSync(PY, ["scripts/torch_ref/composite.py"], { input: JSON.stringify(req), encoding: "utf8", maxBuffer: 1 << 26 });
    assert.equal(res.status, 0, `PyTorch reference failed: ${res.stderr}`);
    const ref = JSON.parse(res.stdout) as { loss: number; grads: Record<string, number[]> };
    const lossErr = Math.abs(loss.item() - ref.loss) / Math.abs(ref.loss);
    assert.ok(lossErr < 1e-5, `loss ${loss.item()} vs PyTorch ${ref.loss} (rel err ${lossErr}, seed ${seed})`);
    for (const [name, t] of Object.entries(inputs)) {
      const err = maxRelErr(t.grad!.data(), ref.grads[name]!);
      assert.ok(err < 1e-5, `grad of ${name}: max error ${err.toExponential(2)} relative to its largest element (seed ${seed})`);
    }
  });
}

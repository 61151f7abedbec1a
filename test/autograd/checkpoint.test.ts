// Activation checkpointing: identical gradients to the plain run (inputs and parameters), dropout
// masks replayed, the generator left where the plain run leaves it, fewer live activations,
// several inputs, nesting, reused outputs, hooks, and the caller's freedom to dispose its inputs.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, Linear, LayerNorm, checkpoint, type Tensor } from "../../src/index.js";
import { assertClose, randArr, seedFor, toTensor } from "../_util/check.js";

const seed = seedFor("checkpoint") % 1_000_000;

class Block {
  readonly l1 = new Linear(16, 32, { seed });
  readonly l2 = new Linear(32, 16, { seed: seed + 1 });
  readonly ln = new LayerNorm(16);
  constructor(readonly p = 0) {}
  forward(x: Tensor): Tensor {
    const h = F.gelu(this.l1.forward(this.ln.forward(x)), { approximate: "tanh" });
    return this.l2.forward(F.dropout(h, this.p, this.p > 0)).add(x);
  }
  params(): Tensor[] {
    return [...this.l1.parameters(), ...this.l2.parameters(), ...this.ln.parameters()];
  }
}

/** Gradients of (x, every parameter) and the loss, for a plain or checkpointed run. */
function grads(block: Block, xa: ReturnType<typeof randArr>, ckpt: boolean, times = 1) {
  for (const p of block.params()) { p.grad?.dispose(); p.grad = null; }
  const x = toTensor(xa, { requiresGrad: true });
  M.manualSeed(seed);
  let h = x;
  for (let i = 0; i < times; i++) h = ckpt ? checkpoint((z: Tensor) => block.forward(z), h) : block.forward(h);
  const loss = h.pow(2).mean();
  loss.backward();
  return { loss: loss.item(), rng: M.getRngState(), grads: [x, ...block.params()].map((t) => t.grad!.data()) };
}

test("`checkpoint()` gives bitwise the gradients of the plain run for the input and every parameter", () => {
  const block = new Block(0);
  const xa = randArr([5, 16], seed);
  const plain = grads(block, xa, false, 2), ck = grads(block, xa, true, 2);
  assert.equal(ck.loss, plain.loss);
  plain.grads.forEach((g, i) => assertClose(ck.grads[i]!, g, { what: `gradient ${i} (checkpointed vs plain)`, rtol: 0, atol: 0, seed }));
});

test("`checkpoint()` with dropout inside replays the same mask in backward and leaves the generator where the plain run does", () => {
  const block = new Block(0.4);
  const xa = randArr([6, 16], seed + 1);
  const plain = grads(block, xa, false, 2), ck = grads(block, xa, true, 2);
  assert.equal(ck.loss, plain.loss, "same forward (same masks)");
  plain.grads.forEach((g, i) => assertClose(ck.grads[i]!, g, { what: `gradient ${i} with dropout`, rtol: 0, atol: 0, seed }));
  assert.deepEqual(ck.rng, plain.rng, "generator state after backward");
});

test("`checkpoint()` keeps fewer activations alive than the plain forward", () => {
  const block = new Block(0);
  const x = toTensor(randArr([64, 16], seed + 2), { requiresGrad: true });
  const live = (ckpt: boolean) => M.withScope(() => {
    const before = M.memoryStats().live.activations;
    const y = ckpt ? checkpoint((z: Tensor) => block.forward(z), x) : block.forward(x);
    const during = M.memoryStats().live.activations - before;
    y.sum().backward();
    return during;
  });
  const plain = live(false), ck = live(true);
  assert.ok(ck < plain / 2, `checkpointed forward holds ${ck} bytes of activations, plain ${plain}`);
});

test("`checkpoint()` with several inputs, one not requiring grad, matches the plain run", () => {
  const a = randArr([3, 4], seed + 3), b = randArr([4, 5], seed + 4), c = randArr([3, 5], seed + 5);
  const run = (ckpt: boolean) => {
    const ta = toTensor(a, { requiresGrad: true }), tb = toTensor(b, { requiresGrad: true }), tc = toTensor(c);
    const f = (x: Tensor, y: Tensor, z: Tensor) => x.matmul(y).tanh().mul(z).add(y.sum());
    const out = ckpt ? checkpoint(f, ta, tb, tc) : f(ta, tb, tc);
    out.sum().backward();
    assert.equal(tc.grad, null, "an input that does not require grad gets none");
    return [ta.grad!.data(), tb.grad!.data()];
  };
  const p = run(false), k = run(true);
  p.forEach((g, i) => assertClose(k[i]!, g, { what: `multi-input gradient ${i}`, rtol: 0, atol: 0, seed }));
});

test("nested checkpoints and a checkpoint output used twice give the plain gradients", () => {
  const xa = randArr([4, 6], seed + 6);
  const inner = (t: Tensor) => M.sin(t).mul(t);
  const outer = (t: Tensor) => checkpoint(inner, t.exp()).add(t);
  const run = (ckpt: boolean) => {
    const x = toTensor(xa, { requiresGrad: true });
    const y = ckpt ? checkpoint(outer, x) : inner(x.exp()).add(x);
    y.mul(y).add(y).sum().backward();
    return x.grad!.data();
  };
  assertClose(run(true), run(false), { what: "nested checkpoint gradient", rtol: 0, atol: 0, seed });
});

test("under noGrad, `checkpoint()` just runs the function", () => {
  const x = M.ones([2]).requiresGrad_();
  const y = M.noGrad(() => checkpoint((t: Tensor) => t.mul(2), x));
  assert.equal(y.requiresGrad, false);
  assert.deepEqual(Array.from(y.data()), [2, 2]);
});

test("backward twice through a checkpointed block throws the freed-graph error", () => {
  const x = M.randn([3], { seed: 4 }).requiresGrad_();
  const y = checkpoint((t: Tensor) => t.exp(), x).sum();
  y.backward();
  assert.throws(() => y.backward(), /already freed/);
});

test("a parameter used inside a checkpoint fires its gradient-ready hook once per backward", () => {
  const block = new Block(0);
  const w = block.l1.weight;
  let n = 0;
  const off = w.registerGradReadyHook(() => n++);
  const x = toTensor(randArr([2, 16], seed + 7), { requiresGrad: true });
  checkpoint((z: Tensor) => block.forward(z), x).sum().backward();
  off();
  assert.equal(n, 1);
});

test("a parameter used both inside and outside a checkpoint fires its hook once, with its complete gradient", () => {
  // Tied weights (an embedding reused as the output projection) look exactly like this.
  const w = toTensor(randArr([6, 6], seed + 8), { requiresGrad: true });
  const x = toTensor(randArr([2, 6], seed + 9));
  const seen: Float32Array[] = [];
  const off = w.registerGradReadyHook((t) => seen.push(t.grad!.data() as Float32Array));
  const h = checkpoint((z: Tensor) => z.matmul(w).tanh(), x.requiresGrad_());
  h.matmul(w.t()).sum().backward();
  off();
  assert.equal(seen.length, 1, `hook fired ${seen.length} times`);
  assert.deepEqual(Array.from(seen[0]!), Array.from(w.grad!.data()), "the hook saw the complete gradient");
});

test("the caller may dispose a checkpoint's input after the forward, as with any op (inputs are saved like activations)", () => {
  const x = toTensor(randArr([3, 4], seed + 10), { requiresGrad: true });
  const h = x.mul(2);  // an intermediate activation fed into the block
  const y = checkpoint((t: Tensor) => t.tanh().sum(1), h);
  h.dispose();  // e.g. attentionComposed disposes its temporaries the same way; ops saved what they need
  y.sum().backward();
  assert.ok(x.grad, "gradient reached x");
});

/** A pre-norm transformer layer: causal self-attention and a 4x MLP, each with a residual. */
class Layer extends M.Module {
  readonly ln1 = this.module("ln1", new LayerNorm(32));
  readonly qkv = this.module("qkv", new Linear(32, 96, { seed: seed + 20 }));
  readonly proj = this.module("proj", new Linear(32, 32, { seed: seed + 21 }));
  readonly ln2 = this.module("ln2", new LayerNorm(32));
  readonly fc = this.module("fc", new Linear(32, 128, { seed: seed + 22 }));
  readonly out = this.module("out", new Linear(128, 32, { seed: seed + 23 }));
  constructor(private readonly p: number) { super(); }
  forward(x: Tensor): Tensor {
    const [B, T, C] = x.shape as [number, number, number];
    const [q, k, v] = this.qkv.forward(this.ln1.forward(x)).split(C, -1).map((t) => t.view([B, T, 2, C / 2]).transpose(1, 2));
    const a = F.scaledDotProductAttention(q!, k!, v!, { isCausal: true }).transpose(1, 2).reshape([B, T, C]);  // (B, T, C)
    const h = x.add(this.proj.forward(a));                                                                     // (B, T, C)
    const m = F.gelu(this.fc.forward(this.ln2.forward(h)), { approximate: "tanh" });                           // (B, T, 4C)
    return h.add(F.dropout(this.out.forward(m), this.p, this.p > 0));                                          // (B, T, C)
  }
}

test("per-layer `checkpoint()` of a 6-layer transformer stack peaks at under 60% of the plain run's activation memory, with the same gradients", () => {
  const layers = Array.from({ length: 6 }, () => new Layer(0.1));
  const params = layers.flatMap((l) => l.parameters());
  const xa = randArr([4, 24, 32], seed + 30);
  const run = (ckpt: boolean) => {
    for (const l of layers) l.zeroGrad();
    const x = toTensor(xa, { requiresGrad: true });
    M.manualSeed(seed);
    const base = M.memoryStats().live.activations;
    M.resetPeakMemory();
    const loss = M.withScope(() => {
      let h = x;
      for (const l of layers) h = ckpt ? checkpoint((z: Tensor) => l.forward(z), h) : l.forward(h);
      const loss = h.pow(2).mean();
      loss.backward();
      return loss.item();
    });
    const peak = M.memoryStats().peak.activations - base;
    assert.equal(M.memoryStats().live.activations, base, "everything freed after the step");
    return { loss, peak, grads: [x, ...params].map((t) => Float32Array.from(t.grad!.data())) };
  };
  const plain = run(false), ck = run(true);
  assert.ok(ck.peak < 0.6 * plain.peak, `checkpointed peak ${ck.peak} bytes vs plain ${plain.peak} (${(ck.peak / plain.peak).toFixed(2)})`);
  assert.ok(Math.abs(ck.loss - plain.loss) <= 1e-6, `loss ${ck.loss} vs ${plain.loss}`);
  plain.grads.forEach((g, i) => assertClose(ck.grads[i]!, g, { what: `gradient ${i} of the stack`, rtol: 0, atol: 1e-6, seed }));
});

test("after a checkpointed forward only the output is new in memory; the caller may dispose the input and backward still matches", () => {
  const layer = new Layer(0);
  const xa = randArr([2, 12, 32], seed + 31);
  const plain = (() => {
    layer.zeroGrad();
    const x = toTensor(xa, { requiresGrad: true });
    M.withScope(() => layer.forward(x.mul(3)).sum().backward());
    return [x, ...layer.parameters()].map((t) => Float32Array.from(t.grad!.data()));
  })();
  layer.zeroGrad();
  const x = toTensor(xa, { requiresGrad: true });
  M.withScope(() => {
    const h = x.mul(3);                                         // (B, T, C), fed into the block
    const before = M.memoryStats().live.activations;
    const y = checkpoint((z: Tensor) => layer.forward(z), h);
    assert.equal(M.memoryStats().live.activations - before, y.numel * 4, "only the output was added (inner activations freed)");
    h.dispose();                                                // the node holds its own handle
    assert.equal(M.memoryStats().live.activations - before, y.numel * 4, "the input stays alive for backward");
    y.sum().backward();
  });
  [x, ...layer.parameters()].forEach((t, i) => assertClose(t.grad!.data(), plain[i]!, { what: `gradient ${i} after disposing the input`, rtol: 0, atol: 1e-6, seed }));
});

test("gradient-ready hooks fire exactly once per backward, after the gradient is complete, for weights shared across checkpointed layers and outside them", () => {
  // One weight used before the stack, inside every checkpointed layer (nested too) and after it,
  // like tied embeddings; and each layer's own parameters.
  const layers = Array.from({ length: 3 }, () => new Layer(0));
  const shared = toTensor(randArr([32, 32], seed + 32, { scale: 0.2 }), { requiresGrad: true });
  const all = [shared, ...layers.flatMap((l) => l.parameters())];
  const seen = new Map<Tensor, Float32Array[]>(all.map((p) => [p, []]));
  const offs = all.map((p) => p.registerGradReadyHook((t) => seen.get(p)!.push(Float32Array.from(t.grad!.data()))));
  const xa = randArr([2, 8, 32], seed + 33);
  for (let step = 0; step < 2; step++) {
    for (const p of all) { p.grad?.dispose(); p.grad = null; }
    for (const s of seen.values()) s.length = 0;
    M.withScope(() => {
      let h = toTensor(xa).matmul(shared);
      for (const l of layers) {
        h = checkpoint((z: Tensor) => l.forward(checkpoint((u: Tensor) => u.matmul(shared).tanh(), z)).add(z.matmul(shared)), h);
      }
      h.matmul(shared.t()).pow(2).mean().backward();
    });
    for (const [i, p] of all.entries()) {
      const s = seen.get(p)!;
      assert.equal(s.length, 1, `step ${step}: hook of parameter ${i} fired ${s.length} times`);
      assert.deepEqual(Array.from(s[0]!), Array.from(p.grad!.data()), `step ${step}: parameter ${i}'s hook saw its complete gradient`);
    }
  }
  offs.forEach((off) => off());
});

test("a tensor from outside the block, captured by the closure, gets its gradient through the checkpoint without breaking the outer graph", () => {
  const aa = randArr([3, 5], seed + 34), ba = randArr([3, 5], seed + 35);
  const run = (ckpt: boolean) => {
    const a = toTensor(aa, { requiresGrad: true }), b = toTensor(ba, { requiresGrad: true });
    M.withScope(() => {
      const h = a.exp();                                        // an outside intermediate
      const f = (z: Tensor) => z.mul(h).tanh();
      const y = ckpt ? checkpoint(f, b) : f(b);
      y.sum().add(h.pow(2).sum()).backward();
    });
    return [a.grad!.data(), b.grad!.data()];
  };
  const plain = run(false), ck = run(true);
  plain.forEach((g, i) => assertClose(ck[i]!, g, { what: `gradient ${i} with a captured tensor`, rtol: 0, atol: 1e-6, seed }));
});

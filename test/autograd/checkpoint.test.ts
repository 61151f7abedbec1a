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

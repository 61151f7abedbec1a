// Autograd and memory behaviour the rest of Megalith relies on: hooks, checkpoint, scopes,
// flat memory over many steps, freed graphs, and clear errors on bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  F, tensor, randn, withScope, memoryStats, noGrad, checkpoint, manualSeed, Linear, type Tensor,
} from "../../src/index.js";

const seed = Date.now() % 1_000_000;

function block(lin1: Linear, lin2: Linear, x: Tensor, p = 0): Tensor {
  const h = F.gelu(lin1.forward(x), { approximate: "tanh" });
  const d = F.dropout(h, p, p > 0);
  return lin2.forward(d);
}

test("200 forward+backward steps inside withScope keep live memory flat", () => {
  const lin1 = new Linear(32, 64, { seed }), lin2 = new Linear(64, 32, { seed: seed + 1 });
  const step = (i: number) => withScope(() => {
    const x = randn([8, 16, 32], { seed: seed + i });
    const q = x.view([8, 16, 4, 8]).transpose(1, 2);
    const a = F.scaledDotProductAttention(q, q, q, { isCausal: true }).transpose(1, 2).reshape([8, 16, 32]);
    const loss = block(lin1, lin2, a).pow(2).mean();
    loss.backward();
    return loss.item();
  });
  for (let i = 0; i < 5; i++) step(i);  // warm-up: grads allocated once
  const live = memoryStats().liveTotal;
  for (let i = 0; i < 200; i++) step(i);
  assert.equal(memoryStats().liveTotal, live, "live bytes identical after 200 more steps");
});

test("saved activations are freed by backward, and a graph dropped without backward is freed by its scope", () => {
  const w = randn([64, 64], { seed }).requiresGrad_();
  const before = memoryStats().live.activations;
  withScope(() => {
    const y = randn([128, 64], { seed: seed + 1 }).matmul(w).tanh().sum();
    y.backward();
  });
  assert.equal(memoryStats().live.activations, before);
  withScope(() => {
    randn([128, 64], { seed: seed + 2 }).matmul(w).tanh().sum();  // no backward
  });
  assert.equal(memoryStats().live.activations, before);
});

test("gradient-ready hooks fire once per parameter per backward, with the complete gradient", () => {
  const w = randn([4, 4], { seed }).requiresGrad_();
  const seen: number[][] = [];
  w.registerGradReadyHook((t) => seen.push([...(t.grad!.data() as Float32Array)]));
  const x = randn([3, 4], { seed: seed + 1 });
  const y = x.matmul(w).add(x.matmul(w).mul(2)).sum();  // w used twice
  y.backward();
  assert.equal(seen.length, 1);
  assert.deepEqual(seen[0], [...(w.grad!.data() as Float32Array)]);
});

test("`checkpoint()` gives the gradients of the plain run, replaying dropout masks", () => {
  manualSeed(seed);
  const lin1 = new Linear(16, 32, { seed }), lin2 = new Linear(32, 16, { seed: seed + 1 });
  const x = randn([5, 16], { seed: seed + 2 }).requiresGrad_();
  const run = (ckpt: boolean) => {
    lin1.zeroGrad();
    lin2.zeroGrad();
    x.grad = null;
    manualSeed(seed);
    const out = ckpt ? checkpoint((h: Tensor) => block(lin1, lin2, h, 0.3), x) : block(lin1, lin2, x, 0.3);
    out.pow(2).sum().backward();
    return [x, lin1.weight, lin1.bias!, lin2.weight].map((t) => [...(t.grad!.data() as Float32Array)]);
  };
  const plain = run(false), ck = run(true);
  plain.forEach((g, i) => g.forEach((v, j) => assert.ok(Math.abs(v - ck[i]![j]!) <= 1e-6 * (1 + Math.abs(v)), `grad ${i}[${j}]: ${v} vs ${ck[i]![j]}`)));
});

test("noGrad records nothing and detach cuts the graph", () => {
  const w = randn([3, 3], { seed }).requiresGrad_();
  const y = noGrad(() => w.mul(2));
  assert.equal(y.requiresGrad, false);
  assert.equal(y.gradFn, null);
  const z = w.detach().mul(3);
  assert.equal(z.requiresGrad, false);
});

test("backward through an already-freed graph throws a clear error", () => {
  const w = randn([3, 3], { seed }).requiresGrad_();
  const y = w.exp().sum();
  y.backward();
  assert.throws(() => y.backward(), /already freed/);
});

test("bad input names the op and the shapes or values, and the process keeps running", () => {
  assert.throws(() => tensor([[1, 2, 3], [4, 5, 6]]).add(tensor([1, 2, 3, 4])), /add: .*\[2, 3\].*\[4\]/);
  assert.throws(() => randn([2, 3]).matmul(randn([4, 5])), /matmul: inner dimensions differ.*3 vs 4/);
  assert.throws(() => tensor([1, 2], { dtype: "int32" }).matmul(randn([2, 2])), /matmul: expected a floating tensor \(float32, bfloat16 or float16\), got int32/);
  assert.throws(() => F.embedding(tensor([0, 7], { dtype: "int32" }), randn([5, 4])), /embedding: index 7 at position 1 is out of range.*5 rows/);
  assert.throws(() => F.crossEntropy(randn([2, 3]), tensor([0, 3], { dtype: "int32" })), /crossEntropy: target 3 at position 1 is out of range for 3 classes/);
  assert.throws(() => F.crossEntropy(randn([2, 3]), tensor([0, 1])), /targets must be int32/);
  assert.throws(() => randn([2, 3]).sum(5), /dim 5 is out of range/);
  assert.throws(() => randn([2, 3]).reshape([4, 2]), /shape \[4, 2\] is invalid for input of size 6/);
  assert.equal(randn([2], { seed }).add(1).numel, 2, "still computing after the errors");
});

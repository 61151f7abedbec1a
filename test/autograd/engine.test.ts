// The autograd engine: composite graphs (reused tensors, diamonds, views of one leaf, unused
// outputs) against float64 finite differences; gradient accumulation across backward calls;
// noGrad, enableGrad and detach; gradient-ready hooks; and the errors for freed graphs.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, type Tensor } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { TOL, accumTol, assertClose, checkOp, fromTensor, gradTol, randArr, seedFor, toTensor } from "../_util/check.js";

// ---- composite graphs against the reference --------------------------------------------------------

test("a diamond graph (one tensor feeding two branches that meet again) accumulates both branch gradients", () => {
  const seed = seedFor("diamond");
  checkOp({
    what: "diamond", seed,
    inputs: [randArr([3, 5], seed)],
    megalith: (x) => { const a = x.exp(), b = M.sin(x); return a.mul(b).add(a).sub(b.square()); },
    reference: (x) => { const a = R.map(x, Math.exp), b = R.map(x, Math.sin); return R.sub(R.add(R.mul(a, b), a), R.mul(b, b)); },
  });
});

test("an intermediate reused by many consumers (elementwise, reductions, matmul, views) gets the sum of all its gradients", () => {
  const seed = seedFor("reuse");
  checkOp({
    what: "reused intermediate", seed,
    inputs: [randArr([4, 4], seed), randArr([4, 4], seed + 1)],
    megalith: (x, w) => {
      const h = x.matmul(w).tanh();  // used five times below
      return h.mul(h).add(h.sum(1, true)).add(h.t()).add(h.matmul(h)).sub(h.softmax(0));
    },
    reference: (x, w) => {
      const h = R.map(R.matmul(x, w), Math.tanh);
      return R.sub(R.add(R.add(R.add(R.mul(h, h), R.sum(h, 1, true)), R.transpose(h, 0, 1)), R.matmul(h, h)), R.softmax(h, 0));
    },
    tol: accumTol(8, 3), gradTol: gradTol(16, 3),
  });
});

test("a leaf reached through several views (transpose, slices, expand, reshape) accumulates into one gradient", () => {
  const seed = seedFor("views of a leaf");
  checkOp({
    what: "views of one leaf", seed,
    inputs: [randArr([4, 4], seed)],
    megalith: (x) => x.add(x.t()).mul(x.slice(0, 0, 1).expand([4, 4])).add(x.reshape([16]).reshape([4, 4]).mul(3)).add(x.slice(1, 0, 4, 2).sum(1, true)),
    reference: (x) => R.add(R.add(R.mul(R.add(x, R.transpose(x, 0, 1)), R.expand(R.slice(x, 0, 0, 1), [4, 4])), R.map(x, (v) => 3 * v)), R.sum(R.slice(x, 1, 0, 4, 2), 1, true)),
  });
});

test("outputs of a multi-output op that are never used contribute nothing (split, max indices, topk)", () => {
  const seed = seedFor("unused outputs");
  checkOp({
    what: "split with an unused part", seed,
    inputs: [randArr([2, 6], seed, { distinct: true })],
    megalith: (x) => { const [a, , c] = x.split(2, 1); const m = x.max(1).values; return a!.mul(c!).add(m.unsqueeze(1)); },
    reference: (x) => R.add(R.mul(R.slice(x, 1, 0, 2), R.slice(x, 1, 4, 6)), R.reshape(R.maxDim(x, 1).values, [2, 1])),
  });
});

test("a small MLP loss (linear -> layerNorm -> gelu -> linear -> crossEntropy) has reference gradients for every parameter", () => {
  const seed = seedFor("mlp composite");
  const t = [1, 0, 3, -100, 2];
  const tt = M.tensor(t, { dtype: "int32" });
  checkOp({
    what: "MLP loss", seed,
    inputs: [randArr([5, 6], seed), randArr([8, 6], seed + 1, { scale: 0.5 }), randArr([8], seed + 2), randArr([8], seed + 3), randArr([4, 8], seed + 4, { scale: 0.5 })],
    megalith: (x, w1, b1, g, w2) => F.crossEntropy(F.linear(F.gelu(F.layerNorm(F.linear(x, w1, b1), [8], g)), w2), tt, { labelSmoothing: 0.1 }),
    reference: (x, w1, b1, g, w2) => R.crossEntropy(R.linear(R.map(R.layerNorm(R.linear(x, w1, b1), [8], g), R.geluErf), w2), t, { labelSmoothing: 0.1 }),
    tol: accumTol(8, 3), gradTol: gradTol(16, 3),
  });
});

// ---- accumulation ---------------------------------------------------------------------------------------

test("`.grad` accumulates across two backward calls and is replaced only when cleared", () => {
  const seed = seedFor("accumulate");
  const xa = randArr([3, 4], seed);
  const x = toTensor(xa, { requiresGrad: true });
  const w = toTensor(randArr([4, 2], seed + 1), { requiresGrad: true });
  const loss = () => x.matmul(w).tanh().sum();
  loss().backward();
  const gx1 = fromTensor(x.grad!), gw1 = fromTensor(w.grad!);
  const gradHandle = x.grad;
  loss().backward();
  assert.equal(x.grad, gradHandle, "the same .grad tensor is accumulated into");
  assertClose(x.grad!, R.map(gx1, (v) => 2 * v), { what: "x.grad after two backward calls", ...TOL.float32.exact, seed });
  assertClose(w.grad!, R.map(gw1, (v) => 2 * v), { what: "w.grad after two backward calls", ...TOL.float32.exact, seed });
  x.grad = null;
  loss().backward();
  assertClose(x.grad!, gx1, { what: "x.grad after clearing", rtol: 0, atol: 0, seed });
});

test("non-leaf tensors keep no .grad; leaves that do not require grad get none; backward(gradient) seeds a non-scalar", () => {
  const x = M.tensor([1, 2, 3], { requiresGrad: true });
  const c = M.tensor([4, 5, 6]);
  const h = x.mul(c);
  h.backward(M.tensor([1, 10, 100]));
  assert.equal(h.grad, null);
  assert.equal(c.grad, null);
  assert.deepEqual(Array.from(x.grad!.data()), [4, 50, 600]);
  assert.equal(h.gradFn?.op, "mul");
  assert.equal(x.gradFn, null);
});

// ---- grad modes and detach --------------------------------------------------------------------------------

test("`noGrad()` records nothing, saves nothing, restores the mode even after a throw; `enableGrad()` records inside it", () => {
  const w = M.randn([64, 64], { seed: 1 }).requiresGrad_();
  const before = M.memoryStats().live.activations;
  const y = M.withScope(() => M.noGrad(() => w.matmul(w).tanh().exp()));
  assert.equal(y.requiresGrad, false);
  assert.equal(y.gradFn, null);
  assert.equal(M.memoryStats().live.activations - before, 64 * 64 * 4, "only the output is alive: nothing was saved for backward");
  y.dispose();
  assert.throws(() => M.noGrad(() => { throw new Error("boom"); }), /boom/);
  assert.equal(M.isGradEnabled(), true, "grad mode restored after a throw");
  const z = M.noGrad(() => M.enableGrad(() => w.mul(2)));
  assert.ok(z.requiresGrad && z.gradFn, "enableGrad records inside noGrad");
  assert.equal(M.noGrad(() => M.isGradEnabled()), false);
});

test("`detach()` shares storage, requires no grad, and cuts the gradient (x * x.detach() has gradient x)", () => {
  const seed = seedFor("detach");
  const xa = randArr([5], seed);
  const x = toTensor(xa, { requiresGrad: true });
  const d = x.detach();
  assert.equal(d.storage, x.storage);
  assert.equal(d.requiresGrad, false);
  assert.equal(d.gradFn, null);
  x.mul(d).sum().backward();
  assertClose(x.grad!, xa, { what: "gradient of x * x.detach()", ...TOL.float32.exact, seed });
  assert.throws(() => d.sum().backward(), /does not require grad and has no grad_fn/);
});

// ---- hooks --------------------------------------------------------------------------------------------------

test("gradient-ready hooks fire exactly once per parameter per backward, after all of that parameter's contributions", () => {
  const seed = seedFor("hooks");
  const w1 = toTensor(randArr([4, 4], seed), { requiresGrad: true });
  const w2 = toTensor(randArr([4, 4], seed + 1), { requiresGrad: true });
  const b = toTensor(randArr([4], seed + 2), { requiresGrad: true });
  const x = toTensor(randArr([3, 4], seed + 3));
  const events: Array<{ name: string; grad: Float32Array }> = [];
  const hook = (name: string) => (t: Tensor) => events.push({ name, grad: t.grad!.data() as Float32Array });
  w1.registerGradReadyHook(hook("w1"));
  w2.registerGradReadyHook(hook("w2"));
  const off = b.registerGradReadyHook(hook("b"));
  const forward = () => {
    // w1 used three times (once through a view), b at two depths, w2 once
    const h = x.matmul(w1).add(b).tanh().matmul(w1.t()).add(x.matmul(w1));
    return h.matmul(w2).add(b).sum();
  };
  forward().backward();
  assert.deepEqual(events.map((e) => e.name).sort(), ["b", "w1", "w2"]);
  for (const e of events) {
    const p = { w1, w2, b }[e.name as "w1" | "w2" | "b"];
    assert.deepEqual(Array.from(e.grad), Array.from(p.grad!.data()), `${e.name}: the hook saw the complete gradient`);
  }
  events.length = 0;
  off();
  forward().backward();
  assert.deepEqual(events.map((e) => e.name).sort(), ["w1", "w2"], "second backward: once each again; the removed hook is silent");
});

test("a hook fires once for a leaf that is the root of backward, and hooks may read but not race other leaves", () => {
  const x = M.tensor(3, { requiresGrad: true });
  let n = 0;
  x.registerGradReadyHook(() => n++);
  x.backward();
  assert.equal(n, 1);
  assert.equal(x.grad!.item(), 1);
});

// ---- freed graphs -------------------------------------------------------------------------------------------

test("backward twice through the same graph throws a clear error naming the op, and the process keeps running", () => {
  const x = M.randn([3, 3], { seed: 2 }).requiresGrad_();
  const y = x.exp().sum();
  y.backward();
  const g = fromTensor(x.grad!);
  assert.throws(() => y.backward(), /autograd: the graph through '\w+' was already freed \(backward was called twice/);
  assertClose(x.grad!, g, { what: "x.grad untouched by the failed backward", rtol: 0, atol: 0 });
  assert.equal(x.exp().sum().numel, 1);
});

test("backward of a second loss sharing a freed subgraph throws the freed-graph error instead of wrong gradients", () => {
  const x = M.randn([4], { seed: 3 }).requiresGrad_();
  const h = M.sin(x);
  const l1 = h.sum(), l2 = h.mul(2).sum();
  l1.backward();
  assert.throws(() => l2.backward(), /graph through 'sin' was already freed/);
});

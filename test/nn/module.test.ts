// nn.Module and the standard layers: registration order and dotted names, shared parameters
// listed once, train/eval propagation, zeroGrad, state dicts, parameter memory that survives
// scopes, and each layer's forward against the float64 reference.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { Module, Linear, Embedding, LayerNorm, RMSNorm, Dropout, F, memoryStats, withScope, type Tensor, type Parameter } from "../../src/index.js";
import * as R from "../_util/reference.js";
import { accumTol, assertClose, checkOp, randArr, seedFor, toTensor } from "../_util/check.js";

const seed = seedFor("module") % 1_000_000;

class MLP extends Module {
  readonly fc1 = this.module("fc1", new Linear(6, 8, { seed }));
  readonly drop = this.module("drop", new Dropout(0.5));
  readonly fc2 = this.module("fc2", new Linear(8, 6, { seed: seed + 1, bias: false }));
  readonly scale: Parameter = this.param("scale", M.ones([6]));
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this.drop.forward(F.gelu(this.fc1.forward(x)))).mul(this.scale);
  }
}

class Tied extends Module {
  readonly emb = this.module("emb", new Embedding(5, 4, { seed }));
  // the output projection is the embedding table itself, registered a second time
  readonly head: Parameter = this.param("head", this.emb.weight);
  forward(idx: Tensor): Tensor {
    return F.linear(this.emb.forward(idx), this.head);
  }
}

test("`namedParameters()` lists parameters in registration order with dotted names; `numParameters()` counts them", () => {
  const m = new MLP();
  assert.deepEqual(m.namedParameters().map(([n, p]) => [n, p.shape]), [
    ["scale", [6]], ["fc1.weight", [8, 6]], ["fc1.bias", [8]], ["fc2.weight", [6, 8]],
  ]);
  assert.equal(m.numParameters(), 6 + 48 + 8 + 48);
  assert.ok(m.parameters().every((p) => p.requiresGrad && p.isLeaf));
  assert.deepEqual(m.namedModules().map(([n]) => n), ["", "fc1", "drop", "fc2"]);
});

test("a parameter shared by two modules (tied weights) is listed once and accumulates both uses", () => {
  const t = new Tied();
  assert.deepEqual(t.namedParameters().map(([n]) => n), ["head"]);
  const idx = M.tensor([1, 4], { dtype: "int32" });
  const w = R.arr(t.emb.weight.shape, t.emb.weight.data());
  const loss = t.forward(idx).sum();
  loss.backward();
  // d/dW of sum(E[idx] W^T) = for the head: sum_rows(E[idx]) per output row; for the lookup: rowsum(W) into rows idx
  const e = R.embedding([1, 4], [2], w);
  const gHead = R.matmul(R.full([5, 2], 1), e);
  const gEmb = R.embeddingBackward([1, 4], R.matmul(R.full([2, 5], 1), w), 5);
  assertClose(t.emb.weight.grad!, R.add(gHead, gEmb), { what: "tied weight gradient", ...accumTol(5) });
});

test("`train()`/`eval()` propagate to every submodule and switch dropout off", () => {
  const m = new MLP();
  const x = toTensor(randArr([4, 6], seed));
  m.eval();
  assert.ok(m.namedModules().every(([, s]) => !s.training));
  const a = m.forward(x).data(), b = m.forward(x).data();
  assert.deepEqual(a, b, "eval is deterministic");
  m.train();
  assert.ok(m.drop.training);
  const w1 = R.arr(m.fc1.weight.shape, m.fc1.weight.data()), b1 = R.arr([8], m.fc1.bias!.data()), w2 = R.arr(m.fc2.weight.shape, m.fc2.weight.data());
  m.eval();
  const ref = R.linear(R.map(R.linear(R.arr([4, 6], x.data()), w1, b1), R.geluErf), w2);
  assertClose(m.forward(x), ref, { what: "MLP eval forward", ...accumTol(8, 1) });
});

test("gradients reach every parameter through a module in eval mode (dropout is the identity, not a graph cut)", () => {
  const m = new MLP().eval();
  m.forward(toTensor(randArr([3, 6], seed + 1))).sum().backward();
  for (const [n, p] of m.namedParameters()) assert.ok(p.grad, `${n} got a gradient`);
});

test("`zeroGrad()` clears every gradient and frees its memory", () => {
  const m = new MLP();
  const before = memoryStats().live.grads;
  withScope(() => m.forward(toTensor(randArr([3, 6], seed + 2))).sum().backward());
  assert.ok(memoryStats().live.grads > before);
  m.zeroGrad();
  assert.ok(m.parameters().every((p) => p.grad === null));
  assert.equal(memoryStats().live.grads, before);
});

test("parameters survive the scopes they were created in and count as params", () => {
  const before = memoryStats().live.params;
  const m = withScope(() => new MLP());
  assert.ok(m.parameters().every((p) => !p.isDisposed));
  assert.ok(memoryStats().live.params - before >= m.numParameters() * 4);
  assert.equal(m.forward(M.ones([1, 6])).shape[1], 6);
});

test("`stateDict()`/`loadStateDict()` round-trip values, and mismatches name the keys and shapes", () => {
  const a = new MLP(), b = new MLP();
  M.noGrad(() => { for (const p of b.parameters()) p.fill_(0.25); });
  a.loadStateDict(b.stateDict());
  for (const [n, p] of a.namedParameters()) assert.deepEqual(p.data(), b.stateDict().get(n)!.data(), n);
  const partial = new Map([["scale", M.ones([6])]]);
  assert.throws(() => a.loadStateDict(partial), /loadStateDict: missing \["fc1.weight","fc1.bias","fc2.weight"\], unexpected \[\]/);
  a.loadStateDict(partial, { strict: false });
  assert.throws(() => a.loadStateDict(new Map([...b.stateDict(), ["scale", M.ones([5])]])), /loadStateDict: scale has shape \[5\] in the state, \[6\] in the model/);
});

test("registering a name twice is refused, naming it", () => {
  class Bad extends Module {
    constructor() {
      super();
      this.param("w", M.ones([1]));
      this.param("w", M.ones([1]));
    }
  }
  assert.throws(() => new Bad(), /parameter w is already registered/);
});

test("`Linear`, `Embedding`, `LayerNorm`, `RMSNorm` layers match the reference forward and backward", () => {
  const s = seedFor("layers");
  const lin = new Linear(5, 3, { seed: s });
  checkOp({
    what: "Linear layer", seed: s, inputs: [randArr([2, 4, 5], s)],
    megalith: (x) => lin.forward(x),
    reference: (x) => R.linear(x, R.arr([3, 5], lin.weight.data()), R.arr([3], lin.bias!.data())),
    tol: accumTol(5, 1),
  });
  const emb = new Embedding(7, 3, { seed: s, std: 1 });
  assertClose(emb.forward(M.tensor([6, 0], { dtype: "int32" })), R.embedding([6, 0], [2], R.arr([7, 3], emb.weight.data())), { what: "Embedding layer", rtol: 0, atol: 0 });
  const ln = new LayerNorm(5), rms = new RMSNorm(5);
  checkOp({ what: "LayerNorm layer", seed: s, inputs: [randArr([3, 5], s + 1)], megalith: (x) => ln.forward(x), reference: (x) => R.layerNorm(x, [5]), tol: accumTol(5, 3) });
  checkOp({ what: "RMSNorm layer", seed: s, inputs: [randArr([3, 5], s + 2)], megalith: (x) => rms.forward(x), reference: (x) => R.rmsNorm(x, [5]), tol: accumTol(5, 3) });
  // initialisation: std 0.02 normal by default, reproducible from the seed
  const big = new Linear(200, 100, { seed: s });
  const wd = big.weight.data();
  let sum = 0, sq = 0;
  for (const v of wd) { sum += v; sq += v * v; }
  const std = Math.sqrt(sq / wd.length - (sum / wd.length) ** 2);
  assert.ok(Math.abs(std - 0.02) < 0.001, `Linear init std ${std}`);
  assert.deepEqual(new Linear(200, 100, { seed: s }).weight.data(), wd, "same seed, same init");
  assert.deepEqual(Array.from(big.bias!.data()), new Array(100).fill(0));
});

test("`registerForwardPreHook()` / `registerForwardHook()` run around a directly called forward, may replace its output, report errors, and are removable", () => {
  class Twice extends Module {
    fail = false;
    forward(x: Tensor): Tensor {
      if (this.fail) throw new Error("boom");
      return x.mul(2);
    }
  }
  const m = new Twice();
  const log: string[] = [];
  const removePre = m.registerForwardPreHook((mod, args) => log.push(`pre ${mod === m} ${(args[0] as Tensor).item()}`));
  const removePost = m.registerForwardHook((_mod, _args, out) => {
    log.push(`post ${(out as Tensor).item()}`);
    return (out as Tensor).add(1);
  }, { onError: (_mod, e) => log.push(`error ${(e as Error).message}`) });
  const y = m.forward(M.tensor([3]));
  assert.equal(y.item(), 7, "the forward hook's return value replaces the output");
  assert.deepEqual(log, ["pre true 3", "post 6"]);
  m.fail = true;
  assert.throws(() => m.forward(M.tensor([1])), /boom/);
  assert.deepEqual(log.slice(2), ["pre true 1", "error boom"]);
  m.fail = false;
  removePre();
  removePost();
  assert.equal(m.forward(M.tensor([3])).item(), 6, "removed hooks no longer run");
  assert.equal(log.length, 4);
});

test("`Module.setModule()` swaps, adds and removes a child, keeping the field and namedParameters in agreement", () => {
  class Outer extends Module {
    readonly inner = this.module("h.0", new MLP());
    extra: Module | null = null;
  }
  const m = new Outer();
  assert.equal(m.getSubmodule("h.0.fc1"), m.inner.fc1);
  const swapped = new Linear(6, 8, { seed: seed + 9, bias: false });
  m.inner.setModule("fc1", swapped);
  assert.equal(m.inner.fc1, swapped, "the field follows the swap");
  assert.equal(m.getSubmodule("h.0.fc1"), swapped);
  assert.deepEqual(m.namedParameters().map(([n]) => n), ["h.0.scale", "h.0.fc1.weight", "h.0.fc2.weight"], "own parameters first, the swapped child in its old place");
  m.setModule("extra", new LayerNorm(6));
  assert.ok(m.extra instanceof LayerNorm);
  assert.deepEqual(m.namedParameters().slice(-2).map(([n]) => n), ["extra.weight", "extra.bias"]);
  m.setModule("extra", null);
  assert.equal(m.extra, null);
  assert.equal(m.namedParameters().length, 3);
  assert.throws(() => m.getSubmodule("h.0.nope"), /getSubmodule: no submodule at 'nope'/);
});

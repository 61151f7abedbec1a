// Memory: a 200-step training loop of a small transformer block inside withScope keeps live
// memory flat; every op's saved activations are released by backward (or by the scope when
// backward never runs); scopes keep what they return and what was kept; categories are counted.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, Linear, Embedding, LayerNorm, RMSNorm, checkpoint, memoryStats, withScope, type Tensor } from "../../src/index.js";
import { randArr, seedFor, toTensor } from "../_util/check.js";

const seed = seedFor("memory") % 1_000_000;

class TinyBlock extends M.Module {
  readonly emb = this.module("emb", new Embedding(11, 16, { seed }));
  readonly ln1 = this.module("ln1", new LayerNorm(16));
  readonly qkv = this.module("qkv", new Linear(16, 48, { seed: seed + 1 }));
  readonly proj = this.module("proj", new Linear(16, 16, { seed: seed + 2 }));
  readonly ln2 = this.module("ln2", new RMSNorm(16));
  readonly fc = this.module("fc", new Linear(16, 32, { seed: seed + 3 }));
  readonly out = this.module("out", new Linear(32, 11, { seed: seed + 4 }));

  loss(idx: Tensor, targets: Tensor): Tensor {
    const [B, T] = idx.shape as [number, number];
    const x = this.emb.forward(idx);                                                   // (B, T, C)
    const [q, k, v] = this.qkv.forward(this.ln1.forward(x)).split(16, -1).map((t) => t.view([B, T, 2, 8]).transpose(1, 2));
    const a = F.scaledDotProductAttention(q!, k!, v!, { isCausal: true }).transpose(1, 2).reshape([B, T, 16]);
    const h = x.add(this.proj.forward(a));
    const mlp = (z: Tensor) => F.dropout(F.gelu(this.fc.forward(this.ln2.forward(z)), { approximate: "tanh" }), 0.1);
    const logits = this.out.forward(checkpoint(mlp, h));                               // (B, T, V)
    return F.crossEntropy(logits.view([B * T, 11]), targets.view([B * T]));
  }
}

test("200 forward+backward+update steps of a transformer block inside withScope keep live memory flat", () => {
  const model = new TinyBlock();
  const idx = M.randint(0, 11, [2, 9], { seed }), tg = M.randint(0, 11, [2, 9], { seed: seed + 1 });
  const step = () => withScope(() => {
    model.zeroGrad();
    const loss = model.loss(idx, tg);
    loss.backward();
    M.noGrad(() => { for (const p of model.parameters()) p.add_(p.grad!, -1e-2); });
    return loss.item();
  });
  const first = step();
  for (let i = 0; i < 4; i++) step();  // warm-up
  const live = memoryStats().live;
  const total = memoryStats().liveTotal;
  let last = first;
  for (let i = 0; i < 200; i++) last = step();
  assert.equal(memoryStats().liveTotal, total, "liveTotal identical after 200 more steps");
  assert.deepEqual(memoryStats().live, live, "every category identical");
  assert.ok(last < first, `the loss went down (${first} -> ${last})`);
});

/** Ops to check, each from leaves created outside the scope. */
const OPS: Array<[string, () => Tensor]> = (() => {
  const x = toTensor(randArr([6, 8], seed), { requiresGrad: true });
  const w = toTensor(randArr([8, 8], seed + 1), { requiresGrad: true });
  const g = toTensor(randArr([8], seed + 2), { requiresGrad: true });
  const q = toTensor(randArr([2, 2, 6, 4], seed + 3), { requiresGrad: true });
  const idx = M.tensor([1, 3, 3, 0], { dtype: "int32" });
  const tg = M.tensor([1, 3, -100, 0, 7, 2], { dtype: "int32" });
  const mask = M.tensor([1, 0, 1, 1, 0, 1], { shape: [1, 6], dtype: "uint8" });
  return [
    ["matmul", () => x.matmul(w)],
    ["matmul of a transposed view", () => x.t().matmul(x)],
    ["elementwise chain", () => x.exp().mul(x).div(x.abs().add(1)).pow(2).gelu()],
    ["broadcast binary", () => x.mul(g).sub(g)],
    ["softmax dim 0", () => x.softmax(0)],
    ["logSoftmax", () => x.logSoftmax()],
    ["layerNorm of a transposed input", () => F.layerNorm(x.t(), [6])],
    ["layerNorm with weight", () => F.layerNorm(x, [8], g, g)],
    ["rmsNorm", () => F.rmsNorm(x, [8], g)],
    ["embedding", () => F.embedding(idx, w)],
    ["crossEntropy", () => F.crossEntropy(x, tg, { labelSmoothing: 0.1 })],
    ["crossEntropy none", () => F.crossEntropy(x, tg, { reduction: "none" })],
    ["fused attention", () => F.scaledDotProductAttention(q, q, q, { isCausal: true })],
    ["composed attention (mask)", () => F.scaledDotProductAttention(q, q, q, { attnMask: mask })],
    ["dropout", () => F.dropout(x, 0.3)],
    ["max dim", () => x.max(1).values],
    ["topk", () => x.topk(3, 0).values],
    ["cumsum", () => x.cumsum(1)],
    ["var", () => x.var(1)],
    ["where", () => M.where(x.gt(0), x, g)],
    ["cat/stack/split", () => M.stack(M.cat([x, x.t().t()], 1).split(3, 0), 2)],
    ["to(bfloat16).to(float32)", () => x.to("bfloat16").to("float32")],
    ["checkpoint", () => checkpoint((t: Tensor) => t.exp().mul(t).tanh(), x)],
  ];
})();

test("backward releases every op's saved activations: after backward, live activations equal a noGrad forward's", () => {
  const leaks: string[] = [];
  for (const [name, op] of OPS) {
    const base = memoryStats().live.activations;
    const noGradBytes = withScope(() => { M.noGrad(() => op().sum()); return memoryStats().live.activations - base; });
    const afterBackward = withScope(() => {
      op().sum().backward();
      return memoryStats().live.activations - base;
    });
    if (afterBackward !== noGradBytes) leaks.push(`${name}: ${afterBackward - noGradBytes} bytes still alive after backward`);
    if (memoryStats().live.activations !== base) leaks.push(`${name}: scope ended with ${memoryStats().live.activations - base} bytes`);
  }
  assert.deepEqual(leaks, []);
});

test("a graph dropped without backward is released by its scope, for every op", () => {
  const leaks: string[] = [];
  for (const [name, op] of OPS) {
    const base = memoryStats().live.activations;
    withScope(() => { op().sum(); });
    if (memoryStats().live.activations !== base) leaks.push(`${name}: ${memoryStats().live.activations - base} bytes`);
  }
  assert.deepEqual(leaks, []);
});

test("`withScope()` disposes temporaries but keeps returned tensors (also in arrays, objects and maps) and kept ones", () => {
  let tmp!: Tensor, kept!: Tensor;
  const r = withScope(() => {
    tmp = M.ones([3]);
    kept = M.ones([3]).keep();
    const inner = withScope(() => ({ a: M.ones([2]), list: [M.zeros([1])], map: new Map([["m", M.full([1], 5)]]) }));
    return { ...inner, n: 3 };
  });
  assert.equal(tmp.isDisposed, true);
  assert.equal(kept.isDisposed, false);
  assert.equal(r.a.isDisposed, false);
  assert.equal(r.list[0]!.isDisposed, false);
  assert.equal(r.map.get("m")!.item(), 5);
  kept.dispose();
});

test("memoryStats counts parameters, gradients, optimizer state and activations in their categories", () => {
  const before = memoryStats();
  const lin = new Linear(64, 32, { seed });
  const after = memoryStats();
  assert.ok(after.live.params - before.live.params >= (64 * 32 + 32) * 4, "parameters under params");
  withScope(() => lin.forward(M.ones([4, 64])).sum().backward());
  assert.ok(memoryStats().live.grads - before.live.grads >= (64 * 32 + 32) * 4, "gradients under grads");
  const m = M.withCategory("optimizer", () => M.zeros([64, 32]));
  assert.ok(memoryStats().live.optimizer - before.live.optimizer >= 64 * 32 * 4, "optimizer state under optimizer");
  lin.zeroGrad();
  assert.equal(memoryStats().live.grads, before.live.grads, "zeroGrad frees the gradients");
  m.dispose();
  assert.equal(memoryStats().live.optimizer, before.live.optimizer);
  M.resetPeakMemory();
  const s = memoryStats();
  assert.equal(s.peakTotal, s.liveTotal);
  assert.ok(Object.values(s.peak).every((v, i) => v >= Object.values(s.live)[i]!));
});

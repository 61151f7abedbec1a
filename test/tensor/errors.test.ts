// Bad input: every op rejects wrong shapes, dtypes, indices and dims with an Error whose message
// names the op and the offending shapes or values; nothing leaks, and the process keeps going.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F, MegalithError, type Tensor } from "../../src/index.js";

const f = (shape: number[]): Tensor => M.randn(shape, { seed: 7 });
const i32 = (v: number[], shape?: number[]): Tensor => M.tensor(v, { dtype: "int32", shape });

const CASES: Array<[string, () => unknown, RegExp]> = [
  // broadcasting and shapes
  ["add of [2, 3] and [4]", () => f([2, 3]).add(f([4])), /^add: shapes \[2, 3\] and \[4\] cannot be broadcast/],
  ["mul of [2, 3, 4] and [3, 3]", () => f([2, 3, 4]).mul(f([3, 3])), /^mul: .*\[2, 3, 4\].*\[3, 3\]/],
  ["maximum of [5] and [2]", () => f([5]).maximum(f([2])), /^maximum: .*\[5\].*\[2\]/],
  ["where with a mismatched branch", () => M.where(f([2, 3]).gt(0), f([2, 3]), f([4])), /^where: .*\[4\]/],
  ["matmul inner dims", () => f([2, 3]).matmul(f([4, 5])), /^matmul: inner dimensions differ: \[2, 3\] @ \[4, 5\] \(3 vs 4\)/],
  ["matmul batch dims", () => f([2, 3, 4]).matmul(f([3, 4, 5])), /^matmul: .*\[2\].*\[3\]/],
  ["matmul of a 0-d tensor", () => M.matmul(f([]), f([3])), /^matmul: .*at least 1 dimension/],
  ["reshape to a wrong size", () => f([2, 3]).reshape([4, 2]), /^reshape: shape \[4, 2\] is invalid for input of size 6/],
  ["reshape with two -1", () => f([2, 3]).reshape([-1, -1]), /^reshape: only one dimension can be -1/],
  ["expand a non-1 dim", () => f([2, 3]).expand([4, 3]), /^expand: cannot expand \[2, 3\] to \[4, 3\]/],
  ["cat mismatched shapes", () => M.cat([f([2, 3]), f([2, 4])], 0), /^cat: .*\[2, 3\].*\[2, 4\]/],
  ["stack mismatched shapes", () => M.stack([f([2]), f([3])]), /^stack: .*\[2\].*\[3\]/],
  ["split sizes not summing", () => f([5]).split([2, 2]), /^split: sizes \[2, 2\] do not sum to 5/],
  ["copy_ of a bigger source", () => M.zeros([3]).copy_(f([2, 3])), /^copy_: /],
  ["layerNorm normalizedShape", () => F.layerNorm(f([2, 5]), [4]), /^layerNorm: normalizedShape \[4\] does not match .*\[2, 5\]/],
  ["layerNorm weight shape", () => F.layerNorm(f([2, 5]), [5], f([4])), /^layerNorm: weight has shape \[4\], expected \[5\]/],
  ["rmsNorm weight shape", () => F.rmsNorm(f([2, 5]), [5], f([5, 1])), /^rmsNorm: weight has shape \[5, 1\]/],
  ["attention head dims", () => F.scaledDotProductAttention(f([2, 4, 8]), f([2, 4, 6]), f([2, 4, 8])), /query and key head dims differ: \[2, 4, 8\] vs \[2, 4, 6\]/],
  ["attention key/value lengths", () => F.scaledDotProductAttention(f([2, 4, 8]), f([2, 5, 8]), f([2, 6, 8])), /key and value lengths differ/],
  ["attention batch dims", () => F.scaledDotProductAttention(f([2, 4, 8]), f([3, 4, 8]), f([3, 4, 8])), /batch dims must match/],
  ["attention mask and isCausal", () => F.scaledDotProductAttention(f([4, 8]), f([4, 8]), f([4, 8]), { attnMask: f([4, 4]), isCausal: true }), /either attnMask or isCausal/],
  ["attention 1-D query", () => F.scaledDotProductAttention(f([8]), f([4, 8]), f([4, 8])), /query must have at least 2 dims.*\[8\]/],
  ["crossEntropy targets shape", () => F.crossEntropy(f([3, 4]), i32([0, 1])), /^crossEntropy: targets shape \[2\] does not match logits \[3, 4\]/],
  ["backward of a non-scalar", () => f([2, 2]).requiresGrad_().mul(2).backward(), /backward: .*scalar.*\[2, 2\]/],
  ["backward with a wrong gradient shape", () => f([2, 2]).requiresGrad_().mul(2).backward(f([4])), /backward: shape mismatch: \[2, 2\] vs \[4\]/],
  // dtypes
  ["int32 into matmul", () => i32([1, 2]).matmul(f([2, 2])), /^matmul: expected a floating tensor \(float32, bfloat16 or float16\), got int32 with shape \[2\]/],
  ["int8 into exp", () => f([2]).to("int8").exp(), /^exp: expected a floating tensor.*got int8.*to\("float32"\)/],
  ["float targets into crossEntropy", () => F.crossEntropy(f([2, 3]), M.tensor([0, 1])), /^crossEntropy: targets must be int32 class indices, got float32/],
  ["float indices into embedding", () => F.embedding(M.tensor([0, 1]), f([4, 2])), /^embedding: indices must be int32, got float32/],
  ["1-D embedding table", () => F.embedding(i32([0]), f([4])), /^embedding: weight must be 2-D.*\[4\]/],
  ["unknown dtype", () => M.zeros([2]).to("float64" as never), /unknown dtype "float64"/],
  // out-of-range indices and values
  ["embedding index too large", () => F.embedding(i32([0, 7]), f([5, 4])), /^embedding: index 7 at position 1 is out of range for an embedding table with 5 rows \(expected 0\.\.4\)/],
  ["embedding negative index", () => F.embedding(i32([[1, -2]] as never, [1, 2]), f([5, 4])), /^embedding: index -2 at position 1/],
  ["crossEntropy target too large", () => F.crossEntropy(f([2, 3]), i32([0, 3])), /^crossEntropy: target 3 at position 1 is out of range for 3 classes/],
  ["crossEntropy negative target (not ignoreIndex)", () => F.crossEntropy(f([2, 3]), i32([-1, 0])), /^crossEntropy: target -1 at position 0 is out of range/],
  ["crossEntropy bad reduction", () => F.crossEntropy(f([2, 3]), i32([0, 1]), { reduction: "avg" as never }), /crossEntropy: reduction must be "mean", "sum" or "none", got "avg"/],
  ["crossEntropy labelSmoothing 1", () => F.crossEntropy(f([2, 3]), i32([0, 1]), { labelSmoothing: 1 }), /crossEntropy: labelSmoothing must be in \[0, 1\), got 1/],
  ["gelu approximate", () => f([2]).gelu("fast" as never), /gelu: approximate must be "none" or "tanh", got "fast"/],
  ["clamp without bounds", () => f([2]).clamp(), /clamp: at least one of min or max/],
  ["select index", () => f([2, 3]).select(1, 3), /^select: index 3 is out of range for dimension 1 of size 3/],
  ["topk k too large", () => f([2, 3]).topk(4), /^topk: k=4 is out of range for dimension -1 of size 3/],
  ["slice step 0", () => f([4]).slice(0, 0, 4, 0), /^slice: step must be a positive integer, got 0/],
  ["manualSeed negative", () => M.manualSeed(-1), /manualSeed: seed must be a non-negative safe integer, got -1/],
  // bad dims
  ["sum dim 5", () => f([2, 3]).sum(5), /^sum: dim 5 is out of range for a tensor with 2 dimension\(s\) \(expected -2\.\.1\)/],
  ["sum repeated dims", () => f([2, 3]).sum([1, -1]), /^sum: dim \[1,-1\] appears more than once/],
  ["mean dim -3", () => f([2, 3]).mean(-3), /^mean: dim -3 is out of range/],
  ["softmax dim 2", () => f([2, 3]).softmax(2), /^softmax: dim 2 is out of range/],
  ["logSoftmax dim -3", () => F.logSoftmax(f([2, 3]), -3), /^logSoftmax: dim -3 is out of range/],
  ["max dim 2", () => f([2, 3]).max(2), /^max: dim 2 is out of range/],
  ["argmin dim 9", () => f([2, 3]).argmin(9), /^argmin: dim 9 is out of range/],
  ["cumsum dim 2", () => f([2, 3]).cumsum(2), /^cumsum: dim 2 is out of range/],
  ["transpose dim 3", () => f([2, 3]).transpose(0, 3), /^transpose: dim 3 is out of range/],
  ["permute repeated", () => f([2, 3]).permute([0, 0]), /^permute: repeated dim in \[0, 0\]/],
  ["permute wrong count", () => f([2, 3]).permute([0]), /^permute: expected 2 dims for shape \[2, 3\], got \[0\]/],
  ["squeeze dim 4", () => f([2, 3]).squeeze(4), /^squeeze: dim 4 is out of range/],
  ["unsqueeze dim 4", () => f([2, 3]).unsqueeze(4), /^unsqueeze: dim 4 is out of range/],
  ["cat dim 2", () => M.cat([f([2, 3]), f([2, 3])], 2), /^cat: dim 2 is out of range/],
  ["t() of 3-D", () => f([2, 3, 4]).t(), /t: expects a 2-D tensor, got shape \[2, 3, 4\]/],
  ["var dim 3", () => f([2, 3]).var(3), /^var: dim 3 is out of range/],
];

test("every bad input throws a MegalithError whose message names the op and the offending shapes or values", () => {
  const failures: string[] = [];
  for (const [what, fn, re] of CASES) {
    try {
      fn();
      failures.push(`${what}: did not throw`);
    } catch (e) {
      if (!(e instanceof MegalithError)) failures.push(`${what}: threw ${(e as Error).constructor.name} (${(e as Error).message}), not a MegalithError`);
      else if (!re.test((e as Error).message)) failures.push(`${what}: message "${(e as Error).message}" does not match ${re}`);
    }
  }
  assert.deepEqual(failures, []);
});

test("in-place ops on a leaf that requires grad are refused with advice, and allowed under noGrad", () => {
  const w = M.ones([3]).requiresGrad_();
  assert.throws(() => w.add_(M.ones([3])), /add_: in-place operation on a leaf tensor that requires grad; wrap it in noGrad\(\)/);
  assert.throws(() => w.mul_(2), /mul_: in-place operation on a leaf/);
  assert.throws(() => w.copy_(M.zeros([3])), /copy_: in-place operation on a leaf/);
  M.noGrad(() => w.mul_(2));
  assert.deepEqual(Array.from(w.data()), [2, 2, 2]);
});

test("a failing op leaks no tensor memory, and the process keeps computing afterwards", () => {
  const x = f([4, 5]), idx = i32([0, 9]);
  const before = M.memoryStats().liveTotal;
  for (let i = 0; i < 20; i++) {
    M.withScope(() => {
      assert.throws(() => F.embedding(idx, x));
      assert.throws(() => F.crossEntropy(x, i32([0, 1, 2, 5])));
      assert.throws(() => x.matmul(f([4, 4])));
    });
  }
  assert.equal(M.memoryStats().liveTotal, before, "live bytes unchanged after 60 failed ops");
  assert.equal(x.matmul(f([5, 2])).shape[1], 2);
});

test("using a tensor after dispose() says so instead of reading freed memory", () => {
  const x = f([2, 3]);
  x.dispose();
  for (const [what, fn] of [["data()", () => x.data()], ["matmul", () => x.matmul(f([3, 2]))], ["exp", () => x.exp()],
    ["add(1)", () => x.add(1)], ["t()", () => x.t()], ["reshape", () => x.reshape([6])], ["sum", () => x.sum()]] as const) {
    assert.throws(fn, /tensor of shape \[2, 3\] was used after dispose\(\)/, what);
  }
});

test("`toDType()` of an unknown dtype throws a ValueError naming the value and the supported dtypes", () => {
  const x = M.randn([2, 3]);
  for (const bad of ["float64", "int64", "fp32"]) {
    assert.throws(() => M.toDType(x, bad as never), (e: unknown) => {
      assert.ok(e instanceof M.ValueError, `expected ValueError, got ${String(e)}`);
      assert.match(e.message, new RegExp(`^toDType: unknown dtype "${bad}"; expected one of ${M.DTYPES.join(", ")}$`));
      return true;
    });
  }
  assert.throws(() => x.to(undefined as never), /toDType: unknown dtype undefined; expected one of float32/);
});

test("`alias()` and `view_()` of a disposed tensor say so, even while another view keeps the storage alive", () => {
  const only = f([2, 3]);
  only.dispose();
  assert.throws(() => only.alias(), /tensor of shape \[2, 3\] was used after dispose\(\)/);
  assert.throws(() => only.view_([6], [1], 0), /tensor of shape \[2, 3\] was used after dispose\(\)/);
  const x = M.randn([2, 3]);
  const view = x.reshape([3, 2]);
  x.dispose();
  assert.throws(() => x.alias(), /tensor of shape \[2, 3\] was used after dispose\(\)/);
  assert.throws(() => x.view_([6], [1], 0), /tensor of shape \[2, 3\] was used after dispose\(\)/);
  assert.equal(view.storage.refCount, 1, "the failed calls took no reference");
  view.dispose();
});

test("`add_()` into a non-contiguous destination throws before writing: the destination is unchanged and nothing leaks", () => {
  const base = M.randn([3, 4]);
  const dst = base.t();  // (4, 3) view, not contiguous
  const before = Array.from(base.data());
  const live = M.memoryStats().liveTotal;
  for (const alpha of [1, 0.5 + Math.random()]) {
    M.withScope(() => {
      assert.throws(() => dst.add_(M.randn([4, 3]), alpha), /add_: destination must be contiguous, got shape \[4, 3\]/);
      assert.throws(() => M.zeros([3]).add_(M.randn([2, 3]), alpha), /add_: cannot add \[2, 3\] into \[3\]/);
    });
  }
  assert.deepEqual(Array.from(base.data()), before, "the failed add_ left the destination untouched");
  assert.ok(M.memoryStats().liveTotal <= live, "no temporary leaked");
});

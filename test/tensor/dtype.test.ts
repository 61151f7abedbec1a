// dtype conversions: float32 -> bfloat16 / float16 round to nearest even (checked against a JS
// reference on random floats and on constructed ties), integer round trips, float -> int
// truncation, gradients through float casts, and the factories' dtype option.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import * as R from "../_util/reference.js";
import { Rng, assertClose, seedFor, seedNote, toTensor, randArr, TOL } from "../_util/check.js";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number): number => { u32[0] = b >>> 0; return f32[0]!; };

/** Random float32 values over many binades, plus for each one its exact tie and tie +- 1 ulp at `dropBits`. */
function nearTies(seed: number, n: number, dropBits: number): number[] {
  const rng = new Rng(seed);
  const out: number[] = [];
  const half = 1 << (dropBits - 1);
  for (let i = 0; i < n; i++) {
    const sign = rng.next() < 0.5 ? 0x80000000 : 0;
    const exp = rng.int(1, 254);
    const mant = rng.int(0, 1 << 23);
    const bits = (sign | (exp << 23) | mant) >>> 0;
    out.push(fromBits(bits));
    const base = (bits & ~((1 << dropBits) - 1)) >>> 0;
    for (const d of [-1, 0, 1]) out.push(fromBits((base + half + d) >>> 0));
  }
  return out;
}

test("float32 -> bfloat16 rounds to nearest even like the JS reference, on random floats and exact ties", () => {
  const seed = seedFor("bf16");
  const vals = [...nearTies(seed, 2000, 16), 0, -0, 1, -1, 3.4028234663852886e38, -3.4028234663852886e38, 1e-40, -1e-45, Infinity, -Infinity];
  const t = M.tensor(vals).to("bfloat16");
  assert.equal(t.dtype, "bfloat16");
  const got = t.data();
  const want = vals.map(R.bf16Round);
  assertClose(got, want, { what: "bfloat16 rounding", rtol: 0, atol: 0, seed });
  // through the other entry points: tensor(..., {dtype}) and full()
  assertClose(M.tensor(vals.slice(0, 64), { dtype: "bfloat16" }).data(), want.slice(0, 64), { what: "tensor({dtype: bfloat16})", rtol: 0, atol: 0, seed });
  assert.equal(M.full([3], 1 + 2 ** -8, { dtype: "bfloat16" }).data()[0], 1, "full() of a tie rounds to even");
  assert.ok(Number.isNaN(M.tensor([NaN]).to("bfloat16").data()[0]!), "NaN stays NaN");
});

test("float32 -> float16 rounds to nearest even like the JS reference, including subnormals and overflow", () => {
  const seed = seedFor("f16");
  const rng = new Rng(seed);
  const vals: number[] = [];
  for (let i = 0; i < 3000; i++) vals.push(Math.fround((rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-26, 17)));
  for (let i = -24; i <= 15; i++) for (const k of [0.5, 1.5, 2.5]) vals.push(Math.fround(2 ** (i - 10) * (1024 + k)));  // halfway cases
  vals.push(65504, 65519.99, 65520, 1e6, -1e6, 2 ** -25, 3 * 2 ** -25, 0);
  const got = M.tensor(vals).to("float16").data();
  assertClose(got, vals.map(R.f16Round), { what: "float16 rounding", rtol: 0, atol: 0, seed });
});

test("round trips: int32 <-> float32 exact below 2^24, int8 and uint8 through float32 and int32", () => {
  const ints = [0, 1, -1, 127, -128, 16777216, -16777215, 123456, 2 ** 31 - 1];
  const i32 = M.tensor(ints, { dtype: "int32" });
  assert.deepEqual(Array.from(i32.to("float32").to("int32").data()).slice(0, 8), ints.slice(0, 8));
  const i8vals = Array.from({ length: 256 }, (_, i) => i - 128);
  const i8 = M.tensor(i8vals, { dtype: "int8" });
  assert.equal(i8.dtype, "int8");
  assert.deepEqual(Array.from(i8.to("float32").to("int8").data()), i8vals);
  assert.deepEqual(Array.from(i8.to("int32").to("int8").data()), i8vals);
  const u8vals = Array.from({ length: 256 }, (_, i) => i);
  const u8 = M.tensor(u8vals, { dtype: "uint8" });
  assert.deepEqual(Array.from(u8.to("float32").to("uint8").data()), u8vals);
  assert.deepEqual(Array.from(u8.to("int32").data()), u8vals);
  assert.deepEqual(Array.from(M.tensor(i8vals.slice(100, 140), { dtype: "int32" }).to("int8").data()), i8vals.slice(100, 140));
});

test("float32 -> int32 truncates toward zero, like torch's .to(torch.int32)", () => {
  assert.deepEqual(Array.from(M.tensor([1.7, -1.7, 2.5, -0.4, 1e6 + 0.5]).to("int32").data()), [1, -1, 2, 0, 1000000]);
});

test("bfloat16 and float16 tensors survive views and copies: transposed casts read back the right elements", () => {
  const seed = seedFor("bf16 views");
  const a = randArr([3, 5], seed);
  for (const dt of ["bfloat16", "float16"] as const) {
    const h = toTensor(a).to(dt);
    const t = h.t();
    const round = dt === "bfloat16" ? R.bf16Round : R.f16Round;
    assertClose(t.data(), R.map(R.transpose(a, 0, 1), round).data, { what: `${dt} transposed read`, rtol: 0, atol: 0, seed });
    assertClose(t.contiguous().to("float32"), R.map(R.transpose(a, 0, 1), round), { what: `${dt} transposed -> float32`, rtol: 0, atol: 0, seed });
    assertClose(M.cat([h, h], 0).to("float32"), R.map(R.cat([a, a], 0), round), { what: `${dt} cat`, rtol: 0, atol: 0, seed });
  }
});

test("gradients flow through float casts (rounded to the narrow type on the way back) and stop at integer casts", () => {
  const seed = seedFor("cast grad");
  const a = randArr([4, 6], seed);
  const x = toTensor(a, { requiresGrad: true });
  const y = x.to("bfloat16").to("float32");
  assertClose(y, R.map(a, R.bf16Round), { what: "bf16 round trip forward", rtol: 0, atol: 0, seed });
  const gy = randArr([4, 6], seed + 1);
  y.backward(toTensor(gy));
  // torch: the gradient of a bfloat16 tensor is bfloat16, so it is rounded once on its way back
  assertClose(x.grad!, R.map(gy, R.bf16Round), { what: "bf16 round trip gradient", rtol: 0, atol: 0, seed });
  x.grad = null;
  const z = x.to("float16").to("float32").mul(3).sum();
  z.backward();
  assertClose(x.grad!, R.full([4, 6], 3), { what: "float16 round trip gradient", ...TOL.float32.exact, seed });
  assert.equal(x.to("int32").requiresGrad, false, "integer casts are not differentiable");
});

test("`.to()` the same dtype and `.float()` keep the tensor in the graph", () => {
  const x = M.tensor([1, 2, 3], { requiresGrad: true });
  x.to("float32").mul(2).sum().backward();
  assert.deepEqual(Array.from(x.grad!.data()), [2, 2, 2]);
  x.grad = null;
  x.float().sum().backward();
  assert.deepEqual(Array.from(x.grad!.data()), [1, 1, 1]);
});

test("only floating tensors can require grad; int tensors say so, 16-bit floats may", () => {
  assert.throws(() => M.tensor([1], { dtype: "int32" }).requiresGrad_(), /only floating tensors \(float32, bfloat16, float16\) can require grad, this one is int32/);
  assert.equal(M.tensor([1]).to("bfloat16").requiresGrad_().requiresGrad, true);
  assert.throws(() => M.tensor([1], { dtype: "int32", requiresGrad: true }), /int32/);
});

test("factories honour dtype: zeros/ones/full int32, int8 fill with negatives, arange float steps", () => {
  assert.deepEqual(Array.from(M.zeros([3], { dtype: "int32" }).data()), [0, 0, 0]);
  assert.equal(M.ones([2], { dtype: "int32" }).dtype, "int32");
  assert.deepEqual(Array.from(M.full([4], -3, { dtype: "int8" }).data()), [-3, -3, -3, -3]);
  assert.deepEqual(Array.from(M.full([2], 200, { dtype: "uint8" }).data()), [200, 200]);
  assert.deepEqual(Array.from(M.full([2], 1.5, { dtype: "float16" }).data()), [1.5, 1.5]);
  const r = M.arange(0, 1, 0.25).data();
  assert.deepEqual(Array.from(r), [0, 0.25, 0.5, 0.75]);
  assert.deepEqual(M.arange(5).toArray(), [0, 1, 2, 3, 4]);
  assert.deepEqual(M.arange(5, 1, -2).toArray(), [5, 3]);
  const seed = seedFor("int32 tensor");
  assert.equal(M.tensor(new Int32Array([1, 2])).dtype, "int32", `Int32Array data defaults to int32 (${seedNote(seed)})`);
});

test("`tensor()` accepts nested arrays, flat arrays with a shape, typed arrays and numbers; `toArray()/item()` read back", () => {
  assert.deepEqual(M.tensor([[1, 2, 3], [4, 5, 6]]).toArray(), [[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(M.tensor([1, 2, 3, 4, 5, 6], { shape: [3, 2] }).toArray(), [[1, 2], [3, 4], [5, 6]]);
  assert.deepEqual(M.tensor(new Float32Array([1, 2, 3, 4]), { shape: [2, -1] }).shape, [2, 2]);
  const s = M.tensor(2.5);
  assert.deepEqual(s.shape, []);
  assert.equal(s.item(), 2.5);
  assert.equal(s.toArray(), 2.5);
  assert.throws(() => M.tensor([[1, 2], [3]]), /ragged nested array/);
  assert.throws(() => M.tensor([1, 2, 3], { shape: [2, 2] }), /\[2, 2\].*3/);
  assert.throws(() => M.tensor([1, 2]).item(), /item: only one-element tensors.*\[2\]/);
});

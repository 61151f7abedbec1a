// The kernel table (src/backend/kernels.ts) is the one source of the native registration:
// the generated C++ is current, and the loaded addon exports exactly the table's kernels plus
// the hand-written utilities.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { KERNELS, OP_CODES } from "../../src/backend/kernels.js";
import { BinaryOp, DTypeCode, NATIVE_UTILITIES, native } from "../../src/backend/native_addon.js";
import { GENERATED_HEADER, GENERATED_PATH, generate, generateHeader } from "../../scripts/gen_kernels.js";

test("`gen_kernels` output matches the committed native/src/_kernels.gen.h and _kernels.gen.inc", () => {
  for (const [path, text] of [[GENERATED_HEADER, generateHeader()], [GENERATED_PATH, generate()]] as const) {
    assert.ok(
      readFileSync(path, "utf8") === text,
      `${path} is stale: run \`node --import tsx scripts/gen_kernels.ts\`, rebuild and commit`,
    );
  }
});

test("the addon exports exactly the table's kernels plus the documented utilities", () => {
  const expected = [...Object.keys(KERNELS), ...NATIVE_UTILITIES].sort();
  const actual = Object.keys(native).sort();
  assert.deepEqual(actual, expected);
  for (const name of actual) assert.equal(typeof (native as unknown as Record<string, unknown>)[name], "function", name);
});

test("op-code objects are the table's OP_CODES", () => {
  assert.equal(BinaryOp, OP_CODES.BinaryOp);
  assert.equal(DTypeCode, OP_CODES.DType);
});

test("generated wrappers check argument count and kinds, naming the kernel and argument", () => {
  const a = native.alloc(64, 0);
  try {
    assert.throws(() => (native.binary as unknown as (...x: unknown[]) => void)(0, a, [1]), /native binary: expected 7\.\.8 arguments, got 3/);
    assert.throws(() => (native.binary as unknown as (...x: unknown[]) => void)(0, a, "x", a, [1], a, [1]), /native binary: argument aStrides must be an array/);
    assert.throws(() => (native.unary as unknown as (...x: unknown[]) => void)(0, a, a, "4", 0, 0), /native unary: argument n must be a number/);
    assert.throws(() => native.binary(0, a, new Array(13).fill(0), a, [1], a, [1]), /more than 12 dimensions/);
    assert.throws(() => native.binary(0, a, [1], a, [1], a, [1], "int8"), /native binary: dtype int8 is not implemented \(implemented: float32, bfloat16, float16\)/);
    assert.throws(() => native.unary(0, a, a, 1, 0, 0, "float64" as never), /native unary: argument dtype is an unknown dtype "float64"/);
    // dtype by name, by code, or left out (float32) all reach the same kernel
    native.write(a, new Float32Array([1, 2, 3, 4]));
    native.unary(OP_CODES.UnaryOp.neg, a, a, 4, 0, 0, "float32");
    native.unary(OP_CODES.UnaryOp.neg, a, a, 4, 0, 0, DTypeCode.float32);
    native.unary(OP_CODES.UnaryOp.neg, a, a, 4, 0, 0);
    assert.deepEqual([...new Float32Array(native.read(a, 16))], [-1, -2, -3, -4]);
  } finally {
    native.free(a, 64);
  }
});

test("`setKernelSet()` refuses unknown sets and `cpuInfo()` reports the set in use", () => {
  const info = native.cpuInfo();
  assert.ok(["avx512", "avx2", "generic"].includes(info.kernels));
  assert.ok(["onednn", "fallback"].includes(info.gemmBf16));
  assert.ok(Array.isArray(info.isa));
  assert.throws(() => native.setKernelSet("sse" as never), /expected "avx512", "avx2" or "generic", got "sse"/);
  const prev = info.kernels;
  try {
    native.setKernelSet("generic");
    assert.equal(native.cpuInfo().kernels, "generic");
    if (info.avx2) { native.setKernelSet("avx2"); assert.equal(native.cpuInfo().kernels, "avx2"); }
    else assert.throws(() => native.setKernelSet("avx2"), /cannot run the avx2 kernels/);
  } finally {
    native.setKernelSet(prev);
  }
});

// Type-level: the addon's kernels follow the table (checked by `npm run typecheck`).
export function _typecheckOnly(p: number): void {
  // @ts-expect-error a view is an address, not a string
  native.fill("p", 1, 0);
  // @ts-expect-error binary needs its shape
  native.binary(0, p, [1], p, [1], p);
  native.gemm(false, false, 1, 1, 1, 1, p, 1, 0, p, 1, 0, 0, p, 1, 0, 1, "bfloat16", "float32");
}

import assert from "node:assert/strict";
import { test } from "node:test";
import { bf16BytesToFloat32, f16BytesToFloat32, float32ToBf16Bytes, float32ToF16Bytes } from "../../src/checkpoint/index.js";
import { NO_NUMPY, NO_TORCH, randBytes, runPython } from "./_helpers.js";

/** Float32 values from raw bit patterns. */
function fromBits(bits: number[]): Float32Array {
  return new Float32Array(new Uint32Array(bits).buffer);
}

function u16(bytes: Uint8Array): number[] {
  return [...new Uint16Array(bytes.slice().buffer)];
}

/** Random float32 values: random bit patterns (every exponent), NaNs removed. */
function randomFloats(n: number): Float32Array {
  return new Float32Array(randBytes(4 * n).buffer).filter((x) => !Number.isNaN(x));
}

test("`float32ToBf16Bytes()` rounds to nearest even and keeps specials", () => {
  const cases: [number, number][] = [
    [0x3f800000, 0x3f80], // 1
    [0x3f808000, 0x3f80], // 1 + 2^-8: tie, stays even
    [0x3f818000, 0x3f82], // tie, rounds up to even
    [0x3f808001, 0x3f81], // just above the tie
    [0x3f807fff, 0x3f80], // just below the tie
    [0x80000000, 0x8000], // -0
    [0x7f800000, 0x7f80], // inf
    [0xff800000, 0xff80], // -inf
    [0x7f7fffff, 0x7f80], // max float rounds to inf
    [0x00000001, 0x0000], // smallest subnormal rounds to 0
  ];
  assert.deepEqual(u16(float32ToBf16Bytes(fromBits(cases.map((c) => c[0])))), cases.map((c) => c[1]));
  const nan = bf16BytesToFloat32(float32ToBf16Bytes(fromBits([0x7f800001, 0xffc00000])));
  assert.ok(Number.isNaN(nan[0]) && Number.isNaN(nan[1]), "NaN (even a low-payload one) stays NaN");
  assert.deepEqual(float32ToBf16Bytes(new Float32Array([1, 0.1])), new Uint8Array([128, 63, 205, 61]));
});

test("`float32ToF16Bytes()` rounds to nearest even, including subnormals and overflow", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [65504, 0x7bff], // max half
    [65520, 0x7c00], // halfway to the next binade: ties to even = inf
    [65519, 0x7bff],
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie with zero: even
    [2 ** -25 * 1.5, 0x0001],
    [3 * 2 ** -25, 0x0002], // 1.5 subnormal steps: tie, rounds to even 2
    [2 ** -14 - 2 ** -25, 0x0400], // rounds up into the smallest normal
    [1 + 2 ** -11, 0x3c00], // tie, stays even
    [1 + 3 * 2 ** -11, 0x3c02], // tie, rounds up to even
    [-0, 0x8000],
    [Infinity, 0x7c00],
    [-1e10, 0xfc00],
  ];
  assert.deepEqual(u16(float32ToF16Bytes(new Float32Array(cases.map((c) => c[0])))), cases.map((c) => c[1]));
  assert.ok(Number.isNaN(f16BytesToFloat32(float32ToF16Bytes(new Float32Array([NaN])))[0]));
});

test("`bf16BytesToFloat32()` / `f16BytesToFloat32()` are exact: every non-NaN pattern round-trips", () => {
  const all = new Uint8Array(new Uint16Array(65536).map((_, i) => i).buffer);
  for (const [widen, narrow, isNaN] of [
    [bf16BytesToFloat32, float32ToBf16Bytes, (h: number) => (h & 0x7fff) > 0x7f80],
    [f16BytesToFloat32, float32ToF16Bytes, (h: number) => (h & 0x7fff) > 0x7c00],
  ] as const) {
    const back = u16(narrow(widen(all)));
    for (let h = 0; h < 65536; h++) {
      if (isNaN(h)) assert.ok(Number.isNaN(widen(all.subarray(2 * h, 2 * h + 2))[0]));
      else assert.equal(back[h], h, `pattern 0x${h.toString(16)}`);
    }
  }
  assert.throws(() => bf16BytesToFloat32(new Uint8Array(3)), /3 bytes/);
});

test("`float32ToBf16Bytes()` matches PyTorch's `.to(torch.bfloat16)` on random floats", { skip: NO_TORCH }, () => {
  const x = randomFloats(20000);
  const code = "import sys, numpy as np, torch\n" +
    "x = np.frombuffer(sys.stdin.buffer.read(), dtype='<f4').copy()\n" +
    "sys.stdout.buffer.write(torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().astype('<i2').tobytes())";
  const ref = runPython(code, [], new Uint8Array(x.buffer));
  assert.deepEqual(u16(float32ToBf16Bytes(x)), u16(new Uint8Array(ref)));
});

test("`float32ToF16Bytes()` matches numpy's `astype(float16)` on random floats", { skip: NO_NUMPY }, () => {
  // Random bit patterns, plus values concentrated around the half range and its subnormals.
  const a = randomFloats(20000);
  const b = Float32Array.from(new Uint32Array(randBytes(4 * 20000).buffer), (u, i) => (u / 2 ** 32 - 0.5) * 2 ** ((i % 60) - 30));
  const x = new Float32Array([...a, ...b].filter((v) => !Number.isNaN(v)));
  const code = "import sys, numpy as np\n" +
    "np.seterr(all='ignore')\n" +
    "x = np.frombuffer(sys.stdin.buffer.read(), dtype='<f4')\n" +
    "sys.stdout.buffer.write(x.astype('<f2').tobytes())";
  const ref = runPython(code, [], new Uint8Array(x.buffer));
  assert.deepEqual(u16(float32ToF16Bytes(x)), u16(new Uint8Array(ref)));
});

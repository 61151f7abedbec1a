/**
 * Safetensors dtypes and the byte conversions checkpoint code needs, without the tensor library.
 *
 * All multi-byte values in safetensors are little-endian. The converters below read and write
 * bytes one at a time, so they are correct on any host and accept unaligned `Uint8Array` views.
 * Float32 -> BF16/F16 rounds to nearest, ties to even (what PyTorch's `.to(torch.bfloat16)` and
 * numpy's `astype(float16)` do); NaN stays NaN (quiet), infinities stay infinite, overflow goes
 * to infinity.
 */

import { ValueError } from "../core/errors.js";

/** The dtypes Megalith reads and writes (a subset of the safetensors spec's list). */
export type SafetensorsDtype = "F32" | "F16" | "BF16" | "F64" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

const ELEMENT_SIZES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8,
  I64: 8,
  F32: 4,
  I32: 4,
  F16: 2,
  BF16: 2,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Every supported dtype, widest first. */
export const SAFETENSORS_DTYPES: readonly SafetensorsDtype[] = Object.keys(ELEMENT_SIZES) as SafetensorsDtype[];

/** True when `x` names a supported safetensors dtype (`"F32"`, `"BF16"`, ...). */
export function isSafetensorsDtype(x: unknown): x is SafetensorsDtype {
  return typeof x === "string" && Object.prototype.hasOwnProperty.call(ELEMENT_SIZES, x);
}

/** Bytes per element of `dtype`: `dtypeElementSize("BF16") === 2`. */
export function dtypeElementSize(dtype: SafetensorsDtype): number {
  return ELEMENT_SIZES[dtype];
}

/**
 * Number of elements of `shape` (1 for a scalar `[]`), or -1 if the product is not a safe
 * integer. Callers validate the entries themselves.
 */
export function shapeNumel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return -1;
  }
  return n;
}

// One scratch word to reinterpret float32 <-> uint32 bits.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Float32 bit pattern -> BF16 bit pattern, round to nearest even. */
function f32BitsToBf16Bits(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x0040) & 0xffff; // NaN: keep sign, make quiet
  // Adding 0x7fff plus the lowest kept bit rounds ties to even. Cannot pass 2^32: the largest
  // non-NaN input is 0xff800000 (-inf).
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Float32 bit pattern -> IEEE half bit pattern, round to nearest even. */
function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13); // inf / quiet NaN
  const e = exp - 127 + 15; // exponent rebased for half
  if (e >= 0x1f) return sign | 0x7c00; // too large: infinity
  if (e <= 0) {
    // Half subnormal (or zero): value = r * 2^-24 with r = mant24 >> (14 - e).
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    const r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    return sign | (rem > half || (rem === half && (r & 1) === 1) ? r + 1 : r); // r + 1 may be the smallest normal: correct
  }
  const h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  return sign | (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1) ? h + 1 : h); // carry into exponent is correct, up to inf
}

/** IEEE half bit pattern -> float32 value (exact: every half is a float32). */
function f16BitsToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) {
    const v = mant * 2 ** -24;
    return sign ? -v : v;
  }
  u32[0] = exp === 0x1f ? sign | 0x7f800000 | (mant << 13) : sign | ((exp - 15 + 127) << 23) | (mant << 13);
  return f32[0]!;
}

/**
 * Converts float32 values to little-endian BF16 bytes, rounding to nearest even.
 *
 * @example
 * const bytes = float32ToBf16Bytes(new Float32Array([1, 0.1])); // Uint8Array(4) [128, 63, 205, 61]
 */
export function float32ToBf16Bytes(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint8Array(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const h = f32BitsToBf16Bits(bits[i]!);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

/**
 * Widens little-endian BF16 bytes to float32 (exact).
 *
 * @example
 * bf16BytesToFloat32(new Uint8Array([128, 63])); // Float32Array [1]
 */
export function bf16BytesToFloat32(bytes: Uint8Array): Float32Array {
  if (bytes.length % 2 !== 0) throw new ValueError(`bf16BytesToFloat32: ${bytes.length} bytes is not a whole number of BF16 values`);
  const out = new Float32Array(bytes.length / 2);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < out.length; i++) bits[i] = ((bytes[2 * i]! | (bytes[2 * i + 1]! << 8)) << 16) >>> 0;
  return out;
}

/**
 * Converts float32 values to little-endian IEEE half (F16) bytes, rounding to nearest even;
 * values beyond ±65504 (after rounding) become ±Infinity.
 *
 * @example
 * float32ToF16Bytes(new Float32Array([1])); // Uint8Array(2) [0, 60]
 */
export function float32ToF16Bytes(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint8Array(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const h = f32BitsToF16Bits(bits[i]!);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

/**
 * Widens little-endian IEEE half (F16) bytes to float32 (exact).
 *
 * @example
 * f16BytesToFloat32(new Uint8Array([0, 60])); // Float32Array [1]
 */
export function f16BytesToFloat32(bytes: Uint8Array): Float32Array {
  if (bytes.length % 2 !== 0) throw new ValueError(`f16BytesToFloat32: ${bytes.length} bytes is not a whole number of F16 values`);
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = f16BitsToF32(bytes[2 * i]! | (bytes[2 * i + 1]! << 8));
  return out;
}

// Storage types and float32 <-> 16-bit float conversions, shared by every kernel file.
//
// Kernels are templates over the storage type T (float, bf16_t, f16_t): they read with
// load(p[i]) and write with store(&p[i], f), and all arithmetic happens in float32. For T =
// float both are the identity, so the float32 instantiation compiles to the same code as a
// plain float kernel. bfloat16 is the upper 16 bits of a float32, rounded to nearest even
// (NaN stays NaN), exactly like PyTorch's c10::BFloat16; float16 is IEEE binary16, rounded to
// nearest even, overflowing to infinity.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "megalith.h"
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace mg {

struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN -> the canonical quiet NaN, as PyTorch
  uint32_t rounding = 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) u = sign;
    else {  // subnormal: mant * 2^-24, exact in float32
      float f = static_cast<float>(mant) * 5.9604644775390625e-08f;
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) u = sign | 0x7F800000u | (mant << 13);
  else u = sign | ((exp + 112) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t au = u & 0x7FFFFFFFu;
  if (au > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00);  // NaN
  float a;
  std::memcpy(&a, &au, 4);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00);
  if (a < 6.103515625e-05f) {  // subnormal half: round to nearest even via rint
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t e = ((u >> 23) & 0xFF) - 112, m = u & 0x7FFFFF;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rest = m & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return static_cast<uint16_t>(sign | h);
}

inline float load(float v) { return v; }
inline float load(bf16_t v) { return bf16_to_f32(v.bits); }
inline void store(float* p, float f) { *p = f; }
inline void store(bf16_t* p, float f) { p->bits = f32_to_bf16(f); }  // integer ops: GCC vectorizes it
#if defined(__F16C__)
// The avx2 and avx512 sets convert float16 in hardware (vcvtph2ps / vcvtps2ph, round to
// nearest even): the same values as the portable code, which the generic set uses.
inline float load(f16_t v) { return _cvtsh_ss(v.bits); }
inline void store(f16_t* p, float f) { p->bits = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
inline float load(f16_t v) { return f16_to_f32(v.bits); }
inline void store(f16_t* p, float f) { p->bits = f32_to_f16(f); }
#endif

// Storage type for a dtype code, for the dispatch switches.
template <int DT> struct StorageOf;
template <> struct StorageOf<kF32> { using type = float; };
template <> struct StorageOf<kBF16> { using type = bf16_t; };
template <> struct StorageOf<kF16> { using type = f16_t; };

// Calls fn(T{}) with T the storage type of a float dtype code (float32, bfloat16, float16).
template <typename F>
inline auto with_float_type(int dt, F&& fn) {
  switch (dt) {
    case kBF16: return fn(bf16_t{});
    case kF16: return fn(f16_t{});
    default: return fn(float{});
  }
}

}  // namespace mg

// dtype conversions. bfloat16 is stored as the upper 16 bits of a float32, rounded to nearest
// even (NaN stays NaN), exactly like PyTorch's c10::BFloat16.
#include <cmath>
#include <cstring>

#include "megalith.h"

namespace mg {
namespace {

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
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
    else {  // subnormal
      float f = std::ldexp(static_cast<float>(mant), -24);
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
  float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00);
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

template <typename T>
inline double load(const void* p, i64 i) { return static_cast<double>(static_cast<const T*>(p)[i]); }

}  // namespace

int dtype_size(int dt) {
  switch (dt) {
    case kF32: case kI32: return 4;
    case kBF16: case kF16: return 2;
    case kI8: case kU8: return 1;
    default: return 0;
  }
}

void cast(int sdt, const void* src, int ddt, void* dst, i64 n) {
  if (sdt == ddt) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(sdt));
    return;
  }
  parallel_for(n, 1 << 16, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; i++) {
      float f;
      switch (sdt) {
        case kF32: f = static_cast<const float*>(src)[i]; break;
        case kBF16: f = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
        case kF16: f = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
        case kI32: {  // integers go through double so int32 -> int32-like paths stay exact
          double d = load<int32_t>(src, i);
          if (ddt == kI8) { static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(static_cast<int32_t>(d)); continue; }
          if (ddt == kU8) { static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(static_cast<int32_t>(d)); continue; }
          f = static_cast<float>(d);
          break;
        }
        case kI8: f = static_cast<const int8_t*>(src)[i]; break;
        case kU8: f = static_cast<const uint8_t*>(src)[i]; break;
        default: f = 0;
      }
      switch (ddt) {
        case kF32: static_cast<float*>(dst)[i] = f; break;
        case kBF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(f); break;
        case kF16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(f); break;
        // float -> int truncates toward zero like PyTorch's .to(torch.int32)
        case kI32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(f); break;
        case kI8: static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(static_cast<int32_t>(f)); break;
        case kU8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(static_cast<int32_t>(f)); break;
      }
    }
  });
}

}  // namespace mg

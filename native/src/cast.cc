// dtype conversions. bfloat16 is stored as the upper 16 bits of a float32, rounded to nearest
// even (NaN stays NaN), exactly like PyTorch's c10::BFloat16.
#include <cmath>
#include <cstring>

#include "_dtype.h"
#include "megalith.h"

namespace mg {
namespace {

template <typename T>
inline double load_as_double(const void* p, i64 i) { return static_cast<double>(static_cast<const T*>(p)[i]); }

}  // namespace

int dtype_size(int dt) {
  switch (dt) {
    case kF32: case kI32: return 4;
    case kBF16: case kF16: return 2;
    case kI8: case kU8: return 1;
    default: return 0;
  }
}

static void cast_range(int sdt, const void* src, int ddt, void* dst, i64 b, i64 e) {
    for (i64 i = b; i < e; i++) {
      float f;
      switch (sdt) {
        case kF32: f = static_cast<const float*>(src)[i]; break;
        case kBF16: f = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
        case kF16: f = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
        case kI32: {  // integers go through double so int32 -> int32-like paths stay exact
          double d = load_as_double<int32_t>(src, i);
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
}

void cast(int sdt, const void* src, int ddt, void* dst, i64 n) {
  if (sdt == ddt) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(sdt));
    return;
  }
  parallel_for(n, 1 << 16, [&](i64 b, i64 e) { cast_range(sdt, src, ddt, dst, b, e); });
}

void cast_serial(int sdt, const void* src, int ddt, void* dst, i64 n) {
  if (sdt == ddt) std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(sdt));
  else cast_range(sdt, src, ddt, dst, 0, n);
}

}  // namespace mg

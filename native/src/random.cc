// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
//
// Counter-based: the value at logical position i depends only on (seed, i), never on how the
// work was split across threads or ranks. That is what makes initialisation and dropout
// masks identical under any parallel layout.
//   uniform / dropout: position i uses word (i % 4) of block (i / 4)
//   normal:            position i uses block (i / 2); Box-Muller gives cos for even, sin for odd
#include <cmath>

#include "megalith.h"

namespace mg {
namespace {

struct U4 { uint32_t x[4]; };

inline U4 philox(uint64_t ctr, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(ctr), c1 = static_cast<uint32_t>(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return U4{{c0, c1, c2, c3}};
}

// 24 random bits -> [0, 1), exactly representable in float32.
inline float to_unit(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

}  // namespace

void random_f32(int kind, uint64_t seed, uint64_t offset, float* out, i64 n, float a, float b) {
  parallel_for(n, 1 << 14, [&](i64 lo, i64 hi) {
    if (kind == kUniform) {
      for (i64 i = lo; i < hi; i++) {
        uint64_t pos = offset + static_cast<uint64_t>(i);
        U4 r = philox(pos >> 2, seed);
        out[i] = a + (b - a) * to_unit(r.x[pos & 3]);
      }
    } else {  // normal(mean=a, std=b)
      for (i64 i = lo; i < hi; i++) {
        uint64_t pos = offset + static_cast<uint64_t>(i);
        U4 r = philox(pos >> 1, seed);
        // u1 in (0, 1] so log is finite; u2 in [0, 1).
        double u1 = (static_cast<double>(r.x[0] >> 8) + 1.0) / 16777216.0;
        double u2 = static_cast<double>(r.x[1] >> 8) / 16777216.0;
        double rad = std::sqrt(-2.0 * std::log(u1));
        double th = 6.283185307179586 * u2;
        double z = (pos & 1) ? rad * std::sin(th) : rad * std::cos(th);
        out[i] = static_cast<float>(a + b * z);
      }
    }
  });
}

void dropout_f32(uint64_t seed, uint64_t offset, float p, const float* x, float* y, i64 n) {
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  parallel_for(n, 1 << 14, [&](i64 lo, i64 hi) {
    i64 i = lo;
    while (i < hi) {
      uint64_t pos = offset + static_cast<uint64_t>(i);
      U4 r = philox(pos >> 2, seed);
      for (uint64_t w = pos & 3; w < 4 && i < hi; w++, i++) {
        bool keep = to_unit(r.x[w]) >= p;
        y[i] = keep ? x[i] * scale : 0.0f;
      }
    }
  });
}

}  // namespace mg

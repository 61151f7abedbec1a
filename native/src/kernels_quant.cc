// Int8 weight-only quantization for inference (LLM.int8-style per-channel absmax, without the
// outlier split): a Linear's weight W [N = out, K = in] is stored as int8 q [N, K] with one
// float scale per output row, W ~= scales[n] * q[n, :]. Activations stay float32.
//
// Decode (M = 1) is memory-bound: every weight byte is read once per token, so int8 weights
// move 4x fewer bytes than float32. The small-M path therefore streams each q row once and
// dots it against all M activation rows while it is in L1. For larger M (prefill) the work is
// compute-bound and an FMA loop over int8 would lose to sgemm, so tiles of q are dequantized
// into a per-task float buffer and handed to single-threaded sgemm; the dequantization costs
// N*K per M tile against 2*Mt*N*K FLOPs, i.e. negligible for Mt = 64.
#include <algorithm>
#include <cmath>
#include <vector>

#include "megalith.h"

namespace KNS {
using namespace mg;

namespace {

// Rows of M at or below this use the streaming path (one pass over q per call).
constexpr i64 kSmallM = 8;
// Tile sizes of the dequantize + sgemm path.
constexpr i64 kTileM = 64;
constexpr i64 kTileN = 64;

// sum_k x[k] * q[k] in float32. Written as a plain reduction so GCC vectorizes it (sign-extend
// int8 -> int32 -> float, then FMA); -ffast-math allows the reassociation.
inline float dot_i8(const float* __restrict x, const int8_t* __restrict q, i64 K) {
  float acc = 0.0f;
  for (i64 k = 0; k < K; k++) acc += x[k] * static_cast<float>(q[k]);
  return acc;
}

}  // namespace

// Per-row symmetric absmax: scale = max|w_row| / 127, q = round(w / scale) in [-127, 127]
// (-128 is never produced, so the range is symmetric). An all-zero row gets scale 0, q = 0.
void quant_int8_rowwise(const float* w, int8_t* q, float* scales, i64 rows, i64 cols) {
  parallel_for(rows, std::max<i64>(1, 16384 / std::max<i64>(cols, 1)), [&](i64 lo, i64 hi) {
    for (i64 r = lo; r < hi; r++) {
      const float* wr = w + r * cols;
      int8_t* qr = q + r * cols;
      float amax = 0.0f;
      for (i64 c = 0; c < cols; c++) amax = std::max(amax, std::fabs(wr[c]));
      const float scale = amax / 127.0f;
      scales[r] = scale;
      if (scale == 0.0f) {
        std::fill(qr, qr + cols, int8_t{0});
        continue;
      }
      for (i64 c = 0; c < cols; c++) {
        // Divide (not multiply by 1/scale) so the rounding error stays within scale / 2.
        const float v = std::round(wr[c] / scale);
        qr[c] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
  });
}

// y[m, n] = scales[n] * sum_k x[m, k] * q[n, k] + bias[n]; x [M, K], q [N, K], y [M, N],
// all contiguous row-major; bias may be null.
void matmul_int8(const float* x, const int8_t* q, const float* scales, const float* bias, float* y, i64 M, i64 N,
                 i64 K) {
  if (M <= 0 || N <= 0) return;
  if (M <= kSmallM) {
    // Streaming path: each q row is read from memory once and reused across the M rows of x.
    parallel_for(N, std::max<i64>(1, 16384 / std::max<i64>(K, 1)), [&](i64 lo, i64 hi) {
      for (i64 n = lo; n < hi; n++) {
        const int8_t* qn = q + n * K;
        const float s = scales[n], b = bias ? bias[n] : 0.0f;
        for (i64 m = 0; m < M; m++) y[m * N + n] = s * dot_i8(x + m * K, qn, K) + b;
      }
    });
    return;
  }
  // Dequantize + sgemm path, parallel over (M tile, N tile) pairs.
  const i64 tm = (M + kTileM - 1) / kTileM, tn = (N + kTileN - 1) / kTileN;
  parallel_tasks(tm * tn, [&](i64 task) {
    const i64 m0 = (task / tn) * kTileM, n0 = (task % tn) * kTileN;
    const i64 mb = std::min(kTileM, M - m0), nb = std::min(kTileN, N - n0);
    thread_local std::vector<float> wt;
    wt.resize(static_cast<size_t>(nb * K));
    for (i64 n = 0; n < nb; n++) {
      const int8_t* qn = q + (n0 + n) * K;
      float* wn = wt.data() + n * K;
      const float s = scales[n0 + n];
      for (i64 k = 0; k < K; k++) wn[k] = s * static_cast<float>(qn[k]);
    }
    float* yt = y + m0 * N + n0;
    gemm_f32_serial(false, true, mb, nb, K, 1.0f, x + m0 * K, K, wt.data(), K, 0.0f, yt, N);
    if (bias) {
      for (i64 m = 0; m < mb; m++)
        for (i64 n = 0; n < nb; n++) yt[m * N + n] += bias[n0 + n];
    }
  });
}

}  // namespace KNS

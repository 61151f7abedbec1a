// Int8 weight-only quantization for inference (LLM.int8-style per-channel absmax, without the
// outlier split): a Linear's weight W [N = out, K = in] is stored as int8 q [N, K] with one
// float scale per output row, W ~= scales[n] * q[n, :]. Activations stay float32.
//
// Decode (M = 1) is memory-bound: every weight byte is read once per token, so int8 weights
// move 4x fewer bytes than float32. The small-M path therefore streams each q row once and
// dots it against all M activation rows while it is in L1. For larger M (prefill) the work is
// compute-bound and an FMA loop over int8 would lose to sgemm, so tiles of q are dequantized
// into a per-task float buffer and handed to single-threaded sgemm; the dequantization costs
// N*K per M tile against 2*Mt*N*K FLOPs, i.e. negligible for Mt = 128.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "megalith.h"

namespace KNS {
using namespace mg;

namespace {

// Rows of M at or below this use the streaming path (one pass over q per call).
constexpr i64 kSmallM = 8;
// How far ahead of the group being dotted the streaming path prefetches q, in bytes. The
// hardware prefetcher alone kept a decode-shaped stream (12 layers x 4 projections of GPT-2,
// 85 MB, out of cache) at ~10-11 GB/s; touching each cache line of a group ~8 KiB ahead gave
// 16-20 GB/s (measured on this machine; 2 threads read ~24-27 GB/s).
constexpr i64 kPrefetchBytes = 8192;
// Tile sizes of the dequantize + sgemm path.
constexpr i64 kTileM = 128;
constexpr i64 kTileN = 256;

// Four dot products sum_k x[k] * q_r[k] at once: x is loaded once for four weight rows, and the
// four accumulators are independent FMA chains (a single chain is latency-bound).
#if defined(__AVX512F__) && defined(__AVX512BW__)
// AVX-512: 16 int8 -> 16 int32 (vpmovsxbd) -> 16 float, FMA. GCC's auto-vectorized version of
// the generic loop below ran at ~14-20 GB/s of weights on a 768x3072 decode; this one is
// bound by memory instead.
inline void dot4_i8(const float* __restrict x, const int8_t* __restrict q0, const int8_t* __restrict q1,
                    const int8_t* __restrict q2, const int8_t* __restrict q3, i64 K, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  auto widen = [](const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  };
  i64 k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    a0 = _mm512_fmadd_ps(xv, widen(q0 + k), a0);
    a1 = _mm512_fmadd_ps(xv, widen(q1 + k), a1);
    a2 = _mm512_fmadd_ps(xv, widen(q2 + k), a2);
    a3 = _mm512_fmadd_ps(xv, widen(q3 + k), a3);
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
    auto widen_tail = [m](const int8_t* p) {
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
    };
    a0 = _mm512_fmadd_ps(xv, widen_tail(q0 + k), a0);
    a1 = _mm512_fmadd_ps(xv, widen_tail(q1 + k), a1);
    a2 = _mm512_fmadd_ps(xv, widen_tail(q2 + k), a2);
    a3 = _mm512_fmadd_ps(xv, widen_tail(q3 + k), a3);
  }
  out[0] = _mm512_reduce_add_ps(a0);
  out[1] = _mm512_reduce_add_ps(a1);
  out[2] = _mm512_reduce_add_ps(a2);
  out[3] = _mm512_reduce_add_ps(a3);
}
#else
// Baseline x86-64: a plain reduction per row that GCC vectorizes (-ffast-math allows the
// reassociation).
inline float dot_i8(const float* __restrict x, const int8_t* __restrict q, i64 K) {
  float acc = 0.0f;
  for (i64 k = 0; k < K; k++) acc += x[k] * static_cast<float>(q[k]);
  return acc;
}
inline void dot4_i8(const float* x, const int8_t* q0, const int8_t* q1, const int8_t* q2, const int8_t* q3, i64 K,
                    float* out) {
  out[0] = dot_i8(x, q0, K);
  out[1] = dot_i8(x, q1, K);
  out[2] = dot_i8(x, q2, K);
  out[3] = dot_i8(x, q3, K);
}
#endif

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
    // Rows go in groups of 4 (a group's 4 * K bytes stay in L1 across the M rows); a last
    // partial group repeats its final row, whose extra results are dropped.
    // Groups are contiguous (rows 4g..4g+3 are bytes [4gK, 4gK + 4K)), so each thread streams
    // one contiguous range; the group ahead is prefetched a whole group (4K bytes) at a time,
    // at the first group distance of at least kPrefetchBytes. Prefetches never fault, so running
    // past the end of q is harmless.
    const i64 groups = (N + 3) / 4;
    const i64 ahead = 4 * K * ((kPrefetchBytes + 4 * K - 1) / (4 * K));
    parallel_for(groups, std::max<i64>(1, 4096 / std::max<i64>(K, 1)), [&](i64 lo, i64 hi) {
      for (i64 g = lo; g < hi; g++) {
        const i64 n0 = 4 * g, nb = std::min<i64>(4, N - n0);
        const char* pf = reinterpret_cast<const char*>(q + n0 * K + ahead);
        for (i64 off = 0; off < 4 * K; off += 64) __builtin_prefetch(pf + off, 0, 3);
        const int8_t* qr[4];
        for (i64 r = 0; r < 4; r++) qr[r] = q + (n0 + std::min(r, nb - 1)) * K;
        for (i64 m = 0; m < M; m++) {
          float d[4];
          dot4_i8(x + m * K, qr[0], qr[1], qr[2], qr[3], K, d);
          for (i64 r = 0; r < nb; r++) y[m * N + n0 + r] = scales[n0 + r] * d[r] + (bias ? bias[n0 + r] : 0.0f);
        }
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

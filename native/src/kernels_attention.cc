// Fused scaled-dot-product attention, forward and backward (FlashAttention-2's recomputation
// scheme, blocked for a CPU): q, o are [BH, T, D], k, v are [BH, S, D], all contiguous.
//
// Forward works on blocks of kQBlock query rows: scores for the block against every visible
// key (kQBlock x S floats, thread-local), an exact row softmax, then P @ V. Only the per-row
// log-sum-exp (BH x T floats) is saved for backward; no T x T tensor outlives the kernel.
// Causal masking is top-left aligned like torch's is_causal: query i sees keys j <= i.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "megalith.h"

namespace KNS {
using namespace mg;

static constexpr i64 kQBlock = 64;

void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse, i64 BH, i64 T, i64 S,
                       i64 D, float scale, bool causal) {
  const i64 nqb = (T + kQBlock - 1) / kQBlock;
  parallel_tasks(BH * nqb, [&](i64 task) {
    thread_local std::vector<float> sbuf;
    const i64 bh = task / nqb, i0 = (task % nqb) * kQBlock, i1 = std::min(T, i0 + kQBlock);
    const i64 rows = i1 - i0;
    const i64 kend = causal ? std::min(S, i1) : S;
    if (static_cast<i64>(sbuf.size()) < rows * kend) sbuf.resize(rows * kend);
    float* sc = sbuf.data();
    const float* qb = q + (bh * T + i0) * D;
    const float* kb = k + bh * S * D;
    const float* vb = v + bh * S * D;
    float* ob = o + (bh * T + i0) * D;
    if (kend == 0) {
      for (i64 r = 0; r < rows * D; r++) ob[r] = 0.0f;
      for (i64 r = 0; r < rows; r++) lse[bh * T + i0 + r] = -std::numeric_limits<float>::infinity();
      return;
    }
    gemm_f32_serial(false, true, rows, kend, D, scale, qb, D, kb, D, 0.0f, sc, kend);
    for (i64 r = 0; r < rows; r++) {
      float* p = sc + r * kend;
      const i64 visible = causal ? std::min(kend, i0 + r + 1) : kend;
      float m = -std::numeric_limits<float>::infinity();
      for (i64 j = 0; j < visible; j++) m = p[j] > m ? p[j] : m;
      float s = 0.0f;
      for (i64 j = 0; j < visible; j++) { float e = expf(p[j] - m); p[j] = e; s += e; }
      float inv = 1.0f / s;
      for (i64 j = 0; j < visible; j++) p[j] *= inv;
      for (i64 j = visible; j < kend; j++) p[j] = 0.0f;
      lse[bh * T + i0 + r] = m + logf(s);
    }
    gemm_f32_serial(false, false, rows, D, kend, 1.0f, sc, kend, vb, D, 0.0f, ob, D);
  });
}

void attention_backward(const float* q, const float* k, const float* v, const float* o, const float* go,
                        const float* lse, float* gq, float* gk, float* gv, i64 BH, i64 T, i64 S, i64 D, float scale,
                        bool causal) {
  // One task per (batch, head): dK and dV sum over every query block of that head, so keeping a
  // head on one thread avoids both races and atomics.
  parallel_tasks(BH, [&](i64 bh) {
    thread_local std::vector<float> pbuf, dpbuf, dibuf;
    const float* kb = k + bh * S * D;
    const float* vb = v + bh * S * D;
    float* gkb = gk + bh * S * D;
    float* gvb = gv + bh * S * D;
    for (i64 i = 0; i < S * D; i++) { gkb[i] = 0.0f; gvb[i] = 0.0f; }
    for (i64 i0 = 0; i0 < T; i0 += kQBlock) {
      const i64 i1 = std::min(T, i0 + kQBlock), rows = i1 - i0;
      const i64 kend = causal ? std::min(S, i1) : S;
      const float* qb = q + (bh * T + i0) * D;
      const float* ob = o + (bh * T + i0) * D;
      const float* gob = go + (bh * T + i0) * D;
      float* gqb = gq + (bh * T + i0) * D;
      if (kend == 0) { for (i64 r = 0; r < rows * D; r++) gqb[r] = 0.0f; continue; }
      if (static_cast<i64>(pbuf.size()) < rows * kend) { pbuf.resize(rows * kend); dpbuf.resize(rows * kend); }
      if (static_cast<i64>(dibuf.size()) < rows) dibuf.resize(rows);
      float* P = pbuf.data();
      float* dP = dpbuf.data();
      // P = softmax(scale Q K^T) rebuilt from the saved log-sum-exp.
      gemm_f32_serial(false, true, rows, kend, D, scale, qb, D, kb, D, 0.0f, P, kend);
      for (i64 r = 0; r < rows; r++) {
        float* p = P + r * kend;
        const i64 visible = causal ? std::min(kend, i0 + r + 1) : kend;
        const float l = lse[bh * T + i0 + r];
        for (i64 j = 0; j < visible; j++) p[j] = expf(p[j] - l);
        for (i64 j = visible; j < kend; j++) p[j] = 0.0f;
        float di = 0.0f;
        for (i64 d = 0; d < D; d++) di += gob[r * D + d] * ob[r * D + d];
        dibuf[r] = di;
      }
      // dV += P^T dO ; dP = dO V^T ; dS = P (dP - Di) ; dQ = scale dS K ; dK += scale dS^T Q
      gemm_f32_serial(true, false, kend, D, rows, 1.0f, P, kend, gob, D, 1.0f, gvb, D);
      gemm_f32_serial(false, true, rows, kend, D, 1.0f, gob, D, vb, D, 0.0f, dP, kend);
      for (i64 r = 0; r < rows; r++) {
        float* p = P + r * kend;
        const float* dp = dP + r * kend;
        const float di = dibuf[r];
        for (i64 j = 0; j < kend; j++) p[j] = p[j] * (dp[j] - di);
      }
      gemm_f32_serial(false, false, rows, D, kend, scale, P, kend, kb, D, 0.0f, gqb, D);
      gemm_f32_serial(true, false, kend, D, rows, scale, P, kend, qb, D, 1.0f, gkb, D);
    }
  });
}

}  // namespace KNS

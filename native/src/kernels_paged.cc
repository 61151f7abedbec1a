// Paged attention for serving (vLLM's PagedAttention, on a CPU): the KV cache is one pool of
// fixed-size blocks per layer, laid out [num_slots = num_blocks * block_size, H, D]; each
// sequence owns a block table. A batch is ragged: query token t belongs to sequence seq[t] at
// absolute position pos[t] and attends to that sequence's keys 0..pos[t] (causal).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "megalith.h"

namespace KNS {
using namespace mg;

// k_cache[slot[t]] = k[t], v_cache[slot[t]] = v[t] for each new token (rows of H*D floats).
void kv_cache_write(float* k_cache, float* v_cache, const float* k, const float* v, const int32_t* slots, i64 n,
                    i64 row) {
  parallel_for(n, std::max<i64>(1, 4096 / std::max<i64>(row, 1)), [&](i64 lo, i64 hi) {
    for (i64 t = lo; t < hi; t++) {
      const i64 s = slots[t];
      std::memcpy(k_cache + s * row, k + t * row, row * sizeof(float));
      std::memcpy(v_cache + s * row, v + t * row, row * sizeof(float));
    }
  });
}

void paged_attention(const float* q, const float* k_cache, const float* v_cache, const int32_t* block_tables,
                     i64 max_blocks, i64 block_size, const int32_t* seq, const int32_t* pos, float* out, i64 n, i64 H,
                     i64 D, float scale) {
  parallel_for(n * H, 1, [&](i64 lo, i64 hi) {
    std::vector<float> scores, acc(D);
    for (i64 task = lo; task < hi; task++) {
      const i64 t = task / H, h = task % H;
      const i64 ctx = static_cast<i64>(pos[t]) + 1;
      const int32_t* table = block_tables + static_cast<i64>(seq[t]) * max_blocks;
      const float* qv = q + (t * H + h) * D;
      if (static_cast<i64>(scores.size()) < ctx) scores.resize(ctx);
      float m = -std::numeric_limits<float>::infinity();
      for (i64 j = 0; j < ctx; j++) {
        const i64 slot = static_cast<i64>(table[j / block_size]) * block_size + j % block_size;
        const float* kv = k_cache + (slot * H + h) * D;
        float s = 0.0f;
        for (i64 d = 0; d < D; d++) s += qv[d] * kv[d];
        s *= scale;
        scores[j] = s;
        m = s > m ? s : m;
      }
      float sum = 0.0f;
      for (i64 j = 0; j < ctx; j++) {
        scores[j] = expf(scores[j] - m);
        sum += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (i64 j = 0; j < ctx; j++) {
        const i64 slot = static_cast<i64>(table[j / block_size]) * block_size + j % block_size;
        const float* vv = v_cache + (slot * H + h) * D;
        const float p = scores[j];
        for (i64 d = 0; d < D; d++) acc[d] += p * vv[d];
      }
      float* o = out + (t * H + h) * D;
      const float inv = 1.0f / sum;
      for (i64 d = 0; d < D; d++) o[d] = acc[d] * inv;
    }
  });
}

}  // namespace KNS

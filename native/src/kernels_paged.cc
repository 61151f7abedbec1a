// Paged attention for serving (vLLM's PagedAttention, on a CPU): the KV cache is one pool of
// fixed-size blocks per layer, laid out [num_slots = num_blocks * block_size, H, D]; each
// sequence owns a block table. A batch is ragged: query token t belongs to sequence seq[t] at
// absolute position pos[t] and attends to that sequence's keys 0..pos[t] (causal).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "_dtype.h"
#include "megalith.h"

namespace KNS {
using namespace mg;

// k_cache[slot[t]] = k[t], v_cache[slot[t]] = v[t] for each new token (rows of H*D elements),
// converting the new rows (dtype dt) to the cache's dtype cdt.
void kv_cache_write(void* k_cache, void* v_cache, const void* k, const void* v, const int32_t* slots, i64 n, i64 row,
                    int cdt, int dt) {
  const i64 cs = dtype_size(cdt), ss = dtype_size(dt);
  char* kc = static_cast<char*>(k_cache);
  char* vc = static_cast<char*>(v_cache);
  const char* kp = static_cast<const char*>(k);
  const char* vp = static_cast<const char*>(v);
  parallel_for(n, std::max<i64>(1, 4096 / std::max<i64>(row, 1)), [&](i64 lo, i64 hi) {
    for (i64 t = lo; t < hi; t++) {
      const i64 s = slots[t];
      cast_serial(dt, kp + t * row * ss, cdt, kc + s * row * cs, row);
      cast_serial(dt, vp + t * row * ss, cdt, vc + s * row * cs, row);
    }
  });
}

// Q: the dtype of q and out; C: the cache's. Scores and the weighted sum are float32.
template <typename Q, typename C>
static void paged_attention_t(const Q* q, const C* k_cache, const C* v_cache, const int32_t* block_tables,
                              i64 max_blocks, i64 block_size, const int32_t* seq, const int32_t* pos, Q* out, i64 n,
                              i64 H, i64 D, float scale) {
  parallel_for(n * H, 1, [&](i64 lo, i64 hi) {
    std::vector<float> scores, acc(D), qf(D);
    for (i64 task = lo; task < hi; task++) {
      const i64 t = task / H, h = task % H;
      const i64 ctx = static_cast<i64>(pos[t]) + 1;
      const int32_t* table = block_tables + static_cast<i64>(seq[t]) * max_blocks;
      const Q* qsrc = q + (t * H + h) * D;
      for (i64 d = 0; d < D; d++) qf[d] = load(qsrc[d]);
      const float* qv = qf.data();
      if (static_cast<i64>(scores.size()) < ctx) scores.resize(ctx);
      float m = -std::numeric_limits<float>::infinity();
      for (i64 j = 0; j < ctx; j++) {
        const i64 slot = static_cast<i64>(table[j / block_size]) * block_size + j % block_size;
        const C* kv = k_cache + (slot * H + h) * D;
        float s = 0.0f;
        for (i64 d = 0; d < D; d++) s += qv[d] * load(kv[d]);
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
        const C* vv = v_cache + (slot * H + h) * D;
        const float p = scores[j];
        for (i64 d = 0; d < D; d++) acc[d] += p * load(vv[d]);
      }
      Q* o = out + (t * H + h) * D;
      const float inv = 1.0f / sum;
      for (i64 d = 0; d < D; d++) store(&o[d], acc[d] * inv);
    }
  });
}

void paged_attention(const void* q, const void* k_cache, const void* v_cache, const int32_t* block_tables,
                     i64 max_blocks, i64 block_size, const int32_t* seq, const int32_t* pos, void* out, i64 n, i64 H,
                     i64 D, float scale, int dt, int cdt) {
  with_float_type(dt, [&](auto qt) {
    with_float_type(cdt, [&](auto ct) {
      using Q = decltype(qt);
      using C = decltype(ct);
      paged_attention_t<Q, C>(static_cast<const Q*>(q), static_cast<const C*>(k_cache), static_cast<const C*>(v_cache),
                              block_tables, max_blocks, block_size, seq, pos, static_cast<Q*>(out), n, H, D, scale);
    });
  });
}

}  // namespace KNS

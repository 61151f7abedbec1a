// Row-wise neural-network kernels: softmax, layer/RMS norm, embedding, cross-entropy.
// Each row is independent in forward; weight gradients reduce over rows through per-chunk
// partial sums added in a fixed order (deterministic for a given thread count).
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "_dtype.h"
#include "megalith.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace KNS {
using namespace mg;

static inline i64 row_grain(i64 cols) { return std::max<i64>(1, (1 << 14) / std::max<i64>(cols, 1)); }

// GCC will not vectorize a max reduction without finite-math (NaN ordering), so the AVX-512
// build spells it out; NaNs are not propagated by either path (a NaN row gives a NaN loss anyway).
static inline float row_max(const float* x, i64 n) {
  float m = -std::numeric_limits<float>::infinity();
  i64 i = 0;
#ifdef __AVX512F__
  __m512 acc = _mm512_set1_ps(m);
  for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(acc, _mm512_loadu_ps(x + i));
  m = _mm512_reduce_max_ps(acc);
#endif
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

// Rows in a 16-bit dtype are converted into a float32 row buffer (in cache) on the way in and
// rounded from one on the way out; float32 rows are used in place, so the float32
// instantiations are the plain float kernels.
template <typename T>
static inline const float* row_in(const T* p, i64 n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    (void)n; (void)buf;
    return p;
  } else {
    buf.resize(n);
    for (i64 i = 0; i < n; i++) buf[i] = load(p[i]);
    return buf.data();
  }
}

template <typename T>
static inline float* row_out(T* p, i64 n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    (void)n; (void)buf;
    return p;
  } else {
    buf.resize(n);
    return buf.data();
  }
}

template <typename T>
static inline void row_flush(T* p, i64 n, const std::vector<float>& buf) {
  if constexpr (!std::is_same_v<T, float>) for (i64 i = 0; i < n; i++) store(&p[i], buf[i]);
  else { (void)p; (void)n; (void)buf; }
}

template <typename T, typename O>
static void softmax_forward_t(const T* x, O* y, i64 rows, i64 cols, bool log) {
  parallel_for(rows, row_grain(cols), [&](i64 lo, i64 hi) {
    std::vector<float> bin, bout;
    for (i64 r = lo; r < hi; r++) {
      const float* p = row_in(x + r * cols, cols, bin);
      float* q = row_out(y + r * cols, cols, bout);
      float m = row_max(p, cols);
      if (m == -std::numeric_limits<float>::infinity()) m = 0.0f;  // fully masked row
      float s = 0.0f;
      if (log) {
        for (i64 i = 0; i < cols; i++) s += expf(p[i] - m);
        float ls = m + logf(s);
        for (i64 i = 0; i < cols; i++) q[i] = p[i] - ls;
      } else {
        for (i64 i = 0; i < cols; i++) { float e = expf(p[i] - m); q[i] = e; s += e; }
        float inv = 1.0f / s;
        for (i64 i = 0; i < cols; i++) q[i] *= inv;
      }
      row_flush(y + r * cols, cols, bout);
    }
  });
}

void softmax_forward(const void* x, void* y, i64 rows, i64 cols, bool log, int dt, int odt) {
  with_float_type(dt, [&](auto t) {
    with_float_type(odt, [&](auto o) {
      using T = decltype(t);
      using O = decltype(o);
      softmax_forward_t<T, O>(static_cast<const T*>(x), static_cast<O*>(y), rows, cols, log);
    });
  });
}

// y in Y (the forward's output dtype), gy and gx in G.
template <typename Y, typename G>
static void softmax_backward_t(const Y* y, const G* gy, G* gx, i64 rows, i64 cols, bool log) {
  parallel_for(rows, row_grain(cols), [&](i64 lo, i64 hi) {
    std::vector<float> by, bg, bout;
    for (i64 r = lo; r < hi; r++) {
      const float* py = row_in(y + r * cols, cols, by);
      const float* pg = row_in(gy + r * cols, cols, bg);
      float* q = row_out(gx + r * cols, cols, bout);
      if (log) {
        float s = 0.0f;
        for (i64 i = 0; i < cols; i++) s += pg[i];
        for (i64 i = 0; i < cols; i++) q[i] = pg[i] - expf(py[i]) * s;
      } else {
        float s = 0.0f;
        for (i64 i = 0; i < cols; i++) s += pg[i] * py[i];
        for (i64 i = 0; i < cols; i++) q[i] = py[i] * (pg[i] - s);
      }
      row_flush(gx + r * cols, cols, bout);
    }
  });
}

void softmax_backward(const void* y, const void* gy, void* gx, i64 rows, i64 cols, bool log, int dt, int gdt) {
  with_float_type(dt, [&](auto t) {
    with_float_type(gdt, [&](auto g) {
      using Y = decltype(t);
      using G = decltype(g);
      softmax_backward_t<Y, G>(static_cast<const Y*>(y), static_cast<const G*>(gy), static_cast<G*>(gx), rows, cols, log);
    });
  });
}

// x, y in T; w, b in W (converted once per call when 16-bit); mean, rstd float32.
template <typename T, typename W>
static void layer_norm_forward_t(const T* x, const W* wt, const W* bt, T* y, float* mean, float* rstd, i64 rows,
                                 i64 cols, float eps) {
  std::vector<float> wbuf, bbuf;
  const float* w = wt ? row_in(wt, cols, wbuf) : nullptr;
  const float* b = bt ? row_in(bt, cols, bbuf) : nullptr;
  parallel_for(rows, row_grain(cols), [&](i64 lo, i64 hi) {
    std::vector<float> bin, bout;
    for (i64 r = lo; r < hi; r++) {
      const float* p = row_in(x + r * cols, cols, bin);
      float* q = row_out(y + r * cols, cols, bout);
      float s = 0.0f;
      for (i64 i = 0; i < cols; i++) s += p[i];
      float mu = s / cols;
      float v = 0.0f;
      for (i64 i = 0; i < cols; i++) { float d = p[i] - mu; v += d * d; }
      float rs = 1.0f / sqrtf(v / cols + eps);
      mean[r] = mu;
      rstd[r] = rs;
      if (w && b) for (i64 i = 0; i < cols; i++) q[i] = (p[i] - mu) * rs * w[i] + b[i];
      else if (w) for (i64 i = 0; i < cols; i++) q[i] = (p[i] - mu) * rs * w[i];
      else for (i64 i = 0; i < cols; i++) q[i] = (p[i] - mu) * rs + (b ? b[i] : 0.0f);
      row_flush(y + r * cols, cols, bout);
    }
  });
}

void layer_norm_forward(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, i64 rows,
                        i64 cols, float eps, int dt, int wdt) {
  with_float_type(dt, [&](auto t) {
    with_float_type(wdt, [&](auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      layer_norm_forward_t<T, W>(static_cast<const T*>(x), static_cast<const W*>(w), static_cast<const W*>(b),
                                 static_cast<T*>(y), mean, rstd, rows, cols, eps);
    });
  });
}

// Runs body(row_lo, row_hi, partial) over row chunks, each with its own zeroed partial buffer
// of `width` floats, then writes the sum of the partials, in chunk order, to `dst` (if non-null).
// Weight gradients are written, not accumulated (the kernel table's contract; callers that
// zeroed them first get the same bits).
template <typename F>
static void rows_with_partials(i64 rows, i64 cols, i64 width, float* dst, F body) {
  const i64 nt = num_threads();
  const i64 chunks = std::max<i64>(1, std::min<i64>(nt, rows));
  const i64 per = (rows + chunks - 1) / chunks;
  std::vector<float> partial(static_cast<size_t>(chunks * width), 0.0f);
  parallel_tasks(chunks, [&](i64 c) {
    i64 lo = c * per, hi = std::min(rows, lo + per);
    if (lo < hi) body(lo, hi, partial.data() + c * width);
  });
  if (!dst) return;
  for (i64 i = 0; i < width; i++) dst[i] = 0.0f;
  for (i64 c = 0; c < chunks; c++) {
    const float* p = partial.data() + c * width;
    for (i64 i = 0; i < width; i++) dst[i] += p[i];
  }
  (void)cols;
}

void layer_norm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* gy,
                         float* gx, float* gw, float* gb, i64 rows, i64 cols) {
  // Partial sums laid out as [gw (cols) | gb (cols)], reduced into `acc` then added to gw, gb.
  std::vector<float> acc(static_cast<size_t>(2 * cols), 0.0f);
  rows_with_partials(rows, cols, 2 * cols, acc.data(), [&](i64 lo, i64 hi, float* part) {
    float* pw = part;
    float* pb = part + cols;
    std::vector<float> g(cols), xh(cols);
    for (i64 r = lo; r < hi; r++) {
      const float* px = x + r * cols;
      const float* pg = gy + r * cols;
      float mu = mean[r], rs = rstd[r];
      float sg = 0.0f, sgx = 0.0f;
      for (i64 i = 0; i < cols; i++) {
        float xhat = (px[i] - mu) * rs;
        float gi = pg[i] * (w ? w[i] : 1.0f);
        xh[i] = xhat;
        g[i] = gi;
        sg += gi;
        sgx += gi * xhat;
        pw[i] += pg[i] * xhat;
        pb[i] += pg[i];
      }
      float mg_ = sg / cols, mgx = sgx / cols;
      if (gx) {
        float* q = gx + r * cols;
        for (i64 i = 0; i < cols; i++) q[i] = rs * (g[i] - mg_ - xh[i] * mgx);
      }
    }
  });
  if (gw) for (i64 i = 0; i < cols; i++) gw[i] = acc[i];
  if (gb) for (i64 i = 0; i < cols; i++) gb[i] = acc[cols + i];
}

template <typename T, typename W>
static void rms_norm_forward_t(const T* x, const W* wt, T* y, float* rstd, i64 rows, i64 cols, float eps) {
  std::vector<float> wbuf;
  const float* w = wt ? row_in(wt, cols, wbuf) : nullptr;
  parallel_for(rows, row_grain(cols), [&](i64 lo, i64 hi) {
    std::vector<float> bin, bout;
    for (i64 r = lo; r < hi; r++) {
      const float* p = row_in(x + r * cols, cols, bin);
      float* q = row_out(y + r * cols, cols, bout);
      float s = 0.0f;
      for (i64 i = 0; i < cols; i++) s += p[i] * p[i];
      float rs = 1.0f / sqrtf(s / cols + eps);
      rstd[r] = rs;
      if (w) for (i64 i = 0; i < cols; i++) q[i] = p[i] * rs * w[i];
      else for (i64 i = 0; i < cols; i++) q[i] = p[i] * rs;
      row_flush(y + r * cols, cols, bout);
    }
  });
}

void rms_norm_forward(const void* x, const void* w, void* y, float* rstd, i64 rows, i64 cols, float eps, int dt,
                      int wdt) {
  with_float_type(dt, [&](auto t) {
    with_float_type(wdt, [&](auto wt) {
      using T = decltype(t);
      using W = decltype(wt);
      rms_norm_forward_t<T, W>(static_cast<const T*>(x), static_cast<const W*>(w), static_cast<T*>(y), rstd, rows, cols, eps);
    });
  });
}

void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* gy, float* gx, float* gw,
                       i64 rows, i64 cols) {
  rows_with_partials(rows, cols, cols, gw, [&](i64 lo, i64 hi, float* pw) {
    for (i64 r = lo; r < hi; r++) {
      const float* px = x + r * cols;
      const float* pg = gy + r * cols;
      float rs = rstd[r];
      float sgx = 0.0f;
      for (i64 i = 0; i < cols; i++) {
        float xhat = px[i] * rs;
        float gi = pg[i] * (w ? w[i] : 1.0f);
        sgx += gi * xhat;
        pw[i] += pg[i] * xhat;
      }
      float mgx = sgx / cols;
      if (gx) {
        float* q = gx + r * cols;
        for (i64 i = 0; i < cols; i++) {
          float gi = pg[i] * (w ? w[i] : 1.0f);
          q[i] = rs * (gi - px[i] * rs * mgx);
        }
      }
    }
  });
}

// Returns the position of the first out-of-range index, or -1. Rows are copied as bytes (w and
// out share one dtype of esize bytes), so every dtype is exact.
i64 embedding_forward(const void* w, const int32_t* idx, void* out, i64 n, i64 dim, i64 V, int esize) {
  for (i64 i = 0; i < n; i++)
    if (idx[i] < 0 || idx[i] >= V) return i;
  const size_t row = static_cast<size_t>(dim) * esize;
  parallel_for(n, std::max<i64>(1, (1 << 14) / std::max<i64>(dim, 1)), [&](i64 lo, i64 hi) {
    for (i64 i = lo; i < hi; i++)
      std::memcpy(static_cast<char*>(out) + i * row, static_cast<const char*>(w) + static_cast<i64>(idx[i]) * row, row);
  });
  return -1;
}

// gw[idx[i]] += gout[i]; threads split the embedding dimension so no two write the same float.
// For 16-bit gw each addition rounds (as a bf16 index_add_ in PyTorch does).
template <typename T>
static void embedding_backward_t(const T* gout, const int32_t* idx, T* gw, i64 n, i64 dim) {
  parallel_for(dim, 16, [&](i64 lo, i64 hi) {
    for (i64 i = 0; i < n; i++) {
      const T* src = gout + i * dim;
      T* dst = gw + static_cast<i64>(idx[i]) * dim;
      for (i64 j = lo; j < hi; j++) store(&dst[j], load(dst[j]) + load(src[j]));
    }
  });
}

void embedding_backward(const void* gout, const int32_t* idx, void* gw, i64 n, i64 dim, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_t<T>(static_cast<const T*>(gout), idx, static_cast<T*>(gw), n, dim);
  });
}

// Per-row loss = lse - x[target] (with label smoothing s: (1-s)(lse - x_t) + s(lse - mean x)).
// Rows whose target is ignore_index get loss 0. Returns the first invalid target row, or -1.
template <typename T>
static i64 cross_entropy_forward_t(const T* logits, const int32_t* tgt, float* loss, float* lse, i64 rows, i64 V,
                                   int32_t ignore_index, float smoothing) {
  for (i64 r = 0; r < rows; r++)
    if (tgt[r] != ignore_index && (tgt[r] < 0 || tgt[r] >= V)) return r;
  parallel_for(rows, row_grain(V), [&](i64 lo, i64 hi) {
    std::vector<float> bin;
    for (i64 r = lo; r < hi; r++) {
      if (tgt[r] == ignore_index) { loss[r] = 0.0f; lse[r] = 0.0f; continue; }
      const float* p = row_in(logits + r * V, V, bin);
      float m = row_max(p, V);
      float s = 0.0f;
      for (i64 i = 0; i < V; i++) s += expf(p[i] - m);
      float l = m + logf(s);
      lse[r] = l;
      float nll = l - p[tgt[r]];
      if (smoothing > 0.0f) {
        float sum = 0.0f;
        for (i64 i = 0; i < V; i++) sum += p[i];
        loss[r] = (1.0f - smoothing) * nll + smoothing * (l - sum / V);
      } else {
        loss[r] = nll;
      }
    }
  });
  return -1;
}

i64 cross_entropy_forward(const void* logits, const int32_t* tgt, float* loss, float* lse, i64 rows, i64 V,
                          int32_t ignore_index, float smoothing, int dt) {
  return with_float_type(dt, [&](auto t) {
    using T = decltype(t);
    return cross_entropy_forward_t<T>(static_cast<const T*>(logits), tgt, loss, lse, rows, V, ignore_index, smoothing);
  });
}

// glogits = (softmax - (1-s) onehot - s/V) * scale_r, with scale_r = grow[r] or gscale.
template <typename T>
static void cross_entropy_backward_t(const T* logits, const int32_t* tgt, const float* lse, const float* grow,
                                     float gscale, T* glogits, i64 rows, i64 V, int32_t ignore_index, float smoothing) {
  parallel_for(rows, row_grain(V), [&](i64 lo, i64 hi) {
    std::vector<float> bin, bout;
    for (i64 r = lo; r < hi; r++) {
      float* q = row_out(glogits + r * V, V, bout);
      if (tgt[r] == ignore_index) {
        for (i64 i = 0; i < V; i++) q[i] = 0.0f;
        row_flush(glogits + r * V, V, bout);
        continue;
      }
      const float* p = row_in(logits + r * V, V, bin);
      float sc = grow ? grow[r] : gscale;
      float l = lse[r];
      float off = smoothing / V;
      for (i64 i = 0; i < V; i++) q[i] = (expf(p[i] - l) - off) * sc;
      q[tgt[r]] -= (1.0f - smoothing) * sc;
      row_flush(glogits + r * V, V, bout);
    }
  });
}

void cross_entropy_backward(const void* logits, const int32_t* tgt, const float* lse, const float* grow, float gscale,
                            void* glogits, i64 rows, i64 V, int32_t ignore_index, float smoothing, int dt) {
  with_float_type(dt, [&](auto t) {
    using T = decltype(t);
    cross_entropy_backward_t<T>(static_cast<const T*>(logits), tgt, lse, grow, gscale, static_cast<T*>(glogits), rows, V,
                                ignore_index, smoothing);
  });
}

}  // namespace KNS

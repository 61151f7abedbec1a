// Elementwise, reduction, scan and optimizer kernels. Compiled once per instruction set
// (namespace KNS); plain loops that GCC vectorizes, with expf/tanhf/erff from libmvec.
// Each is a template over the storage type T (float, bf16_t, f16_t: _dtype.h); the public
// function dispatches on the dtype code. Arithmetic is float32 for every T.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "_dtype.h"
#include "_strided.h"
#include "megalith.h"

namespace KNS {
using namespace mg;

void fill(int esize, void* dst, i64 n, double value, int dtype) {
  parallel_for(n, 1 << 16, [&](i64 lo, i64 hi) {
    switch (dtype) {
      case kF32: { float v = static_cast<float>(value); float* p = static_cast<float*>(dst); for (i64 i = lo; i < hi; i++) p[i] = v; break; }
      case kI32: { int32_t v = static_cast<int32_t>(value); int32_t* p = static_cast<int32_t*>(dst); for (i64 i = lo; i < hi; i++) p[i] = v; break; }
      case kI8: case kU8: { std::memset(static_cast<char*>(dst) + lo, static_cast<int>(value), hi - lo); break; }
      default: {  // 16-bit floats: caller passes the bit pattern
        uint16_t v = static_cast<uint16_t>(value); uint16_t* p = static_cast<uint16_t*>(dst);
        for (i64 i = lo; i < hi; i++) p[i] = v;
      }
    }
    (void)esize;
  });
}

template <typename T>
static void copy_typed(const T* src, const i64* sstr, T* dst, const i64* dstr, const i64* shape, int ndim) {
  const i64* strides[2] = {sstr, dstr};
  StridedIter it(2, shape, ndim, strides);
  for_each_row(it, [&](const i64* off, const i64* is, i64 n) {
    const T* s = src + off[0];
    T* d = dst + off[1];
    if (is[0] == 1 && is[1] == 1) std::memcpy(d, s, n * sizeof(T));
    else for (i64 i = 0; i < n; i++) d[i * is[1]] = s[i * is[0]];
  });
}

void copy_strided(int esize, const void* src, const i64* sstr, void* dst, const i64* dstr, const i64* shape, int ndim) {
  switch (esize) {
    case 4: copy_typed(static_cast<const uint32_t*>(src), sstr, static_cast<uint32_t*>(dst), dstr, shape, ndim); break;
    case 2: copy_typed(static_cast<const uint16_t*>(src), sstr, static_cast<uint16_t*>(dst), dstr, shape, ndim); break;
    case 1: copy_typed(static_cast<const uint8_t*>(src), sstr, static_cast<uint8_t*>(dst), dstr, shape, ndim); break;
    case 8: copy_typed(static_cast<const uint64_t*>(src), sstr, static_cast<uint64_t*>(dst), dstr, shape, ndim); break;
  }
}

template <int OP>
static inline float bin(float a, float b) {
  if constexpr (OP == kAdd) return a + b;
  else if constexpr (OP == kSub) return a - b;
  else if constexpr (OP == kMul) return a * b;
  else if constexpr (OP == kDiv) return a / b;
  else if constexpr (OP == kPow) return powf(a, b);
  else if constexpr (OP == kMax) return a > b ? a : b;
  else if constexpr (OP == kMin) return a < b ? a : b;
  else if constexpr (OP == kEq) return a == b ? 1.0f : 0.0f;
  else if constexpr (OP == kNe) return a != b ? 1.0f : 0.0f;
  else if constexpr (OP == kLt) return a < b ? 1.0f : 0.0f;
  else if constexpr (OP == kLe) return a <= b ? 1.0f : 0.0f;
  else if constexpr (OP == kGt) return a > b ? 1.0f : 0.0f;
  else return a >= b ? 1.0f : 0.0f;
}

template <int OP, typename T>
static void binary_t(const T* a, const i64* astr, const T* b, const i64* bstr, T* out, const i64* shape, int ndim) {
  i64 ostr[kMaxDims];
  i64 acc = 1;
  for (int d = ndim - 1; d >= 0; d--) { ostr[d] = acc; acc *= shape[d]; }
  const i64* strides[3] = {astr, bstr, ostr};
  StridedIter it(3, shape, ndim, strides);
  for_each_row(it, [&](const i64* off, const i64* is, i64 n) {
    const T* pa = a + off[0];
    const T* pb = b + off[1];
    T* po = out + off[2];
    if (is[0] == 1 && is[1] == 1) for (i64 i = 0; i < n; i++) store(&po[i], bin<OP>(load(pa[i]), load(pb[i])));
    else if (is[0] == 1 && is[1] == 0) { float vb = load(pb[0]); for (i64 i = 0; i < n; i++) store(&po[i], bin<OP>(load(pa[i]), vb)); }
    else if (is[0] == 0 && is[1] == 1) { float va = load(pa[0]); for (i64 i = 0; i < n; i++) store(&po[i], bin<OP>(va, load(pb[i]))); }
    else for (i64 i = 0; i < n; i++) store(&po[i], bin<OP>(load(pa[i * is[0]]), load(pb[i * is[1]])));
  });
}

void binary(int op, const void* av, const i64* astr, const void* bv, const i64* bstr, void* ov, const i64* shape, int ndim,
            int dt) {
  with_float_type(dt, [&](auto tag) {
  using T = decltype(tag);
  const T* a = static_cast<const T*>(av);
  const T* b = static_cast<const T*>(bv);
  T* out = static_cast<T*>(ov);
  switch (op) {
#define CASE(X) case X: binary_t<X, T>(a, astr, b, bstr, out, shape, ndim); break;
    CASE(kAdd) CASE(kSub) CASE(kMul) CASE(kDiv) CASE(kPow) CASE(kMax) CASE(kMin)
    CASE(kEq) CASE(kNe) CASE(kLt) CASE(kLe) CASE(kGt) CASE(kGe)
#undef CASE
  }
  });
}

static constexpr float kSqrt2OverPi = 0.7978845608028654f;
static constexpr float kInvSqrt2 = 0.7071067811865476f;
static constexpr float kInvSqrt2Pi = 0.3989422804014327f;

template <typename T>
static void unary_t(int op, const T* x, T* y, i64 n, float a, float b) {
  parallel_for(n, 1 << 14, [&](i64 lo, i64 hi) {
    switch (op) {
      case kNeg: for (i64 i = lo; i < hi; i++) store(&y[i], -load(x[i])); break;
      case kExp: for (i64 i = lo; i < hi; i++) store(&y[i], expf(load(x[i]))); break;
      case kLog: for (i64 i = lo; i < hi; i++) store(&y[i], logf(load(x[i]))); break;
      case kSqrt: for (i64 i = lo; i < hi; i++) store(&y[i], sqrtf(load(x[i]))); break;
      case kRsqrt: for (i64 i = lo; i < hi; i++) store(&y[i], 1.0f / sqrtf(load(x[i]))); break;
      case kTanh: for (i64 i = lo; i < hi; i++) store(&y[i], tanhf(load(x[i]))); break;
      case kRelu: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) > 0.0f ? load(x[i]) : 0.0f); break;
      case kGeluTanh:
        // 0.5 x (1 + tanh(u)) == x * sigmoid(2u): no cancellation for large negative x.
        for (i64 i = lo; i < hi; i++) {
          float v = load(x[i]);
          float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
          store(&y[i], v / (1.0f + expf(-2.0f * u)));
        }
        break;
      case kGeluErf: for (i64 i = lo; i < hi; i++) store(&y[i], 0.5f * load(x[i]) * (1.0f + erff(load(x[i]) * kInvSqrt2))); break;
      case kSilu: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) / (1.0f + expf(-load(x[i])))); break;
      case kSigmoid: for (i64 i = lo; i < hi; i++) store(&y[i], 1.0f / (1.0f + expf(-load(x[i])))); break;
      case kAbs: for (i64 i = lo; i < hi; i++) store(&y[i], fabsf(load(x[i]))); break;
      case kAddScalar: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) + a); break;
      case kMulScalar: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) * a); break;
      case kPowScalar:
        if (a == 2.0f) for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) * load(x[i]));
        else if (a == 0.5f) for (i64 i = lo; i < hi; i++) store(&y[i], sqrtf(load(x[i])));
        else for (i64 i = lo; i < hi; i++) store(&y[i], powf(load(x[i]), a));
        break;
      case kRsubScalar: for (i64 i = lo; i < hi; i++) store(&y[i], a - load(x[i])); break;
      case kRdivScalar: for (i64 i = lo; i < hi; i++) store(&y[i], a / load(x[i])); break;
      case kClamp: for (i64 i = lo; i < hi; i++) { float v = load(x[i]); v = v < a ? a : v; store(&y[i], v > b ? b : v); } break;
      case kSquare: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) * load(x[i])); break;
      case kSign: for (i64 i = lo; i < hi; i++) store(&y[i], load(x[i]) > 0.0f ? 1.0f : (load(x[i]) < 0.0f ? -1.0f : 0.0f)); break;
      case kErf: for (i64 i = lo; i < hi; i++) store(&y[i], erff(load(x[i]))); break;
      case kReciprocal: for (i64 i = lo; i < hi; i++) store(&y[i], 1.0f / load(x[i])); break;
      case kSin: for (i64 i = lo; i < hi; i++) store(&y[i], sinf(load(x[i]))); break;
      case kCos: for (i64 i = lo; i < hi; i++) store(&y[i], cosf(load(x[i]))); break;
    }
  });
}

void unary(int op, const void* x, void* y, i64 n, float a, float b, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    unary_t<T>(op, static_cast<const T*>(x), static_cast<T*>(y), n, a, b);
  });
}

// gx = gy * f'(x). y (the forward output) is passed for ops whose derivative is cheapest from it.
template <typename T>
static void unary_backward_t(int op, const T* x, const T* y, const T* gy, T* gx, i64 n, float a, float b) {
  parallel_for(n, 1 << 14, [&](i64 lo, i64 hi) {
    switch (op) {
      case kExp: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * load(y[i])); break;
      case kLog: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) / load(x[i])); break;
      case kSqrt: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * 0.5f / load(y[i])); break;
      case kRsqrt: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * -0.5f * load(y[i]) * load(y[i]) * load(y[i])); break;
      case kTanh: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * (1.0f - load(y[i]) * load(y[i]))); break;
      case kRelu: for (i64 i = lo; i < hi; i++) store(&gx[i], load(x[i]) > 0.0f ? load(gy[i]) : 0.0f); break;
      case kGeluTanh:
        for (i64 i = lo; i < hi; i++) {
          float v = load(x[i]);
          float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
          float s = 1.0f / (1.0f + expf(-2.0f * u));  // = 0.5 (1 + tanh u)
          float t = 2.0f * s - 1.0f;
          float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * v * v);
          store(&gx[i], load(gy[i]) * (s + 0.5f * v * (1.0f - t * t) * du));
        }
        break;
      case kGeluErf:
        for (i64 i = lo; i < hi; i++) {
          float v = load(x[i]);
          float cdf = 0.5f * (1.0f + erff(v * kInvSqrt2));
          float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
          store(&gx[i], load(gy[i]) * (cdf + v * pdf));
        }
        break;
      case kSilu:
        for (i64 i = lo; i < hi; i++) {
          float s = 1.0f / (1.0f + expf(-load(x[i])));
          store(&gx[i], load(gy[i]) * s * (1.0f + load(x[i]) * (1.0f - s)));
        }
        break;
      case kSigmoid: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * load(y[i]) * (1.0f - load(y[i]))); break;
      case kAbs: for (i64 i = lo; i < hi; i++) store(&gx[i], load(x[i]) > 0.0f ? load(gy[i]) : (load(x[i]) < 0.0f ? -load(gy[i]) : 0.0f)); break;
      case kPowScalar: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * a * powf(load(x[i]), a - 1.0f)); break;
      case kClamp: for (i64 i = lo; i < hi; i++) store(&gx[i], (load(x[i]) >= a && load(x[i]) <= b) ? load(gy[i]) : 0.0f); break;
      case kSquare: for (i64 i = lo; i < hi; i++) store(&gx[i], 2.0f * load(x[i]) * load(gy[i])); break;
      case kErf: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * 1.1283791670955126f * expf(-load(x[i]) * load(x[i]))); break;
      case kReciprocal: for (i64 i = lo; i < hi; i++) store(&gx[i], -load(gy[i]) * load(y[i]) * load(y[i])); break;
      case kRdivScalar: for (i64 i = lo; i < hi; i++) store(&gx[i], -load(gy[i]) * a / (load(x[i]) * load(x[i]))); break;
      case kSin: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]) * cosf(load(x[i]))); break;
      case kCos: for (i64 i = lo; i < hi; i++) store(&gx[i], -load(gy[i]) * sinf(load(x[i]))); break;
      default: for (i64 i = lo; i < hi; i++) store(&gx[i], load(gy[i]));
    }
  });
}

void unary_backward(int op, const void* x, const void* y, const void* gy, void* gx, i64 n, float a, float b, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    unary_backward_t<T>(op, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(gy),
                        static_cast<T*>(gx), n, a, b);
  });
}

// a, b and out share one storage type, so the selected element is copied without conversion.
template <typename T>
static void where_t(const float* c, const i64* cstr, const T* a, const i64* astr, const T* b, const i64* bstr,
                    T* out, const i64* shape, int ndim) {
  i64 ostr[kMaxDims];
  i64 acc = 1;
  for (int d = ndim - 1; d >= 0; d--) { ostr[d] = acc; acc *= shape[d]; }
  const i64* strides[4] = {cstr, astr, bstr, ostr};
  StridedIter it(4, shape, ndim, strides);
  for_each_row(it, [&](const i64* off, const i64* is, i64 n) {
    const float* pc = c + off[0];
    const T* pa = a + off[1];
    const T* pb = b + off[2];
    T* po = out + off[3];
    for (i64 i = 0; i < n; i++) po[i] = pc[i * is[0]] != 0.0f ? pa[i * is[1]] : pb[i * is[2]];
  });
}

void where(const float* c, const i64* cstr, const void* a, const i64* astr, const void* b, const i64* bstr, void* out,
           const i64* shape, int ndim, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    where_t<T>(c, cstr, static_cast<const T*>(a), astr, static_cast<const T*>(b), bstr, static_cast<T*>(out), shape, ndim);
  });
}

// Reduces the middle axis of x viewed as [A, R, B]; out is [A, B]. Accumulates in float32
// (in a local chunk for B > 1), stores once in O.
template <typename T, typename O>
static void reduce_t(int op, const T* x, O* out, i64 A, i64 R, i64 B, float scale) {
  const float init = op == kMaxR ? -std::numeric_limits<float>::infinity()
                   : op == kMinR ? std::numeric_limits<float>::infinity() : 0.0f;
  if (B == 1) {
    parallel_for(A, std::max<i64>(1, (1 << 15) / std::max<i64>(R, 1)), [&](i64 lo, i64 hi) {
      for (i64 a = lo; a < hi; a++) {
        const T* p = x + a * R;
        float acc = init;
        switch (op) {
          case kSum: for (i64 r = 0; r < R; r++) acc += load(p[r]); break;
          case kSumSq: for (i64 r = 0; r < R; r++) { float v = load(p[r]); acc += v * v; } break;
          case kMaxR: for (i64 r = 0; r < R; r++) { float v = load(p[r]); acc = v > acc ? v : acc; } break;
          case kMinR: for (i64 r = 0; r < R; r++) { float v = load(p[r]); acc = v < acc ? v : acc; } break;
        }
        store(&out[a], acc * scale);
      }
    });
    return;
  }
  constexpr i64 bchunk = 1024;
  const i64 nb = (B + bchunk - 1) / bchunk;
  parallel_for(A * nb, 1, [&](i64 lo, i64 hi) {
    float o[bchunk];
    for (i64 t = lo; t < hi; t++) {
      i64 a = t / nb, b0 = (t % nb) * bchunk, w = std::min(B, b0 + bchunk) - b0;
      for (i64 b = 0; b < w; b++) o[b] = init;
      for (i64 r = 0; r < R; r++) {
        const T* p = x + (a * R + r) * B + b0;
        switch (op) {
          case kSum: for (i64 b = 0; b < w; b++) o[b] += load(p[b]); break;
          case kSumSq: for (i64 b = 0; b < w; b++) { float v = load(p[b]); o[b] += v * v; } break;
          case kMaxR: for (i64 b = 0; b < w; b++) { float v = load(p[b]); o[b] = v > o[b] ? v : o[b]; } break;
          case kMinR: for (i64 b = 0; b < w; b++) { float v = load(p[b]); o[b] = v < o[b] ? v : o[b]; } break;
        }
      }
      O* dst = out + a * B + b0;
      if (scale != 1.0f) for (i64 b = 0; b < w; b++) store(&dst[b], o[b] * scale);
      else for (i64 b = 0; b < w; b++) store(&dst[b], o[b]);
    }
  });
}

void reduce(int op, const void* x, void* out, i64 A, i64 R, i64 B, float scale, int dt, int odt) {
  with_float_type(dt, [&](auto t) {
    with_float_type(odt, [&](auto o) {
      using T = decltype(t);
      using O = decltype(o);
      reduce_t<T, O>(op, static_cast<const T*>(x), static_cast<O*>(out), A, R, B, scale);
    });
  });
}

// max/min values and their first index along the middle axis of [A, R, B].
template <typename T>
static void arg_reduce_t(int op, const T* x, T* vals, int32_t* idx, i64 A, i64 R, i64 B) {
  parallel_for(A * B, std::max<i64>(1, 4096 / std::max<i64>(R, 1)), [&](i64 lo, i64 hi) {
    for (i64 t = lo; t < hi; t++) {
      i64 a = t / B, b = t % B;
      const T* p = x + a * R * B + b;
      float best = load(p[0]);
      int32_t bi = 0;
      for (i64 r = 1; r < R; r++) {
        float v = load(p[r * B]);
        bool better = op == kArgMax ? (v > best || (std::isnan(v) && !std::isnan(best)))
                                    : (v < best || (std::isnan(v) && !std::isnan(best)));
        if (better) { best = v; bi = static_cast<int32_t>(r); }
      }
      if (vals) vals[t] = p[static_cast<i64>(bi) * B];  // the element itself, no rounding
      idx[t] = bi;
    }
  });
}

void arg_reduce(int op, const void* x, void* vals, int32_t* idx, i64 A, i64 R, i64 B, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    arg_reduce_t<T>(op, static_cast<const T*>(x), static_cast<T*>(vals), idx, A, R, B);
  });
}

template <typename T>
static void cumsum_t(const T* x, T* y, i64 A, i64 R, i64 B, bool reverse) {
  parallel_for(A, 1, [&](i64 lo, i64 hi) {
    std::vector<double> acc(B);
    for (i64 a = lo; a < hi; a++) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (i64 rr = 0; rr < R; rr++) {
        i64 r = reverse ? R - 1 - rr : rr;
        const T* p = x + (a * R + r) * B;
        T* q = y + (a * R + r) * B;
        for (i64 b = 0; b < B; b++) { acc[b] += load(p[b]); store(&q[b], static_cast<float>(acc[b])); }
      }
    }
  });
}

void cumsum(const void* x, void* y, i64 A, i64 R, i64 B, bool reverse, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    cumsum_t<T>(static_cast<const T*>(x), static_cast<T*>(y), A, R, B, reverse);
  });
}

template <typename T>
static void topk_t(const T* x, T* vals, int32_t* idx, i64 rows, i64 cols, i64 k, bool largest) {
  parallel_for(rows, 1, [&](i64 lo, i64 hi) {
    std::vector<int32_t> order(cols);
    std::vector<float> row(std::is_same_v<T, float> ? 0 : cols);
    for (i64 r = lo; r < hi; r++) {
      const T* src = x + r * cols;
      const float* p;
      if constexpr (std::is_same_v<T, float>) p = src;
      else { for (i64 i = 0; i < cols; i++) row[i] = load(src[i]); p = row.data(); }
      std::iota(order.begin(), order.end(), 0);
      auto cmp = [&](int32_t i, int32_t j) {
        if (p[i] != p[j]) return largest ? p[i] > p[j] : p[i] < p[j];
        return i < j;
      };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), cmp);
      for (i64 j = 0; j < k; j++) { vals[r * k + j] = src[order[j]]; idx[r * k + j] = order[j]; }
    }
  });
}

void topk(const void* x, void* vals, int32_t* idx, i64 rows, i64 cols, i64 k, bool largest, int dt) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    topk_t<T>(static_cast<const T*>(x), static_cast<T*>(vals), idx, rows, cols, k, largest);
  });
}

// Fused AdamW, the same arithmetic as torch.optim.AdamW (decoupled weight decay):
//   p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)      with bc = 1 - beta^step
// g is multiplied by gscale first (gradient clipping / accumulation scaling without a pass).
template <typename P, typename G>
static void adamw_t(P* p, const G* g, float* m, float* v, i64 n, float lr, float b1, float b2, float eps,
                    float wd, float bc1, float bc2, float gscale) {
  const float step = lr / bc1, bc2s = sqrtf(bc2), decay = 1.0f - lr * wd;
  parallel_for(n, 1 << 14, [&](i64 lo, i64 hi) {
    for (i64 i = lo; i < hi; i++) {
      float gi = load(g[i]) * gscale;
      float mi = b1 * m[i] + (1.0f - b1) * gi;
      float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      store(&p[i], load(p[i]) * decay - step * mi / (sqrtf(vi) / bc2s + eps));
    }
  });
}

// p in dt (16-bit parameters update in float32 and round once per step), g in gdt.
void adamw(void* p, const void* g, float* m, float* v, i64 n, float lr, float b1, float b2, float eps, float wd,
           float bc1, float bc2, float gscale, int dt, int gdt) {
  with_float_type(dt, [&](auto pt) {
    with_float_type(gdt, [&](auto gt) {
      using P = decltype(pt);
      using G = decltype(gt);
      adamw_t<P, G>(static_cast<P*>(p), static_cast<const G*>(g), m, v, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
    });
  });
}

}  // namespace KNS

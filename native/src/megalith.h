// Megalith native core: shared declarations.
//
// The core knows buffers and kernels, never autograd or models. Every kernel takes raw
// pointers plus sizes; shapes, dtypes and policy live in TypeScript. Kernels that exist in an
// AVX-512 and a generic build are declared once per namespace (KNS = avx512 | generic) and
// chosen at run time by the addon.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace mg {

using i64 = int64_t;
constexpr int kMaxDimsPublic = 12;  // most dimensions a strided kernel accepts

// ---- thread pool (pool.cc) -------------------------------------------------------------------
// One shared pool for every kernel (OpenBLAS itself runs single-threaded inside pool tasks),
// so no two thread pools ever spin against each other.
int num_threads();
void set_num_threads(int n);
// Runs fn(begin, end) over [0, n) in chunks of at least `grain`, on all pool threads.
void parallel_for(i64 n, i64 grain, const std::function<void(i64, i64)>& fn);
// Runs fn(task) for task in [0, ntasks), tasks claimed dynamically (for uneven work).
void parallel_tasks(i64 ntasks, const std::function<void(i64)>& fn);

// ---- memory (memory.cc) ----------------------------------------------------------------------
enum Category { kOther = 0, kParams = 1, kGrads = 2, kOptimizer = 3, kActivations = 4, kKVCache = 5, kNumCategories = 6 };
void* mem_alloc(size_t nbytes, int category);
void mem_free(void* p);
// Moves a live block to another category (an activation buffer that becomes a gradient).
void mem_set_category(void* p, int category);
struct MemStats {
  i64 live[kNumCategories];
  i64 peak[kNumCategories];
  i64 live_total, peak_total, cached, allocs, cache_hits;
};
MemStats mem_stats();
void mem_reset_peak();
void mem_empty_cache();

// ---- gemm (gemm.cc) -------------------------------------------------------------------------
// Row-major batched C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b], strides in elements.
void gemm_f32(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda, i64 sa,
              const float* B, i64 ldb, i64 sb, float beta, float* C, i64 ldc, i64 sc, i64 batch);
// The same call on one thread (used inside other kernels' pool tasks).
void gemm_f32_serial(bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const float* A, i64 lda,
                     const float* B, i64 ldb, float beta, float* C, i64 ldc);

// ---- random (random.cc) ---------------------------------------------------------------------
// Counter-based Philox4x32-10: value i of a stream depends only on (seed, offset + i).
enum RandomKind { kUniform = 0, kNormal = 1 };
void random_f32(int kind, uint64_t seed, uint64_t offset, float* out, i64 n, float a, float b);
// Dropout: y = x * keep / (1 - p), keep drawn from (seed, offset + i); regenerated in backward.
void dropout_f32(uint64_t seed, uint64_t offset, float p, const float* x, float* y, i64 n);

// ---- casts (cast.cc) ------------------------------------------------------------------------
enum DType { kF32 = 0, kBF16 = 1, kI32 = 2, kI8 = 3, kU8 = 4, kF16 = 5 };
int dtype_size(int dt);
void cast(int src_dt, const void* src, int dst_dt, void* dst, i64 n);

}  // namespace mg

// ---- kernels compiled per instruction set ---------------------------------------------------
#define MG_DECLARE_KERNELS(NS)                                                                     \
  namespace NS {                                                                                   \
  using mg::i64;                                                                                   \
  void fill(int esize, void* dst, i64 n, double value, int dtype);                                  \
  void copy_strided(int esize, const void* src, const i64* sstr, void* dst, const i64* dstr,       \
                    const i64* shape, int ndim);                                                   \
  void binary(int op, const float* a, const i64* astr, const float* b, const i64* bstr, float* out, \
              const i64* shape, int ndim);                                                         \
  void unary(int op, const float* x, float* y, i64 n, float a, float b);                            \
  void unary_backward(int op, const float* x, const float* y, const float* gy, float* gx, i64 n,    \
                      float a, float b);                                                           \
  void where(const float* c, const i64* cstr, const float* a, const i64* astr, const float* b,      \
             const i64* bstr, float* out, const i64* shape, int ndim);                             \
  void reduce(int op, const float* x, float* out, i64 A, i64 R, i64 B, float scale);                \
  void arg_reduce(int op, const float* x, float* vals, int32_t* idx, i64 A, i64 R, i64 B);          \
  void cumsum(const float* x, float* y, i64 A, i64 R, i64 B, bool reverse);                         \
  void softmax_forward(const float* x, float* y, i64 rows, i64 cols, bool log);                     \
  void softmax_backward(const float* y, const float* gy, float* gx, i64 rows, i64 cols, bool log);  \
  void layer_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean,   \
                          float* rstd, i64 rows, i64 cols, float eps);                             \
  void layer_norm_backward(const float* x, const float* w, const float* mean, const float* rstd,   \
                           const float* gy, float* gx, float* gw, float* gb, i64 rows, i64 cols);  \
  void rms_norm_forward(const float* x, const float* w, float* y, float* rstd, i64 rows, i64 cols, \
                        float eps);                                                                \
  void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* gy,       \
                         float* gx, float* gw, i64 rows, i64 cols);                                \
  i64 embedding_forward(const float* w, const int32_t* idx, float* out, i64 n, i64 dim, i64 V);     \
  void embedding_backward(const float* gout, const int32_t* idx, float* gw, i64 n, i64 dim);        \
  i64 cross_entropy_forward(const float* logits, const int32_t* tgt, float* loss, float* lse,       \
                            i64 rows, i64 V, int32_t ignore_index, float smoothing);                \
  void cross_entropy_backward(const float* logits, const int32_t* tgt, const float* lse,            \
                              const float* grow, float gscale, float* glogits, i64 rows, i64 V,    \
                              int32_t ignore_index, float smoothing);                              \
  void adamw(float* p, const float* g, float* m, float* v, i64 n, float lr, float b1, float b2,     \
             float eps, float wd, float bc1, float bc2, float gscale);                              \
  void topk(const float* x, float* vals, int32_t* idx, i64 rows, i64 cols, i64 k, bool largest);    \
  void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,     \
                         i64 BH, i64 T, i64 S, i64 D, float scale, bool causal);                   \
  void attention_backward(const float* q, const float* k, const float* v, const float* o,          \
                          const float* go, const float* lse, float* gq, float* gk, float* gv,      \
                          i64 BH, i64 T, i64 S, i64 D, float scale, bool causal);                  \
  void kv_cache_write(float* k_cache, float* v_cache, const float* k, const float* v,              \
                      const int32_t* slots, i64 n, i64 row);                                       \
  void paged_attention(const float* q, const float* k_cache, const float* v_cache,                 \
                       const int32_t* block_tables, i64 max_blocks, i64 block_size,                \
                       const int32_t* seq, const int32_t* pos, float* out, i64 n, i64 H, i64 D,    \
                       float scale);                                                               \
  void quant_int8_rowwise(const float* w, int8_t* q, float* scales, i64 rows, i64 cols);            \
  void matmul_int8(const float* x, const int8_t* q, const float* scales, const float* bias,        \
                   float* y, i64 M, i64 N, i64 K);                                                 \
  }

MG_DECLARE_KERNELS(avx512)
MG_DECLARE_KERNELS(generic)

// Op codes shared with src/backend/native/ops.ts (keep in sync: that file is the only user).
namespace mg {
enum BinaryOp { kAdd = 0, kSub, kMul, kDiv, kPow, kMax, kMin, kEq, kNe, kLt, kLe, kGt, kGe };
enum UnaryOp {
  kNeg = 0, kExp, kLog, kSqrt, kRsqrt, kTanh, kRelu, kGeluTanh, kGeluErf, kSilu, kSigmoid, kAbs,
  kAddScalar, kMulScalar, kPowScalar, kRsubScalar, kRdivScalar, kClamp, kSquare, kSign, kErf,
  kReciprocal, kSin, kCos
};
enum ReduceOp { kSum = 0, kMaxR, kMinR, kSumSq };
enum ArgReduceOp { kArgMax = 0, kArgMin };
}  // namespace mg

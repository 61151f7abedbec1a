// Megalith native core: shared declarations.
//
// The core knows buffers and kernels, never autograd or models. Every kernel takes raw
// pointers plus sizes; shapes, dtypes and policy live in TypeScript. Kernels that exist in an
// AVX-512 and a generic build are declared once per namespace (KNS = avx512 | generic) and
// chosen at run time (api.cc). The op and dtype enums and the mg::api declarations are
// generated from src/backend/kernels.ts into _kernels.gen.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace mg {

using i64 = int64_t;
constexpr int kMaxDimsPublic = 12;  // most dimensions a strided kernel accepts

// A small array of dimensions or strides, as unpacked from a JS array ("dims" arguments).
struct Dims {
  i64 v[kMaxDimsPublic] = {};
  int n = 0;
  const i64* data() const { return v; }
  int size() const { return n; }
};

}  // namespace mg

#define MG_GEN_ENUMS
#define MG_GEN_API
#include "_kernels.gen.h"

namespace mg {

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
// The same call with A, B in a 16-bit float dtype (dt) and C in odt (dt or float32): oneDNN's
// bf16 matmul where available, else float32 panels + sgemm (gemm_16bit.cc).
void gemm_16(int dt, int odt, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const void* A, i64 lda,
             i64 sa, const void* B, i64 ldb, i64 sb, float beta, void* C, i64 ldc, i64 sc, i64 batch);
// "onednn" when bf16 GEMM runs on oneDNN on this machine, else "fallback".
const char* gemm_bf16_backend();

// ---- random (random.cc) ---------------------------------------------------------------------
// Counter-based Philox4x32-10: value i of a stream depends only on (seed, offset + i).
void random_f32(int kind, uint64_t seed, uint64_t offset, float* out, i64 n, float a, float b);
// Dropout: y = x * keep / (1 - p), keep drawn from (seed, offset + i); regenerated in backward.
void dropout_f32(uint64_t seed, uint64_t offset, float p, const float* x, float* y, i64 n);

// ---- casts (cast.cc) ------------------------------------------------------------------------
int dtype_size(int dt);
void cast(int src_dt, const void* src, int dst_dt, void* dst, i64 n);
// The same on the calling thread (inside other kernels' pool tasks).
void cast_serial(int src_dt, const void* src, int dst_dt, void* dst, i64 n);

}  // namespace mg

// ---- kernels compiled per instruction set ---------------------------------------------------
// Kernels whose arguments are `void*` plus dtype codes are templates over the storage type
// inside (see _dtype.h); the rest compute in float32 (api.cc stages 16-bit operands for them).
#define MG_DECLARE_KERNELS(NS)                                                                     \
  namespace NS {                                                                                   \
  using mg::i64;                                                                                   \
  void fill(int esize, void* dst, i64 n, double value, int dtype);                                  \
  void copy_strided(int esize, const void* src, const i64* sstr, void* dst, const i64* dstr,       \
                    const i64* shape, int ndim);                                                   \
  void binary(int op, const void* a, const i64* astr, const void* b, const i64* bstr, void* out,   \
              const i64* shape, int ndim, int dt);                                                 \
  void unary(int op, const void* x, void* y, i64 n, float a, float b, int dt);                      \
  void unary_backward(int op, const void* x, const void* y, const void* gy, void* gx, i64 n,       \
                      float a, float b, int dt);                                                   \
  void where(const float* c, const i64* cstr, const void* a, const i64* astr, const void* b,        \
             const i64* bstr, void* out, const i64* shape, int ndim, int dt);                      \
  void reduce(int op, const void* x, void* out, i64 A, i64 R, i64 B, float scale, int dt, int odt); \
  void arg_reduce(int op, const void* x, void* vals, int32_t* idx, i64 A, i64 R, i64 B, int dt);    \
  void cumsum(const void* x, void* y, i64 A, i64 R, i64 B, bool reverse, int dt);                   \
  void softmax_forward(const void* x, void* y, i64 rows, i64 cols, bool log, int dt, int odt);     \
  void softmax_backward(const void* y, const void* gy, void* gx, i64 rows, i64 cols, bool log,      \
                        int dt, int gdt);                                                          \
  void layer_norm_forward(const void* x, const void* w, const void* b, void* y, float* mean,       \
                          float* rstd, i64 rows, i64 cols, float eps, int dt, int wdt);            \
  void layer_norm_backward(const float* x, const float* w, const float* mean, const float* rstd,   \
                           const float* gy, float* gx, float* gw, float* gb, i64 rows, i64 cols);  \
  void rms_norm_forward(const void* x, const void* w, void* y, float* rstd, i64 rows, i64 cols,   \
                        float eps, int dt, int wdt);                                               \
  void rms_norm_backward(const float* x, const float* w, const float* rstd, const float* gy,       \
                         float* gx, float* gw, i64 rows, i64 cols);                                \
  i64 embedding_forward(const void* w, const int32_t* idx, void* out, i64 n, i64 dim, i64 V,        \
                        int esize);                                                                \
  void embedding_backward(const void* gout, const int32_t* idx, void* gw, i64 n, i64 dim, int dt);  \
  i64 cross_entropy_forward(const void* logits, const int32_t* tgt, float* loss, float* lse,        \
                            i64 rows, i64 V, int32_t ignore_index, float smoothing, int dt);        \
  void cross_entropy_backward(const void* logits, const int32_t* tgt, const float* lse,             \
                              const float* grow, float gscale, void* glogits, i64 rows, i64 V,     \
                              int32_t ignore_index, float smoothing, int dt);                      \
  void adamw(void* p, const void* g, float* m, float* v, i64 n, float lr, float b1, float b2,       \
             float eps, float wd, float bc1, float bc2, float gscale, int dt, int gdt);             \
  void topk(const void* x, void* vals, int32_t* idx, i64 rows, i64 cols, i64 k, bool largest,       \
            int dt);                                                                               \
  void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,     \
                         i64 BH, i64 T, i64 S, i64 D, float scale, bool causal);                   \
  void attention_backward(const float* q, const float* k, const float* v, const float* o,          \
                          const float* go, const float* lse, float* gq, float* gk, float* gv,      \
                          i64 BH, i64 T, i64 S, i64 D, float scale, bool causal);                  \
  void kv_cache_write(void* k_cache, void* v_cache, const void* k, const void* v,                  \
                      const int32_t* slots, i64 n, i64 row, int cdt, int dt);                      \
  void paged_attention(const void* q, const void* k_cache, const void* v_cache,                    \
                       const int32_t* block_tables, i64 max_blocks, i64 block_size,                \
                       const int32_t* seq, const int32_t* pos, void* out, i64 n, i64 H, i64 D,     \
                       float scale, int dt, int cdt);                                              \
  void quant_int8_rowwise(const float* w, int8_t* q, float* scales, i64 rows, i64 cols);            \
  void matmul_int8(const float* x, const int8_t* q, const float* scales, const float* bias,        \
                   float* y, i64 M, i64 N, i64 K);                                                 \
  }

// The x86 sets exist only in x86-64 builds (binding.gyp); every build has generic.
#if defined(__x86_64__)
MG_DECLARE_KERNELS(avx512)
MG_DECLARE_KERNELS(avx2)
#endif
MG_DECLARE_KERNELS(generic)

// ---- kernel set (api.cc) --------------------------------------------------------------------
namespace mg {
enum KernelSet { kSetGeneric = 0, kSetAvx2 = 1, kSetAvx512 = 2 };
const char* kernel_set_name(int set);
int kernel_set();
// Whether this CPU (and this build) can run the set.
bool kernel_set_supported(int set);
// Selects a set by name; returns "" or an error message (unknown name, unsupported CPU).
std::string select_kernel_set(const std::string& name);
// Picks the best supported set, or the one MEGALITH_KERNELS names; returns "" or an error.
std::string init_kernel_set();
// CPU features (false off x86-64).
bool cpu_has(const char* feature);
}  // namespace mg


// The bodies of mg::api::* (declared in _kernels.gen.h from src/backend/kernels.ts): pick the
// kernel set, check the dtype arguments against what is implemented, and call the kernel.
//
// float32 calls go straight to the kernels. 16-bit float calls (bfloat16, float16) take one of
// two routes, named at each kernel:
//  - native: the kernel is a template over the storage type (loads convert to float32, stores
//    round to nearest even) - elementwise, where, reductions, cumsum, topk, softmax,
//    cross-entropy, AdamW, embedding, KV-cache write, paged attention; bf16 GEMM goes to
//    oneDNN (gemm_16bit.cc);
//  - staged: the 16-bit operands are converted to float32 scratch (Staged below), the float32
//    kernel runs, and the outputs are rounded back. Same numbers as a native template (all
//    accumulation is float32 either way), at the price of the extra passes and scratch memory.
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "_dtype.h"
#include "megalith.h"

namespace mg {
namespace {

#if defined(__x86_64__)
int g_set = kSetGeneric;
#define KERNEL(fn) (g_set == kSetAvx512 ? avx512::fn : g_set == kSetAvx2 ? avx2::fn : generic::fn)
#else
constexpr int g_set = kSetGeneric;
#define KERNEL(fn) (generic::fn)
#endif

std::string dtype_name(int dt) {
  if (dt >= 0 && dt < kNumDTypeCodes && kDTypeNames[dt]) return kDTypeNames[dt];
  return "code " + std::to_string(dt);
}

constexpr unsigned kFloatTypes = (1u << kF32) | (1u << kBF16) | (1u << kF16);
constexpr unsigned kF32Only = 1u << kF32;

// Throws "native <kernel>: <arg> bfloat16 is not implemented (implemented: float32, ...)".
void require(const char* kernel, const char* arg, int dt, unsigned allowed) {
  if (dt >= 0 && dt < 32 && (allowed >> dt & 1u)) return;
  std::string have;
  for (int c = 0; c < kNumDTypeCodes; c++)
    if (allowed >> c & 1u) have += (have.empty() ? "" : ", ") + dtype_name(c);
  throw std::invalid_argument(std::string("native ") + kernel + ": " + arg + " " + dtype_name(dt) +
                              " is not implemented (implemented: " + have + ")");
}

// A float32 view of a tensor in dtype `dt` for the duration of one kernel call (the staged
// route). float32 tensors are used in place; 16-bit ones are converted into scratch on entry
// (inputs) and rounded back on exit (outputs).
class Staged {
 public:
  enum Mode { kIn = 1, kOut = 2, kInOut = 3 };
  Staged(void* p, int dt, i64 n, Mode mode) : p_(p), dt_(dt), n_(n), mode_(mode) {
    if (!p || dt == kF32) { f_ = static_cast<float*>(p); return; }
    buf_.reset(new float[static_cast<size_t>(n > 0 ? n : 1)]);
    f_ = buf_.get();
    if (mode & kIn) cast(dt, p, kF32, f_, n);
  }
  // A strided view: stages the extent [lo, hi] of element offsets the strides reach.
  Staged(void* p, int dt, const Dims& strides, const Dims& shape, Mode mode) : p_(p), dt_(dt), mode_(mode) {
    i64 lo = 0, hi = 0;
    for (int d = 0; d < shape.n; d++) {
      if (shape.v[d] == 0) { lo = hi = 0; break; }
      const i64 span = (shape.v[d] - 1) * strides.v[d];
      (span < 0 ? lo : hi) += span;
    }
    if (!p || dt == kF32) { f_ = static_cast<float*>(p); return; }
    n_ = hi - lo + 1;
    p_ = static_cast<char*>(p) + lo * dtype_size(dt);
    buf_.reset(new float[static_cast<size_t>(n_)]);
    if (mode & kIn) cast(dt, p_, kF32, buf_.get(), n_);
    f_ = buf_.get() - lo;  // element 0 of the view, offsets may be negative
  }
  ~Staged() {
    if (buf_ && (mode_ & kOut)) cast(kF32, buf_.get(), dt_, p_, n_);
  }
  Staged(const Staged&) = delete;
  Staged& operator=(const Staged&) = delete;
  float* get() const { return f_; }
  operator float*() const { return f_; }

 private:
  void* p_;
  int dt_;
  i64 n_ = 0;
  int mode_;
  float* f_ = nullptr;
  std::unique_ptr<float[]> buf_;
};

template <typename T> T* as(void* p) { return static_cast<T*>(p); }

}  // namespace

// ---- kernel sets ------------------------------------------------------------------------------

bool cpu_has(const char* feature) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const std::string f(feature);
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (f == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
  if (f == "avx512fp16") return __builtin_cpu_supports("avx512fp16");
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "f16c") {  // not in older GCC's __builtin_cpu_supports list: CPUID.1:ECX bit 29
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    return (c >> 29) & 1u;
  }
#else
  (void)feature;
#endif
  return false;
}

const char* kernel_set_name(int set) {
  return set == kSetAvx512 ? "avx512" : set == kSetAvx2 ? "avx2" : "generic";
}

int kernel_set() { return g_set; }

bool kernel_set_supported(int set) {
  if (set == kSetGeneric) return true;
#if defined(__x86_64__)
  if (set == kSetAvx512) return cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") && cpu_has("avx512dq");
  if (set == kSetAvx2) return cpu_has("avx2") && cpu_has("fma") && cpu_has("f16c");
#endif
  return false;
}

std::string select_kernel_set(const std::string& name) {
  int set;
  if (name == "avx512") set = kSetAvx512;
  else if (name == "avx2") set = kSetAvx2;
  else if (name == "generic") set = kSetGeneric;
  else return "expected \"avx512\", \"avx2\" or \"generic\", got \"" + name + "\"";
  if (!kernel_set_supported(set)) {
    return std::string("this CPU (or this build) cannot run the ") + name + " kernels (" +
           (set == kSetAvx512 ? "needs AVX-512 F/BW/VL/DQ" : "needs AVX2, FMA and F16C") + "); use \"generic\"";
  }
#if defined(__x86_64__)
  g_set = set;
#endif
  return "";
}

std::string init_kernel_set() {
  const char* env = std::getenv("MEGALITH_KERNELS");
  if (env && *env) {
    std::string err = select_kernel_set(env);
    if (!err.empty()) return "MEGALITH_KERNELS=" + std::string(env) + ": " + err;
    return "";
  }
  for (int set : {kSetAvx512, kSetAvx2})
    if (kernel_set_supported(set)) return select_kernel_set(kernel_set_name(set));
  return select_kernel_set("generic");
}

// ---- kernels ----------------------------------------------------------------------------------

namespace api {

void fill(void* dst, int64_t n, double value, int dtype) {
  KERNEL(fill)(dtype_size(dtype), dst, n, value, dtype);
}

void copyStrided(int64_t esize, void* src, const Dims& ss, void* dst, const Dims& ds, const Dims& shape) {
  KERNEL(copy_strided)(static_cast<int>(esize), src, ss.data(), dst, ds.data(), shape.data(), shape.size());
}

void cast(int sdt, void* src, int ddt, void* dst, int64_t n) {
  if (dtype_size(sdt) == 0) require("cast", "srcDtype", sdt, 0x3Fu);
  if (dtype_size(ddt) == 0) require("cast", "dstDtype", ddt, 0x3Fu);
  mg::cast(sdt, src, ddt, dst, n);
}

void binary(int op, void* a, const Dims& as_, void* b, const Dims& bs, void* out, const Dims& shape, int dt) {
  require("binary", "dtype", dt, kFloatTypes);
  KERNEL(binary)(op, a, as_.data(), b, bs.data(), out, shape.data(), shape.size(), dt);
}

void unary(int op, void* x, void* y, int64_t n, double a, double b, int dt) {
  require("unary", "dtype", dt, kFloatTypes);
  KERNEL(unary)(op, x, y, n, static_cast<float>(a), static_cast<float>(b), dt);
}

void unaryBackward(int op, void* x, void* y, void* gy, void* gx, int64_t n, double a, double b, int dt) {
  require("unaryBackward", "dtype", dt, kFloatTypes);
  KERNEL(unary_backward)(op, x, y, gy, gx, n, static_cast<float>(a), static_cast<float>(b), dt);
}

void where(void* c, const Dims& cs, void* a, const Dims& as_, void* b, const Dims& bs, void* out, const Dims& shape,
           int dt) {
  require("where", "dtype", dt, kFloatTypes);
  KERNEL(where)(as<const float>(c), cs.data(), a, as_.data(), b, bs.data(), out, shape.data(), shape.size(), dt);
}

void reduce(int op, void* x, void* out, int64_t A, int64_t R, int64_t B, double scale, int dt, int odt) {
  require("reduce", "dtype", dt, kFloatTypes);
  require("reduce", "outDtype", odt, kFloatTypes);
  KERNEL(reduce)(op, x, out, A, R, B, static_cast<float>(scale), dt, odt);
}

void argReduce(int op, void* x, void* vals, void* idx, int64_t A, int64_t R, int64_t B, int dt) {
  require("argReduce", "dtype", dt, kFloatTypes);
  KERNEL(arg_reduce)(op, x, vals, as<int32_t>(idx), A, R, B, dt);
}

void cumsum(void* x, void* y, int64_t A, int64_t R, int64_t B, bool reverse, int dt) {
  require("cumsum", "dtype", dt, kFloatTypes);
  KERNEL(cumsum)(x, y, A, R, B, reverse, dt);
}

void topk(void* x, void* vals, void* idx, int64_t rows, int64_t cols, int64_t k, bool largest, int dt) {
  require("topk", "dtype", dt, kFloatTypes);
  KERNEL(topk)(x, vals, as<int32_t>(idx), rows, cols, k, largest, dt);
}

// Softmax, cross-entropy and the norms' forwards are native (per-row float32 buffers inside
// the kernel). The norms' backwards take the staged route (float32 inside, 16-bit operands
// converted on the way in and rounded on the way out); templating them is the next step.
void softmaxForward(void* x, void* y, int64_t rows, int64_t cols, bool log, int dt, int odt) {
  require("softmaxForward", "dtype", dt, kFloatTypes);
  require("softmaxForward", "outDtype", odt, kFloatTypes);
  KERNEL(softmax_forward)(x, y, rows, cols, log, dt, odt);
}

void softmaxBackward(void* y, void* gy, void* gx, int64_t rows, int64_t cols, bool log, int dt, int gdt) {
  require("softmaxBackward", "dtype", dt, kFloatTypes);
  require("softmaxBackward", "gradDtype", gdt, kFloatTypes);
  KERNEL(softmax_backward)(y, gy, gx, rows, cols, log, dt, gdt);
}

void layerNormForward(void* x, void* w, void* b, void* y, void* mean, void* rstd, int64_t rows, int64_t cols,
                      double eps, int dt, int wdt) {
  require("layerNormForward", "dtype", dt, kFloatTypes);
  require("layerNormForward", "wDtype", wdt, kFloatTypes);
  KERNEL(layer_norm_forward)(x, w, b, y, as<float>(mean), as<float>(rstd), rows, cols, static_cast<float>(eps), dt, wdt);
}

void layerNormBackward(void* x, void* w, void* mean, void* rstd, void* gy, void* gx, void* gw, void* gb, int64_t rows,
                       int64_t cols, int dt, int wdt) {
  require("layerNormBackward", "dtype", dt, kFloatTypes);
  require("layerNormBackward", "wDtype", wdt, kFloatTypes);
  Staged x32(x, dt, rows * cols, Staged::kIn), w32(w, wdt, cols, Staged::kIn), gy32(gy, dt, rows * cols, Staged::kIn);
  Staged gx32(gx, dt, rows * cols, Staged::kOut), gw32(gw, wdt, cols, Staged::kOut), gb32(gb, wdt, cols, Staged::kOut);
  KERNEL(layer_norm_backward)(x32, w32, as<const float>(mean), as<const float>(rstd), gy32, gx32, gw32, gb32, rows, cols);
}

void rmsNormForward(void* x, void* w, void* y, void* rstd, int64_t rows, int64_t cols, double eps, int dt, int wdt) {
  require("rmsNormForward", "dtype", dt, kFloatTypes);
  require("rmsNormForward", "wDtype", wdt, kFloatTypes);
  KERNEL(rms_norm_forward)(x, w, y, as<float>(rstd), rows, cols, static_cast<float>(eps), dt, wdt);
}

void rmsNormBackward(void* x, void* w, void* rstd, void* gy, void* gx, void* gw, int64_t rows, int64_t cols, int dt,
                     int wdt) {
  require("rmsNormBackward", "dtype", dt, kFloatTypes);
  require("rmsNormBackward", "wDtype", wdt, kFloatTypes);
  Staged x32(x, dt, rows * cols, Staged::kIn), w32(w, wdt, cols, Staged::kIn), gy32(gy, dt, rows * cols, Staged::kIn);
  Staged gx32(gx, dt, rows * cols, Staged::kOut), gw32(gw, wdt, cols, Staged::kOut);
  KERNEL(rms_norm_backward)(x32, w32, as<const float>(rstd), gy32, gx32, gw32, rows, cols);
}

int64_t embeddingForward(void* w, void* idx, void* out, int64_t n, int64_t dim, int64_t vocab, int dt) {
  require("embeddingForward", "dtype", dt, kFloatTypes);
  return KERNEL(embedding_forward)(w, as<const int32_t>(idx), out, n, dim, vocab, dtype_size(dt));
}

void embeddingBackward(void* gout, void* idx, void* gw, int64_t n, int64_t dim, int dt) {
  require("embeddingBackward", "dtype", dt, kFloatTypes);
  KERNEL(embedding_backward)(gout, as<const int32_t>(idx), gw, n, dim, dt);
}

int64_t crossEntropyForward(void* logits, void* targets, void* loss, void* lse, int64_t rows, int64_t vocab,
                            int64_t ignoreIndex, double smoothing, int dt) {
  require("crossEntropyForward", "dtype", dt, kFloatTypes);
  return KERNEL(cross_entropy_forward)(logits, as<const int32_t>(targets), as<float>(loss), as<float>(lse), rows, vocab,
                                       static_cast<int32_t>(ignoreIndex), static_cast<float>(smoothing), dt);
}

void crossEntropyBackward(void* logits, void* targets, void* lse, void* gradRows, double gradScale, void* glogits,
                          int64_t rows, int64_t vocab, int64_t ignoreIndex, double smoothing, int dt) {
  require("crossEntropyBackward", "dtype", dt, kFloatTypes);
  KERNEL(cross_entropy_backward)(logits, as<const int32_t>(targets), as<const float>(lse), as<const float>(gradRows),
                                 static_cast<float>(gradScale), glogits, rows, vocab,
                                 static_cast<int32_t>(ignoreIndex), static_cast<float>(smoothing), dt);
}

void adamw(void* p, void* g, void* m, void* v, int64_t n, double lr, double b1, double b2, double eps, double wd,
           double bc1, double bc2, double gs, int dt, int gdt) {
  require("adamw", "dtype", dt, kFloatTypes);
  require("adamw", "gradDtype", gdt, kFloatTypes);
  KERNEL(adamw)(p, g, as<float>(m), as<float>(v), n, static_cast<float>(lr), static_cast<float>(b1),
                static_cast<float>(b2), static_cast<float>(eps), static_cast<float>(wd), static_cast<float>(bc1),
                static_cast<float>(bc2), static_cast<float>(gs), dt, gdt);
}

// Staged route for attention: the flash kernels' inner loops are float32 panels; q, k, v are read many times.
void attentionForward(void* q, void* k, void* v, void* o, void* lse, int64_t BH, int64_t T, int64_t S, int64_t D,
                      double scale, bool causal, int dt) {
  require("attentionForward", "dtype", dt, kFloatTypes);
  Staged q32(q, dt, BH * T * D, Staged::kIn), k32(k, dt, BH * S * D, Staged::kIn), v32(v, dt, BH * S * D, Staged::kIn);
  Staged o32(o, dt, BH * T * D, Staged::kOut);
  KERNEL(attention_forward)(q32, k32, v32, o32, as<float>(lse), BH, T, S, D, static_cast<float>(scale), causal);
}

void attentionBackward(void* q, void* k, void* v, void* o, void* go, void* lse, void* gq, void* gk, void* gv,
                       int64_t BH, int64_t T, int64_t S, int64_t D, double scale, bool causal, int dt) {
  require("attentionBackward", "dtype", dt, kFloatTypes);
  const i64 nq = BH * T * D, nk = BH * S * D;
  Staged q32(q, dt, nq, Staged::kIn), k32(k, dt, nk, Staged::kIn), v32(v, dt, nk, Staged::kIn);
  Staged o32(o, dt, nq, Staged::kIn), go32(go, dt, nq, Staged::kIn);
  Staged gq32(gq, dt, nq, Staged::kOut), gk32(gk, dt, nk, Staged::kOut), gv32(gv, dt, nk, Staged::kOut);
  KERNEL(attention_backward)(q32, k32, v32, o32, go32, as<const float>(lse), gq32, gk32, gv32, BH, T, S, D,
                             static_cast<float>(scale), causal);
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, void* A, int64_t lda, int64_t sa, void* B,
          int64_t ldb, int64_t sb, double beta, void* C, int64_t ldc, int64_t sc, int64_t batch, int dt, int odt) {
  require("gemm", "dtype", dt, kFloatTypes);
  require("gemm", "outDtype", odt, dt == kF32 ? kF32Only : (1u << kF32) | (1u << dt));
  if (dt == kF32) {
    gemm_f32(ta, tb, M, N, K, static_cast<float>(alpha), as<const float>(A), lda, sa, as<const float>(B), ldb, sb,
             static_cast<float>(beta), as<float>(C), ldc, sc, batch);
    return;
  }
  gemm_16(dt, odt, ta, tb, M, N, K, static_cast<float>(alpha), A, lda, sa, B, ldb, sb, static_cast<float>(beta), C,
          ldc, sc, batch);
}

void kvCacheWrite(void* kc, void* vc, void* k, void* v, void* slots, int64_t n, int64_t row, int cdt, int dt) {
  require("kvCacheWrite", "cacheDtype", cdt, kFloatTypes);
  require("kvCacheWrite", "dtype", dt, kFloatTypes);
  KERNEL(kv_cache_write)(kc, vc, k, v, as<const int32_t>(slots), n, row, cdt, dt);
}

void pagedAttention(void* q, void* kc, void* vc, void* bt, int64_t maxBlocks, int64_t blockSize, void* seq, void* pos,
                    void* out, int64_t n, int64_t H, int64_t D, double scale, int dt, int cdt) {
  require("pagedAttention", "dtype", dt, kFloatTypes);
  require("pagedAttention", "cacheDtype", cdt, kFloatTypes);
  KERNEL(paged_attention)(q, kc, vc, as<const int32_t>(bt), maxBlocks, blockSize, as<const int32_t>(seq),
                          as<const int32_t>(pos), out, n, H, D, static_cast<float>(scale), dt, cdt);
}

// Staged route: the int8 matmul is weight-bandwidth bound; x and y are small activations.
void quantInt8Rowwise(void* w, void* q, void* scales, int64_t rows, int64_t cols, int dt) {
  require("quantInt8Rowwise", "dtype", dt, kFloatTypes);
  Staged w32(w, dt, rows * cols, Staged::kIn);
  KERNEL(quant_int8_rowwise)(w32, as<int8_t>(q), as<float>(scales), rows, cols);
}

void matmulInt8(void* x, void* q, void* scales, void* bias, void* y, int64_t M, int64_t N, int64_t K, int dt) {
  require("matmulInt8", "dtype", dt, kFloatTypes);
  Staged x32(x, dt, M * K, Staged::kIn), b32(bias, dt, N, Staged::kIn), y32(y, dt, M * N, Staged::kOut);
  KERNEL(matmul_int8)(x32, as<const int8_t>(q), as<const float>(scales), b32, y32, M, N, K);
}

// Staged route: the draws are made in float32 and rounded once (the same values as a float32
// draw followed by a cast, so a bf16 model initialises like its float32 twin rounded).
void random(int kind, int64_t seed, int64_t offset, void* out, int64_t n, double a, double b, int dt) {
  require("random", "dtype", dt, kFloatTypes);
  Staged o32(out, dt, n, Staged::kOut);
  random_f32(kind, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), o32, n, static_cast<float>(a),
             static_cast<float>(b));
}

void dropout(int64_t seed, int64_t offset, double p, void* x, void* y, int64_t n, int dt) {
  require("dropout", "dtype", dt, kFloatTypes);
  Staged x32(x, dt, n, Staged::kIn), y32(y, dt, n, Staged::kOut);
  dropout_f32(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<float>(p), x32, y32, n);
}

}  // namespace api
}  // namespace mg

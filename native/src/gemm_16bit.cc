// GEMM with 16-bit float operands: C = alpha op(A) op(B) + beta C, A and B in bfloat16 or
// float16, C in the same dtype or float32, float32 accumulation, row-major, batched by strides.
//
// bfloat16 runs on oneDNN's matmul primitive when the build found oneDNN (MG_HAVE_DNNL) and
// the primitive oneDNN picks is a real kernel (on AVX512_BF16 CPUs "brg:avx512_core_bf16",
// which uses vdpbf16ps); where oneDNN would fall to its "ref" implementation, or for float16
// (no AVX512-FP16 here, so oneDNN has no fast f16 matmul), the fallback converts the operands
// to float32 panels and calls our sgemm (gemm.cc).
//
// Threads: Debian's oneDNN is built on OpenMP (libgomp). It is called from the calling thread
// while our pool is idle, with OpenMP's thread count set to our num_threads(), so at most
// num_threads() threads compute at any time. Our pool's workers spin a little after each job
// and libgomp's spin after each parallel region, so the two can overlap for microseconds at
// the hand-over; src/backend/native/index.ts sets OMP_WAIT_POLICY=PASSIVE (unless the user
// chose one) so idle OpenMP threads sleep instead of spinning against our pool.
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "_dtype.h"
#include "megalith.h"

#ifdef MG_HAVE_DNNL
#include <omp.h>

#include <dnnl.hpp>
#endif

namespace mg {
namespace {

// Converts the rows x cols matrix at src (row stride ld, dtype dt) into dense float32.
void to_f32_dense(int dt, const void* src, i64 rows, i64 cols, i64 ld, float* dst) {
  const char* s = static_cast<const char*>(src);
  const i64 es = dtype_size(dt);
  parallel_for(rows, std::max<i64>(1, 16384 / std::max<i64>(cols, 1)), [&](i64 lo, i64 hi) {
    for (i64 r = lo; r < hi; r++) cast_serial(dt, s + r * ld * es, kF32, dst + r * cols, cols);
  });
}

void from_f32_dense(const float* src, i64 rows, i64 cols, int dt, void* dst, i64 ld) {
  char* d = static_cast<char*>(dst);
  const i64 es = dtype_size(dt);
  parallel_for(rows, std::max<i64>(1, 16384 / std::max<i64>(cols, 1)), [&](i64 lo, i64 hi) {
    for (i64 r = lo; r < hi; r++) cast_serial(kF32, src + r * cols, dt, d + r * ld * es, cols);
  });
}

// The correct-everywhere route: float32 copies of A and B (and C when it is 16-bit), sgemm.
void gemm_16_fallback(int dt, int odt, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const void* A, i64 lda,
                      i64 sa, const void* B, i64 ldb, i64 sb, float beta, void* C, i64 ldc, i64 sc, i64 batch) {
  const i64 ar = ta ? K : M, ac = ta ? M : K;  // A as stored
  const i64 br = tb ? N : K, bc = tb ? K : N;
  const i64 es = dtype_size(dt);
  const i64 na = sa == 0 ? 1 : batch, nb = sb == 0 ? 1 : batch;
  std::unique_ptr<float[]> a32(new float[static_cast<size_t>(na * ar * ac)]);
  std::unique_ptr<float[]> b32(new float[static_cast<size_t>(nb * br * bc)]);
  for (i64 b = 0; b < na; b++) to_f32_dense(dt, static_cast<const char*>(A) + b * sa * es, ar, ac, lda, a32.get() + b * ar * ac);
  for (i64 b = 0; b < nb; b++) to_f32_dense(dt, static_cast<const char*>(B) + b * sb * es, br, bc, ldb, b32.get() + b * br * bc);
  const i64 dsa = sa == 0 ? 0 : ar * ac, dsb = sb == 0 ? 0 : br * bc;
  if (odt == kF32) {
    gemm_f32(ta, tb, M, N, K, alpha, a32.get(), ac, dsa, b32.get(), bc, dsb, beta, static_cast<float*>(C), ldc, sc, batch);
    return;
  }
  const i64 eo = dtype_size(odt);
  std::unique_ptr<float[]> c32(new float[static_cast<size_t>(batch * M * N)]);
  if (beta != 0.0f)
    for (i64 b = 0; b < batch; b++) to_f32_dense(odt, static_cast<char*>(C) + b * sc * eo, M, N, ldc, c32.get() + b * M * N);
  gemm_f32(ta, tb, M, N, K, alpha, a32.get(), ac, dsa, b32.get(), bc, dsb, beta, c32.get(), N, M * N, batch);
  for (i64 b = 0; b < batch; b++) from_f32_dense(c32.get() + b * M * N, M, N, odt, static_cast<char*>(C) + b * sc * eo, ldc);
}

#ifdef MG_HAVE_DNNL

struct Dnnl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;  // guards the cache and serialises execution (one stream)
  struct Entry {
    bool usable = false;  // false: oneDNN would run its reference kernel; use the fallback
    dnnl::matmul prim;
    dnnl::memory::desc a, b, c;
  };
  std::unordered_map<std::string, std::unique_ptr<Entry>> cache;
};

Dnnl& dnnl_state() {
  static Dnnl* d = new Dnnl();  // never destroyed: oneDNN may outlive static destructors' order
  return *d;
}

// One cached primitive per (shape, transposes, dtypes, strides, alpha, beta): the scale and the
// sum post-op are baked into oneDNN 2.x primitives, and training repeats the same few shapes.
Dnnl::Entry& dnnl_entry(Dnnl& st, int odt, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, i64 lda, i64 sa,
                        i64 ldb, i64 sb, float beta, i64 ldc, i64 sc, i64 batch) {
  std::string key = std::to_string(odt) + (ta ? "T" : "N") + (tb ? "T" : "N");
  for (i64 v : {M, N, K, lda, sa, ldb, sb, ldc, sc, batch}) key += "," + std::to_string(v);
  uint32_t ab, bb;
  std::memcpy(&ab, &alpha, 4);
  std::memcpy(&bb, &beta, 4);
  key += "," + std::to_string(ab) + "," + std::to_string(bb);
  auto it = st.cache.find(key);
  if (it != st.cache.end()) return *it->second;

  using md = dnnl::memory::desc;
  using dtype = dnnl::memory::data_type;
  auto e = std::make_unique<Dnnl::Entry>();
  // Logical shapes [batch, M, K] x [batch, K, N] -> [batch, M, N], element strides from the
  // row-major storage; a batch stride of 0 (a shared operand) becomes a broadcast batch of 1.
  const i64 ba = sa == 0 ? 1 : batch, bbn = sb == 0 ? 1 : batch;
  // A batch of one gets the dense stride of its matrix: oneDNN treats a 0 stride as a
  // non-dense layout and would pick its slow reference kernel (every unbatched x @ W call).
  const i64 sa1 = ba == 1 ? (ta ? K : M) * lda : sa, sb1 = bbn == 1 ? (tb ? N : K) * ldb : sb;
  const i64 sc1 = batch == 1 ? M * ldc : sc;
  e->a = md({ba, M, K}, dtype::bf16, ta ? dnnl::memory::dims{sa1, 1, lda} : dnnl::memory::dims{sa1, lda, 1});
  e->b = md({bbn, K, N}, dtype::bf16, tb ? dnnl::memory::dims{sb1, 1, ldb} : dnnl::memory::dims{sb1, ldb, 1});
  e->c = md({batch, M, N}, odt == kF32 ? dtype::f32 : dtype::bf16, dnnl::memory::dims{sc1, ldc, 1});
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  try {
    dnnl::matmul::desc d(e->a, e->b, e->c);
    dnnl::matmul::primitive_desc pd(d, attr, st.engine);
    const std::string impl = pd.impl_info_str();
    e->usable = impl.find("ref") == std::string::npos;
    if (e->usable) e->prim = dnnl::matmul(pd);
  } catch (const dnnl::error&) {
    e->usable = false;  // a layout oneDNN does not take (e.g. odd strides): the fallback serves it
  }
  return *(st.cache[key] = std::move(e));
}

// oneDNN has real bf16 matmul kernels on AVX-512 (native with AVX512_BF16, emulated without);
// decide once, on first use, from a probe shape rather than trusting feature bits.
bool dnnl_bf16_usable() {
  static const bool usable = [] {
    try {
      Dnnl& st = dnnl_state();
      std::lock_guard<std::mutex> lk(st.mu);
      return dnnl_entry(st, kF32, false, false, 64, 64, 64, 1.0f, 64, 4096, 64, 4096, 0.0f, 64, 4096, 1).usable;
    } catch (...) {
      return false;
    }
  }();
  return usable;
}

#endif  // MG_HAVE_DNNL

}  // namespace

const char* gemm_bf16_backend() {
#ifdef MG_HAVE_DNNL
  return dnnl_bf16_usable() ? "onednn" : "fallback";
#else
  return "fallback";
#endif
}

void gemm_16(int dt, int odt, bool ta, bool tb, i64 M, i64 N, i64 K, float alpha, const void* A, i64 lda, i64 sa,
             const void* B, i64 ldb, i64 sb, float beta, void* C, i64 ldc, i64 sc, i64 batch) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
#ifdef MG_HAVE_DNNL
  if (dt == kBF16 && K > 0 && dnnl_bf16_usable()) {
    Dnnl& st = dnnl_state();
    std::lock_guard<std::mutex> lk(st.mu);
    Dnnl::Entry& e = dnnl_entry(st, odt, ta, tb, M, N, K, alpha, lda, sa, ldb, sb, beta, ldc, sc, batch);
    if (e.usable) {
      omp_set_num_threads(num_threads());
      dnnl::memory ma(e.a, st.engine, const_cast<void*>(A)), mb(e.b, st.engine, const_cast<void*>(B));
      dnnl::memory mc(e.c, st.engine, C);
      e.prim.execute(st.stream, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
      st.stream.wait();
      return;
    }
  }
#endif
  gemm_16_fallback(dt, odt, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

}  // namespace mg

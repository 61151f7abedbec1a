// N-API surface of the native core: buffers in, buffers out.
//
// Buffers are raw addresses (JS numbers; user-space x86-64 pointers fit in 53 bits) owned by
// the caching allocator. The TypeScript side (src/backend/native/) validates shapes, dtypes and
// bounds before calling; this file only converts arguments and picks the kernel set.
#include <node_api.h>

#include <cblas.h>
#include <cstring>
#include <string>
#include <vector>

#include "megalith.h"

extern "C" void openblas_set_num_threads(int);

namespace {

using mg::i64;

bool g_avx512 = false;

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

#define KERNEL(fn) (g_avx512 ? avx512::fn : generic::fn)

struct Args {
  napi_env env;
  size_t argc = 24;
  napi_value argv[24];
  bool ok = true;

  Args(napi_env e, napi_callback_info info) : env(e) {
    napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  }
  void fail(const std::string& msg) {
    if (ok) napi_throw_error(env, "ERR_MEGALITH_NATIVE", msg.c_str());
    ok = false;
  }
  napi_value at(size_t i) {
    if (i >= argc) { fail("native: missing argument " + std::to_string(i)); return nullptr; }
    return argv[i];
  }
  i64 num(size_t i) {
    napi_value v = at(i);
    if (!v) return 0;
    int64_t out = 0;
    if (napi_get_value_int64(env, v, &out) != napi_ok) fail("native: argument " + std::to_string(i) + " must be a number");
    return out;
  }
  double dbl(size_t i) {
    napi_value v = at(i);
    if (!v) return 0;
    double out = 0;
    if (napi_get_value_double(env, v, &out) != napi_ok) fail("native: argument " + std::to_string(i) + " must be a number");
    return out;
  }
  float f32(size_t i) { return static_cast<float>(dbl(i)); }
  bool flag(size_t i) {
    napi_value v = at(i);
    if (!v) return false;
    bool out = false;
    if (napi_get_value_bool(env, v, &out) != napi_ok) fail("native: argument " + std::to_string(i) + " must be a boolean");
    return out;
  }
  template <typename T>
  T* ptr(size_t i) {
    napi_value v = at(i);
    if (!v) return nullptr;
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (t == napi_null || t == napi_undefined) return nullptr;
    return reinterpret_cast<T*>(static_cast<uintptr_t>(num(i)));
  }
  std::vector<i64> vec(size_t i) {
    std::vector<i64> out;
    napi_value v = at(i);
    if (!v) return out;
    uint32_t len = 0;
    if (napi_get_array_length(env, v, &len) != napi_ok) { fail("native: argument " + std::to_string(i) + " must be an array"); return out; }
    if (len > static_cast<uint32_t>(mg::kMaxDimsPublic)) { fail("native: more than 12 dimensions"); return out; }
    out.resize(len);
    for (uint32_t j = 0; j < len; j++) {
      napi_value e;
      napi_get_element(env, v, j, &e);
      int64_t x = 0;
      napi_get_value_int64(env, e, &x);
      out[j] = x;
    }
    return out;
  }
};

napi_value number(napi_env env, double x) {
  napi_value v;
  napi_create_double(env, x, &v);
  return v;
}

napi_value undefined(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

// ---- memory ---------------------------------------------------------------------------------

napi_value Alloc(napi_env env, napi_callback_info info) {
  Args a(env, info);
  i64 n = a.num(0);
  int cat = static_cast<int>(a.num(1));
  if (!a.ok) return nullptr;
  if (n < 0) { a.fail("alloc: negative size " + std::to_string(n)); return nullptr; }
  void* p = nullptr;
  try {
    p = mg::mem_alloc(static_cast<size_t>(n), cat);
  } catch (...) {
    a.fail("alloc: out of memory allocating " + std::to_string(n) + " bytes");
    return nullptr;
  }
  napi_adjust_external_memory(env, n, nullptr);
  return number(env, static_cast<double>(reinterpret_cast<uintptr_t>(p)));
}

napi_value Free(napi_env env, napi_callback_info info) {
  Args a(env, info);
  void* p = a.ptr<void>(0);
  i64 n = a.argc > 1 ? a.num(1) : 0;
  if (!a.ok) return nullptr;
  mg::mem_free(p);
  if (n > 0) napi_adjust_external_memory(env, -n, nullptr);
  return undefined(env);
}

napi_value SetCategory(napi_env env, napi_callback_info info) {
  Args a(env, info);
  void* p = a.ptr<void>(0);
  int c = static_cast<int>(a.num(1));
  if (!a.ok) return nullptr;
  mg::mem_set_category(p, c);
  return undefined(env);
}

napi_value MemoryStats(napi_env env, napi_callback_info) {
  mg::MemStats s = mg::mem_stats();
  napi_value obj, live, peak;
  napi_create_object(env, &obj);
  napi_create_array_with_length(env, mg::kNumCategories, &live);
  napi_create_array_with_length(env, mg::kNumCategories, &peak);
  for (int c = 0; c < mg::kNumCategories; c++) {
    napi_set_element(env, live, c, number(env, static_cast<double>(s.live[c])));
    napi_set_element(env, peak, c, number(env, static_cast<double>(s.peak[c])));
  }
  napi_set_named_property(env, obj, "live", live);
  napi_set_named_property(env, obj, "peak", peak);
  napi_set_named_property(env, obj, "liveTotal", number(env, static_cast<double>(s.live_total)));
  napi_set_named_property(env, obj, "peakTotal", number(env, static_cast<double>(s.peak_total)));
  napi_set_named_property(env, obj, "cached", number(env, static_cast<double>(s.cached)));
  napi_set_named_property(env, obj, "allocs", number(env, static_cast<double>(s.allocs)));
  napi_set_named_property(env, obj, "cacheHits", number(env, static_cast<double>(s.cache_hits)));
  return obj;
}

napi_value ResetPeak(napi_env env, napi_callback_info) { mg::mem_reset_peak(); return undefined(env); }
napi_value EmptyCache(napi_env env, napi_callback_info) { mg::mem_empty_cache(); return undefined(env); }

// Copies a JS typed array / ArrayBuffer view into native memory: write(dst, view).
napi_value Write(napi_env env, napi_callback_info info) {
  Args a(env, info);
  char* dst = a.ptr<char>(0);
  if (!a.ok) return nullptr;
  bool is_ta = false;
  napi_is_typedarray(env, a.at(1), &is_ta);
  if (!is_ta) { a.fail("write: expected a typed array"); return nullptr; }
  napi_typedarray_type t;
  size_t len, off;
  void* data;
  napi_value ab;
  napi_get_typedarray_info(env, a.argv[1], &t, &len, &data, &ab, &off);
  size_t esize = 1;
  switch (t) {
    case napi_int16_array: case napi_uint16_array: esize = 2; break;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: esize = 4; break;
    case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: esize = 8; break;
    default: esize = 1;
  }
  std::memcpy(dst, data, len * esize);
  return undefined(env);
}

// Copies native memory into a new ArrayBuffer: read(src, nbytes) -> ArrayBuffer.
napi_value Read(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const char* src = a.ptr<const char>(0);
  i64 n = a.num(1);
  if (!a.ok) return nullptr;
  void* data;
  napi_value ab;
  napi_create_arraybuffer(env, static_cast<size_t>(n), &data, &ab);
  if (n > 0) std::memcpy(data, src, static_cast<size_t>(n));
  return ab;
}

// ---- threads and CPU ------------------------------------------------------------------------

napi_value SetNumThreads(napi_env env, napi_callback_info info) {
  Args a(env, info);
  i64 n = a.num(0);
  if (!a.ok) return nullptr;
  if (n < 1 || n > 1024) { a.fail("setNumThreads: expected 1..1024, got " + std::to_string(n)); return nullptr; }
  mg::set_num_threads(static_cast<int>(n));
  return undefined(env);
}

napi_value NumThreads(napi_env env, napi_callback_info) { return number(env, mg::num_threads()); }

napi_value CpuInfo(napi_env env, napi_callback_info) {
  napi_value obj, t, f;
  napi_create_object(env, &obj);
  napi_get_boolean(env, cpu_has_avx512(), &t);
  napi_set_named_property(env, obj, "avx512", t);
  __builtin_cpu_init();
  napi_get_boolean(env, __builtin_cpu_supports("avx512bf16"), &f);
  napi_set_named_property(env, obj, "avx512bf16", f);
  napi_value ks;
  napi_create_string_utf8(env, g_avx512 ? "avx512" : "generic", NAPI_AUTO_LENGTH, &ks);
  napi_set_named_property(env, obj, "kernels", ks);
  return obj;
}

// setKernelSet("avx512" | "generic"): tests run both paths against the same reference.
napi_value SetKernelSet(napi_env env, napi_callback_info info) {
  Args a(env, info);
  char buf[32] = {0};
  size_t len = 0;
  napi_get_value_string_utf8(env, a.at(0), buf, sizeof(buf), &len);
  std::string s(buf, len);
  if (s == "avx512") {
    if (!cpu_has_avx512()) { a.fail("setKernelSet: this CPU has no AVX-512"); return nullptr; }
    g_avx512 = true;
  } else if (s == "generic") {
    g_avx512 = false;
  } else {
    a.fail("setKernelSet: expected \"avx512\" or \"generic\", got \"" + s + "\"");
    return nullptr;
  }
  return undefined(env);
}

// ---- kernels --------------------------------------------------------------------------------

napi_value Fill(napi_env env, napi_callback_info info) {
  Args a(env, info);
  void* p = a.ptr<void>(0);
  i64 n = a.num(1);
  double v = a.dbl(2);
  int dt = static_cast<int>(a.num(3));
  if (!a.ok) return nullptr;
  KERNEL(fill)(mg::dtype_size(dt), p, n, v, dt);
  return undefined(env);
}

napi_value CopyStrided(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int es = static_cast<int>(a.num(0));
  const void* src = a.ptr<const void>(1);
  auto ss = a.vec(2);
  void* dst = a.ptr<void>(3);
  auto ds = a.vec(4);
  auto shape = a.vec(5);
  if (!a.ok) return nullptr;
  KERNEL(copy_strided)(es, src, ss.data(), dst, ds.data(), shape.data(), static_cast<int>(shape.size()));
  return undefined(env);
}

napi_value Cast(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int sdt = static_cast<int>(a.num(0));
  const void* src = a.ptr<const void>(1);
  int ddt = static_cast<int>(a.num(2));
  void* dst = a.ptr<void>(3);
  i64 n = a.num(4);
  if (!a.ok) return nullptr;
  mg::cast(sdt, src, ddt, dst, n);
  return undefined(env);
}

napi_value Binary(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int op = static_cast<int>(a.num(0));
  const float* x = a.ptr<const float>(1);
  auto xs = a.vec(2);
  const float* y = a.ptr<const float>(3);
  auto ys = a.vec(4);
  float* out = a.ptr<float>(5);
  auto shape = a.vec(6);
  if (!a.ok) return nullptr;
  KERNEL(binary)(op, x, xs.data(), y, ys.data(), out, shape.data(), static_cast<int>(shape.size()));
  return undefined(env);
}

napi_value Unary(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int op = static_cast<int>(a.num(0));
  const float* x = a.ptr<const float>(1);
  float* y = a.ptr<float>(2);
  i64 n = a.num(3);
  float p = a.f32(4), q = a.f32(5);
  if (!a.ok) return nullptr;
  KERNEL(unary)(op, x, y, n, p, q);
  return undefined(env);
}

napi_value UnaryBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int op = static_cast<int>(a.num(0));
  const float* x = a.ptr<const float>(1);
  const float* y = a.ptr<const float>(2);
  const float* gy = a.ptr<const float>(3);
  float* gx = a.ptr<float>(4);
  i64 n = a.num(5);
  float p = a.f32(6), q = a.f32(7);
  if (!a.ok) return nullptr;
  KERNEL(unary_backward)(op, x, y, gy, gx, n, p, q);
  return undefined(env);
}

napi_value Where(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* c = a.ptr<const float>(0);
  auto cs = a.vec(1);
  const float* x = a.ptr<const float>(2);
  auto xs = a.vec(3);
  const float* y = a.ptr<const float>(4);
  auto ys = a.vec(5);
  float* out = a.ptr<float>(6);
  auto shape = a.vec(7);
  if (!a.ok) return nullptr;
  KERNEL(where)(c, cs.data(), x, xs.data(), y, ys.data(), out, shape.data(), static_cast<int>(shape.size()));
  return undefined(env);
}

napi_value Reduce(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int op = static_cast<int>(a.num(0));
  const float* x = a.ptr<const float>(1);
  float* out = a.ptr<float>(2);
  i64 A = a.num(3), R = a.num(4), B = a.num(5);
  float scale = a.f32(6);
  if (!a.ok) return nullptr;
  KERNEL(reduce)(op, x, out, A, R, B, scale);
  return undefined(env);
}

napi_value ArgReduce(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int op = static_cast<int>(a.num(0));
  const float* x = a.ptr<const float>(1);
  float* vals = a.ptr<float>(2);
  int32_t* idx = a.ptr<int32_t>(3);
  i64 A = a.num(4), R = a.num(5), B = a.num(6);
  if (!a.ok) return nullptr;
  KERNEL(arg_reduce)(op, x, vals, idx, A, R, B);
  return undefined(env);
}

napi_value Cumsum(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  float* y = a.ptr<float>(1);
  i64 A = a.num(2), R = a.num(3), B = a.num(4);
  bool rev = a.flag(5);
  if (!a.ok) return nullptr;
  KERNEL(cumsum)(x, y, A, R, B, rev);
  return undefined(env);
}

napi_value Topk(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  float* vals = a.ptr<float>(1);
  int32_t* idx = a.ptr<int32_t>(2);
  i64 rows = a.num(3), cols = a.num(4), k = a.num(5);
  bool largest = a.flag(6);
  if (!a.ok) return nullptr;
  KERNEL(topk)(x, vals, idx, rows, cols, k, largest);
  return undefined(env);
}

napi_value SoftmaxForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  float* y = a.ptr<float>(1);
  i64 rows = a.num(2), cols = a.num(3);
  bool lg = a.flag(4);
  if (!a.ok) return nullptr;
  KERNEL(softmax_forward)(x, y, rows, cols, lg);
  return undefined(env);
}

napi_value SoftmaxBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* y = a.ptr<const float>(0);
  const float* gy = a.ptr<const float>(1);
  float* gx = a.ptr<float>(2);
  i64 rows = a.num(3), cols = a.num(4);
  bool lg = a.flag(5);
  if (!a.ok) return nullptr;
  KERNEL(softmax_backward)(y, gy, gx, rows, cols, lg);
  return undefined(env);
}

napi_value LayerNormForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const float* w = a.ptr<const float>(1);
  const float* b = a.ptr<const float>(2);
  float* y = a.ptr<float>(3);
  float* mean = a.ptr<float>(4);
  float* rstd = a.ptr<float>(5);
  i64 rows = a.num(6), cols = a.num(7);
  float eps = a.f32(8);
  if (!a.ok) return nullptr;
  KERNEL(layer_norm_forward)(x, w, b, y, mean, rstd, rows, cols, eps);
  return undefined(env);
}

napi_value LayerNormBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const float* w = a.ptr<const float>(1);
  const float* mean = a.ptr<const float>(2);
  const float* rstd = a.ptr<const float>(3);
  const float* gy = a.ptr<const float>(4);
  float* gx = a.ptr<float>(5);
  float* gw = a.ptr<float>(6);
  float* gb = a.ptr<float>(7);
  i64 rows = a.num(8), cols = a.num(9);
  if (!a.ok) return nullptr;
  KERNEL(layer_norm_backward)(x, w, mean, rstd, gy, gx, gw, gb, rows, cols);
  return undefined(env);
}

napi_value RmsNormForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const float* w = a.ptr<const float>(1);
  float* y = a.ptr<float>(2);
  float* rstd = a.ptr<float>(3);
  i64 rows = a.num(4), cols = a.num(5);
  float eps = a.f32(6);
  if (!a.ok) return nullptr;
  KERNEL(rms_norm_forward)(x, w, y, rstd, rows, cols, eps);
  return undefined(env);
}

napi_value RmsNormBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const float* w = a.ptr<const float>(1);
  const float* rstd = a.ptr<const float>(2);
  const float* gy = a.ptr<const float>(3);
  float* gx = a.ptr<float>(4);
  float* gw = a.ptr<float>(5);
  i64 rows = a.num(6), cols = a.num(7);
  if (!a.ok) return nullptr;
  KERNEL(rms_norm_backward)(x, w, rstd, gy, gx, gw, rows, cols);
  return undefined(env);
}

napi_value EmbeddingForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* w = a.ptr<const float>(0);
  const int32_t* idx = a.ptr<const int32_t>(1);
  float* out = a.ptr<float>(2);
  i64 n = a.num(3), dim = a.num(4), V = a.num(5);
  if (!a.ok) return nullptr;
  return number(env, static_cast<double>(KERNEL(embedding_forward)(w, idx, out, n, dim, V)));
}

napi_value EmbeddingBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* g = a.ptr<const float>(0);
  const int32_t* idx = a.ptr<const int32_t>(1);
  float* gw = a.ptr<float>(2);
  i64 n = a.num(3), dim = a.num(4);
  if (!a.ok) return nullptr;
  KERNEL(embedding_backward)(g, idx, gw, n, dim);
  return undefined(env);
}

napi_value CrossEntropyForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const int32_t* t = a.ptr<const int32_t>(1);
  float* loss = a.ptr<float>(2);
  float* lse = a.ptr<float>(3);
  i64 rows = a.num(4), V = a.num(5);
  int32_t ign = static_cast<int32_t>(a.num(6));
  float sm = a.f32(7);
  if (!a.ok) return nullptr;
  return number(env, static_cast<double>(KERNEL(cross_entropy_forward)(x, t, loss, lse, rows, V, ign, sm)));
}

napi_value CrossEntropyBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const int32_t* t = a.ptr<const int32_t>(1);
  const float* lse = a.ptr<const float>(2);
  const float* grow = a.ptr<const float>(3);
  float gscale = a.f32(4);
  float* gx = a.ptr<float>(5);
  i64 rows = a.num(6), V = a.num(7);
  int32_t ign = static_cast<int32_t>(a.num(8));
  float sm = a.f32(9);
  if (!a.ok) return nullptr;
  KERNEL(cross_entropy_backward)(x, t, lse, grow, gscale, gx, rows, V, ign, sm);
  return undefined(env);
}

napi_value AdamW(napi_env env, napi_callback_info info) {
  Args a(env, info);
  float* p = a.ptr<float>(0);
  const float* g = a.ptr<const float>(1);
  float* m = a.ptr<float>(2);
  float* v = a.ptr<float>(3);
  i64 n = a.num(4);
  float lr = a.f32(5), b1 = a.f32(6), b2 = a.f32(7), eps = a.f32(8), wd = a.f32(9), bc1 = a.f32(10),
        bc2 = a.f32(11), gs = a.f32(12);
  if (!a.ok) return nullptr;
  KERNEL(adamw)(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2, gs);
  return undefined(env);
}

napi_value AttentionForward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* q = a.ptr<const float>(0);
  const float* k = a.ptr<const float>(1);
  const float* v = a.ptr<const float>(2);
  float* o = a.ptr<float>(3);
  float* lse = a.ptr<float>(4);
  i64 BH = a.num(5), T = a.num(6), S = a.num(7), D = a.num(8);
  float scale = a.f32(9);
  bool causal = a.flag(10);
  if (!a.ok) return nullptr;
  KERNEL(attention_forward)(q, k, v, o, lse, BH, T, S, D, scale, causal);
  return undefined(env);
}

napi_value AttentionBackward(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* q = a.ptr<const float>(0);
  const float* k = a.ptr<const float>(1);
  const float* v = a.ptr<const float>(2);
  const float* o = a.ptr<const float>(3);
  const float* go = a.ptr<const float>(4);
  const float* lse = a.ptr<const float>(5);
  float* gq = a.ptr<float>(6);
  float* gk = a.ptr<float>(7);
  float* gv = a.ptr<float>(8);
  i64 BH = a.num(9), T = a.num(10), S = a.num(11), D = a.num(12);
  float scale = a.f32(13);
  bool causal = a.flag(14);
  if (!a.ok) return nullptr;
  KERNEL(attention_backward)(q, k, v, o, go, lse, gq, gk, gv, BH, T, S, D, scale, causal);
  return undefined(env);
}

napi_value KvCacheWrite(napi_env env, napi_callback_info info) {
  Args a(env, info);
  float* kc = a.ptr<float>(0);
  float* vc = a.ptr<float>(1);
  const float* k = a.ptr<const float>(2);
  const float* v = a.ptr<const float>(3);
  const int32_t* slots = a.ptr<const int32_t>(4);
  i64 n = a.num(5), row = a.num(6);
  if (!a.ok) return nullptr;
  KERNEL(kv_cache_write)(kc, vc, k, v, slots, n, row);
  return undefined(env);
}

napi_value PagedAttention(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* q = a.ptr<const float>(0);
  const float* kc = a.ptr<const float>(1);
  const float* vc = a.ptr<const float>(2);
  const int32_t* bt = a.ptr<const int32_t>(3);
  i64 maxBlocks = a.num(4), blockSize = a.num(5);
  const int32_t* seq = a.ptr<const int32_t>(6);
  const int32_t* pos = a.ptr<const int32_t>(7);
  float* out = a.ptr<float>(8);
  i64 n = a.num(9), H = a.num(10), D = a.num(11);
  float scale = a.f32(12);
  if (!a.ok) return nullptr;
  KERNEL(paged_attention)(q, kc, vc, bt, maxBlocks, blockSize, seq, pos, out, n, H, D, scale);
  return undefined(env);
}

napi_value QuantInt8Rowwise(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* w = a.ptr<const float>(0);
  int8_t* q = a.ptr<int8_t>(1);
  float* scales = a.ptr<float>(2);
  i64 rows = a.num(3), cols = a.num(4);
  if (!a.ok) return nullptr;
  KERNEL(quant_int8_rowwise)(w, q, scales, rows, cols);
  return undefined(env);
}

napi_value MatmulInt8(napi_env env, napi_callback_info info) {
  Args a(env, info);
  const float* x = a.ptr<const float>(0);
  const int8_t* q = a.ptr<const int8_t>(1);
  const float* scales = a.ptr<const float>(2);
  const float* bias = a.ptr<const float>(3);  // null or undefined: no bias
  float* y = a.ptr<float>(4);
  i64 M = a.num(5), N = a.num(6), K = a.num(7);
  if (!a.ok) return nullptr;
  KERNEL(matmul_int8)(x, q, scales, bias, y, M, N, K);
  return undefined(env);
}

napi_value Gemm(napi_env env, napi_callback_info info) {
  Args a(env, info);
  bool ta = a.flag(0), tb = a.flag(1);
  i64 M = a.num(2), N = a.num(3), K = a.num(4);
  float alpha = a.f32(5);
  const float* A = a.ptr<const float>(6);
  i64 lda = a.num(7), sa = a.num(8);
  const float* B = a.ptr<const float>(9);
  i64 ldb = a.num(10), sb = a.num(11);
  float beta = a.f32(12);
  float* C = a.ptr<float>(13);
  i64 ldc = a.num(14), sc = a.num(15), batch = a.num(16);
  if (!a.ok) return nullptr;
  mg::gemm_f32(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
  return undefined(env);
}

napi_value Random(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int kind = static_cast<int>(a.num(0));
  uint64_t seed = static_cast<uint64_t>(a.num(1));
  uint64_t off = static_cast<uint64_t>(a.num(2));
  float* out = a.ptr<float>(3);
  i64 n = a.num(4);
  float p = a.f32(5), q = a.f32(6);
  if (!a.ok) return nullptr;
  mg::random_f32(kind, seed, off, out, n, p, q);
  return undefined(env);
}

napi_value Dropout(napi_env env, napi_callback_info info) {
  Args a(env, info);
  uint64_t seed = static_cast<uint64_t>(a.num(0));
  uint64_t off = static_cast<uint64_t>(a.num(1));
  float p = a.f32(2);
  const float* x = a.ptr<const float>(3);
  float* y = a.ptr<float>(4);
  i64 n = a.num(5);
  if (!a.ok) return nullptr;
  mg::dropout_f32(seed, off, p, x, y, n);
  return undefined(env);
}

napi_value Init(napi_env env, napi_value exports) {
  g_avx512 = cpu_has_avx512();
  const char* ks = std::getenv("MEGALITH_KERNELS");
  if (ks && std::string(ks) == "generic") g_avx512 = false;
  openblas_set_num_threads(1);  // our pool parallelises around single-threaded sgemm calls
  struct { const char* name; napi_callback cb; } fns[] = {
      {"alloc", Alloc}, {"free", Free}, {"setCategory", SetCategory}, {"memoryStats", MemoryStats}, {"resetPeak", ResetPeak},
      {"emptyCache", EmptyCache}, {"write", Write}, {"read", Read}, {"setNumThreads", SetNumThreads},
      {"numThreads", NumThreads}, {"cpuInfo", CpuInfo}, {"setKernelSet", SetKernelSet}, {"fill", Fill},
      {"copyStrided", CopyStrided}, {"cast", Cast}, {"binary", Binary}, {"unary", Unary},
      {"unaryBackward", UnaryBackward}, {"where", Where}, {"reduce", Reduce}, {"argReduce", ArgReduce},
      {"cumsum", Cumsum}, {"topk", Topk}, {"softmaxForward", SoftmaxForward},
      {"softmaxBackward", SoftmaxBackward}, {"layerNormForward", LayerNormForward},
      {"layerNormBackward", LayerNormBackward}, {"rmsNormForward", RmsNormForward},
      {"rmsNormBackward", RmsNormBackward}, {"embeddingForward", EmbeddingForward},
      {"embeddingBackward", EmbeddingBackward}, {"crossEntropyForward", CrossEntropyForward},
      {"crossEntropyBackward", CrossEntropyBackward}, {"adamw", AdamW},
      {"attentionForward", AttentionForward}, {"attentionBackward", AttentionBackward}, {"gemm", Gemm},
      {"random", Random}, {"dropout", Dropout}, {"kvCacheWrite", KvCacheWrite},
      {"pagedAttention", PagedAttention}, {"quantInt8Rowwise", QuantInt8Rowwise}, {"matmulInt8", MatmulInt8},
  };
  for (auto& f : fns) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)

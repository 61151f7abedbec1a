// N-API surface of the native core: buffers in, buffers out.
//
// Buffers are raw addresses (JS numbers; user-space x86-64 pointers fit in 53 bits) owned by
// the caching allocator. The TypeScript side (src/backend/native/) validates shapes, dtypes and
// bounds before calling. This file holds the hand-written utilities (memory, threads, CPU
// info); the kernels' wrappers are generated (_kernels.gen.inc) and call mg::api (api.cc).
#include <node_api.h>

#include <cblas.h>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "megalith.h"

extern "C" void openblas_set_num_threads(int);

namespace {

using mg::i64;

// Argument unpacking for the hand-written utilities below.
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
  template <typename T>
  T* ptr(size_t i) {
    napi_value v = at(i);
    if (!v) return nullptr;
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (t == napi_null || t == napi_undefined) return nullptr;
    return reinterpret_cast<T*>(static_cast<uintptr_t>(num(i)));
  }
};

// Argument unpacking for the generated kernel wrappers (_kernels.gen.inc): every error names
// the kernel and the argument ("native binary: argument aStrides must be an array of numbers").
class KernelArgs {
 public:
  bool ok = true;

  KernelArgs(napi_env env, napi_callback_info info, const char* kernel, size_t required, size_t total)
      : env_(env), kernel_(kernel) {
    argc_ = kMaxArgs;
    napi_get_cb_info(env, info, &argc_, argv_, nullptr, nullptr);
    if (total > kMaxArgs) fail("the generated wrapper takes more than " + std::to_string(kMaxArgs) + " arguments");
    else if (argc_ < required || argc_ > total)
      fail("expected " + (required == total ? std::to_string(total) : std::to_string(required) + ".." + std::to_string(total)) +
           " arguments, got " + std::to_string(argc_));
  }

  void fail(const std::string& msg) {
    if (ok) napi_throw_error(env_, "ERR_MEGALITH_NATIVE", (std::string("native ") + kernel_ + ": " + msg).c_str());
    ok = false;
  }

  // Throws a message as it is (errors from mg::api, which name the kernel themselves).
  void raise(const char* msg) {
    if (ok) napi_throw_error(env_, "ERR_MEGALITH_NATIVE", msg);
    ok = false;
  }

  // A "view" that is null reaches the kernel as nullptr, as it did before the table: today's
  // callers pass null for unaryBackward's unused x or y (the table should say "view?" there).
  void* view(size_t i, const char* name) { return optView(i, name); }
  void* optView(size_t i, const char* name) {
    napi_valuetype t = type(i);
    if (t == napi_null || t == napi_undefined) return nullptr;
    return reinterpret_cast<void*>(static_cast<uintptr_t>(i64(i, name)));
  }
  int64_t i64(size_t i, const char* name) {
    int64_t out = 0;
    if (ok && napi_get_value_int64(env_, argv_[i], &out) != napi_ok) bad(name, "must be a number");
    return out;
  }
  double f64(size_t i, const char* name) {
    double out = 0;
    if (ok && napi_get_value_double(env_, argv_[i], &out) != napi_ok) bad(name, "must be a number");
    return out;
  }
  bool flag(size_t i, const char* name) {
    bool out = false;
    if (ok && napi_get_value_bool(env_, argv_[i], &out) != napi_ok) bad(name, "must be a boolean");
    return out;
  }
  int op(size_t i, const char* name) { return static_cast<int>(i64(i, name)); }
  // A dtype code (0 = float32, ...) or its name ("bfloat16"); an omitted trailing dtype is float32.
  int dtype(size_t i, const char* name) {
    if (!ok || i >= argc_ || type(i) == napi_undefined) return mg::kF32;
    if (type(i) == napi_string) {
      char buf[32] = {0};
      size_t len = 0;
      napi_get_value_string_utf8(env_, argv_[i], buf, sizeof(buf), &len);
      for (int c = 0; c < mg::kNumDTypeCodes; c++)
        if (mg::kDTypeNames[c] && std::strcmp(buf, mg::kDTypeNames[c]) == 0) return c;
      bad(name, "is an unknown dtype \"" + std::string(buf, len) + "\"");
      return 0;
    }
    int64_t c = i64(i, name);
    if (ok && (c < 0 || c >= mg::kNumDTypeCodes || !mg::kDTypeNames[c])) bad(name, "is an unknown dtype code " + std::to_string(c));
    return static_cast<int>(c);
  }
  mg::Dims dims(size_t i, const char* name) {
    mg::Dims d;
    if (!ok) return d;
    uint32_t len = 0;
    bool is_array = false;
    napi_is_array(env_, argv_[i], &is_array);
    if (!is_array || napi_get_array_length(env_, argv_[i], &len) != napi_ok) { bad(name, "must be an array of numbers"); return d; }
    if (len > static_cast<uint32_t>(mg::kMaxDimsPublic)) {
      bad(name, "has more than 12 dimensions (" + std::to_string(len) + ")");
      return d;
    }
    d.n = static_cast<int>(len);
    for (uint32_t j = 0; j < len; j++) {
      napi_value e;
      napi_get_element(env_, argv_[i], j, &e);
      if (napi_get_value_int64(env_, e, &d.v[j]) != napi_ok) { bad(name, "must be an array of numbers"); return d; }
    }
    return d;
  }
  napi_value number(double x) {
    napi_value v;
    napi_create_double(env_, x, &v);
    return v;
  }
  napi_value undefined() {
    napi_value v;
    napi_get_undefined(env_, &v);
    return v;
  }

 private:
  static constexpr size_t kMaxArgs = 24;
  napi_env env_;
  const char* kernel_;
  size_t argc_;
  napi_value argv_[kMaxArgs];

  napi_valuetype type(size_t i) {
    napi_valuetype t = napi_undefined;
    if (i < argc_) napi_typeof(env_, argv_[i], &t);
    return t;
  }
  void bad(const char* name, const std::string& what) { fail(std::string("argument ") + name + " " + what); }
};

#define MG_GEN_NAPI
#include "_kernels.gen.inc"

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

napi_value boolean(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

napi_value string(napi_env env, const char* s) {
  napi_value v;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

// cpuInfo() -> { avx512, avx512bf16, avx2, kernels, gemmBf16, isa: [features present] }
napi_value CpuInfo(napi_env env, napi_callback_info) {
  napi_value obj, isa;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "avx512", boolean(env, mg::kernel_set_supported(mg::kSetAvx512)));
  napi_set_named_property(env, obj, "avx512bf16", boolean(env, mg::cpu_has("avx512bf16")));
  napi_set_named_property(env, obj, "avx2", boolean(env, mg::kernel_set_supported(mg::kSetAvx2)));
  napi_set_named_property(env, obj, "kernels", string(env, mg::kernel_set_name(mg::kernel_set())));
  napi_set_named_property(env, obj, "gemmBf16", string(env, mg::gemm_bf16_backend()));
  napi_create_array(env, &isa);
  uint32_t n = 0;
  for (const char* f : {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16", "avx512fp16"})
    if (mg::cpu_has(f)) napi_set_element(env, isa, n++, string(env, f));
  napi_set_named_property(env, obj, "isa", isa);
  return obj;
}

// setKernelSet("avx512" | "avx2" | "generic"): tests run every set against the same reference.
napi_value SetKernelSet(napi_env env, napi_callback_info info) {
  Args a(env, info);
  napi_value v = a.at(0);
  if (!a.ok) return nullptr;
  char buf[32] = {0};
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, sizeof(buf), &len) != napi_ok) {
    a.fail("setKernelSet: expected a string (\"avx512\", \"avx2\" or \"generic\")");
    return nullptr;
  }
  std::string err = mg::select_kernel_set(std::string(buf, len));
  if (!err.empty()) { a.fail("setKernelSet: " + err); return nullptr; }
  return undefined(env);
}

napi_value Init(napi_env env, napi_value exports) {
  std::string err = mg::init_kernel_set();
  if (!err.empty()) {
    napi_throw_error(env, "ERR_MEGALITH_NATIVE", ("megalith native: " + err).c_str());
    return nullptr;
  }
  openblas_set_num_threads(1);  // our pool parallelises around single-threaded sgemm calls
  const struct { const char* name; napi_callback cb; } utilities[] = {
      {"alloc", Alloc}, {"free", Free}, {"setCategory", SetCategory}, {"memoryStats", MemoryStats},
      {"resetPeak", ResetPeak}, {"emptyCache", EmptyCache}, {"write", Write}, {"read", Read},
      {"setNumThreads", SetNumThreads}, {"numThreads", NumThreads}, {"cpuInfo", CpuInfo},
      {"setKernelSet", SetKernelSet},
  };
  for (auto& f : utilities) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  for (auto& f : kGeneratedKernels) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)

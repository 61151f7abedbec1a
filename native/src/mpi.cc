// MPI binding (the megalith_mpi addon, loaded only under mpirun): the N-API surface.
//
//   init()                      -> {rank, size, tagLimit, library}
//   split(comm, color, key, name) -> {handle, rank, size, worldRanks} | null (color < 0)
//   call(kind)                  a blocking call; its arguments are in `args`
//   callAsync(kind)             -> Promise<number>: resolves when the call is done, with the
//                               seconds it took on the communication thread
//   args                        Float64Array: comm, send, recv, count, dtype, arg, tag, timeoutS,
//                               ndim, dims... (src/parallel/_mpi_native.ts writes it)
//   kinds                       {allReduce: 0, ...}: the codes `kind` takes
//   abort(code), finalize() -> bool
//   setNice(comm, nice)         niceness of the communicator's thread (-1 = MEGALITH_COMM_NICE / 10)
//
// Buffers are raw addresses (JS numbers) of the main addon's allocations, as everywhere in
// Megalith. Asynchronous calls run on the communicator's own thread (mpi_exec.cc explains why)
// and come back through a napi_threadsafe_function, which is referenced only while calls are
// outstanding, so an idle communicator never keeps the process alive.
//
// Open MPI loads its transport plugins with dlopen, and they need libmpi's symbols global; a
// Node addon and its libraries are loaded RTLD_LOCAL, so init() re-opens libmpi RTLD_GLOBAL
// before MPI_Init_thread.
#include <dlfcn.h>
#include <node_api.h>

#include <cstdio>
#include <cstring>

#include "mpi_core.h"

namespace mgmpi {

namespace {

bool g_inited = false;
bool g_finalized = false;
int g_tag_limit = 32767;  // largest user tag (MPI_TAG_UB / 2: every send uses two MPI tags)
napi_threadsafe_function g_tsfn = nullptr;

// The shared argument array: JS writes a call's arguments here, then calls call(kind), so a
// call crosses N-API with one argument (this is the hot path of small collectives).
enum ArgSlot { kArgComm, kArgSend, kArgRecv, kArgCount, kArgDType, kArgArg, kArgTag, kArgTimeout, kArgNDim, kArgDims, kArgSlots = kArgDims + kMaxDims };
double* g_args = nullptr;
napi_ref g_args_ref = nullptr;
int g_outstanding = 0;    // asynchronous calls whose Promise is not settled (JS thread only)

napi_value throw_error(napi_env env, const std::string& msg) {
  napi_throw_error(env, "ERR_MEGALITH_MPI", msg.c_str());
  return nullptr;
}

napi_value make_error(napi_env env, const std::string& msg) {
  napi_value m, code, err;
  napi_create_string_utf8(env, msg.c_str(), NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, "ERR_MEGALITH_MPI", NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, m, &err);
  return err;
}

napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

bool get_num(napi_env env, napi_value v, double* out, const char* fn, int i) {
  if (napi_get_value_double(env, v, out) == napi_ok) return true;
  throw_error(env, std::string("mpi.") + fn + ": argument " + std::to_string(i) + " must be a number");
  return false;
}

// Runs on the JS thread for every finished asynchronous call.
void settle(napi_env env, napi_value, void*, void* data) {
  Op* op = static_cast<Op*>(data);
  if (env != nullptr) {
    napi_deferred d = static_cast<napi_deferred>(op->deferred);
    if (op->error.empty()) {
      napi_resolve_deferred(env, d, num(env, op->seconds));
    } else {
      napi_reject_deferred(env, d, make_error(env, op->error));
    }
    if (--g_outstanding == 0) napi_unref_threadsafe_function(env, g_tsfn);
  }
  delete op;
}

// Parses a call: `kind` is the only JS argument; the rest is in the shared argument array
// (`args` on the exports, written by _mpi_native.ts just before the call).
bool parse_call(napi_env env, napi_callback_info info, Op* op, const char* fn) {
  if (!g_inited) {
    throw_error(env, std::string("mpi.") + fn + ": call init() first");
    return false;
  }
  size_t argc = 1;
  napi_value argv[1];
  double kind = -1;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < 1 || !get_num(env, argv[0], &kind, fn, 0)) return false;
  const double* a = g_args;
  op->kind = static_cast<int>(kind);
  op->comm = comm_at(static_cast<int>(a[kArgComm]));
  op->send = reinterpret_cast<void*>(static_cast<uintptr_t>(a[kArgSend]));
  op->recv = reinterpret_cast<void*>(static_cast<uintptr_t>(a[kArgRecv]));
  op->count = static_cast<int64_t>(a[kArgCount]);
  op->dtype = static_cast<int>(a[kArgDType]);
  op->arg = static_cast<int>(a[kArgArg]);
  op->tag = static_cast<int>(a[kArgTag]);
  op->timeout_s = a[kArgTimeout] > 0 ? a[kArgTimeout] : 0;
  // Checks (the message is built only on failure: this runs on every call).
  auto bad = [&](const std::string& msg) {
    throw_error(env, std::string("mpi.") + fn + "(" + kind_name(op->kind) + "): " + msg);
    return false;
  };
  if (op->kind < 0 || op->kind >= kNumKinds || op->kind == kSplit) return bad("unknown call kind " + std::to_string(op->kind));
  if (!op->comm) return bad("no communicator with handle " + std::to_string(static_cast<int>(a[1])));
  if (op->dtype < 0 || op->dtype >= kNumDTypes) return bad("unknown dtype code " + std::to_string(op->dtype));
  if (op->count < 0) return bad("negative element count " + std::to_string(op->count));
  if (op->count > 0 && op->send == nullptr && op->kind != kBarrier && op->kind != kFence) return bad("null buffer");
  const bool two_buffers = op->kind == kAllGather || op->kind == kReduceScatter || op->kind == kAllToAll;
  if (two_buffers && op->count > 0 && op->recv == nullptr) return bad("null output buffer");
  const int size = op->comm->size;
  const bool reduces = op->kind == kAllReduce || op->kind == kReduceScatter;
  if (reduces && (op->arg < kSum || op->arg > kAvg)) return bad("unknown reduction code " + std::to_string(op->arg));
  if (reduces && op->arg == kAvg && op->dtype != kF32 && op->dtype != kBF16 && op->dtype != kF16)
    return bad(std::string("avg needs a floating dtype, got ") + dtype_name(op->dtype));
  if (op->kind == kBroadcast && (op->arg < 0 || op->arg >= size))
    return bad("root " + std::to_string(op->arg) + " is not a rank of a group of " + std::to_string(size));
  if (op->kind == kSend || op->kind == kRecv) {
    if (op->arg < 0 || op->arg >= size || op->arg == op->comm->rank)
      return bad("peer " + std::to_string(op->arg) + " must be another rank of the group (0.." + std::to_string(size - 1) + ", this rank is " +
                 std::to_string(op->comm->rank) + ")");
    if (op->tag < 0 || op->tag > g_tag_limit) return bad("tag " + std::to_string(op->tag) + " is outside 0.." + std::to_string(g_tag_limit));
    const double ndim = a[kArgNDim];
    if (!(ndim >= 0 && ndim <= kMaxDims)) return bad("a shape has at most " + std::to_string(kMaxDims) + " dimensions, got " + std::to_string(ndim));
    op->ndim = static_cast<int>(ndim);
    for (int i = 0; i < op->ndim; i++) op->shape[i] = static_cast<int64_t>(a[kArgDims + i]);
  }
  return true;
}

napi_value Call(napi_env env, napi_callback_info info) {
  Op op;
  if (!parse_call(env, info, &op, "call")) return nullptr;
  run_blocking(&op);
  if (!op.error.empty()) return throw_error(env, op.error);
  return nullptr;
}

napi_value CallAsync(napi_env env, napi_callback_info info) {
  Op* op = new Op();
  if (!parse_call(env, info, op, "callAsync")) {
    delete op;
    return nullptr;
  }
  napi_value promise;
  napi_deferred d;
  napi_create_promise(env, &d, &promise);
  op->deferred = d;
  if (g_outstanding++ == 0) napi_ref_threadsafe_function(env, g_tsfn);
  run_async(op);
  return promise;
}

napi_value Init(napi_env env, napi_callback_info) {
  if (!g_inited) {
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
      if (!dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL) && !dlopen("libmpi.so", RTLD_NOW | RTLD_GLOBAL)) {
        const char* why = dlerror();
        return throw_error(env, std::string("mpi.init: could not load libmpi with RTLD_GLOBAL (") + (why ? why : "?") +
                                "); install Open MPI (libopenmpi3 / libopenmpi-dev)");
      }
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return throw_error(env, "mpi.init: MPI_Init_thread failed");
      if (provided < MPI_THREAD_MULTIPLE) {
        return throw_error(env, "mpi.init: the MPI library offers thread level " + std::to_string(provided) +
                                ", Megalith needs MPI_THREAD_MULTIPLE (communication threads call MPI concurrently); use an MPI built with thread support");
      }
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world_size);
    int* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    if (flag && ub) g_tag_limit = (*ub - 1) / 2;
    setup_types();
    register_world();
    watchdog_start();
    napi_value name;
    napi_create_string_utf8(env, "megalith_mpi", NAPI_AUTO_LENGTH, &name);
    napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, nullptr, settle, &g_tsfn);
    napi_unref_threadsafe_function(env, g_tsfn);
    g_inited = true;
  }
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  std::string library(lib, static_cast<size_t>(len));
  library = library.substr(0, library.find_first_of(",\n"));
  napi_value obj, s;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "rank", num(env, g_world_rank));
  napi_set_named_property(env, obj, "size", num(env, g_world_size));
  napi_set_named_property(env, obj, "tagLimit", num(env, g_tag_limit));
  napi_create_string_utf8(env, library.c_str(), NAPI_AUTO_LENGTH, &s);
  napi_set_named_property(env, obj, "library", s);
  return obj;
}

napi_value Split(napi_env env, napi_callback_info info) {
  if (!g_inited) return throw_error(env, "mpi.split: call init() first");
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  double a[3];
  if (argc < 4) return throw_error(env, "mpi.split: expected (comm, color, key, name)");
  for (int i = 0; i < 3; i++) if (!get_num(env, argv[i], &a[i], "split", i)) return nullptr;
  char name[128] = {0};
  size_t nlen = 0;
  napi_get_value_string_utf8(env, argv[3], name, sizeof name, &nlen);
  Op op;
  op.kind = kSplit;
  op.comm = comm_at(static_cast<int>(a[0]));
  if (!op.comm) return throw_error(env, "mpi.split: no communicator with handle " + std::to_string(static_cast<int>(a[0])));
  op.color = static_cast<int>(a[1]);
  op.key = static_cast<int>(a[2]);
  op.name = name;
  run_blocking(&op);
  if (!op.error.empty()) return throw_error(env, op.error);
  napi_value obj, ranks;
  if (op.result < 0) {
    napi_get_null(env, &obj);
    return obj;
  }
  Comm* c = comm_at(op.result);
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "handle", num(env, op.result));
  napi_set_named_property(env, obj, "rank", num(env, c->rank));
  napi_set_named_property(env, obj, "size", num(env, c->size));
  napi_create_array_with_length(env, c->world_ranks.size(), &ranks);
  for (size_t i = 0; i < c->world_ranks.size(); i++) napi_set_element(env, ranks, static_cast<uint32_t>(i), num(env, c->world_ranks[i]));
  napi_set_named_property(env, obj, "worldRanks", ranks);
  return obj;
}

napi_value Abort(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double code = 1;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc >= 1) napi_get_value_double(env, argv[0], &code);
  std::fflush(stdout);
  std::fflush(stderr);
  if (g_inited) MPI_Abort(MPI_COMM_WORLD, static_cast<int>(code));
  std::_Exit(static_cast<int>(code));
}

// A clean shutdown: stops the watchdog and the communication threads, then MPI_Finalize.
// Returns false (and does not finalize) when a call is still running: MPI forbids finalizing
// under a thread that is inside MPI, and the process is exiting anyway.
napi_value Finalize(napi_env env, napi_callback_info) {
  napi_value r;
  if (!g_inited || g_finalized) {
    napi_get_boolean(env, true, &r);
    return r;
  }
  const bool idle = stop_comm_threads();
  if (idle) {
    watchdog_stop();
    MPI_Finalize();
    g_finalized = true;
  }
  napi_get_boolean(env, idle, &r);
  return r;
}

// setNice(comm, nice): the niceness of the communicator's communication thread (-1: default).
napi_value SetNice(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double a[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < 2) return throw_error(env, "mpi.setNice: expected (comm, nice)");
  for (int i = 0; i < 2; i++) if (!get_num(env, argv[i], &a[i], "setNice", i)) return nullptr;
  if (!set_comm_nice(static_cast<int>(a[0]), static_cast<int>(a[1]))) return throw_error(env, "mpi.setNice: no communicator with handle " + std::to_string(static_cast<int>(a[0])));
  return nullptr;
}

napi_value Register(napi_env env, napi_value exports) {
  struct {
    const char* name;
    napi_callback cb;
  } fns[] = {{"init", Init}, {"split", Split}, {"call", Call}, {"callAsync", CallAsync}, {"abort", Abort}, {"finalize", Finalize}, {"setNice", SetNice}};
  for (auto& f : fns) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  napi_value buffer, args;
  void* data = nullptr;
  napi_create_arraybuffer(env, kArgSlots * sizeof(double), &data, &buffer);
  g_args = static_cast<double*>(data);
  napi_create_reference(env, buffer, 1, &g_args_ref);
  napi_create_typedarray(env, napi_float64_array, kArgSlots, buffer, 0, &args);
  napi_set_named_property(env, exports, "args", args);
  napi_value kinds;
  napi_create_object(env, &kinds);
  for (int k = 0; k < kNumKinds; k++) napi_set_named_property(env, kinds, kind_name(k), num(env, k));
  napi_set_named_property(env, exports, "kinds", kinds);
  return exports;
}

}  // namespace

void complete_async(Op* op) { napi_call_threadsafe_function(g_tsfn, op, napi_tsfn_nonblocking); }

}  // namespace mgmpi

NAPI_MODULE(NODE_GYP_MODULE_NAME, mgmpi::Register)

// MPI binding (a separate addon, loaded only when running under mpirun): collectives on raw
// buffers, blocking or asynchronous. Async calls run the blocking MPI call on libuv's worker
// pool (napi_async_work) and settle a Promise, so JavaScript keeps computing meanwhile; MPI is
// initialised with MPI_THREAD_MULTIPLE, so calls from those threads are legal.
//
// Open MPI loads its transport plugins with dlopen and needs libmpi's symbols global, which a
// Node addon (loaded RTLD_LOCAL) does not give: init() re-opens libmpi with RTLD_GLOBAL first.
#define OMPI_SKIP_MPICXX 1  // the C API only: the deprecated C++ bindings need libmpi_cxx
#define MPICH_SKIP_MPICXX 1
#include <dlfcn.h>
#include <mpi.h>
#include <node_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::vector<MPI_Comm> g_comms;  // handle -> communicator (0 = world)

MPI_Datatype dtype_of(int code) {
  switch (code) {
    case 0: return MPI_FLOAT;
    case 2: return MPI_INT32_T;
    case 3: return MPI_INT8_T;
    case 4: return MPI_UINT8_T;
    default: return MPI_UINT16_T;  // 16-bit storage types move as raw 16-bit words
  }
}

MPI_Op op_of(int code) {
  switch (code) {
    case 1: return MPI_MAX;
    case 2: return MPI_MIN;
    default: return MPI_SUM;
  }
}

napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

bool get_args(napi_env env, napi_callback_info info, size_t n, double* out) {
  size_t argc = 12;
  napi_value argv[12];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < n) {
    napi_throw_error(env, "ERR_MEGALITH_MPI", ("mpi: expected " + std::to_string(n) + " arguments").c_str());
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (napi_get_value_double(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_error(env, "ERR_MEGALITH_MPI", ("mpi: argument " + std::to_string(i) + " must be a number").c_str());
      return false;
    }
  }
  return true;
}

MPI_Comm comm_of(double h) {
  size_t i = static_cast<size_t>(h);
  return i < g_comms.size() ? g_comms[i] : MPI_COMM_NULL;
}

// One collective call, described by plain numbers so it can run on a worker thread.
struct Call {
  int kind;  // 0 allreduce, 1 bcast, 2 allgather, 3 reduce_scatter, 4 barrier, 5 send, 6 recv, 7 alltoall
  double a[10];
  int rc = MPI_SUCCESS;
  napi_deferred deferred = nullptr;
  napi_async_work work = nullptr;
};

void run_call(Call& c) {
  MPI_Comm comm = comm_of(c.a[0]);
  void* buf = reinterpret_cast<void*>(static_cast<uintptr_t>(c.a[1]));
  void* out = reinterpret_cast<void*>(static_cast<uintptr_t>(c.a[2]));
  int count = static_cast<int>(c.a[3]);
  MPI_Datatype dt = dtype_of(static_cast<int>(c.a[4]));
  switch (c.kind) {
    case 0: c.rc = MPI_Allreduce(MPI_IN_PLACE, buf, count, dt, op_of(static_cast<int>(c.a[5])), comm); break;
    case 1: c.rc = MPI_Bcast(buf, count, dt, static_cast<int>(c.a[5]), comm); break;
    case 2: c.rc = MPI_Allgather(buf, count, dt, out, count, dt, comm); break;
    case 3: c.rc = MPI_Reduce_scatter_block(buf, out, count, dt, op_of(static_cast<int>(c.a[5])), comm); break;
    case 4: c.rc = MPI_Barrier(comm); break;
    case 5: c.rc = MPI_Send(buf, count, dt, static_cast<int>(c.a[5]), static_cast<int>(c.a[6]), comm); break;
    case 6: c.rc = MPI_Recv(buf, count, dt, static_cast<int>(c.a[5]), static_cast<int>(c.a[6]), comm, MPI_STATUS_IGNORE); break;
    case 7: c.rc = MPI_Alltoall(buf, count, dt, out, count, dt, comm); break;
  }
}

const char* kNames[] = {"allReduce", "broadcast", "allGather", "reduceScatter", "barrier", "send", "recv", "allToAll"};

template <int KIND, int NARGS>
napi_value Blocking(napi_env env, napi_callback_info info) {
  Call c;
  c.kind = KIND;
  std::memset(c.a, 0, sizeof(c.a));
  if (!get_args(env, info, NARGS, c.a)) return nullptr;
  run_call(c);
  if (c.rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(c.rc, msg, &len);
    napi_throw_error(env, "ERR_MEGALITH_MPI", (std::string("mpi ") + kNames[KIND] + ": " + msg).c_str());
  }
  return nullptr;
}

template <int KIND, int NARGS>
napi_value Async(napi_env env, napi_callback_info info) {
  Call* c = new Call();
  c->kind = KIND;
  std::memset(c->a, 0, sizeof(c->a));
  if (!get_args(env, info, NARGS, c->a)) {
    delete c;
    return nullptr;
  }
  napi_value promise, name;
  napi_create_promise(env, &c->deferred, &promise);
  napi_create_string_utf8(env, kNames[KIND], NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(
      env, nullptr, name, [](napi_env, void* d) { run_call(*static_cast<Call*>(d)); },
      [](napi_env env, napi_status, void* d) {
        Call* c = static_cast<Call*>(d);
        if (c->rc == MPI_SUCCESS) {
          napi_value u;
          napi_get_undefined(env, &u);
          napi_resolve_deferred(env, c->deferred, u);
        } else {
          char msg[MPI_MAX_ERROR_STRING];
          int len = 0;
          MPI_Error_string(c->rc, msg, &len);
          napi_value m, err;
          napi_create_string_utf8(env, (std::string("mpi ") + kNames[c->kind] + ": " + msg).c_str(), NAPI_AUTO_LENGTH, &m);
          napi_create_error(env, nullptr, m, &err);
          napi_reject_deferred(env, c->deferred, err);
        }
        napi_delete_async_work(env, c->work);
        delete c;
      },
      c, &c->work);
  napi_queue_async_work(env, c->work);
  return promise;
}

napi_value Init(napi_env env, napi_callback_info) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL);
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_comms.assign(1, MPI_COMM_WORLD);
  }
  int rank = 0, size = 1, provided = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Query_thread(&provided);
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "rank", num(env, rank));
  napi_set_named_property(env, obj, "size", num(env, size));
  napi_set_named_property(env, obj, "threadMultiple", num(env, provided == MPI_THREAD_MULTIPLE ? 1 : 0));
  return obj;
}

// split(comm, color, key) -> {handle, rank, size}
napi_value Split(napi_env env, napi_callback_info info) {
  double a[3];
  if (!get_args(env, info, 3, a)) return nullptr;
  MPI_Comm nc;
  MPI_Comm_split(comm_of(a[0]), static_cast<int>(a[1]), static_cast<int>(a[2]), &nc);
  MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
  g_comms.push_back(nc);
  int rank = 0, size = 1;
  MPI_Comm_rank(nc, &rank);
  MPI_Comm_size(nc, &size);
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "handle", num(env, static_cast<double>(g_comms.size() - 1)));
  napi_set_named_property(env, obj, "rank", num(env, rank));
  napi_set_named_property(env, obj, "size", num(env, size));
  return obj;
}

napi_value Abort(napi_env env, napi_callback_info info) {
  double a[1];
  if (!get_args(env, info, 1, a)) return nullptr;
  MPI_Abort(MPI_COMM_WORLD, static_cast<int>(a[0]));
  return nullptr;
}

napi_value Finalize(napi_env env, napi_callback_info) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
  return nullptr;
}

napi_value Register(napi_env env, napi_value exports) {
  struct { const char* name; napi_callback cb; } fns[] = {
      {"init", Init}, {"split", Split}, {"abort", Abort}, {"finalize", Finalize},
      // (comm, buf, out, count, dtype, op|root|peer, tag)
      {"allReduce", Blocking<0, 6>}, {"allReduceAsync", Async<0, 6>},
      {"broadcast", Blocking<1, 6>}, {"broadcastAsync", Async<1, 6>},
      {"allGather", Blocking<2, 5>}, {"allGatherAsync", Async<2, 5>},
      {"reduceScatter", Blocking<3, 6>}, {"reduceScatterAsync", Async<3, 6>},
      {"barrier", Blocking<4, 1>}, {"barrierAsync", Async<4, 1>},
      {"send", Blocking<5, 7>}, {"recv", Blocking<6, 7>},
      {"allToAll", Blocking<7, 5>},
  };
  for (auto& f : fns) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Register)

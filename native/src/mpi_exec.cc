// The MPI calls themselves, communicators, and one communication thread per communicator.
//
// Why a thread per communicator (and not libuv's pool, nor MPI_I* + polling):
//  - MPI requires the collectives of a communicator to be issued in the same order on every
//    rank. libuv's pool runs queued work on any of its threads concurrently, so two
//    asynchronous all-reduces could enter MPI in different orders on different ranks (wrong
//    sums or a deadlock). One FIFO thread per communicator keeps issue order.
//  - Open MPI has no asynchronous progress thread here ("OMPI progress: no" in ompi_info):
//    an MPI_Iallreduce only advances while someone calls into MPI. JavaScript busy in a matmul
//    does not, so MPI_I* + polling from the event loop would not overlap anything. A blocking
//    call on a dedicated thread progresses the whole time. The blocking algorithms (coll/tuned)
//    are also faster than the nonblocking ones (coll/libnbc).
//  - The cost is one sleeping thread per communicator that is used asynchronously.
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mpi_core.h"

namespace mgmpi {

int g_world_rank = 0, g_world_size = 1;

namespace {

std::mutex g_registry_mu;            // serializes additions
Comm* g_comm_table[kMaxComms] = {};  // owned for the process's lifetime
std::atomic<int> g_comm_count{0};

int add_comm(Comm* c) {
  std::lock_guard<std::mutex> l(g_registry_mu);
  const int h = g_comm_count.load();
  if (h >= kMaxComms) return -1;
  g_comm_table[h] = c;
  g_comm_count.store(h + 1, std::memory_order_release);
  return h;
}

MPI_Datatype g_bf16 = MPI_DATATYPE_NULL, g_f16 = MPI_DATATYPE_NULL;
MPI_Op g_op16[3];  // sum, max, min on 16-bit floats (MPI has no bfloat16/float16)

// ---- 16-bit floats -----------------------------------------------------------------------------

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
inline float f16_to_f32(uint16_t h) {
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return static_cast<float>(x);
}
inline uint16_t f32_to_f16(float f) {
  _Float16 x = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &x, 2);
  return h;
}

// An MPI user reduction on bfloat16 or float16 (told apart by the datatype handle): each
// pairwise step computes in float32 and rounds back, as NCCL does for bf16.
template <int OP>
void reduce16(void* in, void* inout, int* len, MPI_Datatype* dt) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  const bool bf = *dt == g_bf16;
  for (int i = 0; i < *len; i++) {
    float x = bf ? bf16_to_f32(a[i]) : f16_to_f32(a[i]);
    float y = bf ? bf16_to_f32(b[i]) : f16_to_f32(b[i]);
    float r = OP == kSum ? x + y : OP == kMax ? (x > y ? x : y) : (x < y ? x : y);
    b[i] = bf ? f32_to_bf16(r) : f32_to_f16(r);
  }
}

MPI_Datatype mpi_type(int d) {
  switch (d) {
    case kF32: return MPI_FLOAT;
    case kBF16: return g_bf16;
    case kI32: return MPI_INT32_T;
    case kI8: return MPI_INT8_T;
    case kU8: return MPI_UINT8_T;
    default: return g_f16;
  }
}

MPI_Op mpi_op(int dtype, int reduce) {
  int r = reduce == kAvg ? kSum : reduce;
  if (dtype == kBF16 || dtype == kF16) return g_op16[r];
  return r == kMax ? MPI_MAX : r == kMin ? MPI_MIN : MPI_SUM;
}

// avg = sum / size, applied to the reduced result (floating dtypes only; TypeScript checks).
void scale_avg(void* buf, int64_t n, int dtype, int size) {
  const float s = 1.0f / static_cast<float>(size);
  if (dtype == kF32) {
    float* p = static_cast<float*>(buf);
    for (int64_t i = 0; i < n; i++) p[i] *= s;
  } else {
    uint16_t* p = static_cast<uint16_t*>(buf);
    const bool bf = dtype == kBF16;
    for (int64_t i = 0; i < n; i++) p[i] = bf ? f32_to_bf16(bf16_to_f32(p[i]) * s) : f32_to_f16(f16_to_f32(p[i]) * s);
  }
}

uint64_t mix64(uint64_t x) {  // splitmix64: ids of split communicators
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::string shape_str(int ndim, const int64_t* dims) {
  std::string s = "[";
  for (int i = 0; i < ndim; i++) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// ---- one call ----------------------------------------------------------------------------------

bool ok(Op* op, int rc, const char* what) {
  if (rc == MPI_SUCCESS) return true;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  op->error = std::string(kind_name(op->kind)) + " on " + comm_label(op->comm) + ": " + what + " failed: " + msg;
  return false;
}

void begin(Op* op) {
  Comm* c = op->comm;
  std::lock_guard<std::mutex> l(c->state_mu);
  op->start_ns = now_ns();
  if (is_collective(op->kind)) op->seq = ++c->entered;
  c->inflight.push_back(op);
}

void end(Op* op) {
  Comm* c = op->comm;
  std::lock_guard<std::mutex> l(c->state_mu);
  for (size_t i = 0; i < c->inflight.size(); i++) {
    if (c->inflight[i] == op) {
      c->inflight.erase(c->inflight.begin() + static_cast<long>(i));
      break;
    }
  }
  c->last_kind = op->kind;
  c->last_seq = op->seq;
  c->last_end_ns = now_ns();
}

void recv_checked(Op* op) {
  MPI_Comm comm = op->comm->comm;
  const int peer = op->arg;
  int64_t h[kHeaderWords];
  if (!ok(op, MPI_Recv(h, kHeaderWords, MPI_INT64_T, peer, 2 * op->tag, comm, MPI_STATUS_IGNORE), "MPI_Recv (header)")) return;
  const int ndim = static_cast<int>(h[2]);
  bool same = h[0] == kHeaderMagic && h[1] == op->dtype && ndim == op->ndim;
  for (int i = 0; same && i < ndim; i++) same = h[4 + i] == op->shape[i];
  if (!same) {
    // Receive and drop the payload, so the next receive with this tag gets the next message.
    MPI_Status st;
    int bytes = 0;
    if (MPI_Probe(peer, 2 * op->tag + 1, comm, &st) == MPI_SUCCESS && MPI_Get_count(&st, MPI_BYTE, &bytes) == MPI_SUCCESS) {
      std::vector<char> sink(static_cast<size_t>(bytes > 0 ? bytes : 1));
      MPI_Recv(sink.data(), bytes, MPI_BYTE, peer, 2 * op->tag + 1, comm, MPI_STATUS_IGNORE);
    }
    const std::string sent = h[0] != kHeaderMagic ? std::string("a message that is not a Megalith tensor header")
        : std::string(h[1] >= 0 && h[1] < kNumDTypes ? dtype_name(static_cast<int>(h[1])) : "an unknown dtype") + " " +
              shape_str(ndim < 0 || ndim > kMaxDims ? 0 : ndim, h + 4);
    op->error = "recv from rank " + std::to_string(peer) + " of " + comm_label(op->comm) + " (tag " + std::to_string(op->tag) +
                "): the sender sent " + sent + ", this rank expects " + dtype_name(op->dtype) + " " + shape_str(op->ndim, op->shape) +
                "; sender and receiver must agree on shape and dtype";
    return;
  }
  const int bytes = static_cast<int>(op->count * dtype_size(op->dtype));
  ok(op, MPI_Recv(op->send, bytes, MPI_BYTE, peer, 2 * op->tag + 1, comm, MPI_STATUS_IGNORE), "MPI_Recv");
}

// Returns true when the call goes on after returning (an asynchronous send, now posted).
bool send_tensor(Op* op) {
  MPI_Comm comm = op->comm->comm;
  int64_t* h = op->header;
  h[0] = kHeaderMagic;
  h[1] = op->dtype;
  h[2] = op->ndim;
  h[3] = op->count;
  for (int i = 0; i < op->ndim; i++) h[4 + i] = op->shape[i];
  const int bytes = static_cast<int>(op->count * dtype_size(op->dtype));
  if (op->deferred) {
    if (!ok(op, MPI_Isend(h, kHeaderWords, MPI_INT64_T, op->arg, 2 * op->tag, comm, &op->reqs[0]), "MPI_Isend (header)")) return false;
    if (!ok(op, MPI_Isend(op->send, bytes, MPI_BYTE, op->arg, 2 * op->tag + 1, comm, &op->reqs[1]), "MPI_Isend")) {
      MPI_Wait(&op->reqs[0], MPI_STATUS_IGNORE);
      return false;
    }
    return true;
  }
  if (!ok(op, MPI_Send(h, kHeaderWords, MPI_INT64_T, op->arg, 2 * op->tag, comm), "MPI_Send (header)")) return false;
  ok(op, MPI_Send(op->send, bytes, MPI_BYTE, op->arg, 2 * op->tag + 1, comm), "MPI_Send");
  return false;
}

void split(Op* op) {
  Comm* parent = op->comm;
  MPI_Comm nc = MPI_COMM_NULL;
  if (!ok(op, MPI_Comm_split(parent->comm, op->color < 0 ? MPI_UNDEFINED : op->color, op->key, &nc), "MPI_Comm_split")) return;
  const uint64_t id = mix64(mix64(parent->id ^ (parent->splits++ * 0x100000001b3ull)) ^ static_cast<uint64_t>(op->color));
  if (nc == MPI_COMM_NULL) return;
  MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
  auto c = std::make_unique<Comm>();
  c->comm = nc;
  c->id = id;
  c->name = op->name;
  MPI_Comm_rank(nc, &c->rank);
  MPI_Comm_size(nc, &c->size);
  MPI_Group g, wg;
  MPI_Comm_group(nc, &g);
  MPI_Comm_group(MPI_COMM_WORLD, &wg);
  std::vector<int> mine(static_cast<size_t>(c->size));
  for (int i = 0; i < c->size; i++) mine[static_cast<size_t>(i)] = i;
  c->world_ranks.resize(static_cast<size_t>(c->size));
  MPI_Group_translate_ranks(g, c->size, mine.data(), wg, c->world_ranks.data());
  MPI_Group_free(&g);
  MPI_Group_free(&wg);
  const int h = add_comm(c.get());
  if (h < 0) {
    op->error = "split: more than " + std::to_string(kMaxComms) + " communicators; create groups once and reuse them";
    MPI_Comm_free(&c->comm);
    return;
  }
  c.release();
  op->result = h;
}

bool perform(Op* op) {
  MPI_Comm comm = op->comm->comm;
  const int n = static_cast<int>(op->count);
  const MPI_Datatype dt = mpi_type(op->dtype);
  switch (op->kind) {
    case kAllReduce:
      if (ok(op, MPI_Allreduce(MPI_IN_PLACE, op->send, n, dt, mpi_op(op->dtype, op->arg), comm), "MPI_Allreduce") && op->arg == kAvg)
        scale_avg(op->send, n, op->dtype, op->comm->size);
      break;
    case kBroadcast: ok(op, MPI_Bcast(op->send, n, dt, op->arg, comm), "MPI_Bcast"); break;
    case kAllGather: ok(op, MPI_Allgather(op->send, n, dt, op->recv, n, dt, comm), "MPI_Allgather"); break;
    case kReduceScatter:
      if (ok(op, MPI_Reduce_scatter_block(op->send, op->recv, n, dt, mpi_op(op->dtype, op->arg), comm), "MPI_Reduce_scatter_block") && op->arg == kAvg)
        scale_avg(op->recv, n, op->dtype, op->comm->size);
      break;
    case kAllToAll: ok(op, MPI_Alltoall(op->send, n, dt, op->recv, n, dt, comm), "MPI_Alltoall"); break;
    case kBarrier: ok(op, MPI_Barrier(comm), "MPI_Barrier"); break;
    case kSend: return send_tensor(op);
    case kRecv: recv_checked(op); break;
    case kSplit: split(op); break;
  }
  return false;
}

// Runs a call on this thread. Returns true when it goes on after returning (asynchronous send).
bool execute(Op* op) {
  if (op->kind == kFence) return false;  // everything before it on this communicator is done
  const int64_t limit = (op->kind == kSend || op->kind == kRecv) ? INT_MAX / dtype_size(op->dtype) : INT_MAX;
  if (op->count > limit) {
    op->error = std::string(kind_name(op->kind)) + ": " + std::to_string(op->count) + " elements is more than one MPI call moves (" +
                std::to_string(limit) + "); split the tensor into smaller pieces";
    return false;
  }
  begin(op);
  const bool posted = perform(op);
  if (!posted) end(op);
  return posted;
}

void finish(Op* op) {
  if (op->waiter) {
    std::lock_guard<std::mutex> l(op->waiter->mu);
    op->waiter->done = true;
    op->waiter->cv.notify_one();
  } else {
    complete_async(op);
  }
}

void test_sending(Comm* c) {
  for (size_t i = 0; i < c->sending.size();) {
    Op* op = c->sending[i];
    int flag = 0;
    if (!ok(op, MPI_Testall(2, op->reqs, &flag, MPI_STATUSES_IGNORE), "MPI_Testall")) flag = 1;
    if (!flag) {
      i++;
      continue;
    }
    end(op);
    op->seconds = static_cast<double>(precise_ns() - op->started_ns) / 1e9;
    c->sending.erase(c->sending.begin() + static_cast<long>(i));
    complete_async(op);
  }
}

void comm_thread(Comm* c) {
  // MPI busy-polls while it waits for peers. On a core shared with compute (the usual case:
  // this thread exists to overlap with compute) a lower priority lets the compute thread run
  // and gives MPI the idle time. MEGALITH_COMM_NICE sets the niceness (default 10; 0 = none).
  // A communicator whose calls the next computation waits for soon (ZeRO-3's parameter
  // gathers) asks for 0 instead: at 10, the peer's gather starves behind its compute and
  // every rank waits for it.
  const char* nice_env = std::getenv("MEGALITH_COMM_NICE");
  const int fallback = nice_env ? std::atoi(nice_env) : 10;
  int applied = 0;  // inherited from the process
  std::unique_lock<std::mutex> l(c->mu);
  for (;;) {
    const int want_raw = c->nice.load(std::memory_order_relaxed);
    const int want = want_raw < 0 ? fallback : want_raw;
    if (want != applied) {
      // Raising the priority back needs privileges a container may lack; then it stays lower
      // (and is not retried on every call).
      setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), want);
      applied = want;
    }
    if (c->queue.empty()) {
      if (c->stop) return;
      if (c->sending.empty()) {
        c->cv.wait(l);
      } else {
        // Posted sends complete when their receivers arrive: test them now and then.
        l.unlock();
        test_sending(c);
        l.lock();
        if (c->queue.empty() && !c->sending.empty() && !c->stop) c->cv.wait_for(l, std::chrono::microseconds(200));
      }
      continue;
    }
    Op* op = c->queue.front();
    c->queue.pop_front();
    c->busy = true;
    l.unlock();
    op->started_ns = precise_ns();
    const bool posted = execute(op);
    op->seconds = static_cast<double>(precise_ns() - op->started_ns) / 1e9;
    if (posted) c->sending.push_back(op);
    // Not busy before JavaScript hears of the completion, so that whatever it does next (a
    // fast-path call, finalize at exit) sees this thread idle.
    l.lock();
    c->busy = false;
    l.unlock();
    if (!posted) finish(op);
    if (!c->sending.empty()) test_sending(c);
    l.lock();
  }
}

}  // namespace

const char* kind_name(int kind) {
  static const char* const names[] = {"allReduce", "broadcast", "allGather", "reduceScatter", "allToAll", "barrier", "send", "recv", "split", "fence"};
  return kind >= 0 && kind < kNumKinds ? names[kind] : "unknown";
}

int dtype_size(int d) {
  switch (d) {
    case kF32: case kI32: return 4;
    case kBF16: case kF16: return 2;
    default: return 1;
  }
}

const char* dtype_name(int d) {
  static const char* const names[] = {"float32", "bfloat16", "int32", "int8", "uint8", "float16"};
  return d >= 0 && d < kNumDTypes ? names[d] : "unknown";
}

int64_t precise_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t now_ns() {
  // The coarse clock (a few ms resolution, no syscall, ~5 ns): it stamps every call for the
  // watchdog, whose deadlines are in seconds.
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int comm_count() { return g_comm_count.load(std::memory_order_acquire); }

Comm* comm_at(int handle) { return handle >= 0 && handle < comm_count() ? g_comm_table[handle] : nullptr; }

std::string comm_label(const Comm* c) {
  std::string s = "group \"" + c->name + "\" (world ranks ";
  const auto& w = c->world_ranks;
  bool run = true;
  for (size_t i = 1; i < w.size(); i++) run = run && w[i] == w[i - 1] + 1;
  if (run && w.size() > 2) return s + std::to_string(w.front()) + "-" + std::to_string(w.back()) + ")";
  for (size_t i = 0; i < w.size() && i < 16; i++) s += (i ? ", " : "") + std::to_string(w[i]);
  return s + (w.size() > 16 ? ", ...)" : ")");
}

void setup_types() {
  MPI_Type_contiguous(1, MPI_UINT16_T, &g_bf16);
  MPI_Type_commit(&g_bf16);
  MPI_Type_contiguous(1, MPI_UINT16_T, &g_f16);
  MPI_Type_commit(&g_f16);
  MPI_Op_create(reduce16<kSum>, 1, &g_op16[kSum]);
  MPI_Op_create(reduce16<kMax>, 1, &g_op16[kMax]);
  MPI_Op_create(reduce16<kMin>, 1, &g_op16[kMin]);
}

Comm* register_world() {
  auto c = std::make_unique<Comm>();
  c->comm = MPI_COMM_WORLD;
  c->id = 1;
  c->name = "world";
  c->rank = g_world_rank;
  c->size = g_world_size;
  for (int i = 0; i < g_world_size; i++) c->world_ranks.push_back(i);
  Comm* w = c.release();
  add_comm(w);
  return w;
}

void run_blocking(Op* op) {
  Comm* c = op->comm;
  {
    std::unique_lock<std::mutex> l(c->mu);
    if (!c->queue.empty() || c->busy) {
      // Asynchronous calls of this communicator are pending: run after them, in order.
      Waiter w;
      op->waiter = &w;
      c->queue.push_back(op);
      c->cv.notify_one();
      l.unlock();
      std::unique_lock<std::mutex> wl(w.mu);
      w.cv.wait(wl, [&w] { return w.done; });
      return;
    }
  }
  // The fast path: nothing of this communicator is queued or running, and only this (the JS)
  // thread adds to the queue, so calling MPI right here keeps issue order.
  execute(op);
}

void run_async(Op* op) {
  Comm* c = op->comm;
  std::lock_guard<std::mutex> l(c->mu);
  if (!c->started) {
    c->started = true;
    c->thread = std::thread(comm_thread, c);
  }
  c->queue.push_back(op);
  c->cv.notify_one();
}

bool set_comm_nice(int handle, int nice) {
  Comm* c = comm_at(handle);
  if (!c) return false;
  c->nice.store(nice < 0 ? -1 : nice, std::memory_order_relaxed);
  return true;
}

bool stop_comm_threads() {
  std::vector<Comm*> comms;
  for (int i = 0; i < comm_count(); i++) comms.push_back(comm_at(i));
  for (Comm* c : comms) {
    std::lock_guard<std::mutex> l(c->mu);
    if (c->busy || !c->queue.empty()) return false;
  }
  for (Comm* c : comms) {
    {
      std::lock_guard<std::mutex> l(c->mu);
      c->stop = true;
      c->cv.notify_one();
    }
    if (c->started && c->thread.joinable()) c->thread.join();
  }
  return true;
}

}  // namespace mgmpi

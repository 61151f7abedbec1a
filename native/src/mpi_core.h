// MPI binding: shared declarations of the communication core (a separate addon, megalith_mpi).
//
// Files:
//   mpi.cc          the N-API surface: argument parsing, Promises, init/finalize/abort
//   mpi_exec.cc     communicators, the MPI calls themselves, one communication thread per
//                   communicator, 16-bit float reductions
//   mpi_watchdog.cc the watchdog: collective timeouts, and answering peers' "where are you?"
//
// Ordering rule: MPI requires every rank to issue the collectives of one communicator in the
// same order. Each communicator therefore has ONE FIFO of pending calls, run by its own
// communication thread; a blocking call from JavaScript runs directly on the JS thread only
// when that FIFO is empty (the fast path), otherwise it queues behind the asynchronous calls
// and waits. Either way calls on one communicator execute one at a time, in issue order.
#pragma once
#define OMPI_SKIP_MPICXX 1  // the C API only: the deprecated C++ bindings need libmpi_cxx
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mgmpi {

// What a call does. Names match the TypeScript API (used in error and timeout messages).
// kFence calls no MPI: queued like any call, it finishes once every call issued before it on
// its communicator has (a blocking wait for asynchronous calls, from synchronous code).
enum Kind : int { kAllReduce, kBroadcast, kAllGather, kReduceScatter, kAllToAll, kBarrier, kSend, kRecv, kSplit, kFence, kNumKinds };
const char* kind_name(int kind);
inline bool is_collective(int kind) { return kind != kSend && kind != kRecv && kind != kFence; }

// Reductions (TypeScript ReduceOp). kAvg = sum, then divide by the group size.
enum Reduce : int { kSum = 0, kMax = 1, kMin = 2, kAvg = 3 };

// Element types: the codes of src/backend/native DTypeCode.
enum DType : int { kF32 = 0, kBF16 = 1, kI32 = 2, kI8 = 3, kU8 = 4, kF16 = 5, kNumDTypes = 6 };
int dtype_size(int d);
const char* dtype_name(int d);

constexpr int kMaxDims = 12;
constexpr int64_t kHeaderMagic = 0x4D474C54;  // "MGLT": first word of a send/recv header
constexpr int kHeaderWords = 4 + kMaxDims;     // magic, dtype, ndim, numel, dims...

struct Comm;

struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
};

// One communication call, described by plain values so any thread can run it. A blocking
// call lives on the caller's stack; an asynchronous one on the heap until its Promise settles.
struct Op {
  int kind = kBarrier;
  Comm* comm = nullptr;
  void* send = nullptr;   // input buffer (in-place ops: the buffer)
  void* recv = nullptr;   // output buffer (allGather, reduceScatter, allToAll)
  int64_t count = 0;      // elements: the buffer (allReduce, broadcast, send/recv) or per rank
  int dtype = kF32;
  int arg = 0;            // reduce op, root, or peer (a rank of the group)
  int tag = 0;            // send/recv
  int ndim = 0;           // send/recv: the tensor's shape, checked by the receiver
  int64_t shape[kMaxDims] = {};
  int color = 0, key = 0; // split
  std::string name;       // split: the new group's name (for messages)
  int result = -1;        // split: handle of the new communicator (-1 when color < 0)
  double timeout_s = 0;   // the watchdog aborts the job past this; 0 = never

  std::string error;      // set when the call failed (the message JavaScript sees)
  int64_t started_ns = 0; // asynchronous calls: when the communication thread started it (precise clock)
  double seconds = 0;     // ... and how long it took to complete

  // Completion. async: the Promise to settle on the JS thread. waiter: a blocking call queued
  // behind asynchronous ones, whose JS thread sleeps until the communication thread is done.
  void* deferred = nullptr;
  struct Waiter* waiter = nullptr;

  // An asynchronous send posts MPI_Isend and completes later (so two ranks that both send
  // first do not deadlock); the header must outlive the request.
  MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  int64_t header[kHeaderWords] = {};

  // Watchdog record, set when the call starts.
  int64_t seq = 0;        // collectives: 1-based index among this communicator's collectives
  int64_t start_ns = 0;
  bool timed_out = false; // already reported
};

// A communicator and its progress (read by the watchdog thread under state_mu).
struct Comm {
  MPI_Comm comm = MPI_COMM_NULL;
  uint64_t id = 0;                // the same on every member (world = 1; children hash parent, split index, color)
  std::string name;               // "world", "dp", "tp"...
  int rank = 0, size = 1;
  std::vector<int> world_ranks;   // member i's rank in MPI_COMM_WORLD
  uint64_t splits = 0;            // splits of this communicator so far (same on every member)

  std::mutex state_mu;
  std::vector<Op*> inflight;      // calls started and not finished
  int64_t entered = 0;            // collectives started on this communicator
  int last_kind = -1;             // the last call that finished, and when
  int64_t last_seq = 0;
  int64_t last_end_ns = 0;

  std::mutex mu;                  // the FIFO and the communication thread
  std::condition_variable cv;
  std::deque<Op*> queue;
  bool busy = false;              // the communication thread is running a call
  bool stop = false;
  bool started = false;
  std::thread thread;
  std::vector<Op*> sending;       // asynchronous sends posted, not complete (communication thread only)
  // Niceness of the communication thread; -1 = MEGALITH_COMM_NICE, else 10. Set from JS
  // (set_comm_nice), applied by the thread before its next call.
  std::atomic<int> nice{-1};
};

// ---- mpi_exec.cc ----
// Communicators by handle (0 = world): added, never removed or moved, so any thread reads
// them without a lock (each call looks its communicator up).
constexpr int kMaxComms = 4096;
int comm_count();
Comm* comm_at(int handle);                      // nullptr when out of range
extern int g_world_rank, g_world_size;
int64_t now_ns();                               // coarse (ms resolution), for the watchdog
int64_t precise_ns();
std::string comm_label(const Comm* c);          // group "dp" (world ranks 0, 2)
void setup_types();                             // 16-bit float datatypes and reduction ops
Comm* register_world();
void run_blocking(Op* op);                      // on the JS thread: the fast path or queue-and-wait
void run_async(Op* op);                         // queue on the communicator's thread
bool stop_comm_threads();                       // false when a thread is stuck in a call
bool set_comm_nice(int handle, int nice);       // false for an unknown handle

// ---- mpi.cc ----
void complete_async(Op* op);                    // from any thread: settle op's Promise on the JS thread

// ---- mpi_watchdog.cc ----
extern MPI_Comm g_service;                      // a private duplicate of MPI_COMM_WORLD for watchdog traffic
void watchdog_start();
void watchdog_stop();

}  // namespace mgmpi

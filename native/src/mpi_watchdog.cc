// The watchdog: one thread per process that (a) answers other ranks asking "where are you?"
// and (b) notices a call of this rank that has waited past its timeout, asks the ranks it is
// waiting for where they are, prints which of them never arrived, and aborts the job.
//
// Why this design: a blocked MPI collective cannot be cancelled, and the ranks it waits for
// are busy elsewhere (computing in JavaScript, or stuck in another call), so they cannot
// answer from their main thread. This thread can: it polls a private duplicate of
// MPI_COMM_WORLD with MPI_Iprobe every 50 ms (sleeping in between, so it costs no CPU) and
// replies with its process's in-flight calls. A collective's "arrival" is counted per
// communicator (the n-th collective on it), which is the same on every member because every
// member issues them in the same order.
#include <chrono>
#include <cstdio>
#include <cstring>

#include <atomic>

#include "mpi_core.h"

namespace mgmpi {

MPI_Comm g_service = MPI_COMM_NULL;

namespace {

constexpr int kQueryTag = 1, kReplyTag = 2;
constexpr int kAbortCode = 124;            // like timeout(1): the job ran past a deadline
constexpr int64_t kAnswerWaitNs = 3000000000;  // how long a report waits for the peers' answers

struct Query {
  int64_t comm_id;
  int64_t seq;
};
struct Reply {
  int64_t comm_id;
  int64_t entered;  // collectives this rank has started on the communicator (-1: no such group)
  char text[496];   // what this rank is doing, in words
};

std::thread* g_thread = nullptr;  // never destroyed: a process that exits without finalize must not terminate()
std::atomic<bool> g_stop{false};
bool g_running = false;

std::string secs(int64_t ns) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f s", static_cast<double>(ns) / 1e9);
  return b;
}

std::string call_name(const Op* op) {
  std::string s = kind_name(op->kind);
  if (is_collective(op->kind)) s += " #" + std::to_string(op->seq);
  const std::string peer = op->arg >= 0 && op->arg < op->comm->size ? std::to_string(op->comm->world_ranks[static_cast<size_t>(op->arg)]) : "?";
  if (op->kind == kSend) s += " to rank " + peer + " (tag " + std::to_string(op->tag) + ")";
  if (op->kind == kRecv) s += " from rank " + peer + " (tag " + std::to_string(op->tag) + ")";
  return s;
}

// What this process is doing, as seen from communicator `id` (a peer's timeout report).
Reply describe(uint64_t id) {
  Reply r;
  std::memset(&r, 0, sizeof r);
  r.comm_id = static_cast<int64_t>(id);
  r.entered = -1;
  std::string s, elsewhere;
  const int64_t now = now_ns();
  bool busy_anywhere = false;
  Comm* target = nullptr;
  const int n = comm_count();
  for (int i = 0; i < n; i++) {
    if (comm_at(i)->id == id) target = comm_at(i);
  }
  for (int i = 0; i < n; i++) {
    Comm* c = comm_at(i);
    std::lock_guard<std::mutex> l(c->state_mu);
    if (!c->inflight.empty()) busy_anywhere = true;
    if (c == target) {
      r.entered = c->entered;
      if (!c->inflight.empty()) s = "is in " + call_name(c->inflight.front()) + " on this group for " + secs(now - c->inflight.front()->start_ns);
      else if (c->last_kind >= 0) s = "is in no call on this group; its last was " + std::string(kind_name(c->last_kind)) +
                                      (is_collective(c->last_kind) ? " #" + std::to_string(c->last_seq) : "") + ", finished " + secs(now - c->last_end_ns) + " ago";
      else s = "has made no call on this group yet";
    } else if (!c->inflight.empty()) {
      elsewhere += "; it is in " + call_name(c->inflight.front()) + " on group \"" + c->name + "\" for " + secs(now - c->inflight.front()->start_ns);
    }
  }
  if (!target) s = "has no group with this id (its groups were split differently)";
  s += elsewhere;
  if (!busy_anywhere) s += " (it is not inside MPI: computing, or stuck in JavaScript)";
  std::snprintf(r.text, sizeof r.text, "%s", s.c_str());
  return r;
}

void answer_queries() {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, g_service, &flag, &st) != MPI_SUCCESS || !flag) return;
    Query q;
    MPI_Recv(&q, 2, MPI_INT64_T, st.MPI_SOURCE, kQueryTag, g_service, MPI_STATUS_IGNORE);
    Reply r = describe(static_cast<uint64_t>(q.comm_id));
    MPI_Send(&r, sizeof r, MPI_BYTE, st.MPI_SOURCE, kReplyTag, g_service);
  }
}

struct Late {
  Comm* comm;
  int kind, peer, tag;
  int64_t seq, waited_ns;
  double timeout_s;
};

void say(const std::string& line) {
  std::fprintf(stderr, "megalith: rank %d: %s\n", g_world_rank, line.c_str());
}

// Asks the ranks a late call waits for where they are; prints the report; aborts the job.
[[noreturn]] void report_and_abort(const Late& late) {
  Comm* c = late.comm;
  std::string what = kind_name(late.kind);
  if (is_collective(late.kind)) what += " #" + std::to_string(late.seq);
  const std::string peer = is_collective(late.kind) ? "" : std::to_string(c->world_ranks[static_cast<size_t>(late.peer)]);
  if (late.kind == kSend) what += " to rank " + peer + " (tag " + std::to_string(late.tag) + ")";
  if (late.kind == kRecv) what += " from rank " + peer + " (tag " + std::to_string(late.tag) + ")";
  char tbuf[64];
  std::snprintf(tbuf, sizeof tbuf, "%g s", late.timeout_s);
  say(what + " on " + comm_label(c) + " has waited " + secs(late.waited_ns) + ", past its timeout of " + tbuf +
      " (MEGALITH_COLLECTIVE_TIMEOUT_S or the call's timeoutS option)");

  std::vector<int> peers;  // group ranks
  if (is_collective(late.kind)) {
    for (int i = 0; i < c->size; i++) if (i != c->rank) peers.push_back(i);
  } else {
    peers.push_back(late.peer);
  }
  Query q{static_cast<int64_t>(c->id), late.seq};
  for (int p : peers) MPI_Send(&q, 2, MPI_INT64_T, c->world_ranks[static_cast<size_t>(p)], kQueryTag, g_service);
  std::vector<Reply> replies(peers.size());
  std::vector<bool> got(peers.size(), false);
  size_t pending = peers.size();
  const int64_t deadline = now_ns() + kAnswerWaitNs;
  while (pending > 0 && now_ns() < deadline) {
    answer_queries();  // the ranks we ask may be asking us at the same time
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kReplyTag, g_service, &flag, &st);
    if (!flag) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    Reply r;
    MPI_Recv(&r, sizeof r, MPI_BYTE, st.MPI_SOURCE, kReplyTag, g_service, MPI_STATUS_IGNORE);
    for (size_t i = 0; i < peers.size(); i++) {
      if (!got[i] && c->world_ranks[static_cast<size_t>(peers[i])] == st.MPI_SOURCE) {
        replies[i] = r;
        got[i] = true;
        pending--;
      }
    }
  }

  std::string missing, silent;
  std::vector<std::string> details;
  for (size_t i = 0; i < peers.size(); i++) {
    const int w = c->world_ranks[static_cast<size_t>(peers[i])];
    const std::string name = "rank " + std::to_string(w);
    if (!got[i]) {
      silent += (silent.empty() ? "" : ", ") + std::to_string(w);
      details.push_back(name + " did not answer within " + secs(kAnswerWaitNs) + " (its process is gone, or cannot progress MPI)");
      continue;
    }
    replies[i].text[sizeof replies[i].text - 1] = 0;
    const bool arrived = is_collective(late.kind) && replies[i].entered >= late.seq;
    if (is_collective(late.kind) && !arrived) missing += (missing.empty() ? "" : ", ") + std::to_string(w);
    details.push_back(name + (is_collective(late.kind) ? (arrived ? " arrived: it " : " has not arrived: it ") : ": it ") + replies[i].text);
  }
  if (is_collective(late.kind)) say("  ranks that have not arrived at " + what + ": " + (missing.empty() ? "none that answered" : missing) +
                                    (silent.empty() ? "" : "; no answer from: " + silent));
  for (const auto& d : details) say("  " + d);
  say("aborting the job (exit code " + std::to_string(kAbortCode) + ")");
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, kAbortCode);
  std::_Exit(kAbortCode);
}

void check_deadlines() {
  Late late{};
  bool found = false;
  const int64_t now = now_ns();
  for (int i = 0, n = comm_count(); i < n && !found; i++) {
    Comm* c = comm_at(i);
    std::lock_guard<std::mutex> l(c->state_mu);
    for (Op* op : c->inflight) {
      if (found || op->timeout_s <= 0 || op->timed_out) continue;
      const int64_t waited = now - op->start_ns;
      if (static_cast<double>(waited) < op->timeout_s * 1e9) continue;
      op->timed_out = true;
      late = Late{c, op->kind, op->arg, op->tag, op->seq, waited, op->timeout_s};
      found = true;
    }
  }
  if (found) report_and_abort(late);
}

void loop() {
  while (!g_stop.load()) {
    answer_queries();
    check_deadlines();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

void watchdog_start() {
  if (g_running) return;
  MPI_Comm_dup(MPI_COMM_WORLD, &g_service);
  MPI_Comm_set_errhandler(g_service, MPI_ERRORS_RETURN);
  g_stop = false;
  g_thread = new std::thread(loop);
  g_running = true;
}

void watchdog_stop() {
  if (!g_running) return;
  g_stop = true;
  g_thread->join();
  g_running = false;
}

}  // namespace mgmpi

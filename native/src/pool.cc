// One shared thread pool for every kernel.
//
// Workers spin briefly after each job (kernels arrive back to back during a training step, and
// a futex wake costs tens of microseconds), then sleep on a condition variable so an idle
// process uses no CPU. The calling thread always takes part in the work.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "megalith.h"

namespace mg {
namespace {

// A spin-wait hint: PAUSE on x86-64, YIELD on AArch64, nothing elsewhere.
inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

struct Job {
  const std::function<void(i64)>* fn = nullptr;
  i64 ntasks = 0;
  std::atomic<i64> next{0};
  std::atomic<i64> done{0};
};

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    quit_ = false;
    n = std::max(1, n);
    // The generation is read here, on the creating thread: a worker that starts late must still
    // see the first job as new (reading it inside the thread would miss a job already posted).
    const uint64_t gen = generation_.load();
    for (int i = 1; i < n; i++) workers_.emplace_back([this, gen] { worker_loop(gen); });
  }

  void run(i64 ntasks, const std::function<void(i64)>& fn) {
    if (ntasks <= 0) return;
    if (workers_.empty() || ntasks == 1 || in_job_) {
      for (i64 t = 0; t < ntasks; t++) fn(t);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one job at a time (e.g. MPI threads)
    in_job_ = true;
    job_.fn = &fn;
    job_.ntasks = ntasks;
    job_.next.store(0, std::memory_order_relaxed);
    job_.done.store(0, std::memory_order_relaxed);
    acked_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (sleepers_ > 0) cv_.notify_all();
    }
    work();
    // Every worker acknowledges every job (a barrier), so none can still be reading job_ when
    // the next job overwrites it or when the caller's fn goes out of scope.
    const int nw = static_cast<int>(workers_.size());
    while (acked_.load(std::memory_order_acquire) < nw) cpu_relax();
    in_job_ = false;
  }

 private:
  void work() {
    for (;;) {
      i64 t = job_.next.fetch_add(1, std::memory_order_relaxed);
      if (t >= job_.ntasks) break;
      (*job_.fn)(t);
      job_.done.fetch_add(1, std::memory_order_release);
    }
  }

  void worker_loop(uint64_t seen) {
    for (;;) {
      // Spin for a while (about 50-100 us), then sleep.
      int spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen && !quit_) {
        if (++spins < 20000) {
          cpu_relax();
          continue;
        }
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_++;
        cv_.wait(lk, [&] { return generation_.load() != seen || quit_; });
        sleepers_--;
      }
      if (quit_) return;
      seen = generation_.load(std::memory_order_acquire);
      work();
      acked_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
      cv_.notify_all();
    }
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> acked_{0};
  int sleepers_ = 0;
  std::atomic<bool> quit_{false};
  Job job_;
  bool in_job_ = false;
};

int default_threads() {
  const char* env = std::getenv("MEGALITH_NUM_THREADS");
  if (env && std::atoi(env) > 0) return std::atoi(env);
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

Pool& pool() {
  static Pool* p = new Pool(default_threads());  // leaked on purpose: no teardown ordering issues
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }

void parallel_tasks(i64 ntasks, const std::function<void(i64)>& fn) { pool().run(ntasks, fn); }

void parallel_for(i64 n, i64 grain, const std::function<void(i64, i64)>& fn) {
  if (n <= 0) return;
  grain = std::max<i64>(grain, 1);
  i64 nt = num_threads();
  i64 chunks = std::min<i64>(nt, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  i64 per = (n + chunks - 1) / chunks;
  pool().run(chunks, [&](i64 c) {
    i64 b = c * per, e = std::min(n, b + per);
    if (b < e) fn(b, e);
  });
}

}  // namespace mg

// Caching allocator with live/peak byte counters per category.
//
// Fresh large allocations from malloc are fresh mmaps, and every first touch of a page is a
// page fault: PyTorch's stock CPU allocator loses much of a training step to exactly that.
// Freed blocks are kept in per-size free lists and handed out again, so a steady-state training
// step allocates nothing from the OS. Sizes are rounded (64 B granules up to 4 KiB, then 8
// steps per power of two) so shapes that vary a little still reuse blocks.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>
#include <map>

#include "megalith.h"

namespace mg {
namespace {

struct Block {
  size_t size;
  int category;
};

struct State {
  std::mutex mu;
  std::unordered_map<void*, Block> live_blocks;
  std::map<size_t, std::vector<void*>> free_lists;
  MemStats stats{};
};

State& state() {
  static State* s = new State();
  return *s;
}

size_t round_size(size_t n) {
  if (n == 0) n = 1;
  if (n <= 4096) return (n + 63) & ~size_t(63);
  size_t p = 1;
  while (p * 2 <= n) p *= 2;          // p = largest power of two <= n
  size_t step = p / 8;
  return (n + step - 1) / step * step;
}

}  // namespace

void* mem_alloc(size_t nbytes, int category) {
  if (category < 0 || category >= kNumCategories) category = kOther;
  size_t size = round_size(nbytes);
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  void* p = nullptr;
  auto it = s.free_lists.find(size);
  if (it != s.free_lists.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    s.stats.cached -= static_cast<i64>(size);
    s.stats.cache_hits++;
  } else {
    p = std::aligned_alloc(64, size);
    if (!p) {
      // Out of memory: give the cache back to the OS and try once more.
      for (auto& kv : s.free_lists)
        for (void* q : kv.second) std::free(q);
      s.free_lists.clear();
      s.stats.cached = 0;
      p = std::aligned_alloc(64, size);
      if (!p) throw std::bad_alloc();
    }
  }
  s.live_blocks[p] = Block{size, category};
  s.stats.allocs++;
  s.stats.live[category] += static_cast<i64>(size);
  s.stats.live_total += static_cast<i64>(size);
  if (s.stats.live[category] > s.stats.peak[category]) s.stats.peak[category] = s.stats.live[category];
  if (s.stats.live_total > s.stats.peak_total) s.stats.peak_total = s.stats.live_total;
  return p;
}

void mem_free(void* p) {
  if (!p) return;
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  auto it = s.live_blocks.find(p);
  if (it == s.live_blocks.end()) return;  // not ours or already freed: ignore, never crash
  Block b = it->second;
  s.live_blocks.erase(it);
  s.stats.live[b.category] -= static_cast<i64>(b.size);
  s.stats.live_total -= static_cast<i64>(b.size);
  s.free_lists[b.size].push_back(p);
  s.stats.cached += static_cast<i64>(b.size);
}

void mem_set_category(void* p, int category) {
  if (!p || category < 0 || category >= kNumCategories) return;
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  auto it = s.live_blocks.find(p);
  if (it == s.live_blocks.end() || it->second.category == category) return;
  i64 size = static_cast<i64>(it->second.size);
  s.stats.live[it->second.category] -= size;
  it->second.category = category;
  s.stats.live[category] += size;
  if (s.stats.live[category] > s.stats.peak[category]) s.stats.peak[category] = s.stats.live[category];
}

MemStats mem_stats() {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  return s.stats;
}

void mem_reset_peak() {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  for (int c = 0; c < kNumCategories; c++) s.stats.peak[c] = s.stats.live[c];
  s.stats.peak_total = s.stats.live_total;
}

void mem_empty_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  for (auto& kv : s.free_lists)
    for (void* q : kv.second) std::free(q);
  s.free_lists.clear();
  s.stats.cached = 0;
}

}  // namespace mg

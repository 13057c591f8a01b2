// The allocator's statistics as first-class values (after PyTorch's Stat).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace actmem::alloc {

// One quantity that goes up and down: its current value, the highest it reached and the sum of all
// increases.
struct Stat {
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t total = 0;

  void increase(std::int64_t amount) {
    current += amount;
    total += amount;
    if (current > peak) peak = current;
  }
  void decrease(std::int64_t amount) { current -= amount; }
  void reset_peak() { peak = current; }
};

struct AllocatorStats {
  Stat allocated_bytes;  // blocks handed out, rounded sizes
  Stat requested_bytes;  // blocks handed out, sizes as asked for
  Stat reserved_bytes;   // segments held from the backend
  Stat active_bytes;     // allocated, plus freed blocks still in use on another stream
  Stat segments;         // segments held from the backend
  Stat live_blocks;      // allocations not yet freed

  std::int64_t allocations = 0;  // successful allocate calls
  std::int64_t cache_hits = 0;   // allocations served without a backend call
  std::int64_t backend_allocs = 0;
  std::int64_t backend_frees = 0;
  std::int64_t splits = 0;  // a free block cut in two to serve a request
  std::int64_t merges = 0;  // a freed block joined with a free neighbour
  std::int64_t ooms = 0;
  std::int64_t pressure_calls = 0;  // times the pressure handlers were asked to free memory
  std::int64_t pressure_freed_bytes = 0;
  // CUDA calls that failed where the allocator could carry on (Note [A failed CUDA call in the
  // middle of a free]); each one was reported on stderr.
  std::int64_t backend_errors = 0;

  // Reserved minus allocated bytes at the moment allocated bytes last reached their peak: what
  // fragmentation and caching cost at the worst moment.
  std::int64_t fragmentation_at_peak_bytes = 0;
  // Reserved bytes at that same moment.
  std::int64_t reserved_at_peak_bytes = 0;

  std::int64_t budget_bytes = 0;  // 0 when there is none
  std::int64_t largest_free_block_bytes = 0;

  // allocations served from the cache, as a fraction (0 when nothing was allocated).
  double cache_hit_rate() const {
    return allocations == 0 ? 0.0 : static_cast<double>(cache_hits) / allocations;
  }
};

// A JSON object with every field of `stats`, tagged with the backend's name.
std::string to_json(const AllocatorStats& stats, const std::string& backend_name);

// "1.50 MiB (1572864 bytes)": bytes for people, with the exact figure.
std::string format_bytes(std::int64_t bytes);

}  // namespace actmem::alloc

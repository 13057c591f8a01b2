// Randomized stress: 10^6 operations of mixed sizes (1 B to 64 MiB) on several streams, with the
// allocator's invariants and the test's own model of live blocks checked after every step.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/host_backend.h"

namespace actmem::alloc {
namespace {

struct LiveBlock {
  char* ptr;
  std::size_t bytes;
  std::uint64_t tag;
};

// A size from 1 B to 64 MiB, log-uniform so that every pool and segment class is exercised.
std::size_t random_size(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> exponent(0.0, 26.0);
  return static_cast<std::size_t>(std::exp2(exponent(rng)));
}

// Writes `tag` into the first and last 8 bytes of the block (or what fits), so overlap between
// live blocks shows as a corrupted tag when the block is freed.
void stamp(const LiveBlock& b) {
  std::memcpy(b.ptr, &b.tag, std::min<std::size_t>(8, b.bytes));
  if (b.bytes >= 16) std::memcpy(b.ptr + b.bytes - 8, &b.tag, 8);
}
bool stamp_intact(const LiveBlock& b) {
  return std::memcmp(b.ptr, &b.tag, std::min<std::size_t>(8, b.bytes)) == 0 &&
         (b.bytes < 16 || std::memcmp(b.ptr + b.bytes - 8, &b.tag, 8) == 0);
}

TEST(AllocatorStress, MillionRandomOperationsKeepEveryInvariant) {
  CachingAllocator allocator(std::make_unique<HostBackend>());
  std::mt19937_64 rng(20261128);
  std::vector<LiveBlock> live;
  std::map<std::uintptr_t, std::size_t> ranges;  // live [start, start + bytes)
  constexpr int kOperations = 1'000'000;
  constexpr std::size_t kMaxLive = 96;
  const Stream streams[] = {kDefaultStream, reinterpret_cast<Stream>(1),
                            reinterpret_cast<Stream>(2), reinterpret_cast<Stream>(3)};

  for (int op = 0; op < kOperations; ++op) {
    const bool allocate = live.empty() || (live.size() < kMaxLive && rng() % 2 == 0);
    if (allocate) {
      const std::size_t bytes = random_size(rng);
      char* ptr = static_cast<char*>(allocator.allocate(bytes, streams[rng() % 4]));
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(ptr) % 512, 0u);
      const auto start = reinterpret_cast<std::uintptr_t>(ptr);
      auto next = ranges.lower_bound(start);
      ASSERT_TRUE(next == ranges.end() || next->first >= start + bytes) << "overlaps the next";
      if (next != ranges.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, start) << "overlaps the previous";
      }
      ranges.emplace(start, bytes);
      live.push_back({ptr, bytes, rng()});
      stamp(live.back());
    } else {
      const std::size_t index = rng() % live.size();
      const LiveBlock b = live[index];
      ASSERT_TRUE(stamp_intact(b)) << "a live block was overwritten";
      ranges.erase(reinterpret_cast<std::uintptr_t>(b.ptr));
      live[index] = live.back();
      live.pop_back();
      allocator.deallocate(b.ptr);
    }
    // Full structural check every step would be O(n^2) over the run; the byte totals are checked
    // every step, the block tiling every 64 steps and at the end.
    const AllocatorStats s = allocator.stats();
    std::int64_t requested = 0;
    for (const LiveBlock& b : live) requested += static_cast<std::int64_t>(b.bytes);
    ASSERT_EQ(s.requested_bytes.current, requested);
    ASSERT_LE(s.allocated_bytes.current, s.reserved_bytes.current);
    ASSERT_EQ(s.live_blocks.current, static_cast<std::int64_t>(live.size()));
    if (op % 64 == 0) allocator.check_invariants();
  }
  allocator.check_invariants();
  for (const LiveBlock& b : live) allocator.deallocate(b.ptr);
  allocator.check_invariants();

  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.allocated_bytes.current, 0);
  // Freed memory is reused: almost every allocation is served from the cache.
  EXPECT_GT(s.cache_hit_rate(), 0.99) << "hits " << s.cache_hits << " of " << s.allocations;
  EXPECT_LT(s.backend_allocs, s.allocations / 100);
  allocator.empty_cache();
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 0);
}

}  // namespace
}  // namespace actmem::alloc

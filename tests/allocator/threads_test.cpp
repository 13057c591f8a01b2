// Four threads allocating, freeing and recording streams on one allocator at once. Run it under
// the tsan preset for data races; here it checks that the books balance afterwards.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "allocator/host_virtual_memory.h"

namespace actmem::alloc {
namespace {

// In both layouts: the classic one, and vmm over the CPU twin of the driver's virtual memory.
class AllocatorThreads : public ::testing::TestWithParam<bool> {
 protected:
  std::unique_ptr<CachingAllocator> make(AllocatorOptions options) {
    if (!GetParam()) {
      return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(), options);
    }
    return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(),
                                              std::make_unique<HostVirtualMemory>(),
                                              std::make_unique<ImmediateEvents>(), options);
  }
};

TEST_P(AllocatorThreads, FourThreadsShareOneAllocatorSafely) {
  AllocatorOptions options;
  options.budget_bytes = std::size_t{256} << 20;
  const std::unique_ptr<CachingAllocator> owned = make(options);
  CachingAllocator& allocator = *owned;
  std::atomic<std::size_t> pressure_calls{0};
  allocator.add_pressure_handler([&](std::size_t) {
    ++pressure_calls;
    return std::size_t{0};
  });
  std::atomic<int> ooms{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      const Stream own = reinterpret_cast<Stream>(static_cast<std::uintptr_t>(t + 1));
      std::vector<void*> live;
      for (int op = 0; op < 20000; ++op) {
        if (live.size() < 32 && rng() % 2 == 0) {
          const std::size_t bytes = std::size_t{1} << (rng() % 24);
          try {
            live.push_back(allocator.allocate(bytes, own));
          } catch (const OutOfMemoryError&) {
            ++ooms;
          }
        } else if (!live.empty()) {
          const std::size_t i = rng() % live.size();
          if (rng() % 8 == 0) allocator.record_stream(live[i], reinterpret_cast<Stream>(99));
          allocator.deallocate(live[i]);
          live[i] = live.back();
          live.pop_back();
        }
        if (op % 1000 == 0) (void)allocator.stats();
        if (op % 5000 == 0) allocator.empty_cache();
      }
      for (void* p : live) allocator.deallocate(p);
    });
  }
  for (auto& thread : threads) thread.join();
  allocator.check_invariants();
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.live_blocks.current, 0);
  EXPECT_LE(s.reserved_bytes.peak, static_cast<std::int64_t>(256) << 20);
  EXPECT_EQ(s.ooms, ooms.load());
}

INSTANTIATE_TEST_SUITE_P(Layouts, AllocatorThreads, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& layout) {
                           return layout.param ? "vmm" : "classic";
                         });

}  // namespace
}  // namespace actmem::alloc

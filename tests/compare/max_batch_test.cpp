// The max-batch search: exact on synthetic boundaries, bounded in probes, and right against a
// budget whose answer follows from the caching allocator's arithmetic.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "bench/compare/max_batch.h"

namespace actmem::bench {
namespace {

// A probe that fits every batch up to `largest`, and counts its calls.
struct Boundary {
  std::int64_t largest;
  int calls = 0;
  Probe operator()(std::int64_t batch) {
    ++calls;
    return {batch <= largest, 0.5 * static_cast<double>(batch)};
  }
};

MaxBatch search(Boundary& boundary, std::int64_t start, std::int64_t limit,
                double resolution = 0.0) {
  return search_max_batch([&](std::int64_t b) { return boundary(b); }, start, limit, resolution);
}

TEST(MaxBatchSearch, FindsTheExactBoundaryByDoublingThenBisecting) {
  for (std::int64_t largest : {1, 2, 7, 8, 9, 37, 64, 100, 999}) {
    Boundary boundary{largest};
    const MaxBatch found = search(boundary, 8, 1000);
    EXPECT_EQ(found.batch, largest);
    EXPECT_EQ(found.probes, boundary.calls);
    EXPECT_LE(found.probes, 2 * 10 + 2) << "doubling and bisection are both logarithmic";
    EXPECT_DOUBLE_EQ(found.seconds_per_sample, 0.5);
  }
}

TEST(MaxBatchSearch, ReportsZeroWhenNothingFitsAndTheLimitWhenEverythingDoes) {
  Boundary none{0};
  EXPECT_EQ(search(none, 4, 64).batch, 0);
  Boundary all{1'000'000};
  const MaxBatch found = search(all, 4, 48);
  EXPECT_EQ(found.batch, 48);
  EXPECT_EQ(found.probes, 5);  // 4, 8, 16, 32, 48
}

TEST(MaxBatchSearch, StopsWithinTheResolution) {
  Boundary boundary{1000};
  const MaxBatch found = search(boundary, 16, 4096, 0.125);
  EXPECT_LE(found.batch, 1000);
  EXPECT_GE(found.batch, 1000 * 8 / 9);  // the next failure is within 1/8 of the fit
  Boundary exact{1000};
  EXPECT_LT(found.probes, search(exact, 16, 4096).probes);
}

TEST(MaxBatchSearch, RefusesAnEmptyRange) {
  Boundary boundary{5};
  EXPECT_THROW(search(boundary, 0, 10), std::invalid_argument);
  EXPECT_THROW(search(boundary, 10, 5), std::invalid_argument);
}

// A "step" that holds `batch` blocks of 4 MiB at once from a caching allocator with a 100 MiB
// budget. 4 MiB requests are cut from 20 MiB segments, five blocks each, so five segments fill
// the budget with 25 blocks; a 26th would need a segment of its own, which the budget refuses.
TEST(MaxBatchSearch, MatchesTheAllocatorsArithmetic) {
  constexpr std::size_t kBlock = 4u << 20;
  auto probe = [&](std::int64_t batch) -> Probe {
    alloc::CachingAllocator allocator(std::make_unique<alloc::HostBackend>());
    allocator.set_budget(std::size_t{100} << 20);
    std::vector<void*> blocks;
    try {
      for (std::int64_t i = 0; i < batch; ++i) blocks.push_back(allocator.allocate(kBlock));
    } catch (const alloc::OutOfMemoryError&) {
      for (void* p : blocks) allocator.deallocate(p);
      return {false, 0};
    }
    for (void* p : blocks) allocator.deallocate(p);
    return {true, 1.0};
  };
  EXPECT_EQ(search_max_batch(probe, 1, 1000).batch, 25);
  EXPECT_EQ(search_max_batch(probe, 40, 1000).batch, 25);
}

}  // namespace
}  // namespace actmem::bench

// The allocator's contract, written once and instantiated for every backend built in (the cuda
// instance skips when no device answers). Memory is never touched here: a device pointer cannot be
// read from the host.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "tests/allocator/test_backends.h"

namespace actmem::alloc {
namespace {

using testing::BackendUnderTest;
using testing::LimitedBackend;
using testing::ManualEvents;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

Stream stream_handle(std::uintptr_t id) { return reinterpret_cast<Stream>(id); }

class AllocatorConformance : public ::testing::TestWithParam<BackendUnderTest> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!GetParam().make_backend(&reason)) GTEST_SKIP() << reason;
  }

  // A fresh allocator on the backend under test; the backend is capped at `capacity` bytes and
  // its counters are readable through limited().
  CachingAllocator& make(AllocatorOptions options = {}, std::size_t capacity = 1ull << 40,
                         std::unique_ptr<StreamEvents> events = nullptr) {
    std::string reason;
    auto limited = std::make_unique<LimitedBackend>(GetParam().make_backend(&reason), capacity);
    limited_ = limited.get();
    allocator_ = std::make_unique<CachingAllocator>(
        std::move(limited), events ? std::move(events) : GetParam().make_events(), options);
    return *allocator_;
  }
  LimitedBackend& limited() { return *limited_; }

  // Registers a pressure handler that frees nothing and counts its calls in handler_calls_.
  CachingAllocator::HandlerId add_idle_handler(CachingAllocator& a) {
    return a.add_pressure_handler([this](std::size_t) {
      ++handler_calls_;
      return std::size_t{0};
    });
  }
  int handler_calls_ = 0;

  void TearDown() override {
    if (allocator_) allocator_->check_invariants();
  }

  std::unique_ptr<CachingAllocator> allocator_;
  LimitedBackend* limited_ = nullptr;
};

TEST_P(AllocatorConformance, ZeroBytesReturnsNullAndFreeingNullIsANoOp) {
  CachingAllocator& a = make();
  EXPECT_EQ(a.allocate(0), nullptr);
  a.deallocate(nullptr);
  EXPECT_EQ(a.stats().allocations, 0);
  EXPECT_EQ(limited().allocations(), 0);
}

TEST_P(AllocatorConformance, RoundsTo512AndAligns) {
  CachingAllocator& a = make();
  const std::vector<std::pair<std::size_t, std::size_t>> cases = {
      {1, 512},       {511, 512},         {512, 512},           {513, 1024},
      {1 * MiB, MiB}, {MiB + 1, MiB + 512}, {5 * MiB, 5 * MiB}, {12 * MiB + 7, 12 * MiB + 512}};
  std::vector<void*> live;
  for (auto [request, rounded] : cases) {
    void* p = a.allocate(request);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 512, 0u) << request;
    EXPECT_EQ(a.block_size(p), rounded) << request;
    live.push_back(p);
  }
  a.check_invariants();
  for (void* p : live) a.deallocate(p);
}

TEST_P(AllocatorConformance, SegmentSizesFollowThePools) {
  CachingAllocator& a = make();
  void* small = a.allocate(10 * KiB);  // small pool: a 2 MiB segment
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(2 * MiB));
  void* medium = a.allocate(3 * MiB);  // large pool, under 10 MiB: a 20 MiB segment
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(22 * MiB));
  // 10 MiB and up, too big for the 17 MiB left in the 20 MiB segment: its own size, rounded up
  // to 2 MiB.
  void* large = a.allocate(17 * MiB + 1);
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(40 * MiB));
  EXPECT_EQ(limited().allocations(), 3);
  for (void* p : {small, medium, large}) a.deallocate(p);
}

TEST_P(AllocatorConformance, FreedBlockIsReusedOnItsStream) {
  CachingAllocator& a = make();
  void* first = a.allocate(1000);
  a.deallocate(first);
  void* second = a.allocate(1000);
  EXPECT_EQ(second, first);
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.backend_allocs, 1);
  EXPECT_EQ(s.allocations, 2);
  EXPECT_EQ(s.cache_hits, 1);
  a.deallocate(second);
}

TEST_P(AllocatorConformance, SmallRequestsShareOneSegmentWithoutOverlap) {
  CachingAllocator& a = make();
  std::vector<char*> blocks;
  for (int i = 0; i < 100; ++i) blocks.push_back(static_cast<char*>(a.allocate(10 * KiB)));
  EXPECT_EQ(limited().allocations(), 1);
  std::sort(blocks.begin(), blocks.end());
  for (std::size_t i = 1; i < blocks.size(); ++i) {
    EXPECT_GE(blocks[i] - blocks[i - 1], static_cast<std::ptrdiff_t>(10 * KiB));
  }
  EXPECT_EQ(a.stats().splits, 100);
  a.check_invariants();
  for (char* p : blocks) a.deallocate(p);
}

TEST_P(AllocatorConformance, FreeingEveryBlockMergesTheSegmentWhole) {
  CachingAllocator& a = make();
  void* x = a.allocate(100 * KiB);
  void* y = a.allocate(100 * KiB);
  void* z = a.allocate(100 * KiB);
  a.deallocate(y);  // no free neighbour yet... except the tail after z is not adjacent to y
  a.deallocate(x);  // merges with y
  a.deallocate(z);  // merges with x+y and with the tail
  a.check_invariants();
  EXPECT_EQ(a.stats().largest_free_block_bytes, static_cast<std::int64_t>(2 * MiB));
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes.current, 0);
  EXPECT_EQ(limited().deallocations(), 1);
  EXPECT_EQ(limited().in_use(), 0u);
}

TEST_P(AllocatorConformance, BestFitPicksTheSmallestFreeBlockThatFits) {
  CachingAllocator& a = make();
  std::vector<void*> blocks;
  for (std::size_t kib : {64, 8, 32, 8, 16, 8}) blocks.push_back(a.allocate(kib * KiB));
  a.deallocate(blocks[0]);  // 64 KiB hole
  a.deallocate(blocks[2]);  // 32 KiB hole
  a.deallocate(blocks[4]);  // 16 KiB hole
  EXPECT_EQ(a.allocate(20 * KiB), blocks[2]);  // leaves a 12 KiB hole behind it
  EXPECT_EQ(a.allocate(14 * KiB), blocks[4]);
  a.deallocate(blocks[2]);
  a.deallocate(blocks[4]);
  for (int i : {1, 3, 5}) a.deallocate(blocks[i]);
}

TEST_P(AllocatorConformance, StreamsDoNotShareFreeBlocks) {
  CachingAllocator& a = make();
  void* on_one = a.allocate(4 * KiB, stream_handle(1));
  a.deallocate(on_one);
  void* on_two = a.allocate(4 * KiB, stream_handle(2));
  EXPECT_NE(on_two, on_one);
  EXPECT_EQ(limited().allocations(), 2);
  void* again_on_one = a.allocate(4 * KiB, stream_handle(1));
  EXPECT_EQ(again_on_one, on_one);
  a.deallocate(on_two);
  a.deallocate(again_on_one);
}

TEST_P(AllocatorConformance, RecordStreamDefersReuseUntilTheStreamCatchesUp) {
  auto state = std::make_shared<ManualEvents::State>();
  CachingAllocator& a = make({}, 1ull << 40, std::make_unique<ManualEvents>(state));
  const Stream home = stream_handle(1);
  const Stream other = stream_handle(2);
  void* p = a.allocate(64 * KiB, home);
  a.record_stream(p, other);
  state->busy.insert(other);  // work queued on `other` still reads p
  a.deallocate(p);
  EXPECT_EQ(a.stats().active_bytes.current, static_cast<std::int64_t>(64 * KiB));
  void* while_busy = a.allocate(64 * KiB, home);
  EXPECT_NE(while_busy, p) << "reused before the other stream finished";
  state->busy.erase(other);
  a.deallocate(while_busy);
  void* after = a.allocate(64 * KiB, home);
  EXPECT_EQ(after, p) << "best fit should reuse the lowest-addressed free block once released";
  EXPECT_EQ(state->live_events, 0);
  a.deallocate(after);
  EXPECT_EQ(a.stats().active_bytes.current, 0);
}

// A handle that names each thread's own stream (CUDA's per-thread default stream) keys no pool:
// its blocks wait for an event on the stream that orders them all (StreamEvents::across_threads).
TEST_P(AllocatorConformance, BlocksOfAPerThreadStreamWaitForTheStreamThatOrdersThemAll) {
  auto state = std::make_shared<ManualEvents::State>();
  const Stream per_thread = stream_handle(0x70), all_threads = stream_handle(0x71);
  state->across_threads[per_thread] = all_threads;
  CachingAllocator& a = make({}, 1ull << 40, std::make_unique<ManualEvents>(state));
  void* p = a.allocate(64 * KiB, per_thread);
  state->busy.insert(all_threads);  // the freeing thread's work still reads p
  a.deallocate(p);
  void* while_busy = a.allocate(64 * KiB, per_thread);
  EXPECT_NE(while_busy, p) << "reused before the freeing thread's stream finished";
  state->busy.erase(all_threads);
  a.deallocate(while_busy);
  void* after = a.allocate(64 * KiB, per_thread);
  EXPECT_EQ(after, p) << "back once the event completed";
  a.deallocate(after);
  a.empty_cache();  // takes in the event that free recorded
  EXPECT_EQ(state->live_events, 0);
  EXPECT_EQ(a.stats().active_bytes.current, 0);
}

TEST_P(AllocatorConformance, BudgetCapsReservedAndTheErrorNamesTheNumbers) {
  AllocatorOptions options;
  options.budget_bytes = 4 * MiB;
  CachingAllocator& a = make(options);
  void* x = a.allocate(MiB + MiB / 2);  // would take a 20 MiB segment: takes 2 MiB, unsplit
  void* y = a.allocate(MiB);            // a 2 MiB small segment, split: 1 MiB stays free
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(4 * MiB));
  try {
    a.allocate(MiB + MiB / 2);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& error) {
    const std::string message = error.what();
    for (const char* part : {"tried to allocate 1.50 MiB", "budget of 4.00 MiB", "allocated 3.00 MiB",
                             "reserved 4.00 MiB", "cached (reserved, not allocated) 1.00 MiB",
                             "largest free block 1.00 MiB"}) {
      EXPECT_NE(message.find(part), std::string::npos) << part << " missing from: " << message;
    }
    EXPECT_EQ(error.requested_bytes(), MiB + MiB / 2);
  }
  EXPECT_EQ(a.stats().ooms, 1);
  EXPECT_LE(a.stats().reserved_bytes.peak, static_cast<std::int64_t>(4 * MiB));
  a.deallocate(x);
  a.deallocate(y);
}

TEST_P(AllocatorConformance, ARequestLargerThanTheBudgetFailsWithoutAskingHandlers) {
  AllocatorOptions options;
  options.budget_bytes = 8 * MiB;
  CachingAllocator& a = make(options);
  add_idle_handler(a);
  EXPECT_THROW(a.allocate(9 * MiB), OutOfMemoryError);
  EXPECT_EQ(handler_calls_, 0);
}

TEST_P(AllocatorConformance, CachedSegmentsAreReleasedBeforeTheBudgetFails) {
  AllocatorOptions options;
  options.budget_bytes = 4 * MiB;
  CachingAllocator& a = make(options);
  a.deallocate(a.allocate(3 * MiB));  // caches a 4 MiB segment
  void* small = a.allocate(100 * KiB);  // needs a 2 MiB small segment: the cache must go
  EXPECT_EQ(a.stats().backend_frees, 1);
  EXPECT_EQ(a.stats().ooms, 0);
  a.deallocate(small);
}

TEST_P(AllocatorConformance, PressureHandlerIsAskedForTheShortfallAndTheRetrySucceeds) {
  AllocatorOptions options;
  options.budget_bytes = 6 * MiB;
  CachingAllocator& a = make(options);
  void* evictable = a.allocate(3 * MiB);  // a 4 MiB segment
  void* pinned = a.allocate(100 * KiB);   // a 2 MiB small segment
  std::size_t asked = 0;
  a.add_pressure_handler([&](std::size_t bytes_needed) -> std::size_t {
    asked = bytes_needed;
    if (evictable == nullptr) return 0;
    a.deallocate(evictable);  // the handler runs without the allocator's lock
    evictable = nullptr;
    return 3 * MiB;
  });
  void* big = a.allocate(MiB + MiB / 2);  // needs a 2 MiB segment: 8 MiB > 6 MiB
  EXPECT_EQ(asked, 2 * MiB);
  const AllocatorStats s = a.stats();
  EXPECT_EQ(s.pressure_calls, 1);
  EXPECT_EQ(s.pressure_freed_bytes, static_cast<std::int64_t>(3 * MiB));
  EXPECT_LE(s.reserved_bytes.peak, static_cast<std::int64_t>(6 * MiB));
  a.deallocate(big);
  a.deallocate(pinned);
}

// A handler may give up on the request by throwing (the hooks' BudgetTooSmallError): its error
// leaves allocate() as it is, and the request counts as an out-of-memory all the same (it did not:
// a training loop that caught the hooks' error read `ooms` 0).
TEST_P(AllocatorConformance, AHandlerThatGivesUpFailsTheRequestAsAnOutOfMemory) {
  AllocatorOptions options;
  options.budget_bytes = 2 * MiB;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  a.set_trace_enabled(true);
  a.add_pressure_handler([](std::size_t) -> std::size_t {
    throw std::runtime_error("nothing left to send out");
  });
  EXPECT_THROW(a.allocate(4 * KiB), std::runtime_error);
  EXPECT_EQ(a.stats().ooms, 1);
  const std::vector<TraceEntry> trace = a.trace();
  ASSERT_FALSE(trace.empty());
  EXPECT_EQ(trace.back().action, TraceEntry::Action::kOom);
  a.check_invariants();
  a.deallocate(held);
}

TEST_P(AllocatorConformance, RequestsTooLargeToRoundAreRefusedNotWrapped) {
  CachingAllocator& a = make();
  void* live = a.allocate(4 * KiB);
  EXPECT_THROW(a.allocate(static_cast<std::size_t>(-1)), OutOfMemoryError);
  EXPECT_THROW(a.allocate(static_cast<std::size_t>(-1) - 600), OutOfMemoryError);
  void* next = a.allocate(4 * KiB);
  EXPECT_NE(next, live);
  a.check_invariants();
  a.deallocate(next);
  a.deallocate(live);
}

TEST_P(AllocatorConformance, ARequestWhoseSegmentCannotFitFailsWithoutEvicting) {
  AllocatorOptions options;
  options.budget_bytes = 3 * MiB;
  CachingAllocator& a = make(options);
  add_idle_handler(a);
  // 2.5 MiB needs a 4 MiB segment at least: no eviction can make it fit in 3 MiB.
  EXPECT_THROW(a.allocate(2 * MiB + MiB / 2), OutOfMemoryError);
  EXPECT_EQ(handler_calls_, 0);
}

TEST_P(AllocatorConformance, AnAllocationInsideAHandlerFailsFastInsteadOfRecursing) {
  AllocatorOptions options;
  options.budget_bytes = 2 * MiB;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  int calls = 0;
  a.add_pressure_handler([&](std::size_t) -> std::size_t {
    ++calls;
    EXPECT_THROW(a.allocate(4 * KiB), OutOfMemoryError);
    return 0;
  });
  EXPECT_THROW(a.allocate(4 * KiB), OutOfMemoryError);
  EXPECT_EQ(calls, 1);
  a.deallocate(held);
}

TEST_P(AllocatorConformance, ASpeculativeAllocationTakesOnlyRoomThereIs) {
  AllocatorOptions options;
  options.budget_bytes = 4 * MiB;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  void* cached = a.allocate(2 * MiB);
  a.deallocate(cached);  // a free 2 MiB segment: the budget is reached
  add_idle_handler(a);
  {
    const CachingAllocator::Speculative speculative;
    void* fits = a.allocate(MiB + MiB / 2);  // in the cached segment
    EXPECT_NE(fits, nullptr);
    a.deallocate(fits);
    EXPECT_THROW(a.allocate(3 * MiB), OutOfMemoryError);
  }
  EXPECT_EQ(handler_calls_, 0) << "a speculative request asks no handler";
  EXPECT_EQ(a.stats().ooms, 0) << "nor counts as out of memory";
  EXPECT_EQ(a.stats().reserved_bytes.current, std::int64_t{4} * MiB)
      << "nor releases the cached segment to make room";
  EXPECT_THROW(a.allocate(3 * MiB), OutOfMemoryError);
  EXPECT_EQ(handler_calls_, 1) << "outside the guard, requests ask the handlers again";
  a.deallocate(held);
}

TEST_P(AllocatorConformance, AHandlerThatFreesNothingEndsInOutOfMemory) {
  AllocatorOptions options;
  options.budget_bytes = 2 * MiB;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  add_idle_handler(a);
  try {
    a.allocate(KiB);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& error) {
    EXPECT_NE(std::string(error.what()).find("freed nothing"), std::string::npos) << error.what();
  }
  EXPECT_EQ(handler_calls_, 1);
  a.deallocate(held);
}

TEST_P(AllocatorConformance, AHandlerThatClaimsWithoutFreeingCannotHangTheAllocator) {
  AllocatorOptions options;
  options.budget_bytes = 2 * MiB;
  options.pressure_rounds = 3;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  int calls = 0;
  a.add_pressure_handler([&](std::size_t bytes) {
    ++calls;
    return bytes;  // a lie
  });
  EXPECT_THROW(a.allocate(KiB), OutOfMemoryError);
  EXPECT_EQ(calls, 3);
  a.deallocate(held);
}

TEST_P(AllocatorConformance, RemovedHandlersAreNotCalled) {
  AllocatorOptions options;
  options.budget_bytes = 2 * MiB;
  CachingAllocator& a = make(options);
  void* held = a.allocate(2 * MiB);
  a.remove_pressure_handler(add_idle_handler(a));
  EXPECT_THROW(a.allocate(KiB), OutOfMemoryError);
  EXPECT_EQ(handler_calls_, 0);
  a.deallocate(held);
}

TEST_P(AllocatorConformance, BackendOutOfMemoryWithoutABudgetIsReported) {
  CachingAllocator& a = make({}, 24 * MiB);
  void* first = a.allocate(12 * MiB);
  try {
    a.allocate(16 * MiB);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find("budget"), std::string::npos) << message;
    EXPECT_NE(message.find("tried to allocate 16.00 MiB"), std::string::npos) << message;
  }
  a.deallocate(first);
  void* after = a.allocate(16 * MiB);  // the cached 12 MiB segment is released to make room
  EXPECT_NE(after, nullptr);
  a.deallocate(after);
}

TEST_P(AllocatorConformance, BadPointersAreRefusedAndChangeNothing) {
  CachingAllocator& a = make();
  void* live = a.allocate(4 * KiB);
  void* freed = a.allocate(4 * KiB);
  a.deallocate(freed);
  const AllocatorStats before = a.stats();
  int local = 0;
  const auto expect_refused = [&](void* ptr, const char* words) {
    try {
      a.deallocate(ptr);
      ADD_FAILURE() << "expected InvalidPointerError";
    } catch (const InvalidPointerError& error) {
      EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
    }
  };
  expect_refused(&local, "never allocated by actmem");
  expect_refused(freed, "double free");
  expect_refused(static_cast<char*>(live) + 512, "middle of a block");
  EXPECT_THROW(a.record_stream(freed, stream_handle(3)), InvalidPointerError);
  EXPECT_THROW(a.block_size(&local), InvalidPointerError);
  const AllocatorStats after = a.stats();
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(after.live_blocks.current, 1);
  a.check_invariants();
  a.deallocate(live);
}

TEST_P(AllocatorConformance, StatsAccountForEveryByte) {
  CachingAllocator& a = make();
  void* x = a.allocate(1000);
  void* y = a.allocate(3 * MiB);
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.allocated_bytes.current, static_cast<std::int64_t>(1024 + 3 * MiB));
  EXPECT_EQ(s.requested_bytes.current, static_cast<std::int64_t>(1000 + 3 * MiB));
  EXPECT_EQ(s.active_bytes.current, s.allocated_bytes.current);
  EXPECT_EQ(s.reserved_bytes.current, static_cast<std::int64_t>(22 * MiB));
  EXPECT_EQ(s.segments.current, 2);
  EXPECT_EQ(s.live_blocks.current, 2);
  EXPECT_EQ(s.fragmentation_at_peak_bytes, s.reserved_bytes.current - s.allocated_bytes.current);
  a.deallocate(y);
  a.deallocate(x);
  s = a.stats();
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.allocated_bytes.peak, static_cast<std::int64_t>(1024 + 3 * MiB));
  EXPECT_EQ(s.allocated_bytes.total, static_cast<std::int64_t>(1024 + 3 * MiB));
  EXPECT_EQ(s.reserved_bytes.current, static_cast<std::int64_t>(22 * MiB));
  a.reset_peak_stats();
  EXPECT_EQ(a.stats().allocated_bytes.peak, 0);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes.current, 0);
  EXPECT_EQ(a.stats().backend_frees, 2);
}

TEST_P(AllocatorConformance, EmptyCacheKeepsSegmentsThatHoldLiveBlocks) {
  CachingAllocator& a = make();
  void* live = a.allocate(KiB);
  a.deallocate(a.allocate(3 * MiB));
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(2 * MiB));
  EXPECT_TRUE(a.owns(live));
  a.deallocate(live);
}

TEST_P(AllocatorConformance, LoweringTheBudgetReleasesMemoryAsItFrees) {
  CachingAllocator& a = make();
  void* x = a.allocate(3 * MiB);
  a.deallocate(a.allocate(12 * MiB));
  a.set_budget(20 * MiB);  // 20 + 12 reserved: the cached 12 MiB segment goes at once
  EXPECT_EQ(a.stats().reserved_bytes.current, static_cast<std::int64_t>(20 * MiB));
  a.set_budget(4 * MiB);
  a.deallocate(x);  // its 20 MiB segment is now whole and over budget: released
  EXPECT_EQ(a.stats().reserved_bytes.current, 0);
  EXPECT_EQ(a.budget(), std::optional<std::size_t>(4 * MiB));
}

TEST_P(AllocatorConformance, MaxSplitSizeKeepsOversizeBlocksWhole) {
  AllocatorOptions options;
  options.max_split_size = 32 * MiB;
  CachingAllocator& a = make(options);
  a.deallocate(a.allocate(40 * MiB));  // an oversize cached block
  void* small = a.allocate(3 * MiB);   // must not cut the 40 MiB block
  EXPECT_EQ(limited().allocations(), 2);
  void* similar = a.allocate(39 * MiB);  // may take it whole
  EXPECT_EQ(limited().allocations(), 2);
  EXPECT_EQ(a.block_size(similar), 40 * MiB);
  a.deallocate(small);
  a.deallocate(similar);
}

TEST_P(AllocatorConformance, TraceRecordsWhatHappened) {
  AllocatorOptions options;
  options.record_trace = true;
  options.budget_bytes = 2 * MiB;
  CachingAllocator& a = make(options);
  void* p = a.allocate(100);
  a.deallocate(p);
  EXPECT_THROW(a.allocate(4 * MiB), OutOfMemoryError);
  a.empty_cache();
  using A = TraceEntry::Action;
  std::vector<A> actions;
  for (const TraceEntry& e : a.trace()) actions.push_back(e.action);
  EXPECT_EQ(actions, (std::vector<A>{A::kSegmentAlloc, A::kAlloc, A::kFree, A::kOom,
                                     A::kSegmentFree}));
  EXPECT_EQ(a.trace()[1].bytes, 100u);
  EXPECT_EQ(a.trace()[1].address, reinterpret_cast<std::uintptr_t>(p));
}

INSTANTIATE_TEST_SUITE_P(Backends, AllocatorConformance,
                         ::testing::ValuesIn(testing::backends_under_test()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace actmem::alloc

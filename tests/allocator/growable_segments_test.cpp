// The vmm layout (Note [Growable segments]) over the CPU twin of the CUDA driver's virtual memory:
// requests grow one segment per stream in 2 MiB granules, its free tail is unmapped when
// memory is released, and the classic contract (stats, budget, pressure, bad pointers) holds.
// Memory is written here: the twin's mappings are host memory.
#include <gtest/gtest.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "allocator/host_virtual_memory.h"
#include "tests/allocator/test_backends.h"
#if defined(ACTMEM_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "allocator/cuda_backend.h"
#include "allocator/cuda_runtime.h"
#include "allocator/cuda_virtual_memory.h"
#endif

namespace actmem::alloc {
namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

Stream stream_handle(std::uintptr_t id) { return reinterpret_cast<Stream>(id); }

std::unique_ptr<CachingAllocator> make_vmm(AllocatorOptions options = {}) {
  return std::make_unique<CachingAllocator>(
      std::make_unique<HostBackend>(), std::make_unique<HostVirtualMemory>(2 * MiB, 1ull << 34),
      std::make_unique<ImmediateEvents>(), options);
}

std::int64_t reserved(const CachingAllocator& a) { return a.stats().reserved_bytes.current; }

TEST(HostVirtualMemory, ReservesAlignedAndMapsWritableZeroedPages) {
  HostVirtualMemory vm(2 * MiB, 64 * MiB);
  EXPECT_EQ(vm.granularity(), 2 * MiB);
  EXPECT_EQ(vm.reservation(), 64 * MiB);
  char* base = static_cast<char*>(vm.reserve(64 * MiB));
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(base) % (2 * MiB), 0u);
  ASSERT_TRUE(vm.map(base + 2 * MiB, 4 * MiB));
  std::memset(base + 2 * MiB, 0xAB, 4 * MiB);
  vm.unmap(base + 2 * MiB, 4 * MiB);
  ASSERT_TRUE(vm.map(base + 2 * MiB, 2 * MiB));
  EXPECT_EQ(base[2 * MiB], 0) << "a page mapped again must come back from the kernel, zeroed";
  vm.release(base, 64 * MiB);
}

TEST(HostVirtualMemory, RefusesAGranularityThatIsNotAPowerOfTwoOfPages) {
  EXPECT_THROW(HostVirtualMemory(3 * MiB), std::invalid_argument);
  EXPECT_THROW(HostVirtualMemory(1000), std::invalid_argument);
}

TEST(GrowableSegments, ALargeRequestReservesItsSizeInGranulesNotASharedSegment) {
  auto a = make_vmm();
  void* p = a->allocate(3 * MiB + 100);
  std::memset(p, 1, 3 * MiB + 100);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(4 * MiB));  // the classic layout: 20 MiB
  void* q = a->allocate(5 * MiB);
  EXPECT_EQ(static_cast<char*>(q), static_cast<char*>(p) + 4 * MiB) << "one segment, grown in place";
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(10 * MiB));
  EXPECT_EQ(a->stats().segments.current, 1);
  a->check_invariants();
  a->deallocate(p);
  a->deallocate(q);
  a->check_invariants();
}

TEST(GrowableSegments, AFreeLastBlockIsExtendedByWhatTheRequestLacks) {
  auto a = make_vmm();
  void* p = a->allocate(2 * MiB);
  void* q = a->allocate(4 * MiB);
  a->deallocate(q);  // a free 4 MiB last block
  void* r = a->allocate(7 * MiB);
  EXPECT_EQ(r, q);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(2 * MiB + 8 * MiB));  // grew by 4 MiB, not 8
  a->check_invariants();
  a->deallocate(p);
  a->deallocate(r);
}

TEST(GrowableSegments, EmptyCacheUnmapsTheFreeTailAndTheSegmentGrowsAgain) {
  auto a = make_vmm();
  void* p = a->allocate(6 * MiB);
  void* q = a->allocate(6 * MiB);
  a->deallocate(q);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(6 * MiB)) << "the free tail went back";
  a->check_invariants();
  void* r = a->allocate(3 * MiB);
  std::memset(r, 2, 3 * MiB);
  EXPECT_EQ(r, q);
  a->deallocate(p);
  a->deallocate(r);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
  EXPECT_EQ(a->stats().segments.current, 0);
  a->check_invariants();
}

TEST(GrowableSegments, AFreeTailIsUnmappedFromItsFirstGranuleBoundary) {
  auto a = make_vmm();
  char* p = static_cast<char*>(a->allocate(4 * MiB + 512 * KiB));  // maps 6 MiB: 1.5 MiB free
  char* q = static_cast<char*>(a->allocate(3 * MiB));  // extends that free tail by one granule
  EXPECT_EQ(q, p + 4 * MiB + 512 * KiB);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(8 * MiB));
  a->deallocate(q);  // free from 4.5 MiB to 8 MiB
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(6 * MiB))
      << "4.5..6 MiB stays mapped: its granule holds the end of p";
  a->check_invariants();
  a->deallocate(p);
}

TEST(GrowableSegments, AHoleIsUnmappedOnReleaseAndBackedAgainWhenUsed) {
  auto a = make_vmm();
  char* p = static_cast<char*>(a->allocate(4 * MiB));
  char* q = static_cast<char*>(a->allocate(4 * MiB));
  char* r = static_cast<char*>(a->allocate(4 * MiB));
  a->deallocate(q);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(8 * MiB)) << "the hole between p and r went back";
  EXPECT_EQ(a->stats().backend_frees, 1);
  a->check_invariants();
  char* again = static_cast<char*>(a->allocate(3 * MiB));
  EXPECT_EQ(again, q);
  std::memset(again, 5, 3 * MiB);  // backed: writing faults otherwise
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(12 * MiB));
  a->check_invariants();
  for (char* block : {p, r, again}) a->deallocate(block);
}

TEST(GrowableSegments, AHoleGoesBackWhenAnotherStreamNeedsTheBudget) {
  AllocatorOptions options;
  options.budget_bytes = 12 * MiB;
  auto a = make_vmm(options);
  void* p = a->allocate(4 * MiB, stream_handle(1));
  void* q = a->allocate(4 * MiB, stream_handle(1));
  void* r = a->allocate(4 * MiB, stream_handle(1));
  a->deallocate(q);  // a hole: the classic layout could not give it back while p and r live
  void* other = a->allocate(4 * MiB, stream_handle(2));
  std::memset(other, 6, 4 * MiB);
  EXPECT_LE(a->stats().reserved_bytes.peak, static_cast<std::int64_t>(12 * MiB));
  EXPECT_EQ(a->stats().ooms, 0);
  a->check_invariants();
  for (void* block : {p, r, other}) a->deallocate(block);
}

// Note [Reclaiming holes]: a request no hole fits grows the segment, and the holes' granules go
// back first, so reserved bytes do not pass their high-water mark.
TEST(GrowableSegments, AGrowthPastTheHighWaterMarkUnmapsHolesFirst) {
  for (const bool reclaim : {true, false}) {
    SCOPED_TRACE(reclaim ? "reclaim_holes:true" : "reclaim_holes:false");
    AllocatorOptions options;
    options.reclaim_holes = reclaim;
    auto a = make_vmm(options);
    std::vector<char*> blocks;
    for (int i = 0; i < 5; ++i) blocks.push_back(static_cast<char*>(a->allocate(4 * MiB)));
    a->deallocate(blocks[1]);  // two 4 MiB holes between live blocks
    a->deallocate(blocks[3]);
    ASSERT_EQ(reserved(*a), static_cast<std::int64_t>(20 * MiB));
    char* big = static_cast<char*>(a->allocate(6 * MiB));  // fits neither hole: the segment grows
    std::memset(big, 7, 6 * MiB);
    EXPECT_EQ(big, blocks[4] + 4 * MiB);
    // 6 MiB past the mark: both holes go back (whole free blocks, 8 MiB), one call each.
    EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(reclaim ? 18 * MiB : 26 * MiB));
    EXPECT_EQ(a->stats().backend_frees, reclaim ? 2 : 0);
    a->check_invariants();
    char* again = static_cast<char*>(a->allocate(4 * MiB));  // a hole, backed again
    std::memset(again, 8, 4 * MiB);
    EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(reclaim ? 22 * MiB : 26 * MiB));
    a->check_invariants();
    for (char* p : {blocks[0], blocks[2], blocks[4], big, again}) a->deallocate(p);
  }
}

// An oversize block (max_split_size) is handed out whole, and all of it is backed, even after
// reclaiming took its granules back while it was free.
TEST(GrowableSegments, AnOversizeBlockHandedOutWholeIsBackedWhole) {
  AllocatorOptions options;
  options.max_split_size = 32 * MiB;
  auto a = make_vmm(options);
  void* p = a->allocate(40 * MiB);
  void* q = a->allocate(2 * MiB);
  a->deallocate(p);
  void* r = a->allocate(8 * MiB);  // too small for the oversize hole: grows, reclaiming the hole
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(10 * MiB));
  char* s = static_cast<char*>(a->allocate(34 * MiB));  // takes the 40 MiB hole whole
  ASSERT_EQ(s, p);
  ASSERT_EQ(a->block_size(s), 40 * MiB);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(50 * MiB));
  a->check_invariants();  // before the write, which would fault on an unbacked granule
  std::memset(s, 4, 40 * MiB);
  for (void* block : {q, r, static_cast<void*>(s)}) a->deallocate(block);
}

// Reserved bytes are the device's, not a stream's: a stream growing past the mark takes another
// stream's holes back first; a block still in use on another stream (record_stream) is not free,
// and keeps its granules.
TEST(GrowableSegments, ReclaimingTakesOtherStreamsHolesButNotBlocksStillInUse) {
  auto state = std::make_shared<testing::ManualEvents::State>();
  auto a = std::make_unique<CachingAllocator>(
      std::make_unique<HostBackend>(), std::make_unique<HostVirtualMemory>(2 * MiB, 1ull << 34),
      std::make_unique<testing::ManualEvents>(state));
  const Stream one = stream_handle(1), two = stream_handle(2), side = stream_handle(3);
  void* a1 = a->allocate(4 * MiB, one);
  void* hole = a->allocate(4 * MiB, one);
  void* a2 = a->allocate(4 * MiB, one);
  void* busy = a->allocate(4 * MiB, one);
  void* a3 = a->allocate(4 * MiB, one);
  a->record_stream(busy, side);
  state->busy.insert(side);
  a->deallocate(hole);
  a->deallocate(busy);  // waits for the side stream: not free
  ASSERT_EQ(reserved(*a), static_cast<std::int64_t>(20 * MiB));
  char* other = static_cast<char*>(a->allocate(6 * MiB, two));  // 26 MiB past the mark of 20
  std::memset(other, 1, 6 * MiB);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(22 * MiB)) << "stream 1's free hole went back";
  EXPECT_EQ(state->synchronized, std::vector<Stream>{one}) << "the side stream's block is not free";
  a->check_invariants();
  state->busy.clear();
  for (void* block : {a1, a2, a3, static_cast<void*>(other)}) a->deallocate(block);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
}

// Note [Unmapping waits for the stream]: what the allocator asks of the device, in order.
struct DeviceCalls {
  struct Call {
    std::string what;   // "sync" or "unmap"
    std::uintptr_t at;  // the stream, or the unmapped address
  };
  std::vector<Call> calls;
  std::vector<std::uintptr_t> reservations;  // each segment's base, in the order reserved
  std::set<Stream> failing;                  // streams whose synchronize() throws
  std::set<std::uintptr_t> stuck;            // granules whose unmap() throws, even on their own
};

constexpr std::size_t kReservation = 1ull << 34;

// Host events (all complete at once) that log each synchronize(), or fail it.
class LoggedEvents final : public StreamEvents {
 public:
  explicit LoggedEvents(std::shared_ptr<DeviceCalls> log) : log_(std::move(log)) {}
  Event record(Stream /*stream*/) override { return nullptr; }
  bool is_complete(Event /*event*/) override { return true; }
  void release(Event /*event*/) override {}
  void synchronize(Stream stream) override {
    if (log_->failing.count(stream) != 0) {
      throw BackendError("injected: the stream could not be waited for");
    }
    log_->calls.push_back({"sync", reinterpret_cast<std::uintptr_t>(stream)});
  }

 private:
  std::shared_ptr<DeviceCalls> log_;
};

// The CPU twin, logging each reserve() and unmap().
class LoggedVirtualMemory final : public VirtualMemory {
 public:
  explicit LoggedVirtualMemory(std::shared_ptr<DeviceCalls> log) : log_(std::move(log)) {}
  std::size_t granularity() const noexcept override { return host_.granularity(); }
  std::size_t reservation() const noexcept override { return host_.reservation(); }
  void* reserve(std::size_t bytes) override {
    void* base = host_.reserve(bytes);
    log_->reservations.push_back(reinterpret_cast<std::uintptr_t>(base));
    return base;
  }
  void release(void* base, std::size_t bytes) override { host_.release(base, bytes); }
  bool map(void* ptr, std::size_t bytes) override { return host_.map(ptr, bytes); }
  void unmap(void* ptr, std::size_t bytes) override {
    const auto at = reinterpret_cast<std::uintptr_t>(ptr);
    if (log_->stuck.lower_bound(at) != log_->stuck.lower_bound(at + bytes)) {
      throw BackendError("injected: the range could not be unmapped");
    }
    log_->calls.push_back({"unmap", at});
    host_.unmap(ptr, bytes);
  }
  const char* name() const noexcept override { return "logged-vmm-host"; }

 private:
  std::shared_ptr<DeviceCalls> log_;
  HostVirtualMemory host_{2 * MiB, kReservation};
};

std::unique_ptr<CachingAllocator> make_logged_vmm(const std::shared_ptr<DeviceCalls>& log,
                                                   AllocatorOptions options = {}) {
  return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(),
                                            std::make_unique<LoggedVirtualMemory>(log),
                                            std::make_unique<LoggedEvents>(log), options);
}

// The calls of one stream, in order: "sync" for its wait, "unmap" for each of its segment's.
// `first_use` gives the streams in the order they first allocated (so reserved their segments).
std::vector<std::string> calls_of(const DeviceCalls& log, Stream stream,
                                  const std::vector<Stream>& first_use) {
  const auto index = std::find(first_use.begin(), first_use.end(), stream) - first_use.begin();
  const std::uintptr_t base = log.reservations.at(static_cast<std::size_t>(index));
  std::vector<std::string> calls;
  for (const auto& call : log.calls) {
    const bool mine = call.what == "sync" ? call.at == reinterpret_cast<std::uintptr_t>(stream)
                                          : call.at - base < kReservation;
    if (mine) calls.push_back(call.what);
  }
  return calls;
}

// Five 4 MiB blocks on `stream`, the second and fourth freed: two holes, two runs to unmap.
std::vector<void*> two_holes(CachingAllocator& a, Stream stream) {
  std::vector<void*> blocks;
  for (int i = 0; i < 5; ++i) blocks.push_back(a.allocate(4 * MiB, stream));
  a.deallocate(blocks[1]);
  a.deallocate(blocks[3]);
  return {blocks[0], blocks[2], blocks[4]};
}

const std::vector<std::string> kWaitThenTwoUnmaps = {"sync", "unmap", "unmap"};

TEST(GrowableSegments, AReleaseWaitsOnceForEachStreamWhoseGranulesGoBeforeUnmappingThem) {
  auto log = std::make_shared<DeviceCalls>();
  AllocatorOptions options;
  options.reclaim_holes = false;  // stream 1's holes stay mapped while stream 2 grows
  auto a = make_logged_vmm(log, options);
  const Stream one = stream_handle(1), two = stream_handle(2), three = stream_handle(3);
  const std::vector<void*> ones = two_holes(*a, one);
  const std::vector<void*> twos = two_holes(*a, two);
  void* busy = a->allocate(4 * MiB, three);  // nothing of stream 3's goes
  ASSERT_TRUE(log->calls.empty());
  a->empty_cache();
  EXPECT_EQ(log->calls.size(), 6u);
  EXPECT_EQ(calls_of(*log, one, {one, two, three}), kWaitThenTwoUnmaps);
  EXPECT_EQ(calls_of(*log, two, {one, two, three}), kWaitThenTwoUnmaps);
  a->check_invariants();
  for (const auto& blocks : {ones, twos}) {
    for (void* p : blocks) a->deallocate(p);
  }
  a->deallocate(busy);
}

// Reclaiming waits for the stream whose holes go, not for the one that asks.
TEST(GrowableSegments, ReclaimingWaitsForTheStreamOfTheHolesOnly) {
  auto log = std::make_shared<DeviceCalls>();
  auto a = make_logged_vmm(log);
  const Stream one = stream_handle(1), two = stream_handle(2);
  const std::vector<void*> ones = two_holes(*a, one);
  ASSERT_TRUE(log->calls.empty());
  void* other = a->allocate(6 * MiB, two);  // past the mark: stream 1's holes go
  EXPECT_EQ(log->calls.size(), 3u);
  EXPECT_EQ(calls_of(*log, one, {one, two}), kWaitThenTwoUnmaps);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(18 * MiB));
  // Below the mark, nothing waits.
  log->calls.clear();
  for (int i = 0; i < 10; ++i) a->deallocate(a->allocate(4 * MiB, one));
  EXPECT_TRUE(log->calls.empty());
  a->check_invariants();
  for (void* p : ones) a->deallocate(p);
  a->deallocate(other);
}

// The shim's cudaMalloc pool: its blocks come back only after the device finished with them, so
// unmapping them waits for nothing (and kUnorderedPool is no stream to hand to CUDA).
TEST(GrowableSegments, TheUnorderedPoolIsUnmappedWithoutWaiting) {
  auto log = std::make_shared<DeviceCalls>();
  auto a = make_logged_vmm(log);
  const std::vector<void*> blocks = two_holes(*a, kUnorderedPool);
  a->empty_cache();
  EXPECT_EQ(calls_of(*log, kUnorderedPool, {kUnorderedPool}),
            (std::vector<std::string>{"unmap", "unmap"}));
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(12 * MiB));
  for (void* p : blocks) a->deallocate(p);
}

// A stream that cannot be waited for keeps its granules: a release says so, and a reclaim grows
// the segment instead, reporting it; the other streams' granules go all the same.
TEST(GrowableSegments, AStreamThatCannotBeWaitedForKeepsItsGranulesMapped) {
  auto log = std::make_shared<DeviceCalls>();
  auto a = make_logged_vmm(log);
  const Stream one = stream_handle(1), two = stream_handle(2);
  const std::vector<void*> ones = two_holes(*a, one);
  log->failing = {one};
  ::testing::internal::CaptureStderr();
  char* other = static_cast<char*>(a->allocate(6 * MiB, two));
  const std::string reported = ::testing::internal::GetCapturedStderr();
  std::memset(other, 5, 6 * MiB);
  EXPECT_NE(reported.find("the stream could not be waited for; its holes stay mapped; the "
                          "segment grows instead"),
            std::string::npos)
      << reported;
  EXPECT_EQ(a->stats().backend_errors, 1);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(26 * MiB)) << "the holes stayed mapped";
  EXPECT_TRUE(log->calls.empty()) << "nothing was unmapped";
  // Stream 2 frees its block, and a release takes it back though stream 1 cannot be waited for;
  // stream 1's free tail (its last block, and the hole before it) stays mapped and in the segment.
  a->deallocate(other);
  a->deallocate(ones[2]);
  try {
    a->empty_cache();
    ADD_FAILURE() << "empty_cache did not say that it released nothing of stream 1";
  } catch (const BackendError& error) {
    EXPECT_NE(std::string(error.what()).find("could not be waited for"), std::string::npos);
  }
  EXPECT_EQ(calls_of(*log, two, {one, two}), (std::vector<std::string>{"sync", "unmap"}));
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(20 * MiB)) << "stream 2's 6 MiB went back";
  a->check_invariants();  // a trimmed extent would have dropped mapped granules
  log->failing.clear();
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(8 * MiB)) << "stream 1's two live blocks";
  a->check_invariants();
  a->deallocate(ones[0]);
  a->deallocate(ones[1]);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
}

// A granule that will not unmap, even on its own, stays mapped, and so do the free granules of its
// stream that the pass has not reached; the other streams' go all the same, and the release names
// the granule.
TEST(GrowableSegments, AGranuleThatWillNotUnmapHoldsBackItsOwnStreamOnly) {
  auto log = std::make_shared<DeviceCalls>();
  AllocatorOptions options;
  options.reclaim_holes = false;  // nothing unmaps before the release
  auto a = make_logged_vmm(log, options);
  const Stream one = stream_handle(1), two = stream_handle(2);
  const std::vector<void*> ones = two_holes(*a, one);
  // Stream 2: 4, 4, 4, 2 and 4 MiB; the second and fourth freed. The release reaches its 4 MiB
  // hole (4..8 MiB) first, then the 2 MiB one (12..14).
  std::vector<void*> twos;
  for (std::size_t mib : {4, 4, 4, 2, 4}) twos.push_back(a->allocate(mib * MiB, two));
  a->deallocate(twos[1]);
  a->deallocate(twos[3]);
  const std::uintptr_t stuck = log->reservations.at(1) + 6 * MiB;
  log->stuck = {stuck};
  ::testing::internal::CaptureStderr();
  try {
    a->empty_cache();
    ADD_FAILURE() << "empty_cache did not say that a granule stayed mapped";
  } catch (const BackendError& error) {
    char granule[32];
    std::snprintf(granule, sizeof granule, "%p", reinterpret_cast<void*>(stuck));
    EXPECT_NE(std::string(error.what()).find(std::string(granule) + " could not be unmapped"),
              std::string::npos)
        << error.what();
  }
  const std::string reported = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(reported.find("the granules are unmapped one by one"), std::string::npos) << reported;
  EXPECT_EQ(a->stats().backend_errors, 1) << "the run's unmap; the granule's is thrown";
  EXPECT_EQ(calls_of(*log, one, {one, two}), kWaitThenTwoUnmaps) << "stream 1's holes went";
  EXPECT_EQ(calls_of(*log, two, {one, two}), (std::vector<std::string>{"sync", "unmap"}))
      << "only the first hole's first granule went, on its own";
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>((12 + 16) * MiB));
  a->check_invariants();
  log->stuck.clear();
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>((12 + 12) * MiB));
  for (const auto& blocks : {ones, twos}) {
    for (void* p : blocks) {
      if (p != twos[1] && p != twos[3]) a->deallocate(p);
    }
  }
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
  a->check_invariants();
}

// A free tail whose granule will not unmap keeps the segment's extent over it.
TEST(GrowableSegments, AFreeTailThatWillNotUnmapIsNotTrimmed) {
  auto log = std::make_shared<DeviceCalls>();
  auto a = make_logged_vmm(log);
  void* live = a->allocate(4 * MiB);
  a->deallocate(a->allocate(4 * MiB));  // the free tail: 4..8 MiB
  log->stuck = {log->reservations.at(0) + 6 * MiB};
  ::testing::internal::CaptureStderr();
  EXPECT_THROW(a->empty_cache(), BackendError);
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(6 * MiB)) << "4..6 MiB went; 6..8 stays";
  a->check_invariants();  // a trimmed extent would have dropped the granule still mapped
  log->stuck.clear();
  a->empty_cache();
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(4 * MiB));
  a->deallocate(live);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
}

TEST(GrowableSegments, ARequestThatMappedMemoryServesUnmapsNothing) {
  auto a = make_vmm();
  std::vector<void*> blocks;
  for (int i = 0; i < 5; ++i) blocks.push_back(a->allocate(4 * MiB));
  a->deallocate(blocks[1]);  // a hole
  a->deallocate(blocks[3]);
  a->deallocate(blocks[4]);  // and a free, mapped tail of 8 MiB
  void* p = a->allocate(6 * MiB);  // the tail serves it: nothing is mapped, nothing unmapped
  EXPECT_EQ(p, blocks[3]);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(20 * MiB));
  EXPECT_EQ(a->stats().backend_frees, 0);
  a->check_invariants();
  for (void* q : {blocks[0], blocks[2], p}) a->deallocate(q);
}

TEST(GrowableSegments, AReleaseLowersTheHighWaterMark) {
  auto a = make_vmm();
  char* p = static_cast<char*>(a->allocate(2 * MiB));
  char* q = static_cast<char*>(a->allocate(4 * MiB));
  char* r = static_cast<char*>(a->allocate(8 * MiB));
  a->deallocate(r);
  a->empty_cache();  // 6 MiB left of 14: the mark comes down to 6
  a->deallocate(p);  // a hole of one granule
  char* s = static_cast<char*>(a->allocate(4 * MiB));  // grows past q, and so past the mark
  std::memset(s, 9, 4 * MiB);
  EXPECT_EQ(s, q + 4 * MiB);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(8 * MiB)) << "10 MiB if the mark were still 14";
  a->check_invariants();
  a->deallocate(q);
  a->deallocate(s);
}

// The vmm layout has no small pool: small requests come from the stream's segment, and fill what
// large blocks leave of their granules.
TEST(GrowableSegments, SmallRequestsShareTheStreamSegment) {
  auto a = make_vmm();
  // 4 MiB mapped, 1.5 MiB of it a free block (a large request splits off more than 1 MiB)
  char* large = static_cast<char*>(a->allocate(2 * MiB + 512 * KiB));
  char* small = static_cast<char*>(a->allocate(200 * KiB));
  std::memset(small, 3, 200 * KiB);
  EXPECT_EQ(small, large + 2 * MiB + 512 * KiB);
  EXPECT_EQ(reserved(*a), static_cast<std::int64_t>(4 * MiB)) << "the classic layout: 4 + 2 MiB";
  EXPECT_EQ(a->stats().segments.current, 1);
  char* next = static_cast<char*>(a->allocate(512));
  EXPECT_EQ(next, small + 200 * KiB) << "a small request splits off only what it needs";
  a->check_invariants();
  for (char* p : {large, small, next}) a->deallocate(p);
  a->empty_cache();
  EXPECT_EQ(reserved(*a), 0);
}

TEST(GrowableSegments, StreamsGrowSegmentsOfTheirOwn) {
  auto a = make_vmm();
  void* p = a->allocate(4 * MiB, stream_handle(1));
  void* q = a->allocate(4 * MiB, stream_handle(2));
  EXPECT_EQ(a->stats().segments.current, 2);
  EXPECT_NE(static_cast<char*>(q), static_cast<char*>(p) + 4 * MiB);
  a->deallocate(p);
  void* r = a->allocate(4 * MiB, stream_handle(2));
  EXPECT_NE(r, p) << "stream 1's free block is not stream 2's";
  a->check_invariants();
  a->deallocate(q);
  a->deallocate(r);
}

TEST(GrowableSegments, AGrowthOverTheBudgetReleasesTheTailThenAsksThePressureHandlers) {
  AllocatorOptions options;
  options.budget_bytes = 12 * MiB;
  auto a = make_vmm(options);
  void* p = a->allocate(4 * MiB);
  void* q = a->allocate(8 * MiB);
  a->deallocate(q);  // free tail, still mapped: 12 MiB reserved
  void* r = a->allocate(2 * MiB, stream_handle(7));  // another stream: its growth needs the tail
  EXPECT_LE(reserved(*a), static_cast<std::int64_t>(12 * MiB));
  std::vector<void*> held{r};
  int calls = 0;
  a->add_pressure_handler([&](std::size_t) -> std::size_t {
    ++calls;
    if (held.empty()) return 0;
    const std::size_t freed = a->block_size(held.back());
    a->deallocate(held.back());
    held.pop_back();
    return freed;
  });
  void* big = a->allocate(8 * MiB);  // 4 + 2 + 8 > 12: the handler must free stream 7's block
  EXPECT_EQ(calls, 1);
  EXPECT_LE(a->stats().reserved_bytes.peak, static_cast<std::int64_t>(12 * MiB));
  try {
    a->allocate(8 * MiB);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("within a budget of 12.00 MiB"), std::string::npos)
        << e.what();
  }
  a->check_invariants();
  a->deallocate(p);
  a->deallocate(big);
}

TEST(GrowableSegments, BadPointersInsideTheSegmentAreNamedAsSuch) {
  auto a = make_vmm();
  char* p = static_cast<char*>(a->allocate(4 * MiB));
  try {
    a->deallocate(p + 512);
    FAIL() << "expected InvalidPointerError";
  } catch (const InvalidPointerError& e) {
    EXPECT_NE(std::string(e.what()).find("lies in memory actmem reserved"), std::string::npos);
  }
  a->deallocate(p);
  EXPECT_THROW(a->deallocate(p), InvalidPointerError);
  a->check_invariants();
}

TEST(GrowableSegments, ASteadyStateMapsAndUnmapsNothing) {
  auto a = make_vmm();
  auto step = [&] {
    std::vector<void*> blocks;
    for (std::size_t size : {3 * MiB, 12 * MiB, 700 * KiB, 5 * MiB, 64 * KiB, 17 * MiB}) {
      blocks.push_back(a->allocate(size));
    }
    for (void* p : blocks) a->deallocate(p);
  };
  step();
  const AllocatorStats warm = a->stats();
  for (int i = 0; i < 20; ++i) step();
  const AllocatorStats after = a->stats();
  EXPECT_EQ(after.backend_allocs, warm.backend_allocs);
  EXPECT_EQ(after.backend_frees, warm.backend_frees);
  a->check_invariants();
}

// Random allocate/free of 512 B to 12 MiB over two streams, the live bytes checked against an
// independent model and the invariants after every operation; each block is filled and checked.
TEST(GrowableSegments, RandomWorkloadKeepsEveryByteAccountedFor) {
  auto a = make_vmm();
  std::mt19937_64 random(7);
  std::map<void*, std::pair<std::size_t, unsigned char>> live;
  std::int64_t requested = 0;
  for (int op = 0; op < 3000; ++op) {
    const bool allocate = live.size() < 8 || (live.size() < 64 && random() % 2 == 0);
    if (allocate) {
      const std::size_t size = random() % 4 == 0 ? 1 * MiB + random() % (11 * MiB)
                                                 : 512 + random() % (256 * KiB);
      const Stream stream = stream_handle(1 + random() % 2);
      void* p = a->allocate(size, stream);
      const auto fill = static_cast<unsigned char>(op);
      std::memset(p, fill, size);
      live[p] = {size, fill};
      requested += static_cast<std::int64_t>(size);
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(random() % live.size()));
      const auto* bytes = static_cast<const unsigned char*>(it->first);
      ASSERT_EQ(bytes[0], it->second.second);
      ASSERT_EQ(bytes[it->second.first - 1], it->second.second);
      requested -= static_cast<std::int64_t>(it->second.first);
      a->deallocate(it->first);
      live.erase(it);
    }
    if (op % 500 == 0) a->empty_cache();
    ASSERT_EQ(a->stats().requested_bytes.current, requested);
    ASSERT_NO_THROW(a->check_invariants()) << "after operation " << op;
  }
  for (auto& [p, info] : live) a->deallocate(p);
  a->empty_cache();
  EXPECT_EQ(a->stats().reserved_bytes.current, 0);
}

#if defined(ACTMEM_HAVE_CUDA)
// actmem's allocator over the CUDA driver's virtual memory on device 0, or nullptr with `why`.
std::unique_ptr<CachingAllocator> make_cuda_vmm(std::string* why) {
  const CudaRuntime* runtime = detail::resolve_cuda_runtime();
  if (runtime == nullptr || cuda_device_count(*runtime) == 0) {
    *why = "no CUDA device answers on this machine";
    return nullptr;
  }
  std::unique_ptr<CudaVirtualMemory> vm = CudaVirtualMemory::create(0, why);
  if (!vm) return nullptr;
  return std::make_unique<CachingAllocator>(std::make_unique<CudaBackend>(*runtime, 0),
                                            std::move(vm),
                                            std::make_unique<CudaEvents>(*runtime, 0));
}

// The same layout over the CUDA driver's virtual memory, where a device answers.
TEST(GrowableSegmentsOnCuda, GrowContiguouslyOnTheDeviceAndShrinkOnRelease) {
  std::string why;
  const std::unique_ptr<CachingAllocator> allocator = make_cuda_vmm(&why);
  if (!allocator) GTEST_SKIP() << why;
  CachingAllocator& a = *allocator;
  const std::size_t granule = a.virtual_memory()->granularity();
  char* p = static_cast<char*>(a.allocate(3 * MiB));
  char* q = static_cast<char*>(a.allocate(5 * MiB));
  ASSERT_EQ(cudaMemset(p, 1, 3 * MiB), cudaSuccess);
  ASSERT_EQ(cudaMemset(q, 2, 5 * MiB), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(q, p + ((3 * MiB + granule - 1) / granule) * granule);
  EXPECT_EQ(a.stats().segments.current, 1);
  a.deallocate(q);
  a.empty_cache();
  EXPECT_EQ(static_cast<std::size_t>(a.stats().reserved_bytes.current),
            (3 * MiB + granule - 1) / granule * granule);
  char* r = static_cast<char*>(a.allocate(7 * MiB));
  ASSERT_EQ(cudaMemset(r, 3, 7 * MiB), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  a.check_invariants();
  a.deallocate(p);
  a.deallocate(r);
}

// Note [Unmapping waits for the stream] on the device: a vmm allocator on device 0 and a stream of
// the test's own.
class CudaStreamUnmapping : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    allocator = make_cuda_vmm(&why);
    if (!allocator) GTEST_SKIP() << why;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  }
  void TearDown() override {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
  // Queues on the stream a host function that holds it for 200 ms, whatever the GPU's speed: work
  // queued after it cannot have finished when a call returns that did not wait for the stream.
  void hold_the_stream() {
    ASSERT_EQ(cudaLaunchHostFunc(
                  stream,
                  [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); },
                  nullptr),
              cudaSuccess);
  }
  // Queues on the stream a host function that marks, when the stream reaches it, that all work
  // queued before it has finished.
  void mark_the_end() {
    ASSERT_EQ(cudaLaunchHostFunc(
                  stream, [](void* flag) { static_cast<std::atomic<bool>*>(flag)->store(true); },
                  &done),
              cudaSuccess);
  }
  std::unique_ptr<CachingAllocator> allocator;
  cudaStream_t stream = nullptr;
  std::atomic<bool> done{false};
};

// A block freed while work queued on its stream still writes it is unmapped only once that work
// has finished.
TEST_F(CudaStreamUnmapping, ABlockStillWrittenByItsStreamIsUnmappedOnlyAfterIt) {
  CachingAllocator& a = *allocator;
  void* first = a.allocate(2 * MiB, stream);  // the segment's start stays allocated
  char* big = static_cast<char*>(a.allocate(256 * MiB, stream));
  hold_the_stream();
  for (int i = 0; i < 4; ++i) ASSERT_EQ(cudaMemsetAsync(big, i, 256 * MiB, stream), cudaSuccess);
  mark_the_end();
  a.deallocate(big);  // stream-ordered: the memsets have not even started
  a.empty_cache();    // unmaps big's granules
  EXPECT_TRUE(done.load()) << "unmapped before the stream's work finished";
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(a.stats().backend_errors, 0);
  EXPECT_LT(a.stats().reserved_bytes.current, static_cast<std::int64_t>(256 * MiB));
  a.deallocate(first);
}

// A stream destroyed after its blocks were freed (cudaFreeAsync, then cudaStreamDestroy) is no
// stream to wait for: unmapping its holes waits for the device instead, without an error.
TEST_F(CudaStreamUnmapping, ADestroyedStreamsHolesAreUnmappedAfterTheDevice) {
  CachingAllocator& a = *allocator;
  void* first = a.allocate(4 * MiB, stream);
  char* hole = static_cast<char*>(a.allocate(64 * MiB, stream));
  void* last = a.allocate(4 * MiB, stream);
  hold_the_stream();
  ASSERT_EQ(cudaMemsetAsync(hole, 1, 64 * MiB, stream), cudaSuccess);
  mark_the_end();
  a.deallocate(hole);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);  // its work still runs, then it goes
  stream = nullptr;
  const std::int64_t before = a.stats().reserved_bytes.current;
  a.empty_cache();
  EXPECT_TRUE(done.load()) << "unmapped before the destroyed stream's work finished";
  EXPECT_EQ(a.stats().backend_errors, 0);
  EXPECT_EQ(a.stats().reserved_bytes.current, before - static_cast<std::int64_t>(64 * MiB));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  a.deallocate(first);
  a.deallocate(last);
}
#endif

}  // namespace
}  // namespace actmem::alloc

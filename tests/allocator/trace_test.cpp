// Recording a trace, writing and reading it back, and replaying it on a fresh allocator.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "allocator/caching_allocator.h"
#include "allocator/host_backend.h"
#include "allocator/trace.h"

namespace actmem::alloc {
namespace {

// A trace of a training-like pattern: a forward pass allocating activations, a backward freeing
// them in reverse, with some short-lived temporaries.
std::vector<TraceEntry> record_step_trace() {
  AllocatorOptions options;
  options.record_trace = true;
  CachingAllocator recorder(std::make_unique<HostBackend>(), options);
  std::mt19937 rng(7);
  std::vector<void*> activations;
  for (int layer = 0; layer < 40; ++layer) {
    activations.push_back(recorder.allocate((rng() % 4096 + 1) * 1024));
    recorder.deallocate(recorder.allocate(rng() % 100000 + 1));
  }
  while (!activations.empty()) {
    recorder.deallocate(activations.back());
    activations.pop_back();
  }
  return recorder.trace();
}

TEST(AllocatorTrace, WritesAndReadsBackTheSameEntries) {
  const std::vector<TraceEntry> trace = record_step_trace();
  ASSERT_FALSE(trace.empty());
  std::stringstream text;
  write_trace(text, trace);
  EXPECT_EQ(read_trace(text), trace);
}

// A reader that follows the trace as it grows (the auto policy's profile) reads only what is new.
TEST(AllocatorTrace, IsReadFromAnyPositionAndSwitchedOnAndOffAtRunTime) {
  CachingAllocator allocator(std::make_unique<HostBackend>());
  EXPECT_FALSE(allocator.trace_enabled());
  allocator.deallocate(allocator.allocate(4096));
  EXPECT_EQ(allocator.trace_size(), 0u) << "off: nothing recorded";
  allocator.set_trace_enabled(true);
  void* a = allocator.allocate(1024);
  const std::size_t mark = allocator.trace_size();
  allocator.deallocate(a);
  void* b = allocator.allocate(2048);
  const std::vector<TraceEntry> tail = allocator.trace(mark);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0].action, TraceEntry::Action::kFree);
  EXPECT_EQ(tail[1].action, TraceEntry::Action::kAlloc);
  EXPECT_EQ(tail[1].bytes, 2048u);
  EXPECT_EQ(allocator.trace().size(), allocator.trace_size());
  EXPECT_TRUE(allocator.trace(allocator.trace_size() + 5).empty()) << "past the end: nothing";
  allocator.clear_trace();
  EXPECT_EQ(allocator.trace_size(), 0u);
  allocator.deallocate(b);
}

TEST(AllocatorTrace, MalformedLinesNameTheLine) {
  std::stringstream text("alloc 0x1000 512 0x0\nallocate 0x2000 512 0x0\n");
  try {
    read_trace(text);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("line 2"), std::string::npos) << error.what();
  }
}

TEST(AllocatorTrace, ARepeatedReplayNeedsNoBackendCalls) {
  const std::vector<TraceEntry> trace = record_step_trace();
  CachingAllocator allocator(std::make_unique<HostBackend>());
  const ReplayResult first = replay(trace, allocator);
  EXPECT_EQ(first.allocations, 80u);
  EXPECT_EQ(first.frees, 80u);
  const std::int64_t backend_calls = allocator.stats().backend_allocs;
  EXPECT_GT(backend_calls, 0);
  for (int i = 0; i < 5; ++i) replay(trace, allocator);
  EXPECT_EQ(allocator.stats().backend_allocs, backend_calls) << "steady state must hit the cache";
  allocator.check_invariants();
}

TEST(AllocatorTrace, AFreeOfAnUnknownAddressIsRefused) {
  CachingAllocator allocator(std::make_unique<HostBackend>());
  const std::vector<TraceEntry> trace = {{TraceEntry::Action::kFree, 0x1000, 0, 0}};
  EXPECT_THROW(replay(trace, allocator), std::invalid_argument);
}

}  // namespace
}  // namespace actmem::alloc

// Every call the caching allocator makes into the device, failed in turn: for each kind of call
// and each N up to the number of such calls a scripted workload makes, the workload runs with the
// Nth call failing (Note [A failed CUDA call in the middle of a free]). After every operation the
// allocator's invariants hold and its allocated bytes equal what the script holds; an operation
// that fails throws an AllocatorError naming the failed call, and a free never fails. Once the
// script has freed everything and the streams caught up, nothing is left with the backend, not
// one event is left alive, and the allocator serves requests again.
//
// The doubles fail the way the CUDA ones do: a failed cudaMalloc (or cuMemCreate for lack of
// memory) is nullptr / false; every other failure is an AllocatorError thrown by the backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "allocator/host_virtual_memory.h"

namespace actmem::alloc {
namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

enum class Call {
  kAllocate,
  kDeallocate,
  kEventRecord,
  kEventQuery,
  kSynchronize,
  kMap,
  kUnmap,
  kCount
};
constexpr std::array<const char*, static_cast<int>(Call::kCount)> kCallNames = {
    "allocate", "deallocate", "event record", "event query", "stream synchronize", "map", "unmap"};

// Counts each kind of call, and fails the `nth` call of kind `target` (1-based; 0 fails none).
struct FaultPlan {
  Call target = Call::kCount;
  int nth = 0;
  std::array<int, static_cast<int>(Call::kCount)> calls{};
  bool fired = false;
  std::size_t backend_bytes = 0;  // what the backend has handed out and not got back
  int live_events = 0;

  // True when this call is the one to fail.
  bool fail(Call call) {
    const int count = ++calls[static_cast<int>(call)];
    if (call != target || count != nth) return false;
    fired = true;
    return true;
  }
  std::string message(Call call) const {
    return std::string("injected failure of ") + kCallNames[static_cast<int>(call)] + " #" +
           std::to_string(nth);
  }
};

class FaultyBackend final : public Backend {
 public:
  explicit FaultyBackend(FaultPlan& plan) : plan_(plan) {}
  const char* name() const noexcept override { return "faulty"; }

 private:
  void* do_allocate(std::size_t bytes) override {
    if (plan_.fail(Call::kAllocate)) return nullptr;
    void* ptr = host_.allocate(bytes);
    if (ptr != nullptr) plan_.backend_bytes += bytes;
    return ptr;
  }
  void do_deallocate(void* ptr, std::size_t bytes) override {
    if (plan_.fail(Call::kDeallocate)) throw BackendError(plan_.message(Call::kDeallocate));
    plan_.backend_bytes -= bytes;
    host_.deallocate(ptr, bytes);
  }
  FaultPlan& plan_;
  HostBackend host_;
};

// An event completes at its second query: frees on other streams wait for a while.
class FaultyEvents final : public StreamEvents {
 public:
  explicit FaultyEvents(FaultPlan& plan) : plan_(plan) {}
  Event record(Stream /*stream*/) override {
    if (plan_.fail(Call::kEventRecord)) throw BackendError(plan_.message(Call::kEventRecord));
    ++plan_.live_events;
    return new int(0);
  }
  bool is_complete(Event event) override {
    if (plan_.fail(Call::kEventQuery)) throw BackendError(plan_.message(Call::kEventQuery));
    return ++*static_cast<int*>(event) >= 2;
  }
  void release(Event event) override {
    --plan_.live_events;
    delete static_cast<int*>(event);
  }
  void synchronize(Stream /*stream*/) override {
    if (plan_.fail(Call::kSynchronize)) throw BackendError(plan_.message(Call::kSynchronize));
  }

 private:
  FaultPlan& plan_;
};

class FaultyVirtualMemory final : public VirtualMemory {
 public:
  explicit FaultyVirtualMemory(FaultPlan& plan) : plan_(plan), host_(2 * MiB, 1ull << 32) {}
  std::size_t granularity() const noexcept override { return host_.granularity(); }
  std::size_t reservation() const noexcept override { return host_.reservation(); }
  void* reserve(std::size_t bytes) override { return host_.reserve(bytes); }
  void release(void* base, std::size_t bytes) override {
    forget(base, bytes);
    host_.release(base, bytes);
  }
  // A failed map is out of memory (false) on odd N, a device error (a throw) on even N.
  bool map(void* ptr, std::size_t bytes) override {
    if (plan_.fail(Call::kMap)) {
      if (plan_.nth % 2 == 0) throw BackendError(plan_.message(Call::kMap));
      return false;
    }
    if (!host_.map(ptr, bytes)) return false;
    for (std::size_t at = 0; at < bytes; at += granularity()) {
      mapped_.insert(static_cast<char*>(ptr) + at);
      plan_.backend_bytes += granularity();
    }
    return true;
  }
  // A failed unmap has unmapped the range's first granule before it throws, as a device may.
  void unmap(void* ptr, std::size_t bytes) override {
    if (plan_.fail(Call::kUnmap)) {
      forget(ptr, granularity());
      host_.unmap(ptr, granularity());
      throw BackendError(plan_.message(Call::kUnmap));
    }
    forget(ptr, bytes);
    host_.unmap(ptr, bytes);
  }
  const char* name() const noexcept override { return "faulty-vmm"; }

 private:
  // Counts the granules of [ptr, ptr + bytes) that were mapped as returned.
  void forget(void* ptr, std::size_t bytes) {
    const auto first = mapped_.lower_bound(static_cast<char*>(ptr));
    const auto end = mapped_.lower_bound(static_cast<char*>(ptr) + bytes);
    for (auto it = first; it != end; ++it) plan_.backend_bytes -= granularity();
    mapped_.erase(first, end);
  }

  FaultPlan& plan_;
  HostVirtualMemory host_;
  std::set<char*> mapped_;
};

enum class Layout { kClassic, kVmm };

std::unique_ptr<CachingAllocator> make_allocator(Layout layout, FaultPlan& plan) {
  if (layout == Layout::kVmm) {
    return std::make_unique<CachingAllocator>(std::make_unique<FaultyBackend>(plan),
                                              std::make_unique<FaultyVirtualMemory>(plan),
                                              std::make_unique<FaultyEvents>(plan));
  }
  return std::make_unique<CachingAllocator>(std::make_unique<FaultyBackend>(plan),
                                            std::make_unique<FaultyEvents>(plan),
                                            AllocatorOptions{});
}

Stream stream_handle(std::uintptr_t id) { return reinterpret_cast<Stream>(id); }

// What one run of the script saw.
struct ScriptRun {
  std::vector<std::string> errors;  // what() of each operation that threw
  std::string broken;               // the first broken expectation, empty when none
};

// The workload: rounds of allocations of mixed sizes on three streams, some used on other streams
// before they are freed, with the budget lowered and raised and the cache emptied in between.
// Every block the script holds is written and checked, so memory handed out twice shows.
ScriptRun run_script(CachingAllocator& allocator) {
  ScriptRun run;
  std::unordered_map<void*, std::pair<std::size_t, unsigned char>> held;  // ptr -> size, fill
  std::size_t rounded_held = 0;
  const auto check = [&](const char* after) {
    if (!run.broken.empty()) return;
    try {
      allocator.check_invariants();
    } catch (const std::exception& error) {
      run.broken = std::string(after) + ": " + error.what();
      return;
    }
    if (allocator.stats().allocated_bytes.current != static_cast<std::int64_t>(rounded_held)) {
      run.broken = std::string(after) + ": allocated bytes differ from what the script holds";
    }
  };
  const auto attempt = [&](const char* what, auto operation) {
    try {
      operation();
    } catch (const AllocatorError& error) {
      run.errors.push_back(error.what());
    } catch (const std::exception& error) {
      run.broken = std::string(what) + " threw something other than an AllocatorError: " +
                   error.what();
    }
    check(what);
  };
  const auto release = [&](void* ptr) {
    const auto [size, fill] = held.at(ptr);
    const auto* bytes = static_cast<const unsigned char*>(ptr);
    if (bytes[0] != fill || bytes[size - 1] != fill) run.broken = "a held block was overwritten";
    rounded_held -= allocator.block_size(ptr);
    held.erase(ptr);
    try {
      allocator.deallocate(ptr);
    } catch (const std::exception& error) {
      run.broken = std::string("a free threw: ") + error.what();
    }
    check("deallocate");
  };

  const std::size_t sizes[] = {700, 40 * KiB, 1 * MiB + 3, 3 * MiB, 9 * MiB, 25 * MiB};
  std::vector<void*> order;
  // Under the budget, the oldest blocks go, as the activation hooks would send them out.
  const auto handler = allocator.add_pressure_handler([&](std::size_t needed) {
    std::size_t freed = 0;
    for (void* ptr : order) {
      if (freed >= needed) break;
      if (held.count(ptr) == 0) continue;
      freed += allocator.block_size(ptr);
      release(ptr);
    }
    return freed;
  });
  for (int round = 0; round < 12 && run.broken.empty(); ++round) {
    for (int i = 0; i < 6; ++i) {
      const std::size_t size = sizes[(round + i) % 6];
      const Stream stream = stream_handle(1 + static_cast<std::uintptr_t>((round + i) % 3));
      attempt("allocate", [&] {
        void* ptr = allocator.allocate(size, stream);
        const auto fill = static_cast<unsigned char>(round * 7 + i);
        static_cast<unsigned char*>(ptr)[0] = fill;
        static_cast<unsigned char*>(ptr)[size - 1] = fill;
        held[ptr] = {size, fill};
        rounded_held += allocator.block_size(ptr);
        order.push_back(ptr);
        if (i % 2 == 0) allocator.record_stream(ptr, stream_handle(7 + i % 3));
      });
    }
    // Free the older half of what is held.
    std::vector<void*> still;
    for (std::size_t k = 0; k < order.size(); ++k) {
      if (k % 2 == 0 && held.count(order[k])) {
        release(order[k]);
      } else if (held.count(order[k])) {
        still.push_back(order[k]);
      }
    }
    order = std::move(still);
    // A budget under what is reserved, so that frees release segments, with room for the
    // script's next round.
    if (round % 4 == 1) {
      attempt("set_budget", [&] {
        const auto stats = allocator.stats();
        allocator.set_budget(static_cast<std::size_t>(
            std::max(stats.reserved_bytes.current - static_cast<std::int64_t>(20 * MiB),
                     stats.allocated_bytes.current + static_cast<std::int64_t>(30 * MiB))));
      });
    }
    if (round % 4 == 2) attempt("set_budget", [&] { allocator.set_budget(std::nullopt); });
    if (round % 4 == 3) attempt("empty_cache", [&] { allocator.empty_cache(); });
  }
  allocator.remove_pressure_handler(handler);
  for (void* ptr : order) {
    if (held.count(ptr)) release(ptr);
  }
  return run;
}

// The calls of each kind a run without faults makes.
std::array<int, static_cast<int>(Call::kCount)> calls_without_faults(Layout layout) {
  FaultPlan plan;
  auto allocator = make_allocator(layout, plan);
  const ScriptRun run = run_script(*allocator);
  EXPECT_EQ(run.broken, "");
  EXPECT_TRUE(run.errors.empty()) << run.errors.front();
  return plan.calls;
}

class FaultInjection : public ::testing::TestWithParam<Layout> {};

TEST_P(FaultInjection, EveryFailedCallLeavesTheAllocatorConsistentAndLeaksNothing) {
  const auto calls = calls_without_faults(GetParam());
  int injected = 0;
  for (int kind = 0; kind < static_cast<int>(Call::kCount); ++kind) {
    const auto call = static_cast<Call>(kind);
    for (int nth = 1; nth <= calls[kind]; ++nth) {
      SCOPED_TRACE(std::string(kCallNames[kind]) + " #" + std::to_string(nth));
      FaultPlan plan;
      plan.target = call;
      plan.nth = nth;
      auto allocator = make_allocator(GetParam(), plan);
      testing::internal::CaptureStderr();
      const ScriptRun run = run_script(*allocator);
      const std::string reported = testing::internal::GetCapturedStderr();
      ASSERT_TRUE(plan.fired);
      ++injected;
      ASSERT_EQ(run.broken, "");

      // The failure was told: thrown to the caller with the call named, or, where the caller
      // could not be told (a free), reported on stderr and counted. A failed allocation of device
      // memory is out of memory, unless a release and a second try served the request.
      const std::string injected_text = plan.message(call);
      bool thrown = false;
      for (const std::string& error : run.errors) {
        thrown = thrown || error.find(injected_text) != std::string::npos;
      }
      const bool told = reported.find(injected_text) != std::string::npos;
      if (call == Call::kAllocate || (call == Call::kMap && nth % 2 == 1)) {
        for (const std::string& error : run.errors) {
          EXPECT_NE(error.find("out of memory"), std::string::npos) << error;
        }
      } else {
        EXPECT_TRUE(thrown || told) << "stderr: " << reported;
        EXPECT_EQ(allocator->stats().backend_errors, told ? 1 : 0);
      }

      // The streams catch up and the cache empties: nothing stays with the backend.
      for (int i = 0; i < 3; ++i) allocator->empty_cache();
      allocator->check_invariants();
      EXPECT_EQ(allocator->stats().allocated_bytes.current, 0);
      EXPECT_EQ(allocator->stats().reserved_bytes.current, 0);
      EXPECT_EQ(plan.backend_bytes, 0u) << "bytes left with the backend";
      EXPECT_EQ(plan.live_events, 0);
      // And it serves again.
      void* again = allocator->allocate(5 * MiB, stream_handle(1));
      EXPECT_NE(again, nullptr);
      allocator->deallocate(again);
      allocator.reset();
      EXPECT_EQ(plan.backend_bytes, 0u);
    }
  }
  RecordProperty("faults_injected", injected);
  std::printf("faults injected: %d\n", injected);
}

INSTANTIATE_TEST_SUITE_P(Layouts, FaultInjection, ::testing::Values(Layout::kClassic, Layout::kVmm),
                         [](const auto& param_info) {
                           return param_info.param == Layout::kClassic ? "classic" : "vmm";
                         });

// Events that cannot be recorded (or, with `queries`, asked) until `failures` calls have failed: a
// device failing for a while.
class FailingForAWhileEvents final : public StreamEvents {
 public:
  explicit FailingForAWhileEvents(int failures, bool queries = false)
      : failures_(failures), queries_(queries) {}
  Event record(Stream /*stream*/) override {
    if (!queries_) fail("the event could not be recorded");
    return nullptr;
  }
  bool is_complete(Event /*event*/) override {
    if (queries_) fail("the event could not be asked");
    return true;
  }
  void release(Event /*event*/) override {}
  void synchronize(Stream /*stream*/) override {}

 private:
  void fail(const std::string& what) {
    if (failures_ == 0) return;
    --failures_;
    throw BackendError("injected: " + what);
  }
  int failures_;
  bool queries_;
};

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t count = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

// Blocks whose events could not be recorded wait out of the pools; each allocation tries every one
// of them again (not only the first), and each failure is reported once, not at every try.
TEST(AwaitingEvents, EveryWaitingBlockIsTriedAgainAndReportedOnce) {
  for (const Layout layout : {Layout::kClassic, Layout::kVmm}) {
    SCOPED_TRACE(layout == Layout::kClassic ? "classic" : "vmm");
    auto events = std::make_unique<FailingForAWhileEvents>(6);
    std::unique_ptr<CachingAllocator> a =
        layout == Layout::kClassic
            ? std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(), std::move(events))
            : std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(),
                                                 std::make_unique<HostVirtualMemory>(),
                                                 std::move(events));
    void* p = a->allocate(1 * MiB);
    void* q = a->allocate(3 * MiB);
    a->record_stream(p, stream_handle(9));
    a->record_stream(q, stream_handle(9));
    testing::internal::CaptureStderr();
    a->deallocate(p);  // failures left: 5
    a->deallocate(q);  // 4
    a->deallocate(a->allocate(512));  // tries p and q again: 2
    a->deallocate(a->allocate(512));  // 0
    EXPECT_EQ(a->stats().active_bytes.current, static_cast<std::int64_t>(4 * MiB));
    a->deallocate(a->allocate(512));  // both recorded, complete, back in their pools
    const std::string reported = testing::internal::GetCapturedStderr();
    EXPECT_EQ(occurrences(reported, "could not be recorded"), 2u) << reported;
    EXPECT_EQ(a->stats().backend_errors, 2);
    EXPECT_EQ(a->stats().active_bytes.current, 0);
    a->check_invariants();
  }
}

// The same for events recorded but whose queries fail for a while: one report per freed block.
TEST(AwaitingEvents, AFailingEventQueryIsReportedOncePerBlock) {
  CachingAllocator a(std::make_unique<HostBackend>(),
                     std::make_unique<FailingForAWhileEvents>(6, /*queries=*/true));
  void* p = a.allocate(1 * MiB);
  void* q = a.allocate(1 * MiB);
  a.record_stream(p, stream_handle(9));
  a.record_stream(q, stream_handle(9));
  testing::internal::CaptureStderr();
  a.deallocate(p);
  a.deallocate(q);
  for (int i = 0; i < 3; ++i) a.deallocate(a.allocate(512));  // 2 queries fail each time
  EXPECT_EQ(a.stats().active_bytes.current, static_cast<std::int64_t>(2 * MiB));
  a.deallocate(a.allocate(512));  // both complete
  const std::string reported = testing::internal::GetCapturedStderr();
  EXPECT_EQ(occurrences(reported, "could not be asked"), 2u) << reported;
  EXPECT_EQ(a.stats().backend_errors, 2);
  EXPECT_EQ(a.stats().active_bytes.current, 0);
  a.check_invariants();
}

}  // namespace
}  // namespace actmem::alloc

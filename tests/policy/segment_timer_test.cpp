// The profiler's segment timers. Clocks: a bracketed sleep within sane bounds, ids kept apart,
// nesting, repeats, threads, abandoned and unmatched brackets, collect starting afresh. CUPTI:
// its record arithmetic on hand-built records (no device needed); without a device it says why
// there is none (and the rest skips); on a GPU, a host-to-device copy is counted, kernels are
// attributed to the innermost bracket, and only one timer exists at a time.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "policy/segment_timer.h"

#ifdef ACTMEM_HAVE_CUPTI
#include <cuda.h>  // types only: the driver is reached through dlopen
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include "policy/cupti_records.h"
#endif

namespace actmem {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

constexpr std::int64_t ns(milliseconds ms) { return nanoseconds(ms).count(); }
// Upper bounds stay loose: the test machines are small, shared VMs.
constexpr milliseconds kSlack{2000};

std::int64_t get(const SegmentTimes& times, std::uint64_t id) {
  auto it = times.forward_ns.find(id);
  return it == times.forward_ns.end() ? -1 : it->second;
}

TEST(ClockTimer, MeasuresABracketedSleep) {
  auto timer = make_clock_timer();
  EXPECT_STREQ(timer->name(), "clock");
  timer->begin(7);
  std::this_thread::sleep_for(milliseconds(20));
  timer->end(7);
  SegmentTimes times = timer->collect();
  ASSERT_EQ(times.forward_ns.size(), 1u);
  EXPECT_GE(get(times, 7), ns(milliseconds(20)));
  EXPECT_LT(get(times, 7), ns(milliseconds(20) + kSlack));
  EXPECT_EQ(times.copy_bytes, 0);
  EXPECT_EQ(times.copy_ns, 0);
  EXPECT_EQ(times.dropped_records, 0);
}

TEST(ClockTimer, KeepsIdsApart) {
  auto timer = make_clock_timer();
  timer->begin(1);
  std::this_thread::sleep_for(milliseconds(5));
  timer->end(1);
  timer->begin(2);
  std::this_thread::sleep_for(milliseconds(40));
  timer->end(2);
  SegmentTimes times = timer->collect();
  ASSERT_EQ(times.forward_ns.size(), 2u);
  EXPECT_GE(get(times, 1), ns(milliseconds(5)));
  EXPECT_GE(get(times, 2), ns(milliseconds(40)));
  EXPECT_LT(get(times, 1), ns(milliseconds(5) + kSlack));
  EXPECT_EQ(get(times, 3), -1);
}

TEST(ClockTimer, NestedBracketsEachGetTheirWallTime) {
  auto timer = make_clock_timer();
  timer->begin(1);
  std::this_thread::sleep_for(milliseconds(10));
  timer->begin(2);
  std::this_thread::sleep_for(milliseconds(20));
  timer->end(2);
  std::this_thread::sleep_for(milliseconds(10));
  timer->end(1);
  SegmentTimes times = timer->collect();
  EXPECT_GE(get(times, 2), ns(milliseconds(20)));
  EXPECT_GE(get(times, 1), ns(milliseconds(40)));  // the outer includes the inner
  EXPECT_GE(get(times, 1), get(times, 2) + ns(milliseconds(20)));
}

TEST(ClockTimer, RepeatedAndRecursiveIdsAccumulate) {
  auto timer = make_clock_timer();
  for (int i = 0; i < 3; ++i) {
    timer->begin(5);
    std::this_thread::sleep_for(milliseconds(5));
    timer->end(5);
  }
  EXPECT_GE(get(timer->collect(), 5), ns(milliseconds(15)));

  timer->begin(5);  // the same id nested in itself: both brackets count
  std::this_thread::sleep_for(milliseconds(5));
  timer->begin(5);
  std::this_thread::sleep_for(milliseconds(10));
  timer->end(5);
  timer->end(5);
  EXPECT_GE(get(timer->collect(), 5), ns(milliseconds(25)));
}

TEST(ClockTimer, CollectStartsAfresh) {
  auto timer = make_clock_timer();
  timer->begin(1);
  timer->end(1);
  EXPECT_EQ(timer->collect().forward_ns.size(), 1u);
  EXPECT_TRUE(timer->collect().forward_ns.empty());
}

TEST(ClockTimer, AnOpenBracketCountsWhenItEnds) {
  auto timer = make_clock_timer();
  timer->begin(1);
  std::this_thread::sleep_for(milliseconds(10));
  EXPECT_TRUE(timer->collect().forward_ns.empty());  // a begin without end counts for nothing
  timer->end(1);
  EXPECT_GE(get(timer->collect(), 1), ns(milliseconds(10)));
}

TEST(ClockTimer, BracketsAbandonedInsideAnEndCountForNothing) {
  auto timer = make_clock_timer();
  timer->begin(1);
  timer->begin(2);  // never ended: say its segment threw
  std::this_thread::sleep_for(milliseconds(5));
  timer->end(1);
  SegmentTimes times = timer->collect();
  EXPECT_GE(get(times, 1), ns(milliseconds(5)));
  EXPECT_EQ(get(times, 2), -1);
  EXPECT_THROW(timer->end(2), std::logic_error);  // closed with its outer bracket
}

TEST(ClockTimer, AnEndWithoutItsBeginThrows) {
  auto timer = make_clock_timer();
  EXPECT_THROW(timer->end(3), std::logic_error);
  timer->begin(3);
  std::thread other([&] { EXPECT_THROW(timer->end(3), std::logic_error); });  // not its bracket
  other.join();
  timer->end(3);
  EXPECT_EQ(timer->collect().forward_ns.size(), 1u);
}

TEST(ClockTimer, ThreadsBracketTheSameIdAtOnce) {
  auto timer = make_clock_timer();
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&timer, t] {
      for (int i = 0; i < 3; ++i) {
        timer->begin(100);  // shared: brackets on different threads are apart
        timer->begin(static_cast<std::uint64_t>(t));
        std::this_thread::sleep_for(milliseconds(5));
        timer->end(static_cast<std::uint64_t>(t));
        timer->end(100);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  SegmentTimes times = timer->collect();
  ASSERT_EQ(times.forward_ns.size(), static_cast<std::size_t>(kThreads) + 1);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_GE(get(times, static_cast<std::uint64_t>(t)), ns(milliseconds(15))) << "thread " << t;
  }
  EXPECT_GE(get(times, 100), ns(milliseconds(15 * kThreads)));
}

// --- CUPTI ---

TEST(CuptiTimer, ReturnsATimerOrSaysWhy) {
  std::string why;
  auto timer = make_cupti_timer(&why);
  if (timer == nullptr) {
    EXPECT_FALSE(why.empty());
#ifndef ACTMEM_HAVE_CUPTI
    EXPECT_NE(why.find("built without CUPTI"), std::string::npos) << why;
#endif
    EXPECT_TRUE(make_cupti_timer(nullptr) == nullptr);  // no reason asked for: none written
    GTEST_SKIP() << why;
  }
  EXPECT_STREQ(timer->name(), "cupti");
  EXPECT_TRUE(why.empty()) << why;
}

#ifdef ACTMEM_HAVE_CUPTI

// --- the CUPTI timer's records, built by hand as CUPTI writes them ---

using detail::CuptiRecords;

class Records {
 public:
  explicit Records(std::size_t max_held = CuptiRecords::kDefaultMaxHeld) : records_(max_held) {}

  Records& correlation(std::uint32_t call, std::uint64_t segment,
                       CUpti_ExternalCorrelationKind kind = detail::kSegmentCorrelationKind) {
    CUpti_ActivityExternalCorrelation r{};
    r.kind = CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION;
    r.externalKind = kind;
    r.externalId = segment;
    r.correlationId = call;
    return add(r);
  }
  Records& kernel(std::uint32_t call, std::uint64_t start, std::uint64_t end) {
    detail::CuptiKernelRecord r{};
    r.kind = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL;
    r.start = start;
    r.end = end;
    r.correlationId = call;
    return add(r);
  }
  Records& copy(CUpti_ActivityMemcpyKind kind, std::uint64_t bytes, std::uint64_t start,
                std::uint64_t end) {
    detail::CuptiMemcpyRecord r{};
    r.kind = CUPTI_ACTIVITY_KIND_MEMCPY;
    r.copyKind = static_cast<std::uint8_t>(kind);
    r.bytes = bytes;
    r.start = start;
    r.end = end;
    r.correlationId = 999;
    return add(r);
  }
  Records& api(CUpti_ActivityKind kind, std::uint32_t call) {
    CUpti_ActivityAPI r{};
    r.kind = kind;
    r.correlationId = call;
    return add(r);
  }
  CuptiRecords& operator*() { return records_; }
  SegmentTimes take(std::int64_t dropped = 0) { return records_.take(dropped); }

 private:
  template <typename Record>
  Records& add(const Record& record) {
    records_.add(reinterpret_cast<const CUpti_Activity&>(record));
    return *this;
  }
  CuptiRecords records_;
};

TEST(CuptiRecords, AttributeKernelsThroughTheirCalls) {
  Records records;
  records.correlation(1, 10).api(CUPTI_ACTIVITY_KIND_RUNTIME, 1);
  records.correlation(2, 11).api(CUPTI_ACTIVITY_KIND_DRIVER, 2);
  records.correlation(3, 10).api(CUPTI_ACTIVITY_KIND_RUNTIME, 3);
  records.kernel(1, 1000, 1600).kernel(2, 2000, 2300).kernel(3, 3000, 3100);
  records.kernel(4, 4000, 9000);  // launched outside every bracket: no correlation
  SegmentTimes times = records.take();
  ASSERT_EQ(times.forward_ns.size(), 2u);
  EXPECT_EQ(get(times, 10), 700);
  EXPECT_EQ(get(times, 11), 300);
  EXPECT_EQ(times.copy_bytes, 0);
  EXPECT_EQ(times.dropped_records, 0);
}

TEST(CuptiRecords, AKernelMayComeBeforeItsCorrelation) {
  Records records;
  records.kernel(5, 100, 350).correlation(5, 12);  // buffers come back in no promised order
  EXPECT_EQ(get(records.take(), 12), 250);
}

TEST(CuptiRecords, OnlyTheSegmentCorrelationKindCounts) {
  Records records;
  records.correlation(6, 13, CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM1).kernel(6, 100, 200);
  EXPECT_TRUE(records.take().forward_ns.empty());
}

TEST(CuptiRecords, CountHostDeviceCopiesOnly) {
  Records records;
  records.copy(CUPTI_ACTIVITY_MEMCPY_KIND_HTOD, 1000, 100, 300);
  records.copy(CUPTI_ACTIVITY_MEMCPY_KIND_DTOH, 500, 400, 500);
  records.copy(CUPTI_ACTIVITY_MEMCPY_KIND_DTOD, 7000, 600, 900);
  records.copy(CUPTI_ACTIVITY_MEMCPY_KIND_HTOH, 7000, 600, 900);
  SegmentTimes times = records.take();
  EXPECT_EQ(times.copy_bytes, 1500);
  EXPECT_EQ(times.copy_ns, 300);
  EXPECT_TRUE(times.forward_ns.empty());
}

TEST(CuptiRecords, UntimedUnreadableAndDroppedRecordsAreCounted) {
  Records records;
  records.correlation(1, 10).kernel(1, 0, 0);  // CUPTI had no room for its timestamps
  records.copy(CUPTI_ACTIVITY_MEMCPY_KIND_HTOD, 1000, 0, 0);
  (*records).add_lost(2);
  SegmentTimes times = records.take(/*dropped=*/3);
  EXPECT_EQ(times.dropped_records, 7);
  EXPECT_TRUE(times.forward_ns.empty());
  EXPECT_EQ(times.copy_bytes, 0);
}

TEST(CuptiRecords, TakeStartsAfresh) {
  Records records;
  records.correlation(1, 10).kernel(1, 100, 200).copy(CUPTI_ACTIVITY_MEMCPY_KIND_HTOD, 8, 1, 2);
  (*records).add_lost(1);
  EXPECT_EQ(records.take().forward_ns.size(), 1u);
  records.kernel(1, 300, 400);  // its correlation belonged to the previous collect
  SegmentTimes times = records.take();
  EXPECT_TRUE(times.forward_ns.empty());
  EXPECT_EQ(times.copy_bytes, 0);
  EXPECT_EQ(times.copy_ns, 0);
  EXPECT_EQ(times.dropped_records, 0);
}

TEST(CuptiRecords, HoldAtMostTheirLimit) {
  Records records(/*max_held=*/2);
  records.correlation(1, 10).correlation(2, 10).correlation(3, 10);
  records.kernel(1, 100, 200).kernel(2, 100, 200).kernel(3, 100, 200).kernel(1, 300, 400);
  SegmentTimes times = records.take();
  EXPECT_EQ(times.dropped_records, 3);  // the third correlation, the third and fourth kernels
  EXPECT_EQ(get(times, 10), 200);
}

TEST(CuptiRecords, AFailureInTheCallbackIsThrownByTake) {
  Records records;
  (*records).fail("cuptiActivityGetNextRecord failed: CUPTI_ERROR_UNKNOWN");
  (*records).fail("a second failure");
  try {
    records.take();
    FAIL() << "take() did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("CUPTI_ERROR_UNKNOWN"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(records.take());  // reported once
}

// --- the CUPTI timer on a device ---

#define ACTMEM_CUPTI_TIMER_OR_SKIP(timer)      \
  std::string why_##timer;                     \
  auto timer = make_cupti_timer(&why_##timer); \
  if (timer == nullptr) GTEST_SKIP() << why_##timer

#define ASSERT_CUDA(call)                                                          \
  do {                                                                             \
    const cudaError_t error_ = (call);                                             \
    ASSERT_EQ(error_, cudaSuccess) << #call << ": " << cudaGetErrorString(error_); \
  } while (0)

TEST(CuptiTimer, OnlyOneAtATime) {
  ACTMEM_CUPTI_TIMER_OR_SKIP(first);
  std::string why;
  EXPECT_TRUE(make_cupti_timer(&why) == nullptr);
  EXPECT_NE(why.find("another CUPTI timer"), std::string::npos) << why;
  first.reset();
  EXPECT_TRUE(make_cupti_timer(&why) != nullptr) << why;  // free again once it is gone
}

TEST(CuptiTimer, AnEndWithoutItsBeginThrows) {
  ACTMEM_CUPTI_TIMER_OR_SKIP(timer);
  EXPECT_THROW(timer->end(3), std::logic_error);
  timer->begin(3);
  timer->end(3);
  timer->collect();
}

TEST(CuptiTimer, CountsAHostToDeviceCopy) {
  ACTMEM_CUPTI_TIMER_OR_SKIP(timer);
  constexpr std::size_t kBytes = std::size_t{64} << 20;
  std::vector<unsigned char> host(kBytes, 1);
  void* device = nullptr;
  ASSERT_CUDA(cudaMalloc(&device, kBytes));
  timer->collect();  // what cudaMalloc's first use of the device did
  timer->begin(1);
  ASSERT_CUDA(cudaMemcpy(device, host.data(), kBytes, cudaMemcpyHostToDevice));
  timer->end(1);
  ASSERT_CUDA(cudaDeviceSynchronize());
  SegmentTimes times = timer->collect();
  ASSERT_CUDA(cudaFree(device));
  EXPECT_GE(times.copy_bytes, static_cast<std::int64_t>(kBytes));
  EXPECT_GT(times.copy_ns, 0);
  EXPECT_EQ(times.dropped_records, 0);
  EXPECT_EQ(timer->collect().copy_bytes, 0);  // collect starts afresh
}

// A kernel to attribute without compiling CUDA here: PTX for a loop that spins `cycles` clock
// cycles, JIT-compiled by the driver. libcuda is reached through dlopen, so policy_test still
// loads on machines without a driver.
constexpr char kSpinPtx[] = R"(
.version 7.0
.target sm_52
.address_size 64
.visible .entry actmem_spin(.param .u64 cycles)
{
  .reg .pred %p;
  .reg .u64 %rd<5>;
  ld.param.u64 %rd1, [cycles];
  mov.u64 %rd2, %clock64;
SPIN:
  mov.u64 %rd3, %clock64;
  sub.u64 %rd4, %rd3, %rd2;
  setp.lt.u64 %p, %rd4, %rd1;
  @%p bra SPIN;
  ret;
}
)";

class SpinKernel {
 public:
  // Empty error() when ready; the runtime's primary context must be current (cudaFree(0)).
  SpinKernel() {
    driver_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver_ == nullptr) {
      error_ = std::string("dlopen(libcuda.so.1): ") + dlerror();
      return;
    }
    load_ = reinterpret_cast<decltype(&cuModuleLoadData)>(dlsym(driver_, "cuModuleLoadData"));
    get_ = reinterpret_cast<decltype(&cuModuleGetFunction)>(dlsym(driver_, "cuModuleGetFunction"));
    launch_ = reinterpret_cast<decltype(&cuLaunchKernel)>(dlsym(driver_, "cuLaunchKernel"));
    unload_ = reinterpret_cast<decltype(&cuModuleUnload)>(dlsym(driver_, "cuModuleUnload"));
    if (!load_ || !get_ || !launch_ || !unload_) {
      error_ = "libcuda.so.1 lacks a cuModule*/cuLaunchKernel entry point";
      return;
    }
    if (CUresult r = load_(&module_, kSpinPtx); r != CUDA_SUCCESS) {
      error_ = "cuModuleLoadData(spin PTX) failed: CUresult " + std::to_string(r);
      return;
    }
    if (CUresult r = get_(&function_, module_, "actmem_spin"); r != CUDA_SUCCESS) {
      error_ = "cuModuleGetFunction(actmem_spin) failed: CUresult " + std::to_string(r);
    }
  }
  ~SpinKernel() {
    if (module_ != nullptr) unload_(module_);
    if (driver_ != nullptr) dlclose(driver_);
  }
  SpinKernel(const SpinKernel&) = delete;
  SpinKernel& operator=(const SpinKernel&) = delete;

  const std::string& error() const { return error_; }
  CUresult launch(std::uint64_t cycles) {
    void* args[] = {&cycles};
    return launch_(function_, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr);
  }

 private:
  void* driver_ = nullptr;
  decltype(&cuModuleLoadData) load_ = nullptr;
  decltype(&cuModuleGetFunction) get_ = nullptr;
  decltype(&cuLaunchKernel) launch_ = nullptr;
  decltype(&cuModuleUnload) unload_ = nullptr;
  CUmodule module_ = nullptr;
  CUfunction function_ = nullptr;
  std::string error_;
};

// Note [CUPTI records profiled steps only]: between a collect() and the next bracket (the steps
// that follow a plan), nothing is recorded.
TEST(CuptiTimer, RecordsNothingBetweenACollectAndTheNextBracket) {
  ACTMEM_CUPTI_TIMER_OR_SKIP(timer);
  constexpr std::size_t kBytes = std::size_t{16} << 20;
  std::vector<unsigned char> host(kBytes, 1);
  void* device = nullptr;
  ASSERT_CUDA(cudaMalloc(&device, kBytes));
  timer->begin(1);
  timer->end(1);
  timer->collect();  // no bracket open: recording stops
  ASSERT_CUDA(cudaMemcpy(device, host.data(), kBytes, cudaMemcpyHostToDevice));
  EXPECT_EQ(timer->collect().copy_bytes, 0) << "a copy outside any profiled step";
  timer->begin(2);
  ASSERT_CUDA(cudaMemcpy(device, host.data(), kBytes, cudaMemcpyHostToDevice));
  timer->end(2);
  const SegmentTimes times = timer->collect();
  ASSERT_CUDA(cudaFree(device));
  EXPECT_GE(times.copy_bytes, static_cast<std::int64_t>(kBytes)) << "recording again";
}

TEST(CuptiTimer, AttributesKernelsToTheInnermostBracket) {
  ACTMEM_CUPTI_TIMER_OR_SKIP(timer);
  ASSERT_CUDA(cudaFree(nullptr));  // the primary context, current on this thread
  SpinKernel spin;
  ASSERT_TRUE(spin.error().empty()) << spin.error();
  constexpr std::uint64_t kCycles = 2'000'000;    // about a millisecond at GPU clocks
  ASSERT_EQ(spin.launch(kCycles), CUDA_SUCCESS);  // outside every bracket: no segment's
  timer->begin(10);
  ASSERT_EQ(spin.launch(kCycles), CUDA_SUCCESS);
  timer->begin(11);
  ASSERT_EQ(spin.launch(kCycles), CUDA_SUCCESS);
  timer->end(11);
  ASSERT_EQ(spin.launch(kCycles), CUDA_SUCCESS);
  timer->end(10);
  ASSERT_CUDA(cudaDeviceSynchronize());
  SegmentTimes times = timer->collect();
  EXPECT_EQ(times.dropped_records, 0);
  ASSERT_EQ(times.forward_ns.size(), 2u);
  // At most ~3 GHz: each spin takes at least kCycles / 3 ns.
  EXPECT_GE(get(times, 11), static_cast<std::int64_t>(kCycles / 3));
  EXPECT_GE(get(times, 10), static_cast<std::int64_t>(2 * kCycles / 3));
  EXPECT_GT(get(times, 10), get(times, 11));  // two kernels against one: inner time is not outer's
  EXPECT_TRUE(timer->collect().forward_ns.empty());
}

#endif  // ACTMEM_HAVE_CUPTI

}  // namespace
}  // namespace actmem

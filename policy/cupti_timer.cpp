// The CUPTI SegmentTimer: device time of the kernels each segment launched, from CUPTI's activity
// records. Compiled only when the CUDA toolkit is found (ACTMEM_HAVE_CUPTI); see segment_timer.h.
//
// How records become times: Note [CUPTI segment attribution] in cupti_records.h.
#include <cuda_runtime_api.h>
#include <cupti.h>
#include <cupti_version.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "policy/cupti_records.h"
#include "policy/segment_timer.h"

namespace actmem {
namespace {

constexpr std::size_t kBufferBytes = 1 << 20;
constexpr std::size_t kBufferAlignment = 8;  // what CUPTI requires of activity buffers
using detail::CuptiRecords;
constexpr CUpti_ExternalCorrelationKind kCorrelationKind = detail::kSegmentCorrelationKind;

// The kinds a timer enables, in order (disabled in reverse). Note [CUPTI segment attribution].
constexpr CUpti_ActivityKind kKinds[] = {
    CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION, CUPTI_ACTIVITY_KIND_RUNTIME,
    CUPTI_ACTIVITY_KIND_DRIVER, CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY};

const char* kind_name(CUpti_ActivityKind kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION:
      return "EXTERNAL_CORRELATION";
    case CUPTI_ACTIVITY_KIND_RUNTIME:
      return "RUNTIME";
    case CUPTI_ACTIVITY_KIND_DRIVER:
      return "DRIVER";
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      return "CONCURRENT_KERNEL";
    case CUPTI_ACTIVITY_KIND_MEMCPY:
      return "MEMCPY";
    default:
      return "?";
  }
}

// "call failed: CUPTI_ERROR_NAME (what it means)".
std::string describe(const std::string& call, CUptiResult result) {
  const char* name = nullptr;
  if (cuptiGetResultString(result, &name) != CUPTI_SUCCESS || name == nullptr) {
    name = "unknown CUptiResult";
  }
  std::string text = call + " failed: " + name;
#if CUPTI_API_VERSION >= 130000
  const char* message = nullptr;
  if (cuptiGetErrorMessage(result, &message) == CUPTI_SUCCESS && message != nullptr) {
    text += std::string(" (") + message + ")";
  }
#endif
  return text + " [" + std::to_string(static_cast<int>(result)) + "]";
}

void check(CUptiResult result, const std::string& call) {
  if (result != CUPTI_SUCCESS) {
    throw std::runtime_error("actmem: CUPTI timer: " + describe(call, result));
  }
}

// CUPTI's buffer callbacks take no user data: they reach the one live timer's records here.
std::mutex g_mutex;
CuptiRecords* g_records = nullptr;  // the live timer's
std::atomic<bool> g_timer_exists{false};

void CUPTIAPI buffer_requested(std::uint8_t** buffer, std::size_t* size, std::size_t* max_records) {
  *buffer = static_cast<std::uint8_t*>(std::aligned_alloc(kBufferAlignment, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;  // none: CUPTI drops records and counts them
  *max_records = 0;                               // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext /*context*/, std::uint32_t /*stream*/,
                               std::uint8_t* buffer, std::size_t /*size*/, std::size_t valid) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_records != nullptr && buffer != nullptr && valid > 0) {
      CUpti_Activity* record = nullptr;
      for (;;) {
        const CUptiResult result = cuptiActivityGetNextRecord(buffer, valid, &record);
        if (result == CUPTI_SUCCESS) {
          g_records->add(*record);
        } else if (result == CUPTI_ERROR_MAX_LIMIT_REACHED) {
          break;  // the end of the buffer
        } else if (result == CUPTI_ERROR_INVALID_KIND) {
          g_records->add_lost(1);  // incomplete or invalid: the rest of the buffer cannot be read
          break;
        } else {
          g_records->fail(describe("cuptiActivityGetNextRecord", result));
          break;
        }
      }
    }
  }
  std::free(buffer);
}

class CuptiTimer final : public SegmentTimer {
 public:
  // Claims the process's one CUPTI timer: the caller has set g_timer_exists.
  CuptiTimer() = default;
  CuptiTimer(const CuptiTimer&) = delete;
  CuptiTimer& operator=(const CuptiTimer&) = delete;

  ~CuptiTimer() override {
    // This thread's brackets left open; other threads' cannot be popped from here.
    auto mine = open_.find(std::this_thread::get_id());
    if (mine != open_.end()) {
      std::uint64_t last = 0;
      for (std::size_t i = 0; i < mine->second.size(); ++i) {
        (void)cuptiActivityPopExternalCorrelationId(kCorrelationKind, &last);
      }
    }
    if (enabled_ > 0) stop_recording();
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      if (g_records == &records_) g_records = nullptr;
    }
    g_timer_exists.store(false);
  }

  // Registers the buffers and checks that CUPTI enables every kind; on failure returns why (the
  // destructor undoes what was done). Nothing is recorded until the first bracket begins.
  std::string start() {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_records = &records_;
    }
    const CUptiResult result =
        cuptiActivityRegisterCallbacks(&buffer_requested, &buffer_completed);
    if (result != CUPTI_SUCCESS) return describe("cuptiActivityRegisterCallbacks", result);
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      start_recording();
    } catch (const std::runtime_error& error) {
      return error.what();
    }
    stop_recording();
    return {};
  }

  const char* name() const override { return "cupti"; }

  void begin(std::uint64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    start_recording();
    check(cuptiActivityPushExternalCorrelationId(kCorrelationKind, id),
          "cuptiActivityPushExternalCorrelationId");
    open_[std::this_thread::get_id()].push_back(id);
  }

  void end(std::uint64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto thread = open_.find(std::this_thread::get_id());
    std::size_t at = 0;
    bool found = false;
    if (thread != open_.end()) {
      for (std::size_t i = thread->second.size(); i-- > 0;) {
        if (thread->second[i] == id) {
          at = i;
          found = true;
          break;
        }
      }
    }
    if (!found) {
      throw std::logic_error("actmem: SegmentTimer::end(" + std::to_string(id) +
                             ") with no open bracket of that id on this thread");
    }
    std::vector<std::uint64_t>& stack = thread->second;
    // Pop `id` and the brackets abandoned inside it, checking CUPTI's stack agrees with ours.
    while (stack.size() > at) {
      const std::uint64_t expected = stack.back();
      stack.pop_back();
      std::uint64_t popped = 0;
      check(cuptiActivityPopExternalCorrelationId(kCorrelationKind, &popped),
            "cuptiActivityPopExternalCorrelationId");
      if (popped != expected) {
        throw std::runtime_error(
            "actmem: CUPTI timer: popped external correlation id " + std::to_string(popped) +
            " where " + std::to_string(expected) +
            " was pushed: something else in the process pushes CUPTI_EXTERNAL_CORRELATION_KIND_"
            "CUSTOM0 ids on this thread");
      }
    }
    if (stack.empty()) open_.erase(thread);
  }

  // Note [CUPTI records profiled steps only]
  // CUPTI records every launch while its kinds are enabled: a cost on each launch, and memory for
  // the records until they are collected. So the kinds are enabled when a bracket begins and
  // disabled by the collect() that finds no bracket open: the steps the auto policy follows a
  // plan in open none (ScopeState::begin_segment), and pay nothing, not even collect()'s device
  // synchronisation.
  SegmentTimes collect() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (enabled_ == 0) {  // nothing recorded since the collect that stopped recording
        std::lock_guard<std::mutex> records_lock(g_mutex);
        return records_.take(0);
      }
    }
    // CUPTI delivers records of completed work only: let the device finish the step first.
    const cudaError_t synced = cudaDeviceSynchronize();
    if (synced != cudaSuccess) {
      throw std::runtime_error(std::string("actmem: CUPTI timer: cudaDeviceSynchronize failed: ") +
                               cudaGetErrorString(synced));
    }
    check(cuptiActivityFlushAll(0), "cuptiActivityFlushAll(0)");
    std::size_t dropped = 0;
    check(cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped),
          "cuptiActivityGetNumDroppedRecords");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (open_.empty()) stop_recording();  // else a bracket on another thread still counts
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    return records_.take(static_cast<std::int64_t>(dropped));
  }

 private:
  // Enables the kinds not enabled yet, in order; throws naming the one CUPTI refuses. (mutex_ held)
  void start_recording() {
    for (; enabled_ < std::size(kKinds); ++enabled_) {
      check(cuptiActivityEnable(kKinds[enabled_]),
            std::string("cuptiActivityEnable(CUPTI_ACTIVITY_KIND_") + kind_name(kKinds[enabled_]) +
                ")");
    }
  }
  // Disables what is enabled, in reverse, and delivers what was recorded. (mutex_ held)
  void stop_recording() {
    for (; enabled_ > 0; --enabled_) (void)cuptiActivityDisable(kKinds[enabled_ - 1]);
    (void)cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  }

  CuptiRecords records_;     // filled by the callbacks, under g_mutex
  std::size_t enabled_ = 0;  // how many of kKinds are enabled
  std::mutex mutex_;         // guards open_
  std::unordered_map<std::thread::id, std::vector<std::uint64_t>> open_;  // innermost last
};

}  // namespace

std::unique_ptr<SegmentTimer> make_cupti_timer(std::string* why) {
  auto unavailable = [why](const std::string& reason) -> std::unique_ptr<SegmentTimer> {
    if (why != nullptr) *why = "actmem: CUPTI timer unavailable: " + reason;
    return nullptr;
  };
  bool expected = false;
  if (!g_timer_exists.compare_exchange_strong(expected, true)) {
    return unavailable(
        "another CUPTI timer exists in this process (CUPTI's activity buffers and callbacks are "
        "global); destroy it first");
  }
  auto timer = std::make_unique<CuptiTimer>();  // from here its destructor releases the claim

  // No CUPTI call before a device has answered: on a machine without one, CUPTI stays untouched.
  int devices = 0;
  const cudaError_t error = cudaGetDeviceCount(&devices);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // leave no error behind for the caller's next check
    return unavailable(std::string("no CUDA device answers (cudaGetDeviceCount: ") +
                       cudaGetErrorString(error) + ")");
  }
  if (devices == 0) return unavailable("no CUDA device (cudaGetDeviceCount found 0)");

  std::string failure = timer->start();
  if (!failure.empty()) return unavailable(failure);
  return timer;
}

}  // namespace actmem

#include "copy/cuda_copy_engine.h"

#include <algorithm>
#include <chrono>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

namespace actmem::copy {
namespace {

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("actmem: copy engine: ") + what +
                             " failed: " + cudaGetErrorString(error));
  }
}

// Whether `event` has completed. Never blocks. A "not ready" leaves no error behind: PyTorch's
// next launch check reads cudaGetLastError().
bool completed(cudaEvent_t event) {
  const cudaError_t state = cudaEventQuery(event);
  if (state == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  check(state, "cudaEventQuery");
  return true;
}

// Nanoseconds from `from` to `to`, two completed timing events; negative when `to` came first.
// 0 when the driver cannot tell (an event whose record failed, say): the times are a report, and
// a copy that cannot be timed must not stop the engine from settling the ones after it.
std::int64_t elapsed_ns(cudaEvent_t from, cudaEvent_t to) {
  float milliseconds = 0;
  if (cudaEventElapsedTime(&milliseconds, from, to) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<std::int64_t>(static_cast<double>(milliseconds) * 1e6);
}

// Makes `device` current for a scope, and puts the previous one back.
class DeviceScope {
 public:
  // Throws when the device cannot be made current.
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      check(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  // As far as the runtime allows, never throwing (for a destructor): on a failure the current
  // device stays as it is.
  DeviceScope(int device, std::nothrow_t) {
    switched_ = cudaGetDevice(&previous_) == cudaSuccess && previous_ != device &&
                cudaSetDevice(device) == cudaSuccess;
    (void)cudaGetLastError();
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

}  // namespace

CudaCopyEngine::CudaCopyEngine(int device) : device_(device) {
  DeviceScope scope(device_);
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

CudaCopyEngine::~CudaCopyEngine() {
  // What can be released is, on the engine's device if possible.
  const DeviceScope scope(device_, std::nothrow);
  cudaStreamSynchronize(stream_);
  const auto destroy = [](const Flight& flight) {
    for (cudaEvent_t event : {flight.start, flight.done, flight.reached}) {
      if (event != nullptr) cudaEventDestroy(event);
    }
  };
  for (const auto& [ticket, flight] : in_flight_) destroy(flight);
  for (const Flight& flight : stalls_) destroy(flight);
  for (cudaEvent_t event : spare_) cudaEventDestroy(event);
  cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

// Events keep timing (no cudaEventDisableTiming): start, done and reached are read for time().
cudaEvent_t CudaCopyEngine::take_event() {
  if (!spare_.empty()) {
    cudaEvent_t event = spare_.back();
    spare_.pop_back();
    return event;
  }
  cudaEvent_t event = nullptr;
  check(cudaEventCreate(&event), "cudaEventCreate");
  return event;
}

void CudaCopyEngine::recycle(cudaEvent_t event) {
  if (event != nullptr) spare_.push_back(event);
}

CopyEngine::Ticket CudaCopyEngine::copy(void* dst, const void* src, std::size_t bytes,
                                        alloc::Stream after) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceScope scope(device_);
  cudaEvent_t ready = nullptr;
  Flight flight;
  bool queued = false;  // the memcpy is on the stream
  try {
    ready = take_event();
    check(cudaEventRecord(ready, static_cast<cudaStream_t>(after)), "cudaEventRecord");
    check(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    recycle(std::exchange(ready, nullptr));  // reusable at once: the wait captured the work
    flight.start = take_event();
    check(cudaEventRecord(flight.start, stream_), "cudaEventRecord");
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
    queued = true;
    flight.done = take_event();
    check(cudaEventRecord(flight.done, stream_), "cudaEventRecord");
  } catch (...) {
    // The caller takes the copy for not queued and may reuse its buffers at once: one that was
    // queued is waited for first. The events it took go back.
    if (queued) (void)cudaStreamSynchronize(stream_);
    (void)cudaGetLastError();
    for (cudaEvent_t event : {ready, flight.start, flight.done}) recycle(event);
    throw;
  }
  const Ticket ticket = ++issued_;
  in_flight_.emplace(ticket, flight);
  return ticket;
}

CudaCopyEngine::Flight* CudaCopyEngine::flight(Ticket ticket) {
  const auto it = in_flight_.find(ticket);
  return it == in_flight_.end() ? nullptr : &it->second;
}

void CudaCopyEngine::settle(Ticket ticket) {
  // Copies finish in order on the one stream: every earlier one has finished too.
  for (auto it = in_flight_.begin(); it != in_flight_.end() && it->first <= ticket;) {
    Flight& done = it->second;
    time_.copying_ns += std::max<std::int64_t>(0, elapsed_ns(done.start, done.done));
    recycle(done.start);
    done.start = nullptr;
    if (done.reached != nullptr) {
      stalls_.push_back(done);
    } else {
      recycle(done.done);
    }
    it = in_flight_.erase(it);
  }
  settle_stalls();
}

void CudaCopyEngine::settle_stalls() {
  // Not remove_if: a query that throws inside its predicate would leave the stalls unspecified
  // (events then destroyed twice, or never). Here a throw leaves every stall not yet settled.
  for (std::size_t i = 0; i < stalls_.size();) {
    const Flight stall = stalls_[i];
    if (!completed(stall.reached)) {
      ++i;
      continue;
    }
    time_.exposed_ns += std::max<std::int64_t>(0, elapsed_ns(stall.reached, stall.done));
    stalls_.erase(stalls_.begin() + static_cast<std::ptrdiff_t>(i));
    recycle(stall.reached);
    recycle(stall.done);
  }
}

bool CudaCopyEngine::finished(Ticket ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  Flight* copy = flight(ticket);
  if (copy == nullptr) return true;
  if (!completed(copy->done)) return false;
  settle(ticket);
  return true;
}

void CudaCopyEngine::order_after(Ticket ticket, alloc::Stream stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  Flight* copy = flight(ticket);
  if (copy == nullptr) return;
  const auto waiting = static_cast<cudaStream_t>(stream);
  if (copy->reached == nullptr) {  // the first stream to wait is the one timed
    cudaEvent_t reached = take_event();
    const cudaError_t recorded = cudaEventRecord(reached, waiting);
    if (recorded != cudaSuccess) recycle(reached);  // never recorded: it times nothing
    check(recorded, "cudaEventRecord");
    copy->reached = reached;
  }
  check(cudaStreamWaitEvent(waiting, copy->done, 0), "cudaStreamWaitEvent");
}

void CudaCopyEngine::wait(Ticket ticket) {
  cudaEvent_t done;
  bool stall_timed;  // a stream waiting for it already counts its stall
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Flight* copy = flight(ticket);
    if (copy == nullptr) return;
    stall_timed = copy->reached != nullptr;
    // Another thread may settle and recycle it meanwhile; events live as long as the engine, so
    // the worst is a wait for a later copy.
    done = copy->done;
  }
  const auto start = std::chrono::steady_clock::now();
  check(cudaEventSynchronize(done), "cudaEventSynchronize");
  const std::int64_t waited =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count();
  finished(ticket);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!stall_timed) time_.exposed_ns += waited;
}

CopyEngine::Time CudaCopyEngine::time() {
  std::lock_guard<std::mutex> lock(mutex_);
  // The oldest copies first: the first one still running ends the walk.
  Ticket last_done = 0;
  for (const auto& [ticket, copy] : in_flight_) {
    if (!completed(copy.done)) break;
    last_done = ticket;
  }
  if (last_done != 0) {
    settle(last_done);
  } else {
    settle_stalls();
  }
  return time_;
}

}  // namespace actmem::copy

#include "copy/cuda_copy_engine.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace actmem::copy {
namespace {

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("actmem: copy engine: ") + what + " failed: " +
                             cudaGetErrorString(error));
  }
}

// Makes `device` current for a scope, and puts the previous one back.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

}  // namespace

CudaCopyEngine::CudaCopyEngine(int device) : device_(device) {
  DeviceScope scope(device_);
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

CudaCopyEngine::~CudaCopyEngine() {
  DeviceScope scope(device_);
  cudaStreamSynchronize(stream_);
  for (const auto& [ticket, event] : in_flight_) cudaEventDestroy(event);
  for (cudaEvent_t event : spare_) cudaEventDestroy(event);
  cudaStreamDestroy(stream_);
}

cudaEvent_t CudaCopyEngine::take_event() {
  if (!spare_.empty()) {
    cudaEvent_t event = spare_.back();
    spare_.pop_back();
    return event;
  }
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  return event;
}

CopyEngine::Ticket CudaCopyEngine::copy(void* dst, const void* src, std::size_t bytes,
                                        alloc::Stream after) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceScope scope(device_);
  cudaEvent_t ready = take_event();
  check(cudaEventRecord(ready, static_cast<cudaStream_t>(after)), "cudaEventRecord");
  check(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
  spare_.push_back(ready);  // reusable at once: the wait captured the recorded work
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
  cudaEvent_t done = take_event();
  check(cudaEventRecord(done, stream_), "cudaEventRecord");
  const Ticket ticket = ++issued_;
  in_flight_.emplace(ticket, done);
  return ticket;
}

cudaEvent_t CudaCopyEngine::done_event(Ticket ticket) {
  if (ticket < finished_below_) return nullptr;
  const auto it = in_flight_.find(ticket);
  return it == in_flight_.end() ? nullptr : it->second;
}

bool CudaCopyEngine::finished(Ticket ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  cudaEvent_t event = done_event(ticket);
  if (event == nullptr) return true;
  const cudaError_t state = cudaEventQuery(event);
  if (state == cudaErrorNotReady) return false;
  check(state, "cudaEventQuery");
  // Copies finish in order on the one stream: every earlier one has finished too.
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (it->first <= ticket) {
      spare_.push_back(it->second);
      it = in_flight_.erase(it);
    } else {
      ++it;
    }
  }
  finished_below_ = std::max(finished_below_, ticket + 1);
  return true;
}

std::int64_t CudaCopyEngine::order_after(Ticket ticket, alloc::Stream stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  cudaEvent_t event = done_event(ticket);
  if (event != nullptr) {
    check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), event, 0), "cudaStreamWaitEvent");
  }
  return 0;  // the stream waits, not the host
}

void CudaCopyEngine::wait(Ticket ticket) {
  cudaEvent_t event;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    event = done_event(ticket);
  }
  if (event != nullptr) check(cudaEventSynchronize(event), "cudaEventSynchronize");
  finished(ticket);
}

}  // namespace actmem::copy

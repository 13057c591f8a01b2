// cudaMalloc/cudaFree on one device, and CUDA events for the caching core's stream ordering.
// Compiled only when the CUDA toolkit is found (ACTMEM_HAVE_CUDA).
#pragma once

#include "allocator/backend.h"
#include "allocator/cuda_runtime.h"
#include "allocator/stream_events.h"

namespace actmem::alloc {

class CudaBackend final : public Backend {
 public:
  // `runtime` must outlive the backend.
  CudaBackend(const CudaRuntime& runtime, int device) : runtime_(runtime), device_(device) {}
  const char* name() const noexcept override { return "cuda"; }
  int device() const { return device_; }

 private:
  void* do_allocate(std::size_t bytes) override;
  void do_deallocate(void* ptr, std::size_t bytes) override;

  const CudaRuntime& runtime_;
  int device_;
};

// Events without timing (cudaEventDisableTiming), recorded on the device's streams.
class CudaEvents final : public StreamEvents {
 public:
  CudaEvents(const CudaRuntime& runtime, int device) : runtime_(runtime), device_(device) {}
  Event record(Stream stream) override;
  bool is_complete(Event event) override;
  void release(Event event) override;
  void synchronize(Stream stream) override;
  // cudaStreamLegacy for cudaStreamPerThread: the legacy default stream waits for every blocking
  // stream, each thread's per-thread default stream among them.
  Stream across_threads(Stream stream) override;

 private:
  const CudaRuntime& runtime_;
  int device_;
};

// Number of CUDA devices that answer through `runtime`; 0 when none does.
int cuda_device_count(const CudaRuntime& runtime);

}  // namespace actmem::alloc

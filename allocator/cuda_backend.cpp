#include "allocator/cuda_backend.h"

#include <string>

#include "allocator/cuda_current_device.h"
#include "allocator/errors.h"

namespace actmem::alloc {
namespace {

void check(const CudaRuntime& runtime, cudaError_t error, const char* what);

// Makes `device` current for the scope, restoring the previous one. Throws AllocatorError when
// the device cannot be made current: nothing may then be allocated or freed on the wrong one.
class DeviceGuard {
 public:
  DeviceGuard(const CudaRuntime& runtime, int device) : current_(runtime, device) {
    check(runtime, current_.status(), "cudaSetDevice");
  }

 private:
  CurrentDevice current_;
};

void check(const CudaRuntime& runtime, cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    runtime.get_last_error();  // taken now, so that the caller's next launch check is not blamed
    throw BackendError(std::string("actmem: ") + what + " failed: " +
                       runtime.get_error_string(error));
  }
}

}  // namespace

bool CudaRuntime::complete() const {
  return malloc && free && mem_get_info && get_device && set_device && get_device_count &&
         event_create_with_flags && event_record && event_query && event_destroy &&
         stream_synchronize && device_synchronize && get_last_error && get_error_string;
}

void* CudaBackend::do_allocate(std::size_t bytes) {
  DeviceGuard guard(runtime_, device_);
  void* ptr = nullptr;
  if (runtime_.malloc(&ptr, bytes) != cudaSuccess) {
    runtime_.get_last_error();  // clear the sticky out-of-memory error, as PyTorch does
    return nullptr;
  }
  return ptr;
}

void CudaBackend::do_deallocate(void* ptr, std::size_t /*bytes*/) {
  DeviceGuard guard(runtime_, device_);
  check(runtime_, runtime_.free(ptr), "cudaFree");
}

Event CudaEvents::record(Stream stream) {
  DeviceGuard guard(runtime_, device_);
  cudaEvent_t event = nullptr;
  check(runtime_, runtime_.event_create_with_flags(&event, cudaEventDisableTiming),
        "cudaEventCreateWithFlags");
  const cudaError_t recorded = runtime_.event_record(event, static_cast<cudaStream_t>(stream));
  if (recorded != cudaSuccess) runtime_.event_destroy(event);
  check(runtime_, recorded, "cudaEventRecord");
  return event;
}

bool CudaEvents::is_complete(Event event) {
  const cudaError_t status = runtime_.event_query(static_cast<cudaEvent_t>(event));
  if (status == cudaErrorNotReady) {
    runtime_.get_last_error();
    return false;
  }
  check(runtime_, status, "cudaEventQuery");
  return true;
}

void CudaEvents::release(Event event) {
  runtime_.event_destroy(static_cast<cudaEvent_t>(event));
}

void CudaEvents::synchronize(Stream stream) {
  DeviceGuard guard(runtime_, device_);
  // (Never cudaStreamPerThread: no pool is keyed by it, across_threads.)
  if (runtime_.stream_synchronize(static_cast<cudaStream_t>(stream)) == cudaSuccess) return;
  // A stream destroyed since its blocks were freed (cudaFreeAsync, then cudaStreamDestroy): the
  // device's work covers whatever it queued.
  runtime_.get_last_error();
  check(runtime_, runtime_.device_synchronize(), "cudaDeviceSynchronize");
}

Stream CudaEvents::across_threads(Stream stream) {
  return static_cast<cudaStream_t>(stream) == cudaStreamPerThread ? cudaStreamLegacy : stream;
}

int cuda_device_count(const CudaRuntime& runtime) {
  int count = 0;
  if (runtime.get_device_count(&count) != cudaSuccess) {
    runtime.get_last_error();
    return 0;
  }
  return count;
}

}  // namespace actmem::alloc

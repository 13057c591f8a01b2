// The CUDA runtime functions actmem calls, as a table of function pointers.
//
// The table decouples the CUDA backend from how it reaches the runtime: libactmem_alloc.so and the
// static library fill it with the libcudart they link (cuda_runtime_linked.cpp); the LD_PRELOAD
// shim fills it with dlsym(RTLD_NEXT, ...), the functions it interposes on, so its own cudaMalloc
// is never what the backend calls. Each artifact defines resolve_cuda_runtime() once.
// Compiled only when the CUDA toolkit is found (ACTMEM_HAVE_CUDA).
#pragma once

#include <cuda_runtime_api.h>

namespace actmem::alloc {

struct CudaRuntime {
  cudaError_t (*malloc)(void** ptr, size_t bytes);
  cudaError_t (*free)(void* ptr);
  cudaError_t (*mem_get_info)(size_t* free, size_t* total);
  cudaError_t (*get_device)(int* device);
  cudaError_t (*set_device)(int device);
  cudaError_t (*get_device_count)(int* count);
  cudaError_t (*event_create_with_flags)(cudaEvent_t* event, unsigned int flags);
  cudaError_t (*event_record)(cudaEvent_t event, cudaStream_t stream);
  cudaError_t (*event_query)(cudaEvent_t event);
  cudaError_t (*event_destroy)(cudaEvent_t event);
  cudaError_t (*stream_synchronize)(cudaStream_t stream);
  cudaError_t (*device_synchronize)();
  cudaError_t (*get_last_error)();
  const char* (*get_error_string)(cudaError_t error);

  // True when every entry was found.
  bool complete() const;
};

namespace detail {
// The runtime of the artifact this is linked into, or nullptr when none can be found. Stable for
// the life of the process.
const CudaRuntime* resolve_cuda_runtime();
}  // namespace detail

}  // namespace actmem::alloc

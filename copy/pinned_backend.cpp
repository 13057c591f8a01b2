#include "copy/pinned_backend.h"

#include <cuda_runtime_api.h>

#include <cstdio>

namespace actmem::copy {

void* PinnedBackend::do_allocate(std::size_t bytes) {
  void* ptr = nullptr;
  if (cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();  // clear it: the caching allocator reports the shortage itself
    return nullptr;
  }
  return ptr;
}

void PinnedBackend::do_deallocate(void* ptr, std::size_t /*bytes*/) {
  const cudaError_t error = cudaFreeHost(ptr);
  if (error != cudaSuccess) {
    std::fprintf(stderr, "actmem: cudaFreeHost failed: %s\n", cudaGetErrorString(error));
  }
}

}  // namespace actmem::copy

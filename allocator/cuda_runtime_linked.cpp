// resolve_cuda_runtime() for artifacts that link libcudart: libactmem_alloc.so and the static
// actmem_alloc library. The LD_PRELOAD shim defines its own (preload_shim.cpp).
#include "allocator/cuda_runtime.h"

namespace actmem::alloc::detail {

const CudaRuntime* resolve_cuda_runtime() {
  static const CudaRuntime runtime{&cudaMalloc,
                                   &cudaFree,
                                   &cudaMemGetInfo,
                                   &cudaGetDevice,
                                   &cudaSetDevice,
                                   &cudaGetDeviceCount,
                                   &cudaEventCreateWithFlags,
                                   &cudaEventRecord,
                                   &cudaEventQuery,
                                   &cudaEventDestroy,
                                   &cudaStreamSynchronize,
                                   &cudaDeviceSynchronize,
                                   &cudaGetLastError,
                                   &cudaGetErrorString};
  return &runtime;
}

}  // namespace actmem::alloc::detail

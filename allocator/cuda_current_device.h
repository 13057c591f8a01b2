// Makes a CUDA device the calling thread's current one for a scope.
// Compiled only when the CUDA toolkit is found (ACTMEM_HAVE_CUDA).
#pragma once

#include "allocator/cuda_runtime.h"

namespace actmem::alloc {

// `device` is current from construction to destruction; then the device that was current before
// is current again. Never throws: status() is cudaSuccess once `device` is current, else what
// cudaSetDevice returned (nothing changed, and nothing of `device` may be touched). The shim
// returns that code as CUDA would; the backend throws it (cuda_backend.cpp).
class CurrentDevice {
 public:
  CurrentDevice(const CudaRuntime& runtime, int device) : runtime_(runtime) {
    if (runtime_.get_device(&previous_) != cudaSuccess) {
      runtime_.get_last_error();
      previous_ = -1;
    }
    if (previous_ != device) {
      status_ = runtime_.set_device(device);
      restore_ = status_ == cudaSuccess && previous_ >= 0;
    }
  }
  ~CurrentDevice() {
    if (restore_) runtime_.set_device(previous_);
  }
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

  cudaError_t status() const { return status_; }

 private:
  const CudaRuntime& runtime_;
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
  bool restore_ = false;
};

}  // namespace actmem::alloc

#include "copy/factory.h"

#include <stdexcept>

#include "allocator/host_backend.h"
#include "copy/inline_copy_engine.h"
#if defined(ACTMEM_HAVE_CUDA)
#include "copy/cuda_copy_engine.h"
#include "copy/pinned_backend.h"
#endif

namespace actmem::copy {
#if !defined(ACTMEM_HAVE_CUDA)
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error("actmem: offloading CUDA tensors needs actmem built with the CUDA toolkit");
}
}  // namespace
#endif

std::unique_ptr<CopyEngine> make_copy_engine(bool cuda, int device) {
  if (!cuda) return std::make_unique<InlineCopyEngine>();
#if defined(ACTMEM_HAVE_CUDA)
  return std::make_unique<CudaCopyEngine>(device);
#else
  (void)device;
  no_cuda();
#endif
}

std::unique_ptr<alloc::Backend> make_host_backend(bool cuda) {
  if (!cuda) return std::make_unique<alloc::HostBackend>();
#if defined(ACTMEM_HAVE_CUDA)
  return std::make_unique<PinnedBackend>();
#else
  no_cuda();
#endif
}

}  // namespace actmem::copy

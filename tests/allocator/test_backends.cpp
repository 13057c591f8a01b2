#include "tests/allocator/test_backends.h"

#include <vector>

#include "allocator/host_backend.h"
#if defined(ACTMEM_HAVE_CUDA)
#include "allocator/cuda_backend.h"
#include "allocator/cuda_runtime.h"
#endif

namespace actmem::alloc::testing {

std::vector<BackendUnderTest> backends_under_test() {
  std::vector<BackendUnderTest> backends;
  backends.push_back({"host", [](std::string*) { return std::make_unique<HostBackend>(); },
                      [] { return std::make_unique<ImmediateEvents>(); }});
#if defined(ACTMEM_HAVE_CUDA)
  backends.push_back(
      {"cuda",
       [](std::string* skip_reason) -> std::unique_ptr<Backend> {
         const CudaRuntime* runtime = detail::resolve_cuda_runtime();
         if (runtime == nullptr || cuda_device_count(*runtime) == 0) {
           *skip_reason = "no CUDA device answers on this machine";
           return nullptr;
         }
         return std::make_unique<CudaBackend>(*runtime, 0);
       },
       [] { return std::make_unique<CudaEvents>(*detail::resolve_cuda_runtime(), 0); }});
#endif
  return backends;
}

}  // namespace actmem::alloc::testing

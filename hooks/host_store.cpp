#include "hooks/host_store.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include "allocator/errors.h"
#include "allocator/host_backend.h"

namespace actmem {
namespace {

alloc::AllocatorOptions host_options(std::optional<std::size_t> capacity) {
  alloc::AllocatorOptions options;
  options.budget_bytes = capacity;
  options.pressure_rounds = 0;
  return options;
}

}  // namespace

HostStore::HostStore(std::optional<std::size_t> capacity)
    : pool_(std::make_unique<alloc::HostBackend>(), host_options(capacity)) {}

std::optional<at::Tensor> HostStore::offload(const at::Tensor& tensor) {
  at::NoGradGuard no_grad;
  const at::Tensor source = tensor.detach();
  const bool dense = source.is_non_overlapping_and_dense();
  const auto bytes = static_cast<std::size_t>(source.numel()) * source.element_size();
  void* ptr = nullptr;
  try {
    ptr = pool_.allocate(bytes == 0 ? 1 : bytes);
  } catch (const alloc::OutOfMemoryError&) {
    return std::nullopt;
  }
  alloc::CachingAllocator* pool = &pool_;
  const auto options = source.options().device(at::kCPU).requires_grad(false);
  at::Tensor host =
      dense ? torch::from_blob(ptr, source.sizes(), source.strides(),
                               [pool](void* p) { pool->deallocate(p); }, options)
            : torch::from_blob(ptr, source.sizes(), [pool](void* p) { pool->deallocate(p); },
                               options);
  host.copy_(source);
  return host;
}

at::Tensor HostStore::restore(const at::Tensor& host) {
  at::NoGradGuard no_grad;
  at::Tensor device = at::empty_strided(host.sizes(), host.strides(), host.options());
  device.copy_(host);
  return device;
}

}  // namespace actmem

#include "hooks/device_allocator.h"

#include <cstring>

#include "hooks/out_of_memory.h"

namespace actmem {
namespace {
// The context is the pointer itself; the deleter finds the allocator through the installed one.
void free_device_block(void* ptr) {
  if (ptr != nullptr) installed_device_allocator()->caching_allocator().deallocate(ptr);
}
}  // namespace

c10::DataPtr DeviceAllocator::allocate(size_t bytes) {
  void* ptr = detail::with_torch_out_of_memory([&] { return allocator_.allocate(bytes); });
  return {ptr, ptr, &free_device_block, c10::Device(c10::DeviceType::CPU)};
}

c10::DeleterFnPtr DeviceAllocator::raw_deleter() const { return &free_device_block; }

void DeviceAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  std::memcpy(dest, src, count);
}

}  // namespace actmem

#include "hooks/install.h"

#include <c10/core/CPUAllocator.h>
#include <dlfcn.h>

#include <mutex>
#include <stdexcept>

#include "allocator/host_backend.h"
#include "allocator/process_allocators.h"
#include "hooks/device_allocator.h"
#include "hooks/engine.h"

namespace actmem {
namespace {

std::once_flag g_install_once;
DeviceAllocator* g_device_allocator = nullptr;

bool inside_python() {
  using PyIsInitialized = int (*)();
  auto* is_initialized = reinterpret_cast<PyIsInitialized>(dlsym(RTLD_DEFAULT, "Py_IsInitialized"));
  return is_initialized != nullptr && is_initialized() != 0;
}

}  // namespace

namespace detail {
ActmemEngine& ActmemEngine::instance() {
  static ActmemEngine* engine = new ActmemEngine;  // lives as long as the process, like autograd's
  return *engine;
}
}  // namespace detail

DeviceAllocator* installed_device_allocator() { return g_device_allocator; }

void install() {
  if (g_device_allocator != nullptr) return;
  if (inside_python()) {
    throw std::runtime_error(
        "actmem: install() inside a Python process would replace PyTorch's autograd engine; use "
        "the pluggable allocator (libactmem_alloc.so) from Python instead");
  }
  std::call_once(g_install_once, [] {
    alloc::CachingAllocator& memory = alloc::ProcessAllocators::instance().for_device(0);
    static DeviceAllocator* adapter = new DeviceAllocator(memory);
    c10::SetCPUAllocator(adapter, /*priority=*/100);
    torch::autograd::set_default_engine_stub([]() -> torch::autograd::Engine& {
      return detail::ActmemEngine::instance();
    });
    g_device_allocator = adapter;
  });
}

bool installed() { return g_device_allocator != nullptr; }

alloc::CachingAllocator& device_memory() {
  install();
  return g_device_allocator->caching_allocator();
}

}  // namespace actmem

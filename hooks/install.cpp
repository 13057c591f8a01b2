#include "hooks/install.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/graph_task.h>
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <mutex>
#include <stdexcept>

#include "allocator/process_allocators.h"
#include "hooks/cuda_allocator.h"
#include "hooks/device_allocator.h"
#include "hooks/engine.h"

namespace actmem {
namespace {

std::mutex g_install_mutex;
std::atomic<bool> g_allocator_installed{false};
std::atomic<bool> g_installed{false};  // the allocator and the engine
c10::DeviceType g_device = c10::DeviceType::CPU;  // written once, before g_allocator_installed
DeviceAllocator* g_cpu_allocator = nullptr;       // the CPU adapter, when the device is the CPU

// Asked once: a process does not become a Python one later in any way actmem supports.
bool inside_python() {
  static const bool python = [] {
    using PyIsInitialized = int (*)();
    auto* is_initialized =
        reinterpret_cast<PyIsInitialized>(dlsym(RTLD_DEFAULT, "Py_IsInitialized"));
    return is_initialized != nullptr && is_initialized() != 0;
  }();
  return python;
}

}  // namespace

namespace detail {
ActmemEngine& ActmemEngine::instance() {
  static ActmemEngine* engine = new ActmemEngine;  // lives as long as the process, like autograd's
  return *engine;
}

void release_failed_backward() noexcept {
  // On an autograd worker thread (a backward run inside another's node) the drain would run the
  // outer graph's other tasks from here: only a thread outside every graph task drains.
  if (torch::autograd::get_current_graph_task_exec_info() != nullptr) return;
  const bool on_cuda =
      g_allocator_installed.load(std::memory_order_acquire) && g_device != c10::DeviceType::CPU;
  const std::array<c10::Device, 2> queues = {c10::Device(c10::DeviceType::CPU),
                                             c10::Device(g_device)};
  const BackwardDepth nested;                // the drain is no step's backward
  const at::AutoGradMode grad_mode(true);  // a backward may be called under no_grad
  for (const c10::Device& device : queues) {
    if (device.is_cuda() && !on_cuda) continue;
    try {
      const at::Tensor one = at::ones({1}, at::TensorOptions().device(device)).requires_grad_();
      one.sum().backward();
    } catch (...) {
      // Out of memory for one element, or a device gone: the tasks stay until the next backward.
    }
  }
}
}  // namespace detail

DeviceAllocator* installed_device_allocator() { return g_cpu_allocator; }

void install_allocator() {
  if (g_allocator_installed.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_allocator_installed.load(std::memory_order_relaxed)) return;
  // Reads the environment: a malformed variable throws here, and nothing is installed yet.
  alloc::ProcessAllocators& process = alloc::ProcessAllocators::instance();
  if (process.backend_kind() == alloc::BackendKind::kCuda) {
    process.for_device(0);             // a CUDA backend that cannot start says so here
    detail::install_cuda_allocator();  // throws when LibTorch's CUDA allocator is already in use
    g_device = c10::DeviceType::CUDA;
  } else {
    static DeviceAllocator* adapter = new DeviceAllocator(process.for_device(0));
    c10::SetCPUAllocator(adapter, /*priority=*/100);
    g_cpu_allocator = adapter;
    g_device = c10::DeviceType::CPU;
  }
  g_allocator_installed.store(true, std::memory_order_release);
}

void install() {
  if (g_installed.load(std::memory_order_acquire)) return;
  if (inside_python()) {
    throw std::runtime_error(
        "actmem: install() inside a Python process would replace PyTorch's autograd engine; use "
        "the actmem Python package (import actmem; actmem.enable(), or python -m actmem SCRIPT) "
        "or the pluggable allocator (libactmem_alloc.so) instead");
  }
  install_allocator();
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_installed.load(std::memory_order_relaxed)) return;
  torch::autograd::set_default_engine_stub(
      []() -> torch::autograd::Engine& { return detail::ActmemEngine::instance(); });
  g_installed.store(true, std::memory_order_release);
}

bool installed() { return g_installed.load(std::memory_order_acquire); }

namespace {
void install_what_is_missing() {
  if (g_installed.load(std::memory_order_acquire)) return;
  if (inside_python()) {
    install_allocator();
  } else {
    install();
  }
}
}  // namespace

c10::DeviceType managed_device() {
  install_what_is_missing();
  return g_device;
}

alloc::CachingAllocator& device_memory() {
  install_what_is_missing();
  if (g_device == c10::DeviceType::CUDA) return detail::current_cuda_memory();
  return g_cpu_allocator->caching_allocator();
}

alloc::CachingAllocator& device_memory(c10::Device device) {
  install_what_is_missing();
  if (device.type() != g_device || (device.is_cuda() && !device.has_index())) {
    throw std::invalid_argument("actmem: device_memory(" + device.str() +
                                "): not a device of the kind actmem manages (" +
                                c10::DeviceTypeName(g_device, /*lower_case=*/true) +
                                "), with its index");
  }
  if (device.is_cuda()) return alloc::ProcessAllocators::instance().for_device(device.index());
  return g_cpu_allocator->caching_allocator();
}

}  // namespace actmem

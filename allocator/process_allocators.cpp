#include "allocator/process_allocators.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "allocator/host_virtual_memory.h"
#if defined(ACTMEM_HAVE_CUDA)
#include "allocator/cuda_backend.h"
#include "allocator/cuda_virtual_memory.h"
#endif

namespace actmem::alloc {

ProcessAllocators& ProcessAllocators::instance() {
  static ProcessAllocators* const allocators = [] {
    auto* created = new ProcessAllocators(ProcessConfig::from_environment());
    if (!created->config_.stats_path.empty() || !created->config_.trace_path.empty()) {
      std::atexit([] { ProcessAllocators::instance().write_files(); });
    }
    return created;
  }();
  return *allocators;
}

ProcessAllocators::ProcessAllocators(ProcessConfig config) : config_(std::move(config)) {}

BackendKind ProcessAllocators::backend_kind() {
  std::call_once(backend_resolved_, [this] {
    backend_ = config_.backend;
    if (backend_ != BackendKind::kAuto) return;
    backend_ = BackendKind::kHost;
#if defined(ACTMEM_HAVE_CUDA)
    const CudaRuntime* runtime = detail::resolve_cuda_runtime();
    if (runtime != nullptr && cuda_device_count(*runtime) > 0) backend_ = BackendKind::kCuda;
#endif
  });
  return backend_;
}

std::unique_ptr<CachingAllocator> ProcessAllocators::make_allocator(int device) {
  const bool growable = config_.allocator.growable.value_or(false);
  if (backend_kind() == BackendKind::kHost) {
    if (growable) {
      return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(),
                                                std::make_unique<HostVirtualMemory>(),
                                                std::make_unique<ImmediateEvents>(),
                                                config_.allocator);
    }
    return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(), config_.allocator);
  }

#if defined(ACTMEM_HAVE_CUDA)
  const CudaRuntime* runtime = detail::resolve_cuda_runtime();
  if (runtime == nullptr) {
    throw AllocatorError("actmem: ACTMEM_BACKEND=cuda, but the CUDA runtime could not be found");
  }
  const int count = cuda_device_count(*runtime);
  if (device >= count) {
    throw AllocatorError("actmem: CUDA device " + std::to_string(device) + " does not exist (" +
                         std::to_string(count) + " found)");
  }
  if (growable) {
    std::string why;
    std::unique_ptr<CudaVirtualMemory> virtual_memory = CudaVirtualMemory::create(device, &why);
    if (!virtual_memory) {
      throw ConfigError("actmem: ACTMEM_ALLOC_CONF backend:vmm: " + why +
                        "; use backend:classic");
    }
    return std::make_unique<CachingAllocator>(std::make_unique<CudaBackend>(*runtime, device),
                                              std::move(virtual_memory),
                                              std::make_unique<CudaEvents>(*runtime, device),
                                              config_.allocator);
  }
  return std::make_unique<CachingAllocator>(std::make_unique<CudaBackend>(*runtime, device),
                                            std::make_unique<CudaEvents>(*runtime, device),
                                            config_.allocator);
#else
  (void)device;
  throw AllocatorError("actmem: ACTMEM_BACKEND=cuda, but actmem was built without CUDA");
#endif
}

CachingAllocator& ProcessAllocators::for_device(int device) {
  if (backend_kind() == BackendKind::kHost) device = 0;
  if (device < 0 || device >= kMaxDevices) {
    throw AllocatorError("actmem: device " + std::to_string(device) + " is out of range [0, " +
                         std::to_string(kMaxDevices) + ")");
  }
  if (CachingAllocator* existing = allocators_[device].load(std::memory_order_acquire)) {
    return *existing;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (CachingAllocator* existing = allocators_[device].load(std::memory_order_acquire)) {
    return *existing;
  }
  CachingAllocator* created = make_allocator(device).release();  // lives as long as the process
  if (budget_) created->set_budget(*budget_);
  allocators_[device].store(created, std::memory_order_release);
  return *created;
}

void ProcessAllocators::set_budget(std::optional<std::size_t> bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  budget_ = bytes;
  for (std::atomic<CachingAllocator*>& allocator : allocators_) {
    if (CachingAllocator* made = allocator.load(std::memory_order_acquire)) made->set_budget(bytes);
  }
}

CachingAllocator* ProcessAllocators::existing(int device) {
  if (backend_kind() == BackendKind::kHost) device = 0;
  if (device < 0 || device >= kMaxDevices) return nullptr;
  return allocators_[device].load(std::memory_order_acquire);
}

std::string ProcessAllocators::stats_json() {
  std::string json = "{\"devices\":{";
  bool first = true;
  for (int device = 0; device < kMaxDevices; ++device) {
    CachingAllocator* allocator = allocators_[device].load(std::memory_order_acquire);
    if (allocator == nullptr) continue;
    json += (first ? "\"" : ",\"") + std::to_string(device) +
            "\":" + to_json(allocator->stats(), allocator->virtual_memory() != nullptr
                                                    ? allocator->virtual_memory()->name()
                                                    : allocator->backend().name());
    first = false;
  }
  json += "}";
  std::vector<std::pair<std::string, std::function<std::string()>>> sections;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sections = sections_;
  }
  for (const auto& [name, value] : sections) json += ",\"" + name + "\":" + value();
  return json + "}";
}

void ProcessAllocators::set_stats_section(const std::string& name,
                                          std::function<std::string()> json) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& section : sections_) {
    if (section.first == name) {
      section.second = std::move(json);
      return;
    }
  }
  sections_.emplace_back(name, std::move(json));
}

void ProcessAllocators::empty_cache() {
  for (auto& slot : allocators_) {
    if (CachingAllocator* allocator = slot.load(std::memory_order_acquire)) {
      allocator->empty_cache();
    }
  }
}

void ProcessAllocators::write_files() {
  if (!config_.stats_path.empty()) {
    std::ofstream out(config_.stats_path);
    out << stats_json() << '\n';
    if (!out) std::fprintf(stderr, "actmem: could not write ACTMEM_STATS=%s\n",
                           config_.stats_path.c_str());
  }
  if (!config_.trace_path.empty()) {
    std::ofstream out(config_.trace_path);
    for (auto& slot : allocators_) {
      if (CachingAllocator* allocator = slot.load(std::memory_order_acquire)) {
        write_trace(out, allocator->trace());
      }
    }
    if (!out) std::fprintf(stderr, "actmem: could not write ACTMEM_TRACE=%s\n",
                           config_.trace_path.c_str());
  }
}

}  // namespace actmem::alloc

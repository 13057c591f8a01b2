#include "hooks/cuda_allocator.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "allocator/process_allocators.h"
#include "hooks/out_of_memory.h"

namespace actmem::detail {
namespace {

namespace pluggable = torch::cuda::CUDAPluggableAllocator;
using alloc::ProcessAllocators;

void* allocate(size_t bytes, int device, cudaStream_t stream) {
  // Out of memory, it throws c10's type (cuDNN's smaller-workspace fallback catches it), with
  // actmem's message naming the budget and the bytes.
  return with_torch_out_of_memory(
      [&] { return ProcessAllocators::instance().for_device(device).allocate(bytes, stream); });
}

// Called by a tensor's deleter, where an exception would end the process without a word.
void deallocate(void* ptr, size_t /*bytes*/, int device, cudaStream_t /*stream*/) noexcept {
  try {
    ProcessAllocators::instance().for_device(device).deallocate(ptr);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "actmem: freeing a CUDA tensor's memory failed: %s\n", error.what());
    std::abort();
  }
}

// Tensor::record_stream gives the pointer and the stream, not the device: the allocator that
// handed the pointer out is the one that knows it. Memory actmem did not hand out (a tensor over
// a DLPack import, from_blob) has no reuse to defer: ignored, as by PyTorch's own allocator.
void record_stream(void* ptr, cudaStream_t stream) {
  ProcessAllocators& process = ProcessAllocators::instance();
  for (int device = 0; device < ProcessAllocators::kMaxDevices; ++device) {
    alloc::CachingAllocator* allocator = process.existing(device);
    if (allocator != nullptr && allocator->owns(ptr)) {
      allocator->record_stream(ptr, stream);
      return;
    }
  }
}

c10::CachingAllocator::Stat to_c10(const alloc::Stat& stat) {
  c10::CachingAllocator::Stat out;
  out.current = stat.current;
  out.peak = stat.peak;
  out.allocated = stat.total;
  out.freed = stat.total - stat.current;
  return out;
}

// PyTorch's pluggable allocator, answering what it leaves unsupported (it throws) from actmem's
// statistics: torch.cuda.memory_allocated, max_memory_allocated, memory_reserved, memory_stats
// and reset_peak_memory_stats, which unmodified training scripts call, and cacheInfo, which
// cuDNN's benchmark mode asks to size its workspace. Only the aggregate figures are filled
// ("allocated_bytes.all.current" and the like); the per-pool ones stay 0.
class ActmemCudaAllocator final : public pluggable::CUDAPluggableAllocator {
 public:
  ActmemCudaAllocator() : CUDAPluggableAllocator(&detail::allocate, &detail::deallocate) {}

  c10::CachingDeviceAllocator::DeviceStats getDeviceStats(c10::DeviceIndex device) override {
    const alloc::AllocatorStats stats = ProcessAllocators::instance().for_device(device).stats();
    constexpr auto all = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    c10::CachingDeviceAllocator::DeviceStats out;
    out.allocation[all] = to_c10(stats.live_blocks);
    out.segment[all] = to_c10(stats.segments);
    out.allocated_bytes[all] = to_c10(stats.allocated_bytes);
    out.reserved_bytes[all] = to_c10(stats.reserved_bytes);
    out.active_bytes[all] = to_c10(stats.active_bytes);
    out.requested_bytes[all] = to_c10(stats.requested_bytes);
    out.num_ooms = stats.ooms;
    out.num_device_alloc = stats.backend_allocs;
    out.num_device_free = stats.backend_frees;
    return out;
  }

  void resetPeakStats(c10::DeviceIndex device) override {
    ProcessAllocators::instance().for_device(device).reset_peak_stats();
  }

  // The largest block a request could get now: the largest free cached block, or what the device
  // (within the budget, if one is set) has beyond what is reserved. `largest` comes in as a guess;
  // 0 asks for one, as in PyTorch's own allocator.
  void cacheInfo(c10::DeviceIndex device, size_t* largest) override {
    const alloc::AllocatorStats stats = ProcessAllocators::instance().for_device(device).stats();
    std::size_t room = *largest;
    if (room == 0) {
      const c10::cuda::CUDAGuard on_device(device);
      std::size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
        room = free;
      } else {
        (void)cudaGetLastError();  // a failed query leaves no error for PyTorch's next check
      }
    }
    if (stats.budget_bytes > 0) {
      // Whole units of the allocator's rounding of large requests: a request rounded up past the
      // budget would run the pressure handlers (sending activations out) for a workspace cuDNN
      // can do without.
      constexpr auto kRound = static_cast<std::int64_t>(alloc::CachingAllocator::kRoundLarge);
      const std::int64_t under_budget =
          (stats.budget_bytes - stats.reserved_bytes.current) / kRound * kRound;
      room = std::min<std::size_t>(
          room, static_cast<std::size_t>(std::max<std::int64_t>(under_budget, 0)));
    }
    *largest = std::max(room, static_cast<std::size_t>(stats.largest_free_block_bytes));
  }
};

}  // namespace

void install_cuda_allocator() {
  auto custom = std::make_shared<ActmemCudaAllocator>();
  custom->init(0);  // as createCustomAllocator does: LibTorch's lazy CUDA init calls it again
  custom->set_record_stream_fn(&record_stream);
  custom->set_reset_fn([] { ProcessAllocators::instance().empty_cache(); });
  std::shared_ptr<c10::cuda::CUDACachingAllocator::CUDAAllocator> created = custom;
  try {
    pluggable::changeCurrentAllocator(created);
  } catch (const c10::Error& error) {
    throw std::runtime_error(
        std::string("actmem: install() came after LibTorch's CUDA allocator served its first "
                    "allocation, and it cannot be replaced then; call actmem::install() before "
                    "creating any CUDA tensor (") +
        error.what_without_backtrace() + ")");
  }
}

alloc::CachingAllocator& current_cuda_memory() {
  return ProcessAllocators::instance().for_device(c10::cuda::current_device());
}

}  // namespace actmem::detail

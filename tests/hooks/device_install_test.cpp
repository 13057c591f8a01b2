// install() picks the device actmem manages and never mixes them up: on a CUDA device, actmem's
// allocator becomes LibTorch's CUDA allocator and c10's CPU allocator stays LibTorch's own (the
// other way round crashed every hooks test on the GPU machine: CPU tensors were handed device
// pointers); without one, actmem's allocator is the CPU allocator. Its errors are exceptions the
// caller catches, leaving nothing installed.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <optional>
#include <string>

#ifdef ACTMEM_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "allocator/process_allocators.h"
#include "hooks/actmem.h"
#include "hooks/device_allocator.h"
#include "tests/support/run_process.h"

namespace actmem {
namespace {

using testing::run_process;

constexpr const char* kNoDevice = "needs a CUDA device (none here): the CUDA route of install()";

bool has_cuda_device() { return torch::cuda::is_available(); }

testing::ProcessResult probe(const std::string& environment, const std::string& args = "") {
  return run_process(environment + " " ACTMEM_INSTALL_PROBE " " + args);
}

TEST(DeviceInstall, TheDefaultManagesTheCudaDeviceWhenThereIsOneElseTheCpu) {
  const auto result = probe("");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find(has_cuda_device() ? "installed: cuda" : "installed: cpu"),
            std::string::npos)
      << result.output;
}

TEST(DeviceInstall, AMalformedVariableIsAnErrorTheCallerCatches) {
  const auto result = probe("ACTMEM_BUDGET=lots");
  EXPECT_EQ(result.exit_code, 3) << result.output;
  EXPECT_NE(result.output.find("caught: "), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("ACTMEM_BUDGET"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("lots"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("nothing installed, torch works"), std::string::npos)
      << result.output;
}

TEST(DeviceInstall, ACudaBackendWithoutADeviceIsAnErrorTheCallerCatches) {
  if (has_cuda_device()) GTEST_SKIP() << "a CUDA device is present: ACTMEM_BACKEND=cuda works here";
  const auto result = probe("ACTMEM_BACKEND=cuda");
  EXPECT_EQ(result.exit_code, 3) << result.output;
  EXPECT_NE(result.output.find("caught: actmem: "), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("CUDA"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("nothing installed, torch works"), std::string::npos)
      << result.output;
}

TEST(DeviceInstall, InstallingAfterTheFirstCudaTensorIsAnErrorTheCallerCatches) {
  if (!has_cuda_device()) GTEST_SKIP() << kNoDevice;
  const auto result = probe("", "--cuda-tensor-first");
  EXPECT_EQ(result.exit_code, 3) << result.output;
  EXPECT_NE(result.output.find("before creating any CUDA tensor"), std::string::npos)
      << result.output;
}

TEST(DeviceInstall, OnACudaDeviceCudaTensorsAreActmemsAndCpuTensorsAreNot) {
  if (!has_cuda_device()) GTEST_SKIP() << kNoDevice;
  install();
  ASSERT_EQ(managed_device(), c10::DeviceType::CUDA);
  EXPECT_EQ(installed_device_allocator(), nullptr);
  alloc::CachingAllocator& memory = device_memory();
  EXPECT_STREQ(memory.backend().name(), "cuda");
  const std::int64_t before = memory.stats().allocated_bytes.current;

  // A CPU tensor's kernel writes its output (this crashed) and its bytes are not actmem's.
  const torch::Tensor cpu = torch::randn({1 << 20});
  EXPECT_FALSE(memory.in_reserved_memory(cpu.data_ptr()));
  EXPECT_EQ(memory.stats().allocated_bytes.current, before);
  EXPECT_EQ(cpu.sum().item<double>(), cpu.sum().item<double>());  // not NaN

  {
    const torch::Tensor gpu = torch::ones({1 << 20}, torch::kCUDA);
    EXPECT_TRUE(memory.owns(gpu.data_ptr()));
    EXPECT_GE(memory.stats().allocated_bytes.current - before, std::int64_t{4} << 20);
    EXPECT_EQ(gpu.sum().item<double>(), static_cast<double>(1 << 20));
  }
  torch::cuda::synchronize();
  EXPECT_EQ(memory.stats().allocated_bytes.current, before);

  // A segment under recompute saves and restores the CPU generator's state (the other crash).
  ActivationScope scope(make_policy("recompute"));
  const torch::Tensor x = torch::randn({256}, torch::requires_grad());
  const auto y = segment(
      "dropout", [](const TensorList& in) -> TensorList {
        return {torch::dropout(in[0].exp(), 0.5, /*train=*/true)};
      }, {x});
  y[0].sum().backward();
  EXPECT_EQ(scope.stats().recomputations, 1);
  EXPECT_TRUE(torch::equal(x.grad() != 0, y[0].detach() != 0));
}

#ifdef ACTMEM_TORCH_CUDA
// PyTorch's pluggable allocator refuses its memory statistics (torch.cuda.max_memory_allocated,
// reset_peak_memory_stats) and cuDNN's cacheInfo; training scripts call them. actmem answers them.
TEST(DeviceInstall, TorchsMemoryStatisticsOnCudaAreActmems) {
  if (!has_cuda_device()) GTEST_SKIP() << kNoDevice;
  install();
  ASSERT_EQ(managed_device(), c10::DeviceType::CUDA);
  namespace torch_memory = c10::cuda::CUDACachingAllocator;
  constexpr auto all = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const c10::DeviceIndex device = c10::cuda::current_device();
  alloc::CachingAllocator& memory = device_memory();
  {
    const torch::Tensor gpu = torch::ones({1 << 20}, torch::kCUDA);
    const auto seen = torch_memory::getDeviceStats(device);
    EXPECT_EQ(seen.allocated_bytes[all].current, memory.stats().allocated_bytes.current);
    EXPECT_EQ(seen.reserved_bytes[all].current, memory.stats().reserved_bytes.current);
    EXPECT_GE(seen.allocated_bytes[all].current, std::int64_t{4} << 20);
  }
  torch::cuda::synchronize();
  torch_memory::resetPeakStats(device);
  const auto reset = torch_memory::getDeviceStats(device);
  EXPECT_EQ(reset.allocated_bytes[all].peak, reset.allocated_bytes[all].current);
  std::size_t largest = 0;
  torch_memory::cacheInfo(device, &largest);
  EXPECT_GT(largest, std::size_t{0});
}

// cuDNN asks LibTorch's CUDA allocator for its largest workspace and halves it on
// c10::OutOfMemoryError (Conv_v8.cpp); any other error fails the convolution. Under a budget
// actmem's refusal must be that type.
TEST(DeviceInstall, ACudaRequestOverTheBudgetIsLibTorchsOutOfMemoryError) {
  if (!has_cuda_device()) GTEST_SKIP() << kNoDevice;
  install();
  ASSERT_EQ(managed_device(), c10::DeviceType::CUDA);
  alloc::CachingAllocator& memory = device_memory();
  memory.empty_cache();
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  memory.set_budget(static_cast<std::size_t>(memory.stats().reserved_bytes.current) + 64 * kMiB);
  std::size_t workspace = 4096 * kMiB;
  int refusals = 0;
  c10::DataPtr granted;
  while (workspace > 0) {
    try {
      granted = c10::cuda::CUDACachingAllocator::get()->allocate(workspace);
      break;
    } catch (const c10::OutOfMemoryError&) {
      ++refusals;
      workspace /= 2;
    }
  }
  memory.set_budget(std::nullopt);
  EXPECT_GT(refusals, 0);
  EXPECT_GE(workspace, 16 * kMiB);
  EXPECT_NE(granted.get(), nullptr);
}
#endif

}  // namespace
}  // namespace actmem

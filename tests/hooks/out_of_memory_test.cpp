// Out of memory under actmem is LibTorch's own error (c10::OutOfMemoryError), so that the code
// that catches LibTorch's (cuDNN's smaller-workspace fallback, a batch-size search) catches ours.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hooks/actmem.h"
#include "hooks/out_of_memory.h"
#include "tests/hooks/small_modules.h"

namespace actmem {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// Sets the managed device's budget to what it reserves now plus `room`, for one test.
class BudgetAboveReserved {
 public:
  explicit BudgetAboveReserved(std::size_t room) {
    device_memory().empty_cache();
    device_memory().set_budget(
        static_cast<std::size_t>(device_memory().stats().reserved_bytes.current) + room);
  }
  ~BudgetAboveReserved() { device_memory().set_budget(std::nullopt); }
  BudgetAboveReserved(const BudgetAboveReserved&) = delete;
  BudgetAboveReserved& operator=(const BudgetAboveReserved&) = delete;
};

TEST(OutOfMemory, ATensorOverTheBudgetFailsWithLibTorchsErrorCarryingActmemsFigures) {
  install();
  const BudgetAboveReserved budget(4 * kMiB);
  const std::int64_t elements = std::int64_t{64} << 20;  // 256 MiB of floats
  try {
    const torch::Tensor big = torch::empty({elements}, torch::device(managed_device()));
    FAIL() << "a 256 MiB tensor fitted a budget 4 MiB above what is reserved";
  } catch (const c10::OutOfMemoryError& error) {
    const std::string message = error.what_without_backtrace();
    EXPECT_NE(message.find("actmem: out of memory"), std::string::npos) << message;
    EXPECT_NE(message.find("budget"), std::string::npos) << message;
    EXPECT_EQ(std::string(error.what()), message) << "no backtrace: the message says it all";
    const auto* ours = dynamic_cast<const OutOfMemoryError*>(&error);
    ASSERT_NE(ours, nullptr);
    EXPECT_EQ(ours->requested_bytes(), static_cast<std::size_t>(elements) * sizeof(float));
    EXPECT_GT(ours->least_budget_bytes(), *device_memory().budget());
  }
}

// cuDNN's pattern: ask for the largest workspace, halve on LibTorch's out-of-memory error. Under a
// budget it must end with a workspace that fits, not with the first refusal.
TEST(OutOfMemory, ACallerThatHalvesItsRequestOnLibTorchsErrorEndsWithOneThatFits) {
  install();
  const BudgetAboveReserved budget(24 * kMiB);
  c10::Allocator* allocator = c10::GetAllocator(managed_device());
  std::size_t workspace = 1024 * kMiB;
  int refusals = 0;
  c10::DataPtr granted;
  while (workspace > 0) {
    try {
      granted = allocator->allocate(workspace);
      break;
    } catch (const c10::OutOfMemoryError&) {
      ++refusals;
      workspace /= 2;
    }
  }
  EXPECT_GT(refusals, 0);
  EXPECT_GE(workspace, 8 * kMiB) << "a 24 MiB room holds an 8 MiB workspace";
  EXPECT_NE(granted.get(), nullptr);
}

// auto's own refusal, when nothing is left to send out, is LibTorch's error too.
TEST(OutOfMemory, AutosTooSmallBudgetIsLibTorchsErrorToo) {
  install();
  auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/8);
  const std::int64_t before = device_memory().stats().allocated_bytes.current;
  {
    ActivationScope scope(make_device_policy("auto"));
    const BudgetAboveReserved budget(0);
    try {
      module->loss().backward();
      FAIL() << "a step fitted a budget of what was reserved before it began";
    } catch (const c10::OutOfMemoryError& error) {
      EXPECT_NE(dynamic_cast<const BudgetTooSmallError*>(&error), nullptr)
          << error.what_without_backtrace();
      EXPECT_NE(std::string(error.what_without_backtrace()).find("ACTMEM_BUDGET must be at least"),
                std::string::npos)
          << error.what_without_backtrace();
    }
  }
  EXPECT_EQ(device_memory().stats().allocated_bytes.current, before) << "the failed step left nothing";
}

// A segment whose function falls back to chunks when LibTorch's out-of-memory error stops its
// whole-batch path, as scripts write them: the forward fits, and a budget set before backward
// leaves its rerun room for the chunks' 512 KiB products but not for the whole batch's 8 MiB one.
// The rerun then saves other tensors; that is reported as out of memory (Note [A rerun that ran
// out of memory] in segment_frame.h), so that a caller halving its batch on out-of-memory catches
// it. (It was std::runtime_error: "saved a Float [128, 128, 1] tensor in its forward, but a Float
// [8, 128, 1] one in its place".)
TEST(OutOfMemory, ARerunThatRanOutOfMemoryAndWentAnotherWayIsLibTorchsError) {
  install();
  const torch::Tensor x =
      torch::randn({128, 128}, torch::device(managed_device())).requires_grad_();
  const SegmentFn whole_or_chunks = [](const TensorList& in) -> TensorList {
    const auto pairs = [](const torch::Tensor& rows, const torch::Tensor& all) {
      return (rows.unsqueeze(2) * all.unsqueeze(0)).sum(2).tanh();  // a rows x 128 x 128 product
    };
    try {
      return {pairs(in[0], in[0])};
    } catch (const c10::OutOfMemoryError&) {
      std::vector<torch::Tensor> parts;
      for (const torch::Tensor& rows : in[0].split(8)) parts.push_back(pairs(rows, in[0]));
      return {torch::cat(parts)};
    }
  };
  ActivationScope scope(make_device_policy("recompute"));
  const torch::Tensor y = segment("pairs", whole_or_chunks, {x})[0];
  const BudgetAboveReserved budget(2 * kMiB);
  try {
    y.sum().backward();
    FAIL() << "the rerun's whole-batch path fitted 2 MiB above what was reserved";
  } catch (const c10::OutOfMemoryError& error) {
    const std::string message = error.what_without_backtrace();
    EXPECT_NE(message.find("ran out of memory when rerun"), std::string::npos) << message;
    EXPECT_NE(message.find("segment 'pairs'"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace actmem

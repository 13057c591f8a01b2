// What the policies save, in device bytes (the allocator's stats), and that nothing leaks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "allocator/errors.h"
#include "hooks/actmem.h"
#include "tests/hooks/small_modules.h"

namespace actmem {
namespace {

struct StepMemory {
  std::int64_t peak_above_start;  // peak allocated during the step, above its level at the start
  std::int64_t first_step_peak_above_start;  // the same for the first step
  std::int64_t leaked;            // allocated after the step minus before
  std::int64_t host_live;         // host-pool bytes still allocated after the step
  ActivationStats stats;
};

// Runs two steps (the first allocates gradients and optimizer state) and measures the second (and
// the first's peak).
StepMemory measure(const std::string& policy) {
  install();
  auto module = testing::make_deep_conv_stack(/*blocks=*/16, /*batch=*/16);
  module->train();
  torch::optim::SGD optimizer(module->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  ActivationScope scope(make_policy(policy));
  StepMemory result{};
  for (int step = 0; step < 2; ++step) {
    // Measured before zero_grad, which frees the gradients (LibTorch 2.x sets them to none) that
    // backward then allocates again.
    const std::int64_t before = device_memory().stats().allocated_bytes.current;
    device_memory().reset_peak_stats();
    optimizer.zero_grad();
    module->loss().backward();
    optimizer.step();
    const auto stats = device_memory().stats();
    result.peak_above_start = stats.allocated_bytes.peak - before;
    if (step == 0) result.first_step_peak_above_start = result.peak_above_start;
    result.leaked = stats.allocated_bytes.current - before;
  }
  result.host_live = scope.host_store().pool().stats().allocated_bytes.current;
  result.stats = scope.stats();
  return result;
}

TEST(ActivationMemory, RecomputeAndOffloadCutThePeakOfADeepStack) {
  const StepMemory keep = measure("keep");
  const StepMemory recompute = measure("recompute");
  const StepMemory offload = measure("offload");
  std::printf("peak above start: keep %.1f MiB, recompute %.1f MiB, offload %.1f MiB\n",
              keep.peak_above_start / 1048576.0, recompute.peak_above_start / 1048576.0,
              offload.peak_above_start / 1048576.0);
  // 16 blocks of conv-BN-ReLU-dropout on 16x32x32x32 activations (2 MiB each): keep saves about
  // four activations a block (~130 MiB measured). Recompute keeps one input a block (32 MiB) plus
  // one block's working set in backward; offload keeps only tensors under the minimum size plus
  // that working set: measured 40 MiB and 10 MiB (dropout's masks go too: they need no grad, but
  // they are activations, not the model's).
  EXPECT_GT(keep.peak_above_start, 100ll << 20);
  EXPECT_LT(recompute.peak_above_start, keep.peak_above_start * 40 / 100);
  EXPECT_LT(offload.peak_above_start, keep.peak_above_start * 15 / 100);
  EXPECT_GT(offload.stats.bytes_offloaded, 100ll << 20);
}

// The same stack as a chain: 16 linked segments, each saving about four times its input, so the
// policy keeps every k-th input with k = √(16 / 4) = 2 (learned in the first step): 8 inputs
// instead of 16, and two blocks' tensors back at once in backward instead of one. The first step,
// before k is known, is per-segment recompute, and holds no more than it (chain_spacing.h: links
// dropped then held more, 42.0 MiB against 40.0).
TEST(ActivationMemory, AChainHoldsLessThanRecomputeOnADeepStack) {
  const StepMemory recompute = measure("recompute");
  const StepMemory chain = measure("chain");
  std::printf("peak above start: recompute %.1f MiB, chain %.1f MiB\n",
              recompute.peak_above_start / 1048576.0, chain.peak_above_start / 1048576.0);
  EXPECT_LT(chain.peak_above_start, recompute.peak_above_start * 90 / 100);
  EXPECT_LE(chain.first_step_peak_above_start, recompute.first_step_peak_above_start);
  EXPECT_EQ(chain.stats.recomputations, recompute.stats.recomputations) << "each block once";
}

TEST(ActivationMemory, AStepReturnsDeviceAndHostBytesToTheirLevel) {
  for (const char* policy : {"keep", "recompute", "chain", "offload"}) {
    const StepMemory m = measure(policy);
    EXPECT_EQ(m.leaked, 0) << policy;
    EXPECT_EQ(m.host_live, 0) << policy;
    EXPECT_EQ(m.stats.unpacked, m.stats.packed) << policy;
  }
}

// A graph dropped without a backward (an exception in the forward, an evaluation with grad on)
// must free every tensor it saved: the saved outputs must not keep their own graph alive.
TEST(ActivationMemory, AForwardDroppedWithoutBackwardFreesEverything) {
  install();
  for (const char* policy : {"keep", "recompute", "offload"}) {
    const std::int64_t before = device_memory().stats().allocated_bytes.current;
    {
      auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/4);
      ActivationScope scope(make_policy(policy));
      const torch::Tensor loss = module->loss();
      ASSERT_TRUE(loss.requires_grad());
      const torch::Tensor exp = torch::randn({1000}, torch::requires_grad()).exp();  // saves its output
    }
    EXPECT_EQ(device_memory().stats().allocated_bytes.current, before) << policy;
  }
}

// A segment's forward holds what it saves for recompute until it returns (Note [A segment's
// forward may read what it saved]); one that throws lets go of it too, even while something (a
// Python traceback, here a tensor the function left outside) still holds the partial graph.
TEST(ActivationMemory, ASegmentWhoseForwardThrowsLetsGoOfWhatItHeldForRecompute) {
  install();
  const torch::Tensor x = torch::randn({256, 256}, torch::requires_grad());
  const std::int64_t before = device_memory().stats().allocated_bytes.current;
  torch::Tensor left_outside;
  {
    ActivationScope scope(make_policy("recompute"));
    EXPECT_THROW(segment(
                     "throws",
                     [&](const TensorList& in) -> TensorList {
                       left_outside = in[0].tanh().tanh().sum();  // saves two 256 KiB outputs
                       throw std::runtime_error("the forward gives up");
                     },
                     {x}),
                 std::runtime_error);
  }
  ASSERT_TRUE(left_outside.requires_grad()) << "the partial graph is alive";
  EXPECT_LT(device_memory().stats().allocated_bytes.current - before, 256 * 1024)
      << "the two tanh outputs saved for recompute are gone";
}

TEST(ActivationMemory, AnOutOfMemoryInTheForwardLeavesNothingBehind) {
  install();
  for (const char* policy : {"keep", "recompute", "offload"}) {
    const std::int64_t before = device_memory().stats().allocated_bytes.current;
    {
      auto module = testing::make_deep_conv_stack(/*blocks=*/16, /*batch=*/16);
      ActivationScope scope(make_policy(policy));
      device_memory().empty_cache();
      const std::size_t reserved = device_memory().stats().reserved_bytes.current;
      device_memory().set_budget(reserved + (2u << 20));  // less than one block needs
      EXPECT_THROW(module->loss(), OutOfMemoryError) << policy;
      device_memory().set_budget(std::nullopt);
    }
    EXPECT_EQ(device_memory().stats().allocated_bytes.current, before) << policy;
  }
}

// A scope may go before the backward of a graph made under it (a helper that owns the scope and
// returns the loss): the graph keeps what its saved tensors need, the backward gives plain
// LibTorch's gradients, and once the graph is gone nothing stays allocated, host pool included.
TEST(ActivationMemory, AScopeGoneBeforeItsBackwardGivesPlainGradientsAndLeavesNothing) {
  install();
  const auto gradients = [](const std::shared_ptr<testing::LossModule>& module) {
    std::vector<torch::Tensor> grads;
    for (const auto& p : module->parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  torch::manual_seed(3);
  const auto plain = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/4);
  plain->loss().backward();
  const std::vector<torch::Tensor> expected = gradients(plain);
  for (const char* policy : {"keep", "recompute", "chain", "offload"}) {
    const std::int64_t before = device_memory().stats().allocated_bytes.current;
    {
      torch::manual_seed(3);
      const auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/4);
      torch::Tensor loss;
      std::int64_t pooled = 0;
      {
        ActivationScope scope(make_policy(policy));
        loss = module->loss();
        pooled = scope.host_store().pool().stats().allocated_bytes.current;
      }
      if (std::string(policy) == "offload") {
        EXPECT_GT(pooled, 0) << "nothing went out";
      }
      loss.backward();
      const std::vector<torch::Tensor> got = gradients(module);
      ASSERT_EQ(got.size(), expected.size());
      for (std::size_t i = 0; i < got.size(); ++i) {
        EXPECT_TRUE(torch::equal(got[i], expected[i])) << policy << ", parameter " << i;
      }
    }
    EXPECT_EQ(device_memory().stats().allocated_bytes.current, before) << policy;
  }
}

}  // namespace
}  // namespace actmem

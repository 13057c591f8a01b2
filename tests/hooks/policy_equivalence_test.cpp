// Every policy against `keep`, on small modules trained for a few steps: losses, gradients,
// parameters and BatchNorm running stats must be equal to the bit on CPU (the same kernels run on
// the same data in the same order; recompute reruns them with the saved RNG state).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "hooks/actmem.h"
#include "tests/hooks/small_modules.h"

namespace actmem {
namespace {

using testing::LossModule;
using testing::SmallModuleCase;

struct TrainingRecord {
  std::vector<torch::Tensor> losses;
  std::vector<std::vector<torch::Tensor>> grads;  // per step, per parameter
  std::vector<torch::Tensor> params;              // after the last step
  std::vector<torch::Tensor> buffers;             // after the last step
  std::vector<std::int64_t> peak_allocated;       // device bytes, per step
  ActivationStats stats;
};

TrainingRecord train(LossModule& module, const std::string& policy, int steps) {
  install();
  module.train();
  torch::optim::SGD optimizer(module.parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  torch::manual_seed(99);  // dropout draws the same masks under every policy
  ActivationScope scope(make_policy(policy));
  TrainingRecord record;
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    device_memory().reset_peak_stats();
    torch::Tensor loss = module.loss();
    loss.backward();
    record.peak_allocated.push_back(device_memory().stats().allocated_bytes.peak);
    record.losses.push_back(loss.detach().clone());
    std::vector<torch::Tensor> grads;
    for (const auto& p : module.parameters()) grads.push_back(p.grad().clone());
    record.grads.push_back(grads);
    optimizer.step();
  }
  for (const auto& p : module.parameters()) record.params.push_back(p.detach().clone());
  for (const auto& b : module.buffers()) record.buffers.push_back(b.clone());
  record.stats = scope.stats();
  return record;
}

void expect_same_bits(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b,
                      const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i]))
        << what << " #" << i << " differs; max |diff| = "
        << (a[i] - b[i]).abs().max().item<double>();
  }
}

struct Case {
  SmallModuleCase module;
  std::string policy;
};

class PolicyEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(PolicyEquivalence, TrainsExactlyLikeKeep) {
  const Case& c = GetParam();
  auto reference_module = c.module.make();
  const TrainingRecord reference = train(*reference_module, "keep", 3);
  auto module = c.module.make();
  const TrainingRecord record = train(*module, c.policy, 3);

  expect_same_bits(record.losses, reference.losses, "loss");
  for (std::size_t step = 0; step < record.grads.size(); ++step) {
    expect_same_bits(record.grads[step], reference.grads[step],
                     "step " + std::to_string(step) + " gradient");
  }
  expect_same_bits(record.params, reference.params, "parameter");
  expect_same_bits(record.buffers, reference.buffers, "buffer");

  // Every tensor packed was unpacked exactly once per backward.
  EXPECT_GT(record.stats.packed, 0);
  EXPECT_EQ(record.stats.unpacked, record.stats.packed);
  if (c.policy == "recompute") {
    EXPECT_GT(record.stats.tensors_recomputed, 0);
    EXPECT_EQ(record.stats.recomputations, 3 * c.module.segments) << "one rerun per segment per step";
  }
  if (c.policy == "offload" && c.module.name != "lstm_cell_loop") {  // LSTM tensors are < 64 KiB
    EXPECT_GT(record.stats.tensors_offloaded, 0);
  }
  if (c.policy == "keep") {
    EXPECT_EQ(record.stats.tensors_offloaded + record.stats.tensors_recomputed, 0);
  }
}

std::vector<Case> cases() {
  std::vector<Case> all;
  for (const SmallModuleCase& module : testing::small_module_cases()) {
    for (const char* policy : {"keep", "recompute", "offload"}) all.push_back({module, policy});
  }
  return all;
}

INSTANTIATE_TEST_SUITE_P(SmallModules, PolicyEquivalence, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) {
                           return param_info.param.module.name + "_" + param_info.param.policy;
                         });

}  // namespace
}  // namespace actmem

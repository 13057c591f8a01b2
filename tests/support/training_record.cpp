#include "tests/support/training_record.h"

#include <gtest/gtest.h>

#include "hooks/actmem.h"

namespace actmem::testing {

TrainingRecord record_training(torch::nn::Module& module, const std::function<double()>& step,
                               const std::string& policy, int steps) {
  install();
  module.train();
  torch::manual_seed(99);
  ActivationScope scope(make_device_policy(policy));
  TrainingRecord record;
  for (int i = 0; i < steps; ++i) {
    const std::int64_t start = device_memory().stats().allocated_bytes.current;
    device_memory().reset_peak_stats();
    record.losses.push_back(step());
    record.peak_above_start.push_back(device_memory().stats().allocated_bytes.peak - start);
    std::vector<torch::Tensor> grads;
    for (const auto& p : module.parameters()) grads.push_back(p.grad().clone());
    record.grads.push_back(grads);
  }
  for (const auto& p : module.parameters()) record.params.push_back(p.detach().clone());
  for (const auto& b : module.buffers()) record.buffers.push_back(b.clone());
  record.stats = scope.stats();
  return record;
}

TrainingRecord train(torch::nn::Module& module, const std::function<torch::Tensor()>& loss,
                     const std::string& policy, int steps) {
  torch::optim::SGD optimizer(module.parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  return record_training(
      module,
      [&] {
        optimizer.zero_grad();
        torch::Tensor value = loss();
        value.backward();
        optimizer.step();
        return value.item<double>();
      },
      policy, steps);
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

void expect_same_training(const TrainingRecord& record, const TrainingRecord& reference) {
  EXPECT_EQ(record.losses, reference.losses);
  ASSERT_EQ(record.grads.size(), reference.grads.size());
  for (std::size_t step = 0; step < record.grads.size(); ++step) {
    expect_same_bits(record.grads[step], reference.grads[step],
                     "step " + std::to_string(step) + " gradient");
  }
  expect_same_bits(record.params, reference.params, "parameter");
  expect_same_bits(record.buffers, reference.buffers, "buffer");
}

}  // namespace actmem::testing

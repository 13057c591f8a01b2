// Trains a module for a few steps under a policy and records everything a policy must not change
// (losses, gradients, parameters, buffers) and what it should change (peak device bytes), so
// tests can compare each policy against `keep`.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "hooks/activation_scope.h"

namespace actmem::testing {

struct TrainingRecord {
  std::vector<double> losses;
  std::vector<std::vector<torch::Tensor>> grads;  // per step, per parameter
  std::vector<torch::Tensor> params;              // after the last step
  std::vector<torch::Tensor> buffers;             // after the last step
  std::vector<std::int64_t> peak_above_start;     // device bytes, per step
  ActivationStats stats;
};

// Runs `step` `steps` times under `policy` and records each. A step zeroes the gradients, computes
// the loss, runs backward and the optimizer, and returns the loss; the gradients it leaves are
// recorded. The CPU RNG is seeded the same way for every policy, so dropout draws the same masks.
TrainingRecord record_training(torch::nn::Module& module, const std::function<double()>& step,
                               const std::string& policy, int steps);

// record_training with SGD (lr 0.01, momentum 0.9) on `loss()`.
TrainingRecord train(torch::nn::Module& module, const std::function<torch::Tensor()>& loss,
                     const std::string& policy, int steps);

// EXPECTs that each tensor of `a` equals its counterpart in `b` to the bit; names `what` and the
// largest difference otherwise.
void expect_same_bits(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b,
                      const std::string& what);

// EXPECTs that two records trained alike: losses, every step's gradients, parameters, buffers.
void expect_same_training(const TrainingRecord& record, const TrainingRecord& reference);

}  // namespace actmem::testing

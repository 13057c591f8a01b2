// Small modules with segments, for the hooks tests: each is a stand-in for a shape of network the
// reference models have (a conv-BN-ReLU-dropout stack, an MLP, a block with a skip connection, an
// LSTM cell loop).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

#include "hooks/segment.h"

namespace actmem::testing {

// A module that computes a scalar loss on its own deterministic batch.
struct LossModule : torch::nn::Module {
  virtual torch::Tensor loss() = 0;
};

struct SmallModuleCase {
  std::string name;
  std::function<std::shared_ptr<LossModule>()> make;  // seeded: the same weights every call
  int segments;                                        // segment() calls per forward
};

std::vector<SmallModuleCase> small_module_cases();

// A deep conv-BN-ReLU stack on a larger batch, for peak-memory comparisons.
std::shared_ptr<LossModule> make_deep_conv_stack(int blocks, int batch);

}  // namespace actmem::testing

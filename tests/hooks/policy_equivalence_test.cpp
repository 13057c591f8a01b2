// Every policy against `keep`, on small modules trained for a few steps: losses, gradients,
// parameters and BatchNorm running stats must be equal to the bit on CPU (the same kernels run on
// the same data in the same order; recompute reruns them with the saved RNG state).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "hooks/actmem.h"
#include "tests/hooks/small_modules.h"
#include "tests/support/training_record.h"

namespace actmem {
namespace {

using testing::SmallModuleCase;
using testing::TrainingRecord;

struct Case {
  SmallModuleCase module;
  std::string policy;
};

class PolicyEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(PolicyEquivalence, TrainsExactlyLikeKeep) {
  const Case& c = GetParam();
  auto reference_module = c.module.make();
  const TrainingRecord reference =
      testing::train(*reference_module, [&] { return reference_module->loss(); }, "keep", 3);
  auto module = c.module.make();
  const TrainingRecord record =
      testing::train(*module, [&] { return module->loss(); }, c.policy, 3);
  testing::expect_same_training(record, reference);

  // Every tensor packed was unpacked exactly once per backward.
  EXPECT_GT(record.stats.packed, 0);
  EXPECT_EQ(record.stats.unpacked, record.stats.packed);
  if (c.policy == "recompute" || c.policy == "chain") {
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
    for (const char* policy : {"keep", "recompute", "chain", "offload"}) {
      all.push_back({module, policy});
    }
  }
  return all;
}

INSTANTIATE_TEST_SUITE_P(SmallModules, PolicyEquivalence, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) {
                           return param_info.param.module.name + "_" + param_info.param.policy;
                         });

}  // namespace
}  // namespace actmem

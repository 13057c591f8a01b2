// What the hooks record of a step for a policy that learns from it (auto): every segment named and
// timed by the scope's segment timer, every saved tensor with its action, and which storages only
// saved tensors held.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "hooks/actmem.h"
#include "policy/step_profile.h"
#include "tests/hooks/small_modules.h"

namespace actmem {
namespace {

// Takes one action for every tensor and keeps the profiles it is handed.
class RecordingPolicy final : public Policy {
 public:
  explicit RecordingPolicy(Action action) : action_(action) {}
  const char* name() const override { return "recording"; }
  Action decide(const SavedTensorInfo&) override { return action_; }
  bool wants_profile() const override { return true; }
  void end_step(const StepProfile& profile) override { profiles.push_back(profile); }

  std::vector<StepProfile> profiles;

 private:
  Action action_;
};

StepProfile profile_one_step(Action action, int blocks) {
  install();
  auto module = testing::make_deep_conv_stack(blocks, /*batch=*/8);
  module->train();
  auto policy = std::make_shared<RecordingPolicy>(action);
  ActivationScope scope(policy);
  module->loss().backward();
  EXPECT_EQ(policy->profiles.size(), 1u);
  return policy->profiles.empty() ? StepProfile{} : policy->profiles.front();
}

TEST(StepProfile, NamesAndTimesEverySegmentInForwardOrder) {
  constexpr int kBlocks = 6;
  const StepProfile profile = profile_one_step(Action::kKeep, kBlocks);
  ASSERT_EQ(profile.segments.size(), static_cast<std::size_t>(kBlocks));
  for (int i = 0; i < kBlocks; ++i) {
    EXPECT_EQ(profile.segments[i].name, "block" + std::to_string(i));
    EXPECT_GT(profile.segments[i].forward_ns, 0) << profile.segments[i].name;
  }
  EXPECT_GT(profile.copy_bytes_per_second, 0);
}

// Between two saved tensors the ops allocate more than either event sees (a convolution's output
// before BatchNorm saves it, BatchNorm's own temporaries): the allocator's trace gives each
// event's peak until the next.
TEST(StepProfile, TheAllocatorsTraceGivesThePeakBetweenEvents) {
  const std::size_t trace_before = device_memory().trace_size();
  const StepProfile profile = profile_one_step(Action::kKeep, /*blocks=*/4);
  ASSERT_EQ(profile.peaks.size(), profile.levels.size());
  int above = 0;
  for (std::size_t e = 0; e < profile.levels.size(); ++e) {
    EXPECT_GE(profile.peaks[e], profile.levels[e]) << "event " << e;
    above += profile.peaks[e] > profile.levels[e];
  }
  EXPECT_GT(above, 0);
  EXPECT_FALSE(device_memory().trace_enabled()) << "the scope stops the trace it started";
  EXPECT_EQ(device_memory().trace_size(), trace_before);
}

// A storage sent out at pack is freeable when nothing else held it when backward began: the
// blocks' activations are; the module's input, which it holds, is not.
TEST(StepProfile, ASentOutStorageIsFreeableOnlyWhenNothingElseHoldsIt) {
  const StepProfile profile = profile_one_step(Action::kOffload, /*blocks=*/4);
  int sent_out = 0, freeable = 0, held = 0;
  for (const ProfiledTensor& t : profile.tensors) {
    if (t.action != Action::kOffload) continue;
    ++sent_out;
    EXPECT_GE(t.storage_bytes, t.bytes);
    if (t.freeable) {
      ++freeable;
    } else if (t.segment == "block0" && t.segment_input) {
      ++held;  // the input batch, which the module keeps
    }
  }
  EXPECT_GT(sent_out, 0);
  EXPECT_GT(freeable, 0);
  EXPECT_EQ(held, 1) << "block0's conv saves the module's input, which is not freeable";
}

}  // namespace
}  // namespace actmem

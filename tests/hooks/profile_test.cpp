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

// Profiles only the first step; watches whether the allocator records a trace while it decides.
class FirstStepOnly final : public Policy {
 public:
  const char* name() const override { return "first-step-only"; }
  Action decide(const SavedTensorInfo&) override {
    tracing_seen |= device_memory().trace_enabled() && !profiles.empty();
    return Action::kKeep;
  }
  bool wants_profile() const override { return true; }
  bool profiles_step() const override { return profiles.empty(); }
  void end_step(const StepProfile& profile) override { profiles.push_back(profile); }

  std::vector<StepProfile> profiles;
  bool tracing_seen = false;  // in a step after the first
};

// A step the policy does not need profiled gets a summary: no events, no segment times, no
// allocator trace while it runs; its time and evictions still.
TEST(StepProfile, AStepThePolicyDoesNotProfileGetsASummaryOnly) {
  install();
  auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/8);
  module->train();
  auto policy = std::make_shared<FirstStepOnly>();
  ActivationScope scope(policy);
  for (int step = 0; step < 3; ++step) module->loss().backward();
  ASSERT_EQ(policy->profiles.size(), 3u);
  EXPECT_TRUE(policy->profiles[0].detailed);
  EXPECT_FALSE(policy->profiles[0].tensors.empty());
  for (int step = 1; step < 3; ++step) {
    const StepProfile& summary = policy->profiles[step];
    EXPECT_FALSE(summary.detailed) << step;
    EXPECT_TRUE(summary.tensors.empty()) << step;
    EXPECT_TRUE(summary.levels.empty()) << step;
    EXPECT_TRUE(summary.segments.empty()) << step;
    EXPECT_GT(summary.step_ns, 0) << step;
    EXPECT_GT(summary.reserved_peak_bytes, 0) << step;
  }
  EXPECT_FALSE(policy->tracing_seen) << "the allocator recorded a trace during a summary step";
}

// auto profiles the first step of a shape and then follows its plan with summaries only.
TEST(StepProfile, AutoProfilesOnlyUntilItHasAPlan) {
  install();
  auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/8);
  module->train();
  auto auto_policy = std::shared_ptr<Policy>(make_policy("auto"));
  struct Watch final : Policy {
    std::shared_ptr<Policy> inner;
    std::vector<bool> detailed;
    const char* name() const override { return "watch"; }
    Action decide(const SavedTensorInfo& t) override { return inner->decide(t); }
    bool wants_profile() const override { return true; }
    bool profiles_step() const override { return inner->profiles_step(); }
    bool evicts_under_pressure() const override { return true; }
    void end_step(const StepProfile& p) override {
      detailed.push_back(p.detailed);
      inner->end_step(p);
    }
  };
  auto watch = std::make_shared<Watch>();
  watch->inner = auto_policy;
  ActivationScope scope(watch);
  for (int step = 0; step < 4; ++step) module->loss().backward();
  EXPECT_EQ(watch->detailed, (std::vector<bool>{true, false, false, false}));
}

// A scope's first profiled step reserves only what it needs: segments left cached before it (here
// 64 MiB) go back first, or the policy would read them as the allocator's overhead and plan far
// too low. Once per scope: a later profiled step keeps the cache (emptying it every step would
// defeat caching where shapes keep changing).
TEST(StepProfile, TheFirstProfiledStepOfAScopeReservesOnlyWhatItNeeds) {
  install();
  auto module = testing::make_deep_conv_stack(/*blocks=*/4, /*batch=*/8);
  module->train();
  constexpr std::int64_t kCached = std::int64_t{64} << 20;
  const auto fill_cache = [&] {
    device_memory().empty_cache();
    { at::empty({kCached}, at::kByte); }  // freed at once: cached
    ASSERT_GE(device_memory().stats().reserved_bytes.current, kCached);
  };
  for (int scope_number = 0; scope_number < 2; ++scope_number) {
    auto policy = std::make_shared<RecordingPolicy>(Action::kKeep);
    ActivationScope scope(policy);
    for (int step = 0; step < 2; ++step) {
      fill_cache();
      module->loss().backward();
    }
    ASSERT_EQ(policy->profiles.size(), 2u);
    EXPECT_TRUE(policy->profiles[0].detailed);
    EXPECT_GT(policy->profiles[0].reserved_peak_bytes, 0);
    EXPECT_LT(policy->profiles[0].reserved_peak_bytes, kCached)
        << "scope " << scope_number << ": the cached 64 MiB counted as the first step's";
    EXPECT_TRUE(policy->profiles[1].detailed);
    EXPECT_GE(policy->profiles[1].reserved_peak_bytes, kCached)
        << "scope " << scope_number << ": the second profiled step emptied the cache too";
  }
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

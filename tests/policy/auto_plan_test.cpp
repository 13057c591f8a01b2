// The auto policy's planner on synthetic profiles: nothing out when the budget holds keep's peak,
// the cheapest seconds per byte first, re-simulation after each choice, what cannot be freed not
// counted, and the minimum it reports.
#include <gtest/gtest.h>

#include "policy/auto_policy.h"

namespace actmem {
namespace {

constexpr std::int64_t kMiB = 1 << 20;

// A profile built event by event: packs raise the level by their bytes, unpacks lower it.
class ProfileBuilder {
 public:
  explicit ProfileBuilder(std::int64_t base) : level_(base) { profile_.copy_bytes_per_second = 1e9; }

  // A segment saving `tensors` tensors of `mib` MiB each, its forward taking `forward_ms`.
  ProfileBuilder& segment(const std::string& name, int tensors, std::int64_t mib, double forward_ms) {
    for (int i = 0; i < tensors; ++i) pack(name, mib * kMiB);
    profile_.segments.push_back({name, static_cast<std::int64_t>(forward_ms * 1e6)});
    return *this;
  }
  ProfileBuilder& pack(const std::string& segment, std::int64_t bytes, bool freeable = true) {
    ProfiledTensor t;
    t.order = static_cast<std::int64_t>(profile_.tensors.size());
    t.bytes = bytes;
    t.segment = segment;
    t.storage = static_cast<std::uint64_t>(t.order + 1);
    t.freeable = freeable;
    level_ += bytes;
    t.pack_event = event();
    profile_.tensors.push_back(t);
    return *this;
  }
  // Backward: unpacks in reverse order.
  StepProfile backward() {
    for (auto it = profile_.tensors.rbegin(); it != profile_.tensors.rend(); ++it) {
      it->unpack_event = event();
      level_ -= it->bytes;
    }
    std::int64_t peak = 0;
    for (std::int64_t l : profile_.levels) peak = std::max(peak, l);
    profile_.reserved_peak_bytes = peak;
    return profile_;
  }

 private:
  std::int64_t event() {
    profile_.levels.push_back(level_);
    profile_.event_ns.push_back(static_cast<std::int64_t>(profile_.levels.size()) * 1000);
    return static_cast<std::int64_t>(profile_.levels.size()) - 1;
  }
  StepProfile profile_;
  std::int64_t level_;
};

AutoOptions options() {
  AutoOptions o;
  o.offload_min_bytes = 64 * 1024;
  o.margin = 0;
  return o;
}

TEST(AutoPlan, KeepsEverythingWhenTheBudgetHoldsKeepsPeak) {
  const StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 5).segment("b", 2, 10, 5).backward();
  const Plan plan = make_plan(profile, 50 * kMiB, options());
  EXPECT_EQ(plan.keep_peak_bytes, 50 * kMiB);
  EXPECT_EQ(plan.planned_peak_bytes, 50 * kMiB);
  EXPECT_EQ(plan.added_seconds, 0);
  for (const PlanItem& item : plan.items) EXPECT_EQ(item.action, Action::kKeep) << item.segment;
}

TEST(AutoPlan, TakesTheCheapestSecondsPerByteFirstAndStopsUnderTheTarget) {
  // Offloading costs 2 x bytes / (1 GB/s): 20 MiB -> ~42 ms. Segment a recomputes in 1 ms (cheap),
  // b in 100 ms (dearer than its offload).
  const StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 1).segment("b", 2, 10, 100).backward();
  const Plan one = make_plan(profile, 30 * kMiB, options());
  EXPECT_EQ(one.action_for("a", 0), Action::kRecompute);
  EXPECT_EQ(one.action_for("b", 2), Action::kKeep) << "one choice was enough";
  EXPECT_EQ(one.planned_peak_bytes, 30 * kMiB);
  EXPECT_TRUE(one.feasible);
  // Under 10 MiB: after a, the peak is where backward reaches b; b goes out too (offloading it is
  // cheaper than recomputing it), and then the peak is where each segment is back for its own
  // backward, which no plan can lower: 30 MiB, over the target.
  const Plan both = make_plan(profile, 10 * kMiB, options());
  EXPECT_EQ(both.action_for("a", 0), Action::kRecompute);
  EXPECT_EQ(both.action_for("b", 2), Action::kOffload);
  EXPECT_EQ(both.planned_peak_bytes, 30 * kMiB);
  EXPECT_EQ(both.minimum_bytes, 30 * kMiB);
  EXPECT_FALSE(both.feasible);
  EXPECT_NEAR(both.added_seconds, 0.001 + 2.0 * 20 * kMiB / 1e9, 1e-9);
}

TEST(AutoPlan, CountsOnlyWhatCanBeFreedAndReportsTheMinimum) {
  // Segment a's tensors are held elsewhere too (not freeable): choosing it frees nothing.
  const StepProfile profile = ProfileBuilder(10 * kMiB)
                                  .pack("a", 20 * kMiB, /*freeable=*/false)
                                  .segment("b", 1, 10, 1)
                                  .backward();
  const Plan plan = make_plan(profile, 20 * kMiB, options());
  EXPECT_EQ(plan.action_for("a", 0), Action::kKeep);
  EXPECT_EQ(plan.action_for("b", 1), Action::kRecompute);
  EXPECT_EQ(plan.minimum_bytes, 40 * kMiB) << "the base and a stay, and b is back for its backward";
  EXPECT_FALSE(plan.feasible);
}

TEST(AutoPlan, SmallTensorsOutsideSegmentsAreNotCandidates) {
  const StepProfile profile = ProfileBuilder(0).pack("", 1024).pack("", 8 * kMiB).backward();
  const Plan plan = make_plan(profile, 1 * kMiB, options());
  ASSERT_EQ(plan.items.size(), 1u) << "the 1 KiB tensor is below the offload minimum";
  EXPECT_EQ(plan.items[0].order, 1);
  EXPECT_EQ(plan.items[0].action, Action::kOffload);
}

TEST(AutoPlan, ABudgetUnderKeepsReservedPeakLowersTheTargetByTheExcess) {
  StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 1).segment("b", 2, 10, 1).backward();
  profile.reserved_peak_bytes = 60 * kMiB;  // 10 MiB of segment slack above the 50 MiB peak
  const Plan plan = make_plan(profile, 55 * kMiB, options());
  EXPECT_EQ(plan.target_bytes, 45 * kMiB);
  EXPECT_LE(plan.planned_peak_bytes, 45 * kMiB);
}

}  // namespace
}  // namespace actmem

// The auto policy's planner on synthetic profiles: nothing out when the budget holds keep's peak,
// the cheapest seconds per byte first, re-simulation after each choice, what cannot be freed not
// counted, and the minimum it reports.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "policy/auto_policy.h"

namespace actmem {
namespace {

constexpr std::int64_t kMiB = 1 << 20;

// A profile built event by event: packs raise the level by their bytes, unpacks lower it.
class ProfileBuilder {
 public:
  explicit ProfileBuilder(std::int64_t base) : level_(base) {
    profile_.copy_bytes_per_second = 1e9;
  }

  // A segment saving `tensors` tensors of `mib` MiB each, its forward taking `forward_ms`.
  ProfileBuilder& segment(const std::string& name, int tensors, std::int64_t mib,
                          double forward_ms) {
    for (int i = 0; i < tensors; ++i) pack(name, mib * kMiB);
    profile_.segments.push_back({name, static_cast<std::int64_t>(forward_ms * 1e6), "", {}, false});
    end_forward();
    return *this;
  }
  // A segment whose first saved tensor is its input of `input_mib` MiB, which `producer` returned
  // (a link; none when empty), then `tensors` tensors of `mib` MiB.
  ProfileBuilder& linked(const std::string& name, const std::string& producer,
                         std::int64_t input_mib, int tensors, std::int64_t mib, double forward_ms) {
    pack(name, input_mib * kMiB);
    profile_.tensors.back().segment_input = true;
    ProfiledSegment segment{name, static_cast<std::int64_t>(forward_ms * 1e6), producer, {}, false};
    if (!producer.empty()) segment.link_storages.push_back(profile_.tensors.back().storage);
    for (int i = 0; i < tensors; ++i) pack(name, mib * kMiB);
    profile_.segments.push_back(segment);
    end_forward();
    return *this;
  }
  ProfileBuilder& pack(const std::string& segment, std::int64_t bytes, bool freeable = true) {
    ProfiledTensor t;
    t.order = static_cast<std::int64_t>(profile_.tensors.size());
    t.bytes = bytes;
    t.segment = segment;
    t.storage = static_cast<std::uint64_t>(t.order + 1);
    t.freeable = freeable;
    t.action = sent_out_                        ? Action::kOffload
               : recomputed_ && !segment.empty() ? Action::kRecompute
                                                 : Action::kKeep;
    if (!sent_out_) level_ += bytes;  // sent out at pack: gone from the device at once
    if (recomputed_ && !segment.empty()) held_ += bytes;
    t.pack_event = event();
    profile_.tensors.push_back(t);
    return *this;
  }
  // What follows is offloaded at pack, as a profiled step under a budget does.
  ProfileBuilder& sent_out() {
    sent_out_ = true;
    return *this;
  }
  // What follows in segments is recomputed, as a profiled step under a budget without offload
  // does: held until its segment's forward ends, gone from the device from the next event.
  ProfileBuilder& recomputed() {
    recomputed_ = true;
    return *this;
  }
  // Backward: unpacks in reverse order (a tensor sent out is back on the device when unpacked).
  StepProfile backward() {
    for (auto it = profile_.tensors.rbegin(); it != profile_.tensors.rend(); ++it) {
      if (it->action != Action::kKeep) level_ += it->bytes;
      it->unpack_event = event();
      level_ -= it->bytes;
    }
    std::int64_t peak = 0;
    for (std::int64_t l : profile_.levels) peak = std::max(peak, l);
    profile_.reserved_peak_bytes = peak;
    return profile_;
  }

 private:
  void end_forward() {
    profile_.segments.back().end_event = static_cast<std::int64_t>(profile_.levels.size());
    level_ -= held_;
    held_ = 0;
  }
  std::int64_t event() {
    profile_.levels.push_back(level_);
    profile_.event_ns.push_back(static_cast<std::int64_t>(profile_.levels.size()) * 1000);
    return static_cast<std::int64_t>(profile_.levels.size()) - 1;
  }
  StepProfile profile_;
  std::int64_t level_;
  bool sent_out_ = false;
  bool recomputed_ = false;
  std::int64_t held_ = 0;  // recomputed bytes of the segment whose forward runs
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
  // Under 10 MiB: after a, the peak is at the end of a's own forward, which holds what a saved
  // until it returns (and where each segment is back for its own backward): no plan lowers it, so
  // the plan stops there, 30 MiB, over the target, without paying for b.
  const Plan both = make_plan(profile, 10 * kMiB, options());
  EXPECT_EQ(both.action_for("a", 0), Action::kRecompute);
  EXPECT_EQ(both.action_for("b", 2), Action::kKeep);
  EXPECT_EQ(both.planned_peak_bytes, 30 * kMiB);
  EXPECT_EQ(both.minimum_bytes, 30 * kMiB);
  EXPECT_FALSE(both.feasible);
  EXPECT_NEAR(both.added_seconds, 0.001, 1e-9);
}

TEST(AutoPlan, CountsOnlyWhatCanBeFreedAndReportsTheMinimum) {
  // Segment a's tensors are held elsewhere too (not freeable): choosing it frees nothing.
  const StepProfile profile = ProfileBuilder(10 * kMiB)
                                  .pack("a", 20 * kMiB, /*freeable=*/false)
                                  .segment("b", 1, 10, 1)
                                  .backward();
  const Plan plan = make_plan(profile, 20 * kMiB, options());
  EXPECT_EQ(plan.action_for("a", 0), Action::kKeep);
  // The peak is b's own forward, which holds its tensor until it returns if recomputed: b is
  // offloaded, dearer but the only choice that frees anything there.
  EXPECT_EQ(plan.action_for("b", 1), Action::kOffload);
  EXPECT_EQ(plan.minimum_bytes, 40 * kMiB) << "the base and a stay, and b is back for its backward";
  EXPECT_FALSE(plan.feasible);
}

// 16 segments in a row, each saving its 1 MiB input (the last one's output) and 2 MiB of its own:
// keep holds 48 MiB at the end of the forward. Recomputing every segment holds the 16 inputs and
// one segment's tensors: 18 MiB, the least without chains. Chains go lower: with every k-th input
// kept, 16/k inputs through the forward, then a chain's k segments back at once.
StepProfile sixteen_linked_segments() {
  ProfileBuilder builder(0);
  for (int i = 0; i < 16; ++i) {
    builder.linked("s" + std::to_string(i), i == 0 ? "" : "s" + std::to_string(i - 1), 1, 2, 1,
                   1.0);
  }
  return builder.backward();
}

TEST(AutoPlan, ChainsGoBelowWhatPerSegmentRecomputeHolds) {
  const StepProfile profile = sixteen_linked_segments();
  AutoOptions no_offload = options();  // (else the last segment, whose own forward holds its
  no_offload.host_capacity = 0;        // tensors at the peak, would be offloaded)
  const Plan roomy = make_plan(profile, 20 * kMiB, no_offload);
  EXPECT_TRUE(roomy.feasible);
  for (const PlanItem& item : roomy.items) {
    EXPECT_FALSE(item.drops_input) << item.segment << ": recompute alone fits, no chain needed";
  }
  const Plan tight = make_plan(profile, 14 * kMiB, no_offload);
  EXPECT_TRUE(tight.feasible) << tight.table();
  EXPECT_LE(tight.planned_peak_bytes, 14 * kMiB);
  EXPECT_LT(tight.minimum_bytes, 18 * kMiB);
  int chained = 0;
  for (const PlanItem& item : tight.items) {
    // Recomputing the last segment would free nothing: its forward holds its tensors until it
    // returns, and backward begins with them.
    EXPECT_EQ(item.action, item.segment == "s15" ? Action::kKeep : Action::kRecompute)
        << item.segment;
    chained += item.drops_input;
  }
  EXPECT_GT(chained, 0);
  EXPECT_LT(chained, 15) << "one chain of all 16 brings 47 MiB back at once";
  EXPECT_FALSE(tight.items.front().drops_input) << "the first segment has no link";
  EXPECT_NE(tight.table().find("chain"), std::string::npos) << tight.table();
}

// The profiled step recomputed every segment and dropped every other link (as a shape profiled
// after ChainSpacing learned k = 2 would) and fitted; under a budget no plan reaches, the plan
// repeats it rather than something the simulation prefers but nothing has run.
TEST(AutoPlan, WhenNoPlanReachesTheTargetItRepeatsTheProfiledChains) {
  StepProfile profile = sixteen_linked_segments();
  for (ProfiledTensor& t : profile.tensors) t.action = Action::kRecompute;
  for (std::size_t s = 1; s < profile.segments.size(); ++s) {
    profile.segments[s].dropped_link = s % 2 == 1;
  }
  const Plan plan = make_plan(profile, 1 * kMiB, options());
  EXPECT_TRUE(plan.as_profiled);
  ASSERT_EQ(plan.items.size(), 16u);
  for (std::size_t s = 0; s < 16; ++s) {
    EXPECT_EQ(plan.items[s].action, Action::kRecompute) << s;
    EXPECT_EQ(plan.items[s].drops_input, s % 2 == 1) << s;
  }
}

// A link frees its input only if nothing but its two segments saved it: here a tensor outside
// any segment saves each input too (kept: too small to offload), so no chain frees anything.
TEST(AutoPlan, ALinkSavedOutsideItsTwoSegmentsIsNotDropped) {
  StepProfile profile = sixteen_linked_segments();
  const std::size_t saved = profile.tensors.size();
  for (std::size_t i = 0; i < saved; ++i) {
    if (!profile.tensors[i].segment_input) continue;
    ProfiledTensor outside = profile.tensors[i];
    outside.segment = "";
    outside.bytes = 1024;  // a view, under the offload minimum
    outside.order = static_cast<std::int64_t>(profile.tensors.size());
    profile.tensors.push_back(outside);
  }
  const Plan plan = make_plan(profile, 14 * kMiB, options());
  for (const PlanItem& item : plan.items) EXPECT_FALSE(item.drops_input) << item.segment;
  EXPECT_EQ(plan.minimum_bytes, 18 * kMiB) << plan.table();
  EXPECT_FALSE(plan.feasible);
}

// Where copies run beside compute (CUDA's side stream), an offload costs only the copy time its
// window between pack and unpack does not hide; a synchronous copy costs all of it.
TEST(AutoPlan, OverlappingCopiesCostOnlyWhatTheirWindowDoesNotHide) {
  // a's 20 MiB take ~42 ms both ways at 1 GB/s; a is out from its first pack (event 0) to its
  // first unpack (event 6): with events 0.1 s apart, a 0.6 s window.
  StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 30).segment("b", 2, 10, 30).backward();
  for (std::int64_t& ns : profile.event_ns) ns *= 100000;  // events 0.1 s apart
  AutoOptions overlap = options();
  overlap.copies_overlap = true;
  const Plan hidden = make_plan(profile, 30 * kMiB, overlap);
  const Plan synchronous = make_plan(profile, 30 * kMiB, options());
  EXPECT_EQ(hidden.action_for("a", 0), Action::kOffload) << hidden.table();
  EXPECT_DOUBLE_EQ(hidden.added_seconds, 0) << "the copies hide behind 0.6 s of compute";
  EXPECT_EQ(synchronous.action_for("a", 0), Action::kRecompute) << "30 ms against 42 ms of copies";
  EXPECT_NEAR(synchronous.added_seconds, 0.030, 1e-9);
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

// A profiled step under a budget sends its tensors out at pack; the plan is made from keep's
// timeline all the same, rebuilt from when each freeable storage was sent out and came back.
TEST(AutoPlan, PlansFromKeepsTimelineWhenTheProfiledStepSentTensorsOut) {
  const auto build = [](bool sent_out) {
    ProfileBuilder builder(10 * kMiB);
    if (sent_out) builder.sent_out();
    return builder.segment("a", 2, 10, 1).segment("b", 2, 10, 100).pack("", 5 * kMiB).backward();
  };
  const StepProfile kept = build(false), sent = build(true);
  for (const std::int64_t budget : {100 * kMiB, 30 * kMiB}) {
    const Plan from_kept = make_plan(kept, budget, options());
    const Plan from_sent = make_plan(sent, budget, options());
    EXPECT_EQ(from_sent.keep_peak_bytes, 55 * kMiB);
    EXPECT_EQ(from_sent.keep_peak_bytes, from_kept.keep_peak_bytes);
    EXPECT_EQ(from_sent.planned_peak_bytes, from_kept.planned_peak_bytes) << budget;
    ASSERT_EQ(from_sent.items.size(), from_kept.items.size());
    for (std::size_t i = 0; i < from_sent.items.size(); ++i) {
      EXPECT_EQ(from_sent.items[i].action, from_kept.items[i].action) << budget << " item " << i;
    }
  }
  // Under 20 MiB no plan reaches the target: from the step that sent everything out (and fitted),
  // the plan is what that step did; from the one that kept everything, the greedy's best.
  const Plan from_kept = make_plan(kept, 20 * kMiB, options());
  const Plan from_sent = make_plan(sent, 20 * kMiB, options());
  EXPECT_FALSE(from_kept.as_profiled);
  EXPECT_TRUE(from_sent.as_profiled);
  for (const PlanItem& item : from_sent.items) {
    EXPECT_EQ(item.action, Action::kOffload) << item.segment << item.order;
  }
  EXPECT_NE(from_sent.table().find("as the profiled step did"), std::string::npos)
      << from_sent.table();
}

// A profiled step that recomputed its segments held what each saved until its forward ended: keep's
// timeline adds those bytes back from there, not from their packs, where the profile's levels
// already hold them.
TEST(AutoPlan, TensorsSavedForRecomputeCountFromTheEndOfTheirForward) {
  const auto build = [](bool recomputed) {
    ProfileBuilder builder(10 * kMiB);
    if (recomputed) builder.recomputed();
    return builder.segment("a", 2, 10, 1).segment("b", 2, 10, 1).pack("", 5 * kMiB).backward();
  };
  const Plan from_kept = make_plan(build(false), 100 * kMiB, options());
  const Plan from_recomputed = make_plan(build(true), 100 * kMiB, options());
  EXPECT_EQ(from_kept.keep_peak_bytes, 55 * kMiB);
  EXPECT_EQ(from_recomputed.keep_peak_bytes, 55 * kMiB);
}

// The ops between two events can allocate more than either event sees: where the profile has the
// allocator's peaks, the plan counts them.
TEST(AutoPlan, PlansAgainstThePeaksBetweenEvents) {
  StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 1).segment("b", 2, 10, 1).backward();
  profile.peaks = profile.levels;
  profile.peaks[3] += 8 * kMiB;  // b's second pack: 50 MiB, and a working set of 8 more until next
  profile.reserved_peak_bytes = 58 * kMiB;
  const Plan plan = make_plan(profile, 58 * kMiB, options());
  EXPECT_EQ(plan.keep_peak_bytes, 58 * kMiB);
  EXPECT_EQ(plan.target_bytes, 58 * kMiB) << "keep fits: no overhead above the 58 MiB peak";
  const Plan tighter = make_plan(profile, 50 * kMiB, options());
  EXPECT_LE(tighter.planned_peak_bytes, 50 * kMiB) << "the working set is planned for";
  EXPECT_NE(tighter.action_for("a", 0), Action::kKeep);
}

// What later steps teach a shape's plan: they start with more allocated (the optimizer's state,
// created after the profiled step), and the allocator's overhead under the plan is not the
// profiled step's.
TEST(AutoPlan, TheStepsStartAndTheMeasuredOverheadMoveTheTarget) {
  StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 1).segment("b", 2, 10, 1).backward();
  profile.reserved_peak_bytes = 60 * kMiB;  // 10 MiB over the 50 MiB peak
  PlanTuning tuning;
  tuning.reserve_overhead = 0;  // measured under a plan: none after all
  const Plan kept = make_plan(profile, 55 * kMiB, options(), tuning);
  EXPECT_EQ(kept.target_bytes, 50 * kMiB) << "keep's 50 MiB fit 55 without the overhead";
  EXPECT_EQ(kept.planned_peak_bytes, 50 * kMiB);
  tuning.base_shift = 10 * kMiB;
  const Plan shifted = make_plan(profile, 55 * kMiB, options(), tuning);
  EXPECT_EQ(shifted.keep_peak_bytes, 60 * kMiB);
  EXPECT_EQ(shifted.target_bytes, 55 * kMiB);
  EXPECT_LE(shifted.planned_peak_bytes, 55 * kMiB);
  tuning.extra_margin = 0.1;
  EXPECT_EQ(make_plan(profile, 55 * kMiB, options(), tuning).target_bytes,
            55 * kMiB - static_cast<std::int64_t>(0.1 * 55 * kMiB));
}

// Offloading is cheaper than recomputing every segment here, but the host pool holds one
// segment's tensors at a time: the plan offloads what the pool holds and recomputes the rest,
// instead of counting on offloads the pool would refuse (those tensors would stay on the device).
TEST(AutoPlan, OffloadsNoMoreAtOnceThanTheHostPoolHolds) {
  const StepProfile profile = ProfileBuilder(10 * kMiB)
                                  .segment("a", 2, 10, 100)
                                  .segment("b", 2, 10, 100)
                                  .segment("c", 2, 10, 100)
                                  .backward();
  const Plan unlimited = make_plan(profile, 40 * kMiB, options());
  int offloaded = 0;
  for (const PlanItem& item : unlimited.items) offloaded += item.action == Action::kOffload;
  ASSERT_EQ(offloaded, 2) << "without a limit, two segments go to the host";
  EXPECT_EQ(unlimited.host_bytes, 40 * kMiB);
  EXPECT_FALSE(unlimited.host_room_bytes.has_value());

  AutoOptions small_pool = options();
  small_pool.host_capacity = 25 * kMiB;
  const Plan plan = make_plan(profile, 40 * kMiB, small_pool);
  offloaded = 0;
  int recomputed = 0;
  for (const PlanItem& item : plan.items) {
    offloaded += item.action == Action::kOffload;
    recomputed += item.action == Action::kRecompute;
  }
  EXPECT_EQ(offloaded, 1);
  EXPECT_EQ(recomputed, 1);
  EXPECT_EQ(plan.host_bytes, 20 * kMiB);
  EXPECT_EQ(plan.host_room_bytes, 25 * kMiB);
  EXPECT_EQ(plan.planned_peak_bytes, unlimited.planned_peak_bytes);
  EXPECT_TRUE(plan.feasible);
}

// Two saved tensors over one storage: offloading frees the storage once, but the hooks send a copy
// of each to the host pool. The pool's room counts both.
TEST(AutoPlan, ATensorSavedTwiceTakesTwoCopiesInTheHostPool) {
  StepProfile profile = ProfileBuilder(10 * kMiB).segment("a", 2, 10, 100).backward();
  profile.tensors[1].storage = profile.tensors[0].storage;
  AutoOptions pool = options();
  pool.host_capacity = 15 * kMiB;  // one copy's room, not two
  const Plan plan = make_plan(profile, 15 * kMiB, pool);
  EXPECT_NE(plan.action_for("a", 0), Action::kOffload) << plan.table();
  EXPECT_EQ(plan.host_bytes, 0);
  AutoOptions roomy = options();
  roomy.host_capacity = 25 * kMiB;
  const Plan both = make_plan(profile, 15 * kMiB, roomy);
  EXPECT_EQ(both.action_for("a", 0), Action::kOffload) << both.table();
  EXPECT_EQ(both.host_bytes, 20 * kMiB);
}

// A profiled step whose offloads the pool refused (its overhead, say, made it hold less than its
// budget): the plan assumes no more room than that step's offloads held at once.
TEST(AutoPlan, APoolThatRefusedHoldsWhatTheProfiledStepOffloaded) {
  StepProfile profile = ProfileBuilder(10 * kMiB)
                            .sent_out()
                            .segment("a", 2, 10, 100)
                            .segment("b", 2, 10, 100)
                            .segment("c", 2, 10, 100)
                            .backward();
  for (std::size_t i = 2; i < profile.tensors.size(); ++i) {
    profile.tensors[i].action = Action::kRecompute;  // after the refusal
  }
  profile.offload_refusals = 1;
  AutoOptions pool = options();
  pool.host_capacity = 64 * kMiB;
  const Plan plan = make_plan(profile, 40 * kMiB, pool);
  EXPECT_EQ(plan.host_room_bytes, 20 * kMiB);
  EXPECT_LE(plan.host_bytes, 20 * kMiB);
}

// The policy itself over synthetic steps: each step's packs go through decide(), then its profile
// through end_step(), as the hooks do.
class AutoPolicySteps {
 public:
  explicit AutoPolicySteps(std::int64_t budget) : budget_(budget) {
    AutoOptions o = options();
    o.budget = [this]() -> std::optional<std::size_t> { return static_cast<std::size_t>(budget_); };
    policy_ = std::make_unique<AutoPolicy>(o);
  }
  // Runs one step shaped like `profile`, starting at `start` allocated bytes, as the hooks do: the
  // whole profile only if the policy asks for it after the first decision, else a summary.
  // Returns the actions; `detailed` says which it was.
  std::vector<Action> step(const StepProfile& profile, std::int64_t start,
                           bool* detailed = nullptr) {
    std::vector<Action> actions;
    bool whole = true;
    for (const ProfiledTensor& t : profile.tensors) {
      SavedTensorInfo info;
      info.bytes = t.bytes;
      info.segment = t.segment;
      info.order = t.order;
      info.device_bytes = start;
      actions.push_back(policy_->decide(info));
      if (t.order == 0) whole = policy_->profiles_step();
    }
    StepProfile summary;
    summary.detailed = false;
    summary.step_ns = profile.step_ns;
    summary.reserved_peak_bytes = profile.reserved_peak_bytes;
    summary.evictions = profile.evictions;
    summary.offload_refusals = profile.offload_refusals;
    policy_->end_step(whole ? profile : summary);
    if (detailed != nullptr) *detailed = whole;
    return actions;
  }
  AutoPolicy& policy() { return *policy_; }

 private:
  std::int64_t budget_;
  std::unique_ptr<AutoPolicy> policy_;
};

StepProfile two_segments(std::int64_t reserved) {
  StepProfile p =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 1).segment("b", 2, 10, 1).backward();
  p.reserved_peak_bytes = reserved;
  return p;
}

int sent_out(const std::vector<Action>& actions) {
  return static_cast<int>(
      std::count_if(actions.begin(), actions.end(), [](Action a) { return a != Action::kKeep; }));
}

// Two shapes with the same first pack, taking turns: the first step of the second looked like the
// first shape's at its first pack and got a summary; from then on steps starting so are profiled
// whole, and the second shape gets its plan.
TEST(AutoPolicyFeedback, AShapeThatStartsLikeAnotherIsStillProfiled) {
  AutoPolicySteps steps(1024 * kMiB);
  const StepProfile a = two_segments(75 * kMiB);
  const StepProfile b =
      ProfileBuilder(10 * kMiB).segment("a", 1, 10, 1).segment("c", 3, 5, 1).backward();
  ASSERT_EQ(a.tensors[0].bytes, b.tensors[0].bytes);
  ASSERT_NE(a.signature(), b.signature());
  bool detailed = false;
  steps.step(a, 10 * kMiB, &detailed);
  EXPECT_TRUE(detailed) << "a new shape";
  steps.step(a, 10 * kMiB, &detailed);
  EXPECT_FALSE(detailed) << "a's plan is followed";
  const int plans = steps.policy().plans_made();
  steps.step(b, 10 * kMiB, &detailed);
  EXPECT_FALSE(detailed) << "at its first pack b looked like a";
  steps.step(a, 10 * kMiB);
  steps.step(b, 10 * kMiB, &detailed);
  EXPECT_TRUE(detailed) << "b's first pack is known to be ambiguous now";
  EXPECT_GT(steps.policy().plans_made(), plans) << "b got its plan";
}

TEST(AutoPolicyFeedback, ProfilesUnderABudgetBySendingOutThenFollowsAndRefinesItsPlan) {
  AutoPolicySteps steps(55 * kMiB);
  // The profiled step: everything offered to the hooks for offload.
  const std::vector<Action> profiled = steps.step(two_segments(75 * kMiB), 10 * kMiB);
  EXPECT_EQ(sent_out(profiled), 4);
  ASSERT_EQ(steps.policy().plans_made(), 1);
  // Its overhead (75 - 50 MiB) leaves the plan little room: it sends tensors out.
  const std::vector<Action> planned = steps.step(two_segments(35 * kMiB), 10 * kMiB);
  EXPECT_GT(sent_out(planned), 0);
  // That step left 20 MiB of room under the budget: the next plan assumes 10 MiB less overhead.
  EXPECT_EQ(steps.policy().plans_made(), 2);
  // A step that starts 20 MiB higher than the profiled one is planned again before it goes on.
  steps.step(two_segments(54 * kMiB), 30 * kMiB);
  EXPECT_GE(steps.policy().plans_made(), 3);
}

TEST(AutoPolicyFeedback, KeepsEverythingWithoutABudgetAndNeverPlansAgain) {
  AutoOptions o = options();
  AutoPolicy policy(o);  // no budget
  const StepProfile profile = two_segments(60 * kMiB);
  for (int i = 0; i < 3; ++i) {
    for (const ProfiledTensor& t : profile.tensors) {
      SavedTensorInfo info;
      info.bytes = t.bytes;
      info.segment = t.segment;
      info.order = t.order;
      EXPECT_EQ(policy.decide(info), Action::kKeep);
    }
    policy.end_step(profile);
  }
  EXPECT_EQ(policy.plans_made(), 1);
}

TEST(AutoPolicyFeedback, AStepThatNeededEvictionsPlansLower) {
  AutoPolicySteps steps(55 * kMiB);
  steps.step(two_segments(60 * kMiB), 10 * kMiB);
  StepProfile evicted = two_segments(55 * kMiB);
  evicted.evictions = 3;
  const std::vector<Action> before = steps.step(evicted, 10 * kMiB);
  EXPECT_EQ(steps.policy().plans_made(), 2);
  const std::vector<Action> after = steps.step(two_segments(55 * kMiB), 10 * kMiB);
  EXPECT_GE(sent_out(after), sent_out(before)) << "a higher margin sends out no less";
}

// Under a budget the profiled step offloads what it can; once the host pool has refused one of its
// tensors, it recomputes the rest, as it would without a pool (a kept tensor would have to fit the
// budget). The next step starts offloading again.
TEST(AutoPolicyFeedback, AProfiledStepRecomputesOnceTheHostPoolRefuses) {
  AutoPolicySteps steps(55 * kMiB);
  const StepProfile profile = two_segments(75 * kMiB);
  auto decide = [&](std::size_t i) {
    SavedTensorInfo info;
    info.bytes = profile.tensors[i].bytes;
    info.segment = profile.tensors[i].segment;
    info.order = profile.tensors[i].order;
    return steps.policy().decide(info);
  };
  EXPECT_EQ(decide(0), Action::kOffload);
  EXPECT_EQ(decide(1), Action::kOffload);
  steps.policy().offload_refused();
  EXPECT_EQ(decide(2), Action::kRecompute);
  EXPECT_EQ(decide(3), Action::kRecompute);
  EXPECT_EQ(decide(0), Action::kOffload) << "a new step";
}

// A planned step whose offloads the pool refused plans again, with less of the pool: where the
// plan offloaded a segment the pool did not take whole, it recomputes that segment.
TEST(AutoPolicyFeedback, AStepWhoseOffloadsWereRefusedPlansWithLessOfThePool) {
  AutoPolicySteps steps(55 * kMiB);
  // Recomputing costs more than offloading here: the plan offloads what it sends out.
  StepProfile profile =
      ProfileBuilder(10 * kMiB).segment("a", 2, 10, 100).segment("b", 2, 10, 100).backward();
  profile.reserved_peak_bytes = 75 * kMiB;  // 25 MiB of overhead: the plan's target is 30 MiB
  steps.step(profile, 10 * kMiB);
  ASSERT_EQ(steps.policy().plans_made(), 1);
  StepProfile refused = profile;
  refused.offload_refusals = 2;
  const std::vector<Action> offloading = steps.step(refused, 10 * kMiB);
  ASSERT_EQ(std::count(offloading.begin(), offloading.end(), Action::kOffload), 2);
  ASSERT_EQ(std::count(offloading.begin(), offloading.end(), Action::kRecompute), 0);
  EXPECT_EQ(steps.policy().plans_made(), 2) << "planned again";
  const std::vector<Action> after = steps.step(profile, 10 * kMiB);
  EXPECT_EQ(std::count(after.begin(), after.end(), Action::kOffload), 0);
  EXPECT_EQ(std::count(after.begin(), after.end(), Action::kRecompute), 2);
}

}  // namespace
}  // namespace actmem

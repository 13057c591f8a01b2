// The auto policy: the user states a budget (ACTMEM_BUDGET) and nothing else.
//
// A budget too small for the step fails when nothing is left to evict, with the hooks'
// BudgetTooSmallError (hooks/activation_scope.h) naming the budget the step needs at that point.
//
// The first step of each shape is profiled with every tensor kept (the hooks' pressure handler
// evicts kept tensors to host memory if the budget is crossed meanwhile). From that profile a
// plan chooses, per segment, keep / offload / recompute, and per tensor outside segments keep or
// offload, so that the simulated peak stays under the budget at the least added time (see Note
// [Auto plan] in auto_policy.cpp). Later steps of the same shape follow the plan; a step whose
// packs no longer match the profile is profiled again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/policy.h"
#include "policy/policy_config.h"
#include "policy/step_profile.h"

namespace actmem {

// One choice of the plan: a segment (all its tensors) or one tensor outside segments.
struct PlanItem {
  std::string segment;      // "" for a tensor outside segments
  std::int64_t order = -1;  // the tensor's pack order, for items outside segments
  Action action = Action::kKeep;
  std::int64_t bytes = 0;   // device bytes it frees while it is out
  double cost_seconds = 0;  // added step time expected
};

struct Plan {
  std::vector<PlanItem> items;          // every candidate, with its chosen action
  std::int64_t keep_peak_bytes = 0;     // the profile's peak with everything kept
  std::int64_t planned_peak_bytes = 0;  // simulated, under the plan
  std::int64_t minimum_bytes = 0;       // simulated with everything that can go out, out
  std::int64_t target_bytes = 0;        // what the plan aimed under
  double added_seconds = 0;
  double profiled_step_seconds = 0;
  bool feasible = true;  // planned_peak_bytes <= target_bytes

  Action action_for(const std::string& segment, std::int64_t order) const;
  // The plan as a table: segment, bytes, action, expected cost, expected peak.
  std::string table() const;
};

struct AutoOptions {
  // The device budget, read when a plan is made; none means every tensor is kept.
  std::function<std::optional<std::size_t>()> budget;
  std::size_t offload_min_bytes = 64 * 1024;
  // The share of the budget a plan keeps free below its target when the budget is under keep's
  // reserved peak; each shape raises its own by 5 % of the budget each time its plan still needed
  // evictions.
  double margin = 0.02;
  // Whether copies overlap compute (a side stream on CUDA); on CPU they are synchronous.
  bool copies_overlap = false;
  LogLevel log = LogLevel::kOff;
  // Plans once, from the first profile, and applies that plan to every later step whatever its
  // shape. For tests of the pressure handler: a plan made for another shape is wrong on purpose.
  bool plan_once = false;
};

// Chooses the plan for `profile` under `budget` bytes: under keep's reserved peak, it also keeps
// options.margin of the budget free; it always keeps `extra_margin` of it free. Pure: same
// inputs, same plan.
Plan make_plan(const StepProfile& profile, std::int64_t budget, const AutoOptions& options,
               double extra_margin = 0);

class AutoPolicy final : public Policy {
 public:
  explicit AutoPolicy(AutoOptions options);

  const char* name() const override { return "auto"; }
  Action decide(const SavedTensorInfo& tensor) override;
  bool wants_profile() const override { return true; }
  bool evicts_under_pressure() const override { return true; }
  void end_step(const StepProfile& profile) override;

  int plans_made() const;

 private:
  struct Shape {
    StepProfile profile;  // the step profiled with every tensor kept
    std::optional<Plan> plan;
    std::vector<std::pair<std::string, std::int64_t>> packs;  // (segment, bytes) in order
    double extra_margin = 0;  // raised each time the plan still needed evictions
    // The plan's actions that are not keep, for decide's lookups.
    std::unordered_map<std::string, Action> segment_actions;
    std::unordered_map<std::int64_t, Action> tensor_actions;  // by pack order
  };

  void plan_shape(Shape& shape);  // mutex_ held

  AutoOptions options_;
  mutable std::mutex mutex_;
  std::map<std::string, Shape> shapes_;  // by StepProfile::signature()
  Shape* current_ = nullptr;             // the shape of the step in progress
  bool diverged_ = false;                // this step's packs stopped matching the plan's profile
  std::string first_segment_;            // the step in progress's first pack
  std::int64_t first_bytes_ = 0;
  int plans_made_ = 0;
};

}  // namespace actmem

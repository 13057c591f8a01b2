// The auto policy: the user states a budget (ACTMEM_BUDGET) and nothing else.
//
// A budget too small for the step fails when nothing is left to evict, with the hooks'
// BudgetTooSmallError (hooks/out_of_memory.h) naming the budget the step needs at that point.
//
// The first step of each shape is profiled: with every tensor kept when no budget is set, and
// under a budget with every tensor that can go out offloaded (recomputed, with chains, when
// nothing can be offloaded), so that the step fits before anything is known of it (the hooks'
// pressure handler evicts kept tensors if the budget is still crossed). From that profile, with
// keep's timeline reconstructed, a plan chooses, per segment, keep / offload / recompute (and, for
// recomputed segments linked to the one before, whether to drop that input for a recompute chain),
// and per tensor outside segments keep or offload, so that the simulated peak stays under the
// budget at the least added time (see Note [Auto plan] in auto_policy.cpp). Later steps of the same
// shape follow the plan; a step whose packs no longer match the profile is profiled again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/chain_spacing.h"
#include "policy/policy.h"
#include "policy/policy_config.h"
#include "policy/step_profile.h"

namespace actmem {

// One choice of the plan: a segment (all its tensors) or one tensor outside segments.
struct PlanItem {
  std::string segment;      // "" for a tensor outside segments
  std::int64_t order = -1;  // the tensor's pack order, for items outside segments
  Action action = Action::kKeep;
  std::int64_t bytes = 0;    // device bytes it frees while it is out
  double cost_seconds = 0;   // added step time expected
  bool drops_input = false;  // a recomputed segment that drops its linked inputs (a chain)
};

struct Plan {
  std::vector<PlanItem> items;          // every candidate, with its chosen action
  std::int64_t keep_peak_bytes = 0;     // the profile's peak with everything kept
  std::int64_t planned_peak_bytes = 0;  // simulated, under the plan
  std::int64_t minimum_bytes = 0;       // simulated with everything that can go out, out
  std::int64_t target_bytes = 0;        // what the plan aimed under
  std::int64_t overhead_bytes = 0;      // reserved above the allocated peak, assumed
  std::int64_t host_bytes = 0;          // the most offloaded at once, simulated
  std::optional<std::int64_t> host_room_bytes;  // what the host pool was assumed to hold; none: no limit
  double added_seconds = 0;
  double profiled_step_seconds = 0;
  bool feasible = true;  // planned_peak_bytes <= target_bytes
  // No plan reached the target, or only the one sending out all it can: the plan is what the
  // profiled step did (it fitted).
  bool as_profiled = false;

  Action action_for(const std::string& segment, std::int64_t order) const;
  // The plan as a table: segment, bytes, action, expected cost, expected peak.
  std::string table() const;
};

struct AutoOptions {
  // The device budget, read when a plan is made; none means every tensor is kept.
  std::function<std::optional<std::size_t>()> budget;
  std::size_t offload_min_bytes = 64 * 1024;
  // The share of the budget a plan keeps free below its target when the budget is under keep's
  // reserved peak (see PlanTuning for what each shape adds).
  double margin = 0.02;
  // Whether copies overlap compute (a side stream on CUDA); on CPU they are synchronous.
  bool copies_overlap = false;
  // The host pool's budget, none for no limit. At 0 nothing can be offloaded: a step profiled
  // under a budget then recomputes every segment, with chains spaced as ChainSpacing says, and
  // plans never offload. Above, a profiled step offloads until the pool refuses a tensor and
  // recomputes from there, and a plan offloads no more at once than the pool holds.
  std::optional<std::size_t> host_capacity;
  bool can_offload() const { return !host_capacity || *host_capacity > 0; }
  LogLevel log = LogLevel::kOff;
  // Plans once, from the first profile, and applies that plan to every later step whatever its
  // shape. For tests of the pressure handler: a plan made for another shape is wrong on purpose.
  bool plan_once = false;
};

// What the steps run under a shape's plan taught it, for its next plan.
struct PlanTuning {
  // A share of the budget kept free on top of the rest: raised by 5 % each time a plan still
  // needed evictions.
  double extra_margin = 0;
  // The allocator's reserved bytes above the allocated peak seen at packs and unpacks (segment
  // slack, the working set inside ops, cached segments); none: the profiled step's. Lowered by
  // half the room a planned step left under the budget, a few times per shape.
  std::optional<std::int64_t> reserve_overhead;
  int overhead_updates = 0;
  // Device bytes allocated at the steps' start, less the profiled step's: the profiled step is
  // often a job's first, before the optimizer's state exists. Keep's timeline moves by as much.
  // Only raised (by more than 1 % of the budget at a time).
  std::int64_t base_shift = 0;
  // What the host pool holds at once, as planned steps found it: a step whose offloads the pool
  // refused lowers it to three quarters of what its plan held there. None: the pool's budget.
  std::optional<std::int64_t> host_room;
};

// Chooses the plan for `profile` under `budget` bytes. Room = the budget less the allocator's
// overhead and tuning.extra_margin of the budget; the target is keep's peak when that fits the
// room (everything kept), else the room less options.margin of the budget. Pure: same inputs,
// same plan.
Plan make_plan(const StepProfile& profile, std::int64_t budget, const AutoOptions& options,
               const PlanTuning& tuning = {});

class AutoPolicy final : public Policy {
 public:
  explicit AutoPolicy(AutoOptions options);

  const char* name() const override { return "auto"; }
  Action decide(const SavedTensorInfo& tensor) override;
  bool wants_profile() const override { return true; }
  // Only steps that will be planned from: those of a shape without a plan (or whose last step
  // left its plan). Steps that follow a plan get a summary, which is all the feedback needs.
  bool profiles_step() const override;
  bool evicts_under_pressure() const override { return true; }
  bool drops_input(const SegmentLink& link) override;
  void end_step(const StepProfile& profile) override;
  void offload_refused() override;

  int plans_made() const;

 private:
  struct Shape {
    StepProfile profile;  // the profiled step
    std::optional<Plan> plan;
    std::vector<std::pair<std::string, std::int64_t>> packs;  // (segment, bytes) in order
    PlanTuning tuning;
    // The plan's actions that are not keep, for decide's lookups.
    std::unordered_map<std::string, Action> segment_actions;
    std::unordered_map<std::int64_t, Action> tensor_actions;  // by pack order
    std::set<std::string> chained;  // segments that drop their linked inputs
  };

  void plan_shape(Shape& shape);  // mutex_ held
  // Plans `shape` again when this step starts with more or less allocated than the plan assumed
  // (mutex_ held).
  void rebase(Shape& shape);
  // What a step without a plan does with its tensors (mutex_ held).
  Action profiling_action() const;
  std::optional<std::size_t> current_budget() const;  // options_.budget's answer, none without one

  AutoOptions options_;
  mutable std::mutex mutex_;
  ChainSpacing spacing_;  // the chains of steps profiled under a budget without offload
  std::map<std::string, Shape> shapes_;  // by StepProfile::signature()
  Shape* current_ = nullptr;             // the shape of the step in progress
  Shape* last_ = nullptr;                // the shape of the last step that ended
  bool diverged_ = false;                // this step's packs stopped matching the plan's profile
  bool in_step_ = false;                 // between a step's first pack and its end_step
  // First packs (segment, bytes) after which a step turned out to be of another shape than the
  // last step starting so: steps starting so are profiled whole (see profiles_step).
  std::set<std::pair<std::string, std::int64_t>> ambiguous_;
  bool profiling_under_budget_ = false;  // the step in progress started with a budget set
  bool host_refused_ = false;            // the host pool refused one of this step's offloads
  std::string first_segment_;            // the step in progress's first pack
  std::int64_t first_bytes_ = 0;
  std::int64_t first_level_ = 0;  // the device bytes allocated at the first pack
  int plans_made_ = 0;
};

}  // namespace actmem

// The rows of one model at one size, measured together: the unit the main job compares.
//
// Note [Interleaved rows]
// Times that come from rows run one after another favour whichever ran later (warm caches, a
// quieter machine) and penalise the first (oneDNN's primitive cache, first-touch memory): in one
// such run an LSTM `keep` step took 883 ms and the same work under `auto` 437 ms. So:
//   1. `keep` takes `warmup` steps and then one memory step (the allocator's cache emptied first,
//      so that its reserved bytes are its own): the baseline the budgets are derived from.
//   2. Every other row, its budget now known, does the same: `warmup` steps, one memory step. A
//      row that runs out of memory does not fit (with the least budget the error names).
//   3. All rows that fit then take turns (round_robin.h): one shared unmeasured round, then
//      `rounds` measured ones, the order rotating by one each round. Between its steps each run is
//      parked (training_run.h), so every step sees only its own bytes under its own budget.
// Every row has taken the same number of steps when its gradients are compared with keep's. Its
// time against keep's is the median of the per-round ratios (rows of a round run back to back). The
// peak is the largest over the memory step and the measured ones (each measured against its own
// start); reserved bytes come from the memory step, where nothing else was cached; bytes sent out
// are the most of any of those steps.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bench/compare/round_robin.h"
#include "bench/compare/training_run.h"
#include "models/model.h"

namespace actmem::bench {

// One row to measure: a policy, with its budget when it has one.
struct RowSpec {
  std::string policy;
  int budget_percent = 0;            // auto at P% of keep's room (see TargetComparison)
  bool at_max_batch_budget = false;  // auto at the max-batch budget
};

struct RowResult {
  RunSpec spec;                          // with its batch and budget filled in
  std::optional<DidNotFit> did_not_fit;  // set when a step ran out of memory within the budget
  bool fits() const { return !did_not_fit; }
  StepCost memory;                   // the memory step
  std::int64_t peak_bytes = 0;       // the most over the memory step and the measured ones
  std::int64_t offloaded_bytes = 0;  // the most of any of those steps
  std::int64_t recomputed_bytes = 0;
  std::int64_t copy_ns = 0;  // the offload pipeline's copies over the measured steps
  std::int64_t exposed_copy_ns = 0;
  TimeSpread time;  // of the measured steps
  // The median over the measured rounds of this row's step time over keep's in the same round:
  // paired, so that what drifts over a run (other tenants of the machine) cancels out.
  double time_vs_keep = 0;
  int measured_steps = 0;
  std::vector<std::vector<float>> grads;  // after the last step
  double grad_max_abs_diff_vs_keep = 0;
};

class TargetComparison {
 public:
  struct Options {
    c10::DeviceType device = c10::DeviceType::CPU;
    int warmup = 3;
    int rounds = 10;
    // The max-batch budget for auto's row; 0: what keep reserved.
    std::int64_t max_batch_budget_bytes = 0;
  };

  // `rows` must start with keep (the baseline).
  TargetComparison(std::string model, models::Size size, std::vector<RowSpec> rows,
                   Options options);

  // Measures every row (Note [Interleaved rows]); the second call returns the same. Writes a
  // progress line per phase to stderr. Errors other than out-of-memory propagate.
  const std::vector<RowResult>& results();

  // keep's allocated bytes at its step's start plus `percent` of what it reserved above them.
  static std::int64_t budget_at(const StepCost& keep, int percent);
  // What keep reserved, or the budget the options set.
  std::int64_t max_batch_budget();

 private:
  std::int64_t max_batch_budget_given(const StepCost& keep) const;
  RunSpec run_spec(const RowSpec& row) const;
  void warm_up_and_measure_memory(TrainingRun& run, RowResult& result);

  std::string model_;
  models::Size size_;
  std::vector<RowSpec> rows_;
  Options options_;
  std::optional<std::vector<RowResult>> results_;
  std::optional<StepCost> keep_memory_;
};

}  // namespace actmem::bench

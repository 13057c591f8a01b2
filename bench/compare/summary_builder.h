// Turns the main job's benchmark runs into report rows. A run is named
//   step/<model>/<size>/<policy>        a training step measured at the size's batch
//   max_batch/<model>/<size>/<policy>   the largest batch that fits a budget
// and carries its figures as counters (see kCounter* below). Both kinds for the same model, size
// and policy (and budget, for `auto`) land in one row.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "bench/report/summary.h"

namespace actmem::bench {

// Counter names, shared by the benchmarks that set them and the builder that reads them.
inline constexpr const char* kCounterBatch = "batch";
inline constexpr const char* kCounterBudget = "budget_bytes";
inline constexpr const char* kCounterPeak = "peak_bytes";
inline constexpr const char* kCounterReserved = "reserved_bytes";
inline constexpr const char* kCounterFits = "fits";  // 1 or 0
inline constexpr const char* kCounterLeastBudget = "least_budget_bytes";
inline constexpr const char* kCounterStepSeconds = "step_seconds";  // the median
inline constexpr const char* kCounterStepSecondsMin = "step_seconds_min";
inline constexpr const char* kCounterStepSecondsMax = "step_seconds_max";
inline constexpr const char* kCounterMeasuredSteps = "measured_steps";
inline constexpr const char* kCounterStepVsKeep = "step_vs_keep";  // paired, per round
inline constexpr const char* kCounterSamplesPerSecond = "samples_per_second";
inline constexpr const char* kCounterOffloaded = "offloaded_bytes";
inline constexpr const char* kCounterRecomputed = "recomputed_bytes";
inline constexpr const char* kCounterCopySeconds = "copy_seconds";  // per measured step
inline constexpr const char* kCounterCopyHidden = "copy_hidden";    // a share, 0 to 1
inline constexpr const char* kCounterGradDiff = "grad_max_abs_diff_vs_keep";
inline constexpr const char* kCounterMaxBatch = "max_batch";
inline constexpr const char* kCounterMaxBatchBudget = "max_batch_budget_bytes";

// "step/resnet/small/auto@50%" for (step, resnet, small, auto, 50); percent 0 means none.
std::string run_name(const std::string& kind, const std::string& model, const std::string& size,
                     const std::string& policy, int budget_percent = 0);

class SummaryBuilder {
 public:
  // Adds a run's figures to the row of the same model, size and policy label, or to a new row at
  // the end. Throws std::invalid_argument for a name that is not one of the forms above.
  void add_run(const std::string& name, const std::map<std::string, double>& counters);

  report::Summary& summary() { return summary_; }

 private:
  report::Summary summary_;
  std::map<std::string, std::size_t> row_of_label_;  // "<model>/<size>/<policy label>" -> row
};

}  // namespace actmem::bench

#include "bench/compare/target_comparison.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <stdexcept>

#include "hooks/out_of_memory.h"
#include "allocator/stats.h"
#include "models/catalogue.h"

namespace actmem::bench {

TargetComparison::TargetComparison(std::string model, models::Size size, std::vector<RowSpec> rows,
                                   Options options)
    : model_(std::move(model)), size_(size), rows_(std::move(rows)), options_(options) {
  if (rows_.empty() || rows_.front().policy != "keep" || rows_.front().budget_percent != 0 ||
      rows_.front().at_max_batch_budget) {
    throw std::invalid_argument("a comparison's rows start with keep, without a budget");
  }
}

std::int64_t TargetComparison::budget_at(const StepCost& keep, int percent) {
  return keep.start_bytes + (keep.reserved_bytes - keep.start_bytes) * percent / 100;
}

std::int64_t TargetComparison::max_batch_budget() {
  results();  // keep's memory step (results() throws when keep does not fit)
  return max_batch_budget_given(*keep_memory_);
}

std::int64_t TargetComparison::max_batch_budget_given(const StepCost& keep) const {
  return options_.max_batch_budget_bytes > 0 ? options_.max_batch_budget_bytes
                                             : keep.reserved_bytes;
}

RunSpec TargetComparison::run_spec(const RowSpec& row) const {
  RunSpec spec;
  spec.model = model_;
  spec.size = size_;
  spec.policy = row.policy;
  spec.device = options_.device;
  spec.batch = models::default_batch(model_, size_);
  if (row.budget_percent > 0) spec.budget_bytes = budget_at(*keep_memory_, row.budget_percent);
  if (row.at_max_batch_budget) spec.budget_bytes = max_batch_budget_given(*keep_memory_);
  return spec;
}

void TargetComparison::warm_up_and_measure_memory(TrainingRun& run, RowResult& result) {
  try {
    for (int i = 0; i < options_.warmup; ++i) run.step();
    result.memory = run.step(/*fresh_cache=*/true);
    result.peak_bytes = result.memory.peak_bytes;
    result.offloaded_bytes = result.memory.offloaded_bytes;
    result.recomputed_bytes = result.memory.recomputed_bytes;
  } catch (const OutOfMemoryError& error) {
    result.did_not_fit = DidNotFit::from(error);
  }
}

const std::vector<RowResult>& TargetComparison::results() {
  if (results_) return *results_;
  const std::string target = model_ + " (" + models::to_string(size_) + ")";
  std::vector<RowResult> results(rows_.size());
  std::vector<std::unique_ptr<TrainingRun>> runs(rows_.size());
  for (std::size_t i = 0; i < rows_.size(); ++i) {
    results[i].spec = run_spec(rows_[i]);
    const RunSpec& spec = results[i].spec;
    std::fprintf(
        stderr, "%s %s%s: %d warm-up steps and a memory step\n", target.c_str(),
        spec.policy.c_str(),
        spec.budget_bytes > 0 ? (" within " + alloc::format_bytes(spec.budget_bytes)).c_str() : "",
        options_.warmup);
    runs[i] = std::make_unique<TrainingRun>(spec);
    warm_up_and_measure_memory(*runs[i], results[i]);
    if (i == 0) {
      if (!results[0].fits()) {  // without a budget: the machine itself is out of memory
        throw std::runtime_error(target + " does not fit even under keep, without a budget: " +
                                 results[0].did_not_fit->message);
      }
      keep_memory_ = results[0].memory;
    }
  }

  std::vector<TrainingRun*> fitting;
  std::vector<std::size_t> index_of;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (!results[i].fits()) continue;
    fitting.push_back(runs[i].get());
    index_of.push_back(i);
  }
  std::fprintf(stderr, "%s: %zu rows take turns: a shared round, then %d measured\n",
               target.c_str(), fitting.size(), options_.rounds);
  const std::vector<TurnsTaken> turns = take_turns(fitting, /*warmup=*/1, options_.rounds);
  for (std::size_t k = 0; k < fitting.size(); ++k) {
    RowResult& result = results[index_of[k]];
    const TurnsTaken& taken = turns[k];
    if (taken.did_not_fit) {  // fitted once, not every time: it does not fit
      result.did_not_fit = taken.did_not_fit;
      continue;
    }
    for (const StepCost& step : taken.measured) {
      result.peak_bytes = std::max(result.peak_bytes, step.peak_bytes);
      result.offloaded_bytes = std::max(result.offloaded_bytes, step.offloaded_bytes);
      result.recomputed_bytes = std::max(result.recomputed_bytes, step.recomputed_bytes);
      result.copy_ns += step.copy_ns;
      result.exposed_copy_ns += step.exposed_copy_ns;
    }
    result.time = time_spread(taken.measured);
    result.measured_steps = static_cast<int>(taken.measured.size());
    result.grads = fitting[k]->gradients();
  }
  if (results[0].fits()) {
    const std::vector<StepCost>& keep = turns[0].measured;  // keep is the first of the fitting rows
    for (std::size_t k = 0; k < fitting.size(); ++k) {
      RowResult& result = results[index_of[k]];
      if (!result.fits()) continue;
      std::vector<double> ratios;
      for (std::size_t r = 0; r < turns[k].measured.size() && r < keep.size(); ++r) {
        ratios.push_back(turns[k].measured[r].seconds / keep[r].seconds);
      }
      result.time_vs_keep = spread_of(std::move(ratios)).median;
    }
  }
  for (RowResult& result : results) {
    if (result.fits() && results[0].fits()) {
      result.grad_max_abs_diff_vs_keep = max_abs_difference(result.grads, results[0].grads);
    }
  }
  results_ = std::move(results);
  return *results_;
}

}  // namespace actmem::bench

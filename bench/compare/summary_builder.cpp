#include "bench/compare/summary_builder.h"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace actmem::bench {
namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, separator);) parts.push_back(part);
  return parts;
}

double counter(const std::map<std::string, double>& counters, const char* name) {
  const auto it = counters.find(name);
  return it == counters.end() ? 0.0 : it->second;
}

std::int64_t integer(const std::map<std::string, double>& counters, const char* name) {
  return static_cast<std::int64_t>(counter(counters, name));
}

}  // namespace

std::string run_name(const std::string& kind, const std::string& model, const std::string& size,
                     const std::string& policy, int budget_percent) {
  std::string name = kind + "/" + model + "/" + size + "/" + policy;
  if (budget_percent > 0) name += "@" + std::to_string(budget_percent) + "%";
  return name;
}

void SummaryBuilder::add_run(const std::string& name,
                             const std::map<std::string, double>& counters) {
  const std::vector<std::string> parts = split(name, '/');
  if (parts.size() != 4 || (parts[0] != "step" && parts[0] != "max_batch")) {
    throw std::invalid_argument("not a main-job run name: '" + name +
                                "' (expected step/<model>/<size>/<policy> or max_batch/...)");
  }
  const std::string key = parts[1] + "/" + parts[2] + "/" + parts[3];
  auto [it, added] = row_of_label_.emplace(key, summary_.rows.size());
  if (added) {
    report::SummaryRow row;
    row.model = parts[1];
    row.size = parts[2];
    row.policy = parts[3].substr(0, parts[3].find('@'));  // the budget share is in budget_bytes
    summary_.rows.push_back(row);
  }
  report::SummaryRow& row = summary_.rows[it->second];
  if (parts[0] == "step") {
    row.budget_bytes = integer(counters, kCounterBudget);
    row.batch = integer(counters, kCounterBatch);
    row.fits = counters.count(kCounterFits) == 0 || counter(counters, kCounterFits) != 0;
    row.least_budget_bytes = integer(counters, kCounterLeastBudget);
    row.peak_bytes = integer(counters, kCounterPeak);
    row.reserved_bytes = integer(counters, kCounterReserved);
    row.step_seconds = counter(counters, kCounterStepSeconds);
    row.step_seconds_min = counter(counters, kCounterStepSecondsMin);
    row.step_seconds_max = counter(counters, kCounterStepSecondsMax);
    row.measured_steps = integer(counters, kCounterMeasuredSteps);
    row.step_vs_keep = counter(counters, kCounterStepVsKeep);
    row.samples_per_second = counter(counters, kCounterSamplesPerSecond);
    row.offloaded_bytes = integer(counters, kCounterOffloaded);
    row.recomputed_bytes = integer(counters, kCounterRecomputed);
    row.copy_seconds = counter(counters, kCounterCopySeconds);
    row.copy_hidden = counters.count(kCounterCopyHidden) ? counter(counters, kCounterCopyHidden) : 1;
    row.grad_max_abs_diff_vs_keep = counter(counters, kCounterGradDiff);
  } else {
    row.max_batch = integer(counters, kCounterMaxBatch);
    row.max_batch_budget_bytes = integer(counters, kCounterMaxBatchBudget);
  }
}

}  // namespace actmem::bench

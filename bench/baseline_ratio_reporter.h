// A console reporter that, after the usual table, prints each benchmark's time as a ratio of a
// baseline benchmark with the same arguments measured in the same run.
//
//   BaselineRatioReporter reporter({{"BM_CachedPair", "BM_MallocPair"}});
//   -> "BM_CachedPair/4096 vs BM_MallocPair/4096: 1.7x the time (35.2 ns vs 20.6 ns)"
#pragma once

#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace actmem::bench {

class BaselineRatioReporter : public benchmark::ConsoleReporter {
 public:
  // Each pair is (benchmark family, baseline family).
  explicit BaselineRatioReporter(std::vector<std::pair<std::string, std::string>> comparisons)
      : comparisons_(std::move(comparisons)) {}

  void ReportRuns(const std::vector<Run>& runs) override;
  void Finalize() override;

  // Real time per iteration in ns of every run so far, by full name ("BM_X/4096").
  const std::map<std::string, double>& times() const { return times_; }

 private:
  std::vector<std::pair<std::string, std::string>> comparisons_;
  std::map<std::string, double> times_;
};

}  // namespace actmem::bench

// The main job's Google Benchmark reporter: the usual console lines as runs finish, then the
// comparison grouped by model with ratios against `keep` side by side, written to
// <directory>/summary.{md,json,svg}.
#pragma once

#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "bench/compare/summary_builder.h"

namespace actmem::bench {

class ComparisonReporter : public benchmark::ConsoleReporter {
 public:
  ComparisonReporter(std::filesystem::path directory, std::string machine, std::string command);

  void ReportRuns(const std::vector<Run>& runs) override;
  void Finalize() override;

  const report::Summary& summary() { return builder_.summary(); }
  // Runs that failed, as "name: message".
  const std::vector<std::string>& failures() const { return failures_; }

 private:
  std::filesystem::path directory_;
  SummaryBuilder builder_;
  std::vector<std::string> failures_;
};

}  // namespace actmem::bench

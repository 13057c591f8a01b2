#include "bench/compare/comparison_reporter.h"

#include <cstdio>
#include <map>

#include "bench/benchmark_compat.h"

namespace actmem::bench {

ComparisonReporter::ComparisonReporter(std::filesystem::path directory, std::string machine,
                                       std::string command)
    : directory_(std::move(directory)) {
  builder_.summary().machine = std::move(machine);
  builder_.summary().command = std::move(command);
}

void ComparisonReporter::ReportRuns(const std::vector<Run>& runs) {
  ConsoleReporter::ReportRuns(runs);
  for (const Run& run : runs) {
    if (run_failed(run)) {
      failures_.push_back(run.benchmark_name() + ": " + run_failure_message(run));
      continue;
    }
    if (run.run_type != Run::RT_Iteration) continue;
    std::map<std::string, double> counters;
    for (const auto& [name, counter] : run.counters) counters[name] = counter.value;
    // Google Benchmark appends "/iterations:N" and "/real_time" to the name it reports.
    std::string name = run.run_name.function_name;
    builder_.add_run(name, counters);
  }
}

void ComparisonReporter::Finalize() {
  ConsoleReporter::Finalize();
  std::printf("\n%s", report::to_markdown(builder_.summary()).c_str());
  for (const std::string& failure : failures_) std::printf("FAILED %s\n", failure.c_str());
  report::write_summary(builder_.summary(), directory_);
  std::printf("\nwrote %s/summary.md, summary.json, summary.svg\n", directory_.c_str());
  std::fflush(stdout);
}

}  // namespace actmem::bench

#include "bench/baseline_ratio_reporter.h"

#include <cstdio>

#include "bench/benchmark_compat.h"

namespace actmem::bench {

void BaselineRatioReporter::ReportRuns(const std::vector<Run>& runs) {
  ConsoleReporter::ReportRuns(runs);
  for (const Run& run : runs) {
    if (run_failed(run) || run.run_type != Run::RT_Iteration) continue;
    times_[run.benchmark_name()] = run.GetAdjustedRealTime() *
                                   benchmark::GetTimeUnitMultiplier(benchmark::kNanosecond) /
                                   benchmark::GetTimeUnitMultiplier(run.time_unit);
  }
}

void BaselineRatioReporter::Finalize() {
  ConsoleReporter::Finalize();
  std::printf("\nRatios against baselines measured in this run (real time per iteration):\n");
  for (const auto& [family, baseline] : comparisons_) {
    for (const auto& [name, ns] : times_) {
      if (name.rfind(family + "/", 0) != 0 && name != family) continue;
      const std::string suffix = name.substr(family.size());
      auto base = times_.find(baseline + suffix);
      if (base == times_.end()) continue;
      std::printf("  %-28s vs %-28s %6.2fx the time (%.1f ns vs %.1f ns)\n", name.c_str(),
                  base->first.c_str(), ns / base->second, ns, base->second);
    }
  }
  std::fflush(stdout);
}

}  // namespace actmem::bench

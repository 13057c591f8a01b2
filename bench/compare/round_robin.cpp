#include "bench/compare/round_robin.h"

#include <algorithm>

#include "allocator/errors.h"

namespace actmem::bench {

std::vector<TurnsTaken> take_turns(const std::vector<TrainingRun*>& runs, int warmup, int rounds) {
  const std::size_t count = runs.size();
  std::vector<TurnsTaken> taken(count);
  for (int round = 0; round < warmup + rounds; ++round) {
    for (std::size_t turn = 0; turn < count; ++turn) {
      const std::size_t i = (static_cast<std::size_t>(round) + turn) % count;
      if (taken[i].out_of_memory) continue;
      try {
        const StepCost cost = runs[i]->step();
        if (round >= warmup) taken[i].measured.push_back(cost);
      } catch (const alloc::OutOfMemoryError& error) {
        taken[i].out_of_memory = error.what();
        taken[i].least_budget_bytes = static_cast<std::int64_t>(error.least_budget_bytes());
      }
    }
  }
  return taken;
}

TimeSpread time_spread(const std::vector<StepCost>& steps) {
  if (steps.empty()) return {};
  std::vector<double> seconds;
  for (const StepCost& step : steps) seconds.push_back(step.seconds);
  std::sort(seconds.begin(), seconds.end());
  return {seconds[seconds.size() / 2], seconds.front(), seconds.back()};
}

}  // namespace actmem::bench

#include "bench/compare/round_robin.h"

#include <algorithm>

namespace actmem::bench {

DidNotFit DidNotFit::from(const OutOfMemoryError& error) {
  return {error.what(), static_cast<std::int64_t>(error.least_budget_bytes())};
}

std::vector<TurnsTaken> take_turns(const std::vector<TrainingRun*>& runs, int warmup, int rounds) {
  const std::size_t count = runs.size();
  std::vector<TurnsTaken> taken(count);
  for (int round = 0; round < warmup + rounds; ++round) {
    for (std::size_t turn = 0; turn < count; ++turn) {
      const std::size_t i = (static_cast<std::size_t>(round) + turn) % count;
      if (taken[i].did_not_fit) continue;
      try {
        const StepCost cost = runs[i]->step();
        if (round >= warmup) taken[i].measured.push_back(cost);
      } catch (const OutOfMemoryError& error) {
        taken[i].did_not_fit = DidNotFit::from(error);
      }
    }
  }
  return taken;
}

TimeSpread spread_of(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  return {values[values.size() / 2], values.front(), values.back()};
}

TimeSpread time_spread(const std::vector<StepCost>& steps) {
  std::vector<double> seconds;
  for (const StepCost& step : steps) seconds.push_back(step.seconds);
  return spread_of(std::move(seconds));
}

}  // namespace actmem::bench

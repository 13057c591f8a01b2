// Training runs measured in turns, so that neither the order of the rows nor the warm-up favours
// one: every run first takes `warmup` unmeasured steps, then `rounds` measured ones, one step per
// run per turn, each round starting one run further along than the last. Runs that share a round
// share the machine's state (caches, allocator, other processes' load) too.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "hooks/out_of_memory.h"
#include "bench/compare/training_run.h"

namespace actmem::bench {

// A step that ran out of memory within its budget: the error's message, and the least budget the
// failing allocation needed then (a lower bound of what the step needs).
struct DidNotFit {
  std::string message;
  std::int64_t least_budget_bytes = 0;
  static DidNotFit from(const OutOfMemoryError& error);
};

// What one run's turns gave.
struct TurnsTaken {
  std::vector<StepCost> measured;  // the measured steps, in order
  // Set when a step ran out of memory: the run took no further turns.
  std::optional<DidNotFit> did_not_fit;
};

// Takes the turns; a run's error other than out-of-memory propagates at once.
std::vector<TurnsTaken> take_turns(const std::vector<TrainingRun*>& runs, int warmup, int rounds);

// The median of some values (the upper median of an even count), and their least and greatest;
// zeros when there are none.
struct TimeSpread {
  double median = 0, least = 0, greatest = 0;
};
TimeSpread spread_of(std::vector<double> values);
// spread_of the measured steps' times.
TimeSpread time_spread(const std::vector<StepCost>& steps);

}  // namespace actmem::bench

// Training runs measured in turns, so that neither the order of the rows nor the warm-up favours
// one: every run first takes `warmup` unmeasured steps, then `rounds` measured ones, one step per
// run per turn, each round starting one run further along than the last. Runs that share a round
// share the machine's state (caches, allocator, other processes' load) too.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "bench/compare/training_run.h"

namespace actmem::bench {

// What one run's turns gave.
struct TurnsTaken {
  std::vector<StepCost> measured;  // the measured steps, in order
  // Set when a step ran out of memory (alloc::OutOfMemoryError): the run took no further turns.
  std::optional<std::string> out_of_memory;
  std::int64_t least_budget_bytes = 0;  // from that error: a lower bound of what the step needs
};

// Takes the turns; a run's error other than out-of-memory propagates at once.
std::vector<TurnsTaken> take_turns(const std::vector<TrainingRun*>& runs, int warmup, int rounds);

// The median of the measured steps' times (the upper median of an even count), and their least
// and greatest.
struct TimeSpread {
  double median = 0, least = 0, greatest = 0;
};
TimeSpread time_spread(const std::vector<StepCost>& steps);

}  // namespace actmem::bench

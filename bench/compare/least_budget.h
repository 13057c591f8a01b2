// The least device budget a model's training step fits in under a policy: bisection over budgets,
// each probe real training steps (bench/compare/least_budget_main.cpp prints them per policy).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "bench/compare/training_run.h"

namespace actmem::bench {

// What a probe at a budget found.
struct BudgetProbe {
  bool fits = false;
  // When it did not fit: a lower bound of the budget the step needs, from the out-of-memory error
  // (OutOfMemoryError::least_budget_bytes); 0 when it named none.
  std::int64_t at_least = 0;
};

struct LeastBudget {
  std::int64_t bytes = 0;  // the least budget found to fit (within the resolution)
  int probes = 0;
};

// Searches (0, fits] for the least budget `probe` accepts, assuming that what fits under a budget
// fits under every larger one; `fits` is a budget the caller saw fit (not probed again: auto's
// plans follow measured times, so a budget at the edge may fit in one run and not the next).
// Bisects until the gap between the least
// fit and the greatest failure is at most `resolution` bytes. A failure's lower bound moves the
// search up to it at once, and then it probes upwards from there in doubling steps (the budget a
// step needs is usually a little above what it needed where it failed). Throws
// std::invalid_argument when resolution < 1.
LeastBudget search_least_budget(const std::function<BudgetProbe(std::int64_t budget)>& probe,
                                std::int64_t fits, std::int64_t resolution);

// A probe that trains spec's model under spec's policy within `budget` for `steps` steps, each
// from an empty allocator cache (auto profiles its first step and plans from it; later steps
// follow and refine the plan): fits unless the allocator ran out of memory. When it fits and
// `grads` is given, the gradients after the last step go there. (Near the boundary, whether a
// budget fits can depend on what ran before in the process, such as oneDNN's primitive cache:
// a caller checks the run that fit, not a rerun.)
BudgetProbe probe_budget(RunSpec spec, std::int64_t budget, int steps,
                         std::vector<std::vector<float>>* grads = nullptr);

}  // namespace actmem::bench

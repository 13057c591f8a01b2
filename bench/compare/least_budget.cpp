#include "bench/compare/least_budget.h"

#include <algorithm>
#include <stdexcept>

#include "hooks/out_of_memory.h"

namespace actmem::bench {

LeastBudget search_least_budget(const std::function<BudgetProbe(std::int64_t budget)>& probe,
                                std::int64_t fits, std::int64_t resolution) {
  if (resolution < 1) throw std::invalid_argument("least-budget search needs resolution >= 1");
  LeastBudget least;
  const auto try_budget = [&](std::int64_t budget) {
    ++least.probes;
    return probe(budget);
  };
  least.bytes = fits;
  std::int64_t fail = 0;    // the greatest budget known not to fit
  std::int64_t gallop = 0;  // > 0: probing upwards from a lower bound a failure named, this far
  while (least.bytes - fail > resolution) {
    const std::int64_t budget =
        gallop > 0 ? std::min(fail + gallop, least.bytes - 1) : fail + (least.bytes - fail) / 2;
    const BudgetProbe p = try_budget(budget);
    if (p.fits) {
      least.bytes = budget;
      gallop = 0;
    } else if (p.at_least - 1 > budget && p.at_least <= least.bytes) {
      // The step needs at least p.at_least, and usually little more: search upwards from there.
      fail = p.at_least - 1;
      gallop = resolution;
    } else {
      fail = budget;
      gallop *= 2;
    }
  }
  return least;
}

BudgetProbe probe_budget(RunSpec spec, std::int64_t budget, int steps,
                         std::vector<std::vector<float>>* grads) {
  spec.budget_bytes = budget;
  try {
    TrainingRun run(spec);
    for (int i = 0; i < steps; ++i) run.step(/*fresh_cache=*/true);
    if (grads != nullptr) *grads = run.gradients();
    return {true, 0};
  } catch (const OutOfMemoryError& error) {
    return {false, static_cast<std::int64_t>(error.least_budget_bytes())};
  }
}

}  // namespace actmem::bench

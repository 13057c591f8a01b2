#include "bench/compare/max_batch.h"

#include <algorithm>
#include <stdexcept>

#include "hooks/out_of_memory.h"

namespace actmem::bench {

MaxBatch search_max_batch(const std::function<Probe(std::int64_t batch)>& probe, std::int64_t start,
                          std::int64_t limit, double resolution) {
  if (start < 1 || limit < start) {
    throw std::invalid_argument("max-batch search needs 1 <= start <= limit");
  }
  MaxBatch best;
  std::int64_t fail = limit + 1;  // smallest batch known not to fit
  auto try_batch = [&](std::int64_t batch) {
    ++best.probes;
    const Probe p = probe(batch);
    if (p.fits) {
      best.batch = batch;
      best.seconds_per_sample = p.step_seconds / static_cast<double>(batch);
    } else {
      fail = batch;
    }
    return p.fits;
  };
  // Doubling from start: the first failure bounds the search from above.
  for (std::int64_t batch = start; batch <= limit; batch = std::min(limit, batch * 2)) {
    if (!try_batch(batch) || batch == limit) break;
  }
  // Bisection between the largest fit (or 0) and the smallest failure.
  while (fail - best.batch > 1 &&
         static_cast<double>(fail - best.batch) > resolution * static_cast<double>(best.batch)) {
    try_batch(best.batch + (fail - best.batch) / 2);
  }
  return best;
}

Probe probe_training_step(RunSpec spec, std::int64_t batch) {
  spec.batch = batch;
  try {
    // Each step from an empty cache, as the memory step of the row whose reserved bytes may be
    // the budget: what fits does not depend on what other runs left cached.
    TrainingRun run(spec);
    run.step(/*fresh_cache=*/true);
    return {true, run.step(/*fresh_cache=*/true).seconds};
  } catch (const OutOfMemoryError&) {
    return {false, 0};
  }
}

}  // namespace actmem::bench

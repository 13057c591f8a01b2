// The largest batch whose training step fits: doubling, then bisection, each probe a real step.
#pragma once

#include <cstdint>
#include <functional>

#include "bench/compare/training_run.h"

namespace actmem::bench {

struct MaxBatch {
  std::int64_t batch = 0;         // 0: not even one sample fits
  double seconds_per_sample = 0;  // of the step at `batch`
  int probes = 0;
};

// What a probe found: whether a step at the batch completed, and its time.
struct Probe {
  bool fits = false;
  double step_seconds = 0;
};

// Searches [1, limit] for the largest batch `probe` accepts, assuming that whatever fits at a
// batch also fits at every smaller one. Doubles from `start` until a probe fails (or `limit`),
// then bisects until the gap between the largest fit and the smallest failure is at most
// `resolution` of the fit (0.0: to the exact batch).
MaxBatch search_max_batch(const std::function<Probe(std::int64_t batch)>& probe, std::int64_t start,
                          std::int64_t limit, double resolution = 0.0);

// A probe that trains spec's model at the given batch under spec's policy and budget for two
// steps (the first allocates gradients and momentum), each from an empty allocator cache: fits
// unless the allocator ran out of memory. Other errors propagate.
Probe probe_training_step(RunSpec spec, std::int64_t batch);

}  // namespace actmem::bench

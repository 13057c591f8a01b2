// Allocator micro-benchmarks. Every figure that matters is a ratio against a baseline measured in
// the same run (the machines are shared and noisy): the cached pair against glibc malloc/free and
// against the uncached backend, printed by BaselineRatioReporter at the end.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/errors.h"
#include "allocator/host_backend.h"
#include "allocator/host_virtual_memory.h"
#include "allocator/trace.h"
#include "bench/baseline_ratio_reporter.h"

namespace actmem::alloc {
namespace {

void size_args(benchmark::internal::Benchmark* b) {
  for (long bytes : {512L, 4L << 10, 64L << 10, 1L << 20, 4L << 20, 32L << 20}) b->Arg(bytes);
}

// One allocate + free of the same size, served from the cache after the first iteration.
void BM_CachedPair(benchmark::State& state) {
  CachingAllocator allocator(std::make_unique<HostBackend>());
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = allocator.allocate(bytes);
    benchmark::DoNotOptimize(p);
    allocator.deallocate(p);
  }
  const AllocatorStats s = allocator.stats();
  state.counters["backend_allocs"] = static_cast<double>(s.backend_allocs);
  state.counters["hit_rate"] = s.cache_hit_rate();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CachedPair)->Apply(size_args);

// glibc malloc/free of the same size: the baseline a host allocator is judged against.
void BM_MallocPair(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MallocPair)->Apply(size_args);

// The backend without the cache (aligned_alloc/free of the segment-rounded size).
void BM_BackendPair(benchmark::State& state) {
  HostBackend backend;
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = backend.allocate(bytes);
    benchmark::DoNotOptimize(p);
    backend.deallocate(p, bytes);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BackendPair)->Apply(size_args);

// The layouts the workloads run over: 0 classic (fixed 2 and 20 MiB segments), 1 vmm (growable
// segments over the CPU twin of the CUDA driver's virtual memory, Note [Growable segments]), 2 vmm
// without Note [Reclaiming holes] (ACTMEM_ALLOC_CONF reclaim_holes:false).
std::unique_ptr<CachingAllocator> make_layout(benchmark::State& state, std::int64_t layout) {
  static const char* const kNames[] = {"classic", "vmm", "vmm, keep holes"};
  state.SetLabel(kNames[layout]);
  if (layout == 0) return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>());
  AllocatorOptions options;
  options.reclaim_holes = layout == 1;
  return std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(),
                                            std::make_unique<HostVirtualMemory>(),
                                            std::make_unique<ImmediateEvents>(), options);
}

// Many live blocks with random sizes (log-uniform, 512 B to 16 MiB) and random lifetimes, one
// operation at a time: an allocation, half the time while fewer than `live_target` blocks live,
// else the free of one at random. The same seed gives the same operations.
class RandomWorkload {
 public:
  RandomWorkload(CachingAllocator& allocator, int live_target, std::uint64_t seed = 42)
      : allocator_(allocator), live_target_(live_target), rng_(seed) {}
  ~RandomWorkload() {
    for (void* p : live_) allocator_.deallocate(p);
  }
  RandomWorkload(const RandomWorkload&) = delete;
  RandomWorkload& operator=(const RandomWorkload&) = delete;

  // One operation; false when the allocator refused an allocation (OutOfMemoryError).
  bool step() {
    if (static_cast<int>(live_.size()) < live_target_ && (live_.empty() || rng_() % 2 == 0)) {
      const auto bytes = static_cast<std::size_t>(std::exp2(exponent_(rng_)));
      try {
        live_.push_back(allocator_.allocate(bytes));
      } catch (const OutOfMemoryError&) {
        return false;
      }
      return true;
    }
    const std::size_t i = rng_() % live_.size();
    allocator_.deallocate(live_[i]);
    live_[i] = live_.back();
    live_.pop_back();
    return true;
  }

 private:
  CachingAllocator& allocator_;
  int live_target_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> exponent_{9.0, 24.0};
  std::vector<void*> live_;
};

// Reports peak reserved bytes over peak allocated ones: what caching and fragmentation cost in
// memory. A peak is one moment of a random run, so its ratio moves with the seed (at 64 live
// blocks, from 1.03 to 1.10 in the vmm layout) and with how long the run is: each seed runs a
// fixed number of operations, not as many as the CPU gets through in the benchmark's time, and
// the counters are the mean and the worst over the seeds.
void BM_RandomWorkload(benchmark::State& state) {
  constexpr int kSeeds = 8;
  constexpr std::int64_t kOperations = 1'000'000;  // per seed
  double ratio = 0, worst = 0, at_peak = 0, hit_rate = 0, calls = 0, allocated = 0, reserved = 0;
  for (auto _ : state) {
    for (int seed = 1; seed <= kSeeds; ++seed) {
      const std::unique_ptr<CachingAllocator> owned = make_layout(state, state.range(1));
      {
        RandomWorkload work(*owned, static_cast<int>(state.range(0)), seed);
        for (std::int64_t op = 0; op < kOperations; ++op) work.step();
      }
      const AllocatorStats s = owned->stats();
      const double peak = static_cast<double>(s.allocated_bytes.peak);
      const double this_ratio = static_cast<double>(s.reserved_bytes.peak) / peak;
      ratio += this_ratio / kSeeds;
      worst = std::max(worst, this_ratio);
      at_peak += static_cast<double>(s.reserved_at_peak_bytes) / peak / kSeeds;
      hit_rate += s.cache_hit_rate() / kSeeds;
      // Maps and unmaps in the vmm layout (Note [Reclaiming holes] trades them for reserved bytes).
      calls += 1000.0 * static_cast<double>(s.backend_allocs + s.backend_frees) / kOperations /
               kSeeds;
      allocated += peak / (1 << 20) / kSeeds;
      reserved += static_cast<double>(s.reserved_bytes.peak) / (1 << 20) / kSeeds;
    }
  }
  state.counters["peak_allocated_MiB"] = allocated;
  state.counters["peak_reserved_MiB"] = reserved;
  state.counters["reserved_over_peak_allocated"] = ratio;
  state.counters["reserved_over_peak_allocated_worst"] = worst;
  state.counters["reserved_at_peak_over_peak"] = at_peak;
  state.counters["hit_rate"] = hit_rate;
  state.counters["backend_calls_per_1k_ops"] = calls;
  state.SetItemsProcessed(state.iterations() * kSeeds * kOperations);
}
BENCHMARK(BM_RandomWorkload)->ArgsProduct({{64, 512}, {0, 1, 2}})->Iterations(1);

// The random workload's first 200,000 operations run twice on a fresh allocator: without a budget,
// for the peak they allocate, then under a budget of 1.05 x that peak. "fits" is 1 when the second
// run met every request (a layout that keeps reserved bytes close to allocated ones can run under
// a budget that close to the peak); "ooms" counts the requests it could not.
void BM_RandomWorkloadAtBudget(benchmark::State& state) {
  auto run = [&](std::optional<std::size_t> budget, AllocatorStats* stats) {
    const std::unique_ptr<CachingAllocator> owned = make_layout(state, state.range(1));
    owned->set_budget(budget);
    std::int64_t refused = 0;
    {
      RandomWorkload work(*owned, static_cast<int>(state.range(0)));
      for (int op = 0; op < 200000; ++op) refused += work.step() ? 0 : 1;
    }
    *stats = owned->stats();
    return refused;
  };
  std::int64_t ooms = 0;
  AllocatorStats free_run, budget_run;
  for (auto _ : state) {
    run(std::nullopt, &free_run);
    const auto budget = static_cast<std::size_t>(1.05 * free_run.allocated_bytes.peak);
    ooms = run(budget, &budget_run);
  }
  state.counters["peak_allocated_MiB"] =
      static_cast<double>(free_run.allocated_bytes.peak) / (1 << 20);
  state.counters["budget_MiB"] = 1.05 * free_run.allocated_bytes.peak / (1 << 20);
  state.counters["fits"] = ooms == 0 ? 1 : 0;
  state.counters["ooms"] = static_cast<double>(ooms);
}
BENCHMARK(BM_RandomWorkloadAtBudget)->ArgsProduct({{64, 512}, {0, 1, 2}})->Iterations(1);

// A training step's allocation pattern, recorded once and replayed: forward allocates activations
// of varied sizes with short-lived temporaries between them, backward frees them in reverse.
std::vector<TraceEntry> training_step_trace() {
  AllocatorOptions options;
  options.record_trace = true;
  CachingAllocator recorder(std::make_unique<HostBackend>(), options);
  std::mt19937 rng(3);
  std::vector<void*> activations;
  for (int layer = 0; layer < 200; ++layer) {
    activations.push_back(recorder.allocate((rng() % 8192 + 1) * 1024));
    recorder.deallocate(recorder.allocate((rng() % 2048 + 1) * 1024));
  }
  while (!activations.empty()) {
    recorder.deallocate(activations.back());
    activations.pop_back();
  }
  return recorder.trace();
}

void BM_TraceReplay(benchmark::State& state) {
  const std::vector<TraceEntry> trace = training_step_trace();
  const std::unique_ptr<CachingAllocator> owned = make_layout(state, state.range(0));
  CachingAllocator& allocator = *owned;
  replay(trace, allocator);  // warm-up: the first step reserves what the step needs
  const std::int64_t warm_backend_allocs = allocator.stats().backend_allocs;
  std::size_t allocations = 0;
  for (auto _ : state) allocations += replay(trace, allocator).allocations;
  const AllocatorStats s = allocator.stats();
  state.counters["steady_backend_allocs"] =
      static_cast<double>(s.backend_allocs - warm_backend_allocs);
  state.counters["allocs_per_step"] = static_cast<double>(allocations) / state.iterations();
  state.counters["reserved_over_peak_allocated"] =
      static_cast<double>(s.reserved_bytes.peak) / static_cast<double>(s.allocated_bytes.peak);
  state.SetItemsProcessed(static_cast<std::int64_t>(allocations));
}
BENCHMARK(BM_TraceReplay)->Arg(0)->Arg(1)->Arg(2);

}  // namespace
}  // namespace actmem::alloc

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  actmem::bench::BaselineRatioReporter reporter({{"BM_CachedPair", "BM_MallocPair"},
                                                 {"BM_CachedPair", "BM_BackendPair"}});
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

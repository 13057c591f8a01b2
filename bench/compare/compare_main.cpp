// actmem_compare: the main job. Trains each reference model under each policy with Google
// Benchmark, searches the largest batch that fits a budget, and prints and writes the comparison
// (results/summary.{md,json,svg}). `actmem_compare --help` lists the options.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "allocator/config.h"
#include "bench/compare/comparison_reporter.h"
#include "bench/compare/max_batch.h"
#include "bench/compare/summary_builder.h"
#include "bench/compare/training_run.h"
#include "hooks/install.h"
#include "models/catalogue.h"

namespace actmem::bench {
namespace {

constexpr const char* kUsage = R"(usage: actmem_compare [options] [--benchmark_* flags]

Trains each model under each policy and compares peak device memory, step time and the largest
batch that fits a budget; prints the table and writes <out>/summary.{md,json,svg}.

  --models LIST        comma-separated, from resnet,densenet,lstm,vnet (default: all)
  --policies LIST      from keep,recompute,offload,auto (default: keep,recompute,offload,auto)
  --size LIST          from tiny,small,full (default: small)
  --auto-budgets LIST  auto's budgets, as percentages of what keep reserved above the bytes
                       allocated at the step's start (default: 75,50,30)
  --budget BYTES       the budget for the max-batch search, e.g. 512MiB (default: per model, the
                       bytes keep reserved at the size's batch)
  --no-max-batch       skip the max-batch search
  --warmup N           unmeasured steps per run first (default: 3: auto profiles its first step
                       and refines its plan over the next ones; every policy warms up alike, so
                       that gradients compare after the same number of steps)
  --steps N            measured steps per run, after the warm-up (default: 2)
  --out DIR            where the summary goes (default: results)
  --help               this text

A budget of P% lets a step reserve the bytes allocated at its start (weights, gradients, momentum,
the batch) plus P% of what keep reserved above them. Every figure is measured in this run; ratios
are against keep.
)";

struct Options {
  std::vector<std::string> models = models::model_names();
  std::vector<std::string> policies = {"keep", "recompute", "offload", "auto"};
  std::vector<models::Size> sizes = {models::Size::kSmall};
  std::vector<int> auto_budgets = {75, 50, 30};
  std::int64_t max_batch_budget = 0;
  bool max_batch = true;
  int warmup = 3;
  int steps = 2;
  std::string out = "results";
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

void check_members(const std::vector<std::string>& items, const std::vector<std::string>& valid,
                   const std::string& option) {
  for (const std::string& item : items) {
    if (std::find(valid.begin(), valid.end(), item) == valid.end()) {
      std::string list;
      for (const std::string& v : valid) list += (list.empty() ? "" : ", ") + v;
      throw std::invalid_argument(option + ": unknown '" + item + "'; valid: " + list);
    }
  }
  if (items.empty()) throw std::invalid_argument(option + " needs at least one value");
}

int parse_int(const std::string& text, const std::string& option, int low, int high) {
  std::size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value < low || value > high) {
    throw std::invalid_argument(option + " needs a whole number from " + std::to_string(low) +
                                " to " + std::to_string(high) + ", got '" + text + "'");
  }
  return value;
}

// Parses our options out of argv, leaving Google Benchmark's (--benchmark_*) in `rest`.
Options parse_options(int argc, char** argv, std::vector<char*>& rest) {
  Options options;
  rest.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--models") {
      options.models = split_list(value());
      check_members(options.models, models::model_names(), arg);
    } else if (arg == "--policies") {
      options.policies = split_list(value());
      check_members(options.policies, {"keep", "recompute", "offload", "auto"}, arg);
    } else if (arg == "--size" || arg == "--sizes") {
      options.sizes.clear();
      for (const std::string& item : split_list(value())) {
        options.sizes.push_back(models::parse_size(item));
      }
      if (options.sizes.empty()) throw std::invalid_argument(arg + " needs at least one value");
    } else if (arg == "--auto-budgets") {
      options.auto_budgets.clear();
      for (const std::string& item : split_list(value())) {
        options.auto_budgets.push_back(parse_int(item, arg, 1, 1000));
      }
    } else if (arg == "--budget") {
      options.max_batch_budget = static_cast<std::int64_t>(alloc::parse_bytes(value(), arg));
    } else if (arg == "--no-max-batch") {
      options.max_batch = false;
    } else if (arg == "--warmup") {
      options.warmup = parse_int(value(), arg, 1, 1000);
    } else if (arg == "--steps") {
      options.steps = parse_int(value(), arg, 1, 1000);
    } else if (arg == "--out") {
      options.out = value();
    } else if (arg.rfind("--benchmark_", 0) == 0) {
      rest.push_back(argv[i]);
    } else {
      throw std::invalid_argument("unknown option '" + arg + "' (see --help)");
    }
  }
  return options;
}

// What keep did for a model at a size, measured once per run: the reference for ratios, budgets
// and gradient differences.
struct Baseline {
  StepCost cost;
  std::vector<std::vector<float>> grads;
};

// A model at a size: what a baseline, a budget and a row belong to.
struct Target {
  std::string model;
  models::Size size;
  std::string name() const { return model + " (" + models::to_string(size) + ")"; }
  std::string key() const { return model + "/" + models::to_string(size); }
};

class Comparison {
 public:
  explicit Comparison(Options options) : options_(std::move(options)) {}

  void register_benchmarks() {
    for (const models::Size size : options_.sizes) {
      for (const std::string& model : options_.models) {
        const Target target{model, size};
        for (const std::string& policy : options_.policies) {
          if (policy == "auto") {
            for (int percent : options_.auto_budgets) add_step(target, policy, percent);
          }
          add_step(target, policy, 0);
          if (options_.max_batch) add_max_batch(target, policy);
        }
      }
    }
  }

 private:
  void progress(const std::string& what) {
    std::fprintf(stderr, "[%d/%d] %s\n", ++done_, total_, what.c_str());
  }

  static RunSpec spec(const Target& target, const std::string& policy) {
    RunSpec s;
    s.model = target.model;
    s.size = target.size;
    s.policy = policy;
    return s;
  }

  // Runs the warm-up steps and `steps` measured ones; returns the median cost.
  StepCost measure(TrainingRun& run) {
    for (int i = 0; i < options_.warmup; ++i) run.step();
    std::vector<StepCost> costs;
    for (int i = 0; i < options_.steps; ++i) costs.push_back(run.step());
    std::sort(costs.begin(), costs.end(),
              [](const StepCost& a, const StepCost& b) { return a.seconds < b.seconds; });
    StepCost median = costs[costs.size() / 2];
    for (const StepCost& c : costs) median.peak_bytes = std::max(median.peak_bytes, c.peak_bytes);
    return median;
  }

  const Baseline& baseline(const Target& target) {
    auto it = baselines_.find(target.key());
    if (it != baselines_.end()) return it->second;
    TrainingRun run(spec(target, "keep"));
    Baseline b{measure(run), run.gradients()};
    return baselines_.emplace(target.key(), std::move(b)).first->second;
  }

  // keep's allocated bytes at the step's start plus `percent` of what it reserved above them.
  std::int64_t auto_budget(const Target& target, int percent) {
    const StepCost& keep = baseline(target).cost;
    return keep.start_bytes + (keep.reserved_bytes - keep.start_bytes) * percent / 100;
  }

  std::int64_t max_batch_budget(const Target& target) {
    return options_.max_batch_budget > 0 ? options_.max_batch_budget
                                         : baseline(target).cost.reserved_bytes;
  }

  void add_step(const Target& target, const std::string& policy, int percent) {
    ++total_;
    const std::string name =
        run_name("step", target.model, models::to_string(target.size), policy, percent);
    benchmark::RegisterBenchmark(
        name.c_str(),
        [=](benchmark::State& state) {
          progress(target.name() + " " + policy +
                   (percent > 0 ? " at " + std::to_string(percent) + "% budget" : "") + ": steps");
          try {
            RunSpec s = spec(target, policy);
            if (policy == "auto") {
              s.budget_bytes =
                  percent > 0 ? auto_budget(target, percent) : max_batch_budget(target);
            }
            StepCost cost;
            std::vector<std::vector<float>> grads;
            for (auto _ : state) {
              TrainingRun run(s);
              cost = measure(run);
              grads = run.gradients();
              state.SetIterationTime(cost.seconds);
              s.batch = run.spec().batch;
            }
            if (policy == "keep") baselines_.emplace(target.key(), Baseline{cost, grads});
            const Baseline& keep = baseline(target);
            state.counters[kCounterBatch] = static_cast<double>(s.batch);
            state.counters[kCounterBudget] = static_cast<double>(s.budget_bytes);
            state.counters[kCounterPeak] = static_cast<double>(cost.peak_bytes);
            state.counters[kCounterReserved] = static_cast<double>(cost.reserved_bytes);
            state.counters[kCounterStepSeconds] = cost.seconds;
            state.counters[kCounterSamplesPerSecond] = static_cast<double>(s.batch) / cost.seconds;
            state.counters[kCounterOffloaded] = static_cast<double>(cost.offloaded_bytes);
            state.counters[kCounterRecomputed] = static_cast<double>(cost.recomputed_bytes);
            state.counters[kCounterGradDiff] = max_abs_difference(grads, keep.grads);
            state.counters["peak_vs_keep"] =
                static_cast<double>(cost.peak_bytes) / static_cast<double>(keep.cost.peak_bytes);
            state.counters["time_vs_keep"] = cost.seconds / keep.cost.seconds;
            state.SetItemsProcessed(s.batch);
          } catch (const std::exception& e) {
            state.SkipWithError(e.what());
          }
        })
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }

  void add_max_batch(const Target& target, const std::string& policy) {
    ++total_;
    const std::string name =
        run_name("max_batch", target.model, models::to_string(target.size), policy);
    benchmark::RegisterBenchmark(
        name.c_str(),
        [=](benchmark::State& state) {
          progress(target.name() + " " + policy + ": max-batch search");
          try {
            RunSpec s = spec(target, policy);
            s.budget_bytes = max_batch_budget(target);
            const std::int64_t start = models::default_batch(target.model, target.size);
            MaxBatch found;
            for (auto _ : state) {
              found = search_max_batch(
                  [&](std::int64_t batch) { return probe_training_step(s, batch); }, start,
                  16 * start, /*resolution=*/0.125);
              state.SetIterationTime(found.seconds_per_sample * static_cast<double>(found.batch));
            }
            state.counters[kCounterMaxBatch] = static_cast<double>(found.batch);
            state.counters[kCounterMaxBatchBudget] = static_cast<double>(s.budget_bytes);
            state.counters[kCounterMaxBatchSecondsPerSample] = found.seconds_per_sample;
            state.counters["probes"] = found.probes;
          } catch (const std::exception& e) {
            state.SkipWithError(e.what());
          }
        })
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }

  Options options_;
  std::map<std::string, Baseline> baselines_;  // by Target::key()
  int done_ = 0;
  int total_ = 0;
};

std::string machine_description() {
  return std::to_string(std::thread::hardware_concurrency()) + " CPU threads, LibTorch " +
         TORCH_VERSION +
         " on CPU (device memory = actmem's allocator for CPU tensors; times are CPU times)";
}

}  // namespace
}  // namespace actmem::bench

int main(int argc, char** argv) {
  using namespace actmem::bench;
  std::vector<char*> rest;
  Options options;
  try {
    options = parse_options(argc, argv, rest);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "actmem_compare: %s\n", e.what());
    return 2;
  }
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);

  actmem::install();
  int bench_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&bench_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(bench_argc, rest.data())) return 2;

  Comparison comparison(options);
  comparison.register_benchmarks();
  ComparisonReporter reporter(options.out, machine_description(), command);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return reporter.failures().empty() ? 0 : 1;
}

// actmem_compare: the main job. Trains each reference model under each policy with Google
// Benchmark, searches the largest batch that fits a budget, and prints and writes the comparison
// (results/summary.{md,json,svg}). `actmem_compare --help` lists the options.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "allocator/config.h"
#include "allocator/stats.h"
#include "bench/compare/comparison_reporter.h"
#include "bench/compare/least_budget.h"
#include "bench/compare/max_batch.h"
#include "bench/compare/summary_builder.h"
#include "bench/compare/target_comparison.h"
#include "bench/compare/training_run.h"
#include "hooks/install.h"
#include "models/catalogue.h"

namespace actmem::bench {
namespace {

constexpr const char* kUsage = R"(usage: actmem_compare [options] [--benchmark_* flags]

Trains each model under each policy and compares peak device memory, step time and the largest
batch that fits a budget; prints the table and writes <out>/summary.{md,json,svg}.

  --models LIST        comma-separated, from resnet,densenet,lstm,vnet (default: all)
  --policies LIST      from keep,recompute,chain,offload,auto (default: all; keep is always measured:
                       it is the reference)
  --size LIST          from tiny,small,full (default: small)
  --device DEVICE      cpu or cuda (default: the device actmem manages: cuda where a GPU answers
                       and ACTMEM_BACKEND allows it, else cpu)
  --preset gpu-check   what scripts/gpu-check.sh runs in the minutes it has: full size on cuda,
                       keep, recompute, offload and auto at 50%, 2 warm-up steps, 5 measured, the
                       max batch under 8GiB (options after it override it)
  --auto-budgets LIST  auto's budgets, as percentages of what keep reserved above the bytes
                       allocated at the step's start (default: 75,50,30)
  --budget BYTES       the budget for the max-batch search and auto's row at it, e.g. 512MiB
                       (default: per model, the bytes keep reserved at the size's batch)
  --no-max-batch       skip the max-batch search
  --warmup N           steps each row takes before its memory is measured (default: 3: auto
                       profiles its first step and refines its plan over the next ones)
  --steps N            measured steps per row, taken in turns with the other rows of the model
                       (default: 10)
  --out DIR            where the summary goes (default: results)
  --least-budget       instead of the comparison: for each model, the least budget each policy's
                       step fits in (bisection to 1 MiB, each probe --steps steps from an empty
                       cache, default 3 here), against recompute's, and whether the gradients at
                       that budget are keep's; a table on stdout and in <out>/least_budget.md
  --help               this text

A budget of P% lets a step reserve the bytes allocated at its start (weights, gradients, momentum,
the batch) plus P% of what keep reserved above them. Every figure is measured in this run; ratios
are against keep. The rows of a model take turns, step by step, so that neither order nor warm-up
favours one (bench/compare/target_comparison.h); a row that runs out of memory within its budget
"does not fit". The exit status is 1 when a row failed otherwise, when its gradients differ from
keep's, or when it reserved more than its budget; 2 for bad options.
)";

struct Options {
  std::vector<std::string> models = models::model_names();
  std::vector<std::string> policies = {"keep", "recompute", "chain", "offload", "auto"};
  std::vector<models::Size> sizes = {models::Size::kSmall};
  std::vector<int> auto_budgets = {75, 50, 30};
  std::int64_t max_batch_budget = 0;
  bool max_batch = true;
  int warmup = 3;
  int steps = 10;
  std::string out = "results";
  std::optional<c10::DeviceType> device;  // none: the device actmem manages
  bool least_budget = false;
  bool steps_given = false;
};

// --preset gpu-check: the main job at full size on the GPU machine, in the minutes it has.
void apply_gpu_check_preset(Options& options) {
  options.sizes = {models::Size::kFull};
  // The rows issue 14 measures; chains at full size take another run (--policies ...,chain).
  options.policies = {"keep", "recompute", "offload", "auto"};
  options.device = c10::DeviceType::CUDA;
  options.auto_budgets = {50};
  options.warmup = 2;
  options.steps = 5;
  options.max_batch_budget = std::int64_t{8} << 30;
}

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
      check_members(options.policies, {"keep", "recompute", "chain", "offload", "auto"}, arg);
      options.policies.erase(std::remove(options.policies.begin(), options.policies.end(), "keep"),
                             options.policies.end());
      options.policies.insert(options.policies.begin(), "keep");
    } else if (arg == "--size" || arg == "--sizes") {
      options.sizes.clear();
      for (const std::string& item : split_list(value())) {
        options.sizes.push_back(models::parse_size(item));
      }
      if (options.sizes.empty()) throw std::invalid_argument(arg + " needs at least one value");
    } else if (arg == "--device") {
      const std::string device = value();
      if (device != "cpu" && device != "cuda") {
        throw std::invalid_argument("--device: unknown '" + device + "'; valid: cpu, cuda");
      }
      options.device = device == "cuda" ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
    } else if (arg == "--preset") {
      const std::string preset = value();
      if (preset != "gpu-check") {
        throw std::invalid_argument("--preset: unknown '" + preset + "'; valid: gpu-check");
      }
      apply_gpu_check_preset(options);
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
      options.steps_given = true;
    } else if (arg == "--least-budget") {
      options.least_budget = true;
    } else if (arg == "--out") {
      options.out = value();
    } else if (arg.rfind("--benchmark_filter", 0) == 0) {
      throw std::invalid_argument(
          "--benchmark_filter would leave rows out of the turns they take together: choose rows "
          "with --models and --policies");
    } else if (arg.rfind("--benchmark_", 0) == 0) {
      rest.push_back(argv[i]);
    } else {
      throw std::invalid_argument("unknown option '" + arg + "' (see --help)");
    }
  }
  return options;
}

// A model at a size: what a comparison and its rows belong to.
struct Target {
  std::string model;
  models::Size size;
  std::string name() const { return model + " (" + models::to_string(size) + ")"; }
};

// The main job's benchmarks: per model and size, one per row (reporting what the model's
// TargetComparison measured, all rows together, when its first row runs) and one max-batch search
// per policy.
class Comparison {
 public:
  explicit Comparison(Options options) : options_(std::move(options)) {}

  void register_benchmarks() {
    for (const models::Size size : options_.sizes) {
      for (const std::string& model : options_.models) {
        const Target target{model, size};
        std::vector<RowSpec> rows;
        for (const std::string& policy : options_.policies) {
          if (policy == "auto") {
            for (int percent : options_.auto_budgets) rows.push_back({policy, percent, false});
            rows.push_back({policy, 0, true});
          } else {
            rows.push_back({policy, 0, false});
          }
        }
        TargetComparison::Options target_options;
        target_options.device = *options_.device;
        target_options.warmup = options_.warmup;
        target_options.rounds = options_.steps;
        target_options.max_batch_budget_bytes = options_.max_batch_budget;
        auto comparison = std::make_shared<TargetComparison>(model, size, rows, target_options);
        for (std::size_t i = 0; i < rows.size(); ++i) add_row(target, comparison, i, rows[i]);
        if (options_.max_batch) {
          for (const std::string& policy : options_.policies) {
            add_max_batch(target, comparison, policy);
          }
        }
      }
    }
  }

  // Rows whose gradients differ from keep's, or that reserved more than their budget.
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  static void register_one(const std::string& name, std::function<void(benchmark::State&)> body) {
    benchmark::RegisterBenchmark(name.c_str(), std::move(body))
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }

  void add_row(const Target& target, const std::shared_ptr<TargetComparison>& comparison,
               std::size_t index, const RowSpec& row) {
    const std::string name = run_name("step", target.model, models::to_string(target.size),
                                      row.policy, row.budget_percent);
    register_one(name, [=](benchmark::State& state) {
      try {
        const RowResult& r = comparison->results()[index];
        const RowResult& keep = comparison->results()[0];
        for (auto _ : state) state.SetIterationTime(r.fits() ? r.time.median : 0);
        state.counters[kCounterBatch] = static_cast<double>(r.spec.batch);
        state.counters[kCounterBudget] = static_cast<double>(r.spec.budget_bytes);
        state.counters[kCounterFits] = r.fits() ? 1 : 0;
        if (!r.fits()) {
          state.counters[kCounterLeastBudget] =
              static_cast<double>(r.did_not_fit->least_budget_bytes);
          return;
        }
        state.counters[kCounterPeak] = static_cast<double>(r.peak_bytes);
        state.counters[kCounterReserved] = static_cast<double>(r.memory.reserved_bytes);
        state.counters[kCounterStepSeconds] = r.time.median;
        state.counters[kCounterStepSecondsMin] = r.time.least;
        state.counters[kCounterStepSecondsMax] = r.time.greatest;
        state.counters[kCounterMeasuredSteps] = r.measured_steps;
        state.counters[kCounterSamplesPerSecond] =
            static_cast<double>(r.spec.batch) / r.time.median;
        state.counters[kCounterOffloaded] = static_cast<double>(r.offloaded_bytes);
        state.counters[kCounterRecomputed] = static_cast<double>(r.recomputed_bytes);
        if (r.measured_steps > 0 && r.copy_ns > 0) {
          state.counters[kCounterCopySeconds] =
              static_cast<double>(r.copy_ns) * 1e-9 / r.measured_steps;
          state.counters[kCounterCopyHidden] = std::clamp(
              1.0 - static_cast<double>(r.exposed_copy_ns) / static_cast<double>(r.copy_ns), 0.0,
              1.0);
        }
        state.counters[kCounterGradDiff] = r.grad_max_abs_diff_vs_keep;
        state.counters["peak_vs_keep"] =
            static_cast<double>(r.peak_bytes) / static_cast<double>(keep.peak_bytes);
        state.counters[kCounterStepVsKeep] = r.time_vs_keep;
        state.SetItemsProcessed(r.spec.batch);
        check(name, r);
      } catch (const std::exception& e) {
        state.SkipWithError(e.what());
      }
    });
  }

  // What makes the job fail although the row ran: the promise of exactness, or of the budget.
  void check(const std::string& name, const RowResult& r) {
    if (r.grad_max_abs_diff_vs_keep != 0) {
      problems_.push_back(name + ": its gradients differ from keep's by up to " +
                          std::to_string(r.grad_max_abs_diff_vs_keep));
    }
    if (r.spec.budget_bytes > 0 && r.memory.reserved_bytes > r.spec.budget_bytes) {
      problems_.push_back(name + ": reserved " + alloc::format_bytes(r.memory.reserved_bytes) +
                          ", over its budget of " + alloc::format_bytes(r.spec.budget_bytes));
    }
  }

  void add_max_batch(const Target& target, const std::shared_ptr<TargetComparison>& comparison,
                     const std::string& policy) {
    const std::string name =
        run_name("max_batch", target.model, models::to_string(target.size), policy);
    register_one(name, [=](benchmark::State& state) {
      std::fprintf(stderr, "%s %s: the largest batch that fits\n", target.name().c_str(),
                   policy.c_str());
      try {
        RunSpec spec;
        spec.model = target.model;
        spec.size = target.size;
        spec.policy = policy;
        spec.device = *options_.device;
        spec.budget_bytes = comparison->max_batch_budget();
        const std::int64_t start = models::default_batch(target.model, target.size);
        MaxBatch found;
        for (auto _ : state) {
          found =
              search_max_batch([&](std::int64_t batch) { return probe_training_step(spec, batch); },
                               start, 16 * start, /*resolution=*/0.125);
          state.SetIterationTime(found.seconds_per_sample * static_cast<double>(found.batch));
        }
        state.counters[kCounterMaxBatch] = static_cast<double>(found.batch);
        state.counters[kCounterMaxBatchBudget] = static_cast<double>(spec.budget_bytes);
        state.counters["probes"] = found.probes;
      } catch (const std::exception& e) {
        state.SkipWithError(e.what());
      }
    });
  }

  Options options_;
  std::vector<std::string> problems_;
};

std::string machine_description(c10::DeviceType device) {
  const std::string machine = std::to_string(std::thread::hardware_concurrency()) +
                              " CPU threads, LibTorch " + TORCH_VERSION;
  if (device == c10::DeviceType::CUDA) {
    return machine +
           " on CUDA (device memory = actmem's allocator as LibTorch's CUDA allocator; a "
           "step's time ends when its loss is on the host)";
  }
  return machine +
         " on CPU (device memory = actmem's allocator for CPU tensors; times are CPU "
         "times)";
}

}  // namespace
}  // namespace actmem::bench

namespace actmem::bench {
namespace {

std::string mib_text(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// --least-budget: per model, the least budget of each policy, beside recompute's.
int print_least_budgets(const Options& options, const std::string& command) {
  const int steps = options.steps_given ? options.steps : 3;
  constexpr std::int64_t kResolution = 1 << 20;
  std::string table =
      "# Least budgets\n\n- Command: `" + command + "`\n- Environment: ACTMEM_HOST_BUDGET=" +
      (std::getenv("ACTMEM_HOST_BUDGET") ? std::getenv("ACTMEM_HOST_BUDGET") : "(unset)") +
      "\n\nThe least device budget (reserved bytes, weights and optimizer state "
      "included) each policy's training step fits in, to 1 MiB; each probe " +
      std::to_string(steps) +
      " steps from an empty cache. Grads: the gradients after those steps at that "
      "budget against keep's without one.\n";
  bool all_exact = true;
  for (const models::Size size : options.sizes) {
    for (const std::string& model : options.models) {
      RunSpec spec;
      spec.model = model;
      spec.size = size;
      spec.device = *options.device;
      spec.policy = "keep";
      std::vector<std::vector<float>> keep_grads;
      std::int64_t keep_reserved = 0;
      {
        TrainingRun keep(spec);
        for (int i = 0; i < steps; ++i) {
          keep_reserved = std::max(keep_reserved, keep.step(/*fresh_cache=*/true).reserved_bytes);
        }
        keep_grads = keep.gradients();
      }
      table += "\n## " + model + " (" + models::to_string(size) + ")\n\n" +
               "| policy | least budget (MiB) | vs keep's reserved | vs recompute's | probes | "
               "grads |\n|---|--:|--:|--:|--:|---|\n";
      std::optional<std::int64_t> recompute_least;
      for (const std::string& policy : options.policies) {
        spec.policy = policy;
        std::fprintf(stderr, "%s %s: least budget...\n", model.c_str(), policy.c_str());
        std::map<std::int64_t, std::vector<std::vector<float>>> grads_at;  // of the fits
        const auto probe = [&](std::int64_t budget) {
          std::vector<std::vector<float>> grads;
          const BudgetProbe found = probe_budget(spec, budget, steps, &grads);
          if (found.fits) grads_at[budget] = std::move(grads);
          return found;
        };
        // Keep's reserved bytes are the natural upper bound; a policy that needs more (auto,
        // whose plan's allocation pattern differs from its profile's) gets doubled ones.
        std::int64_t upper = keep_reserved + kResolution;
        while (!probe(upper).fits) {
          if (upper > 8 * keep_reserved) {
            throw std::runtime_error(model + " under " + policy +
                                     " does not fit 8 times keep's reserved bytes");
          }
          upper *= 2;
        }
        const LeastBudget least = search_least_budget(probe, upper, kResolution);
        if (policy == "recompute") recompute_least = least.bytes;
        const bool exact = grads_at.at(least.bytes) == keep_grads;
        all_exact = all_exact && exact;
        char ratio[64] = "–";
        if (recompute_least) {
          std::snprintf(ratio, sizeof ratio, "%.2f",
                        static_cast<double>(least.bytes) / static_cast<double>(*recompute_least));
        }
        char vs_keep[32];
        std::snprintf(vs_keep, sizeof vs_keep, "%.2f",
                      static_cast<double>(least.bytes) / static_cast<double>(keep_reserved));
        table += "| " + policy + " | " + mib_text(least.bytes) + " | " + vs_keep + " | " + ratio +
                 " | " + std::to_string(least.probes) + " | " + (exact ? "identical" : "DIFFER") +
                 " |\n";
      }
    }
  }
  std::fputs(table.c_str(), stdout);
  std::filesystem::create_directories(options.out);
  std::ofstream(std::filesystem::path(options.out) / "least_budget.md") << table;
  return all_exact ? 0 : 1;
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

  try {
    actmem::install();
    const c10::DeviceType managed = actmem::managed_device();
    if (!options.device) options.device = managed;
    if (*options.device != managed) {
      throw std::invalid_argument(std::string("--device ") +
                                  (*options.device == c10::DeviceType::CUDA ? "cuda" : "cpu") +
                                  ": actmem manages " + c10::DeviceTypeName(managed) +
                                  " in this process (ACTMEM_BACKEND=host for the CPU; cuda, or "
                                  "auto with a GPU, for CUDA)");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "actmem_compare: %s\n", e.what());
    return 2;
  }
  if (options.least_budget) {
    try {
      return print_least_budgets(options, command);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "actmem_compare: %s\n", e.what());
      return 1;
    }
  }
  int bench_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&bench_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(bench_argc, rest.data())) return 2;

  Comparison comparison(options);
  comparison.register_benchmarks();
  ComparisonReporter reporter(options.out, machine_description(*options.device), command);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  for (const std::string& problem : comparison.problems()) {
    std::printf("FAILED %s\n", problem.c_str());
  }
  return reporter.failures().empty() && comparison.problems().empty() ? 0 : 1;
}

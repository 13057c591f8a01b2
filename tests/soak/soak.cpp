// A soak run: the tiny reference models trained for many steps under `auto`, with a device budget
// drawn at random every few steps, from 40 % of what keep needs above the step's start (which some
// steps cannot fit) to more than it needs. What a multi-day job needs to hold, step after step:
// - the device bytes allocated after a step are the same after every step (weights, gradients,
//   momentum, the batch); after a step that did not fit, no more than that;
// - the host pool that offloaded activations live in holds nothing after a step;
// - the process's resident memory (pageable host memory, the pool's included) does not grow: the
//   most it reaches in the second half of the run is at most 16 MiB over the most in the second
//   quarter (the first quarter lets the caches and the kernels' scratch settle); checked in runs
//   of 1,000 steps or more, outside sanitizers;
// - a step that does not fit fails with an out-of-memory error and leaves nothing behind (but the
//   gradients its backward got to), and the next step trains.
//
//   actmem_soak [--steps N] [--change-every K] [--models resnet,densenet,lstm,vnet] [--seed S]
//               [--verbose]
//
// Prints one line per model and exits 1 when a check failed (ctest runs a short soak; the 2,000
// steps of bench/RESULTS.md are `actmem_soak --steps 2000`). CPU tensors play device memory
// (ACTMEM_BACKEND=host), and the kernels are pinned (tests/support/pinned_kernels.cpp).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "hooks/actmem.h"
#include "models/catalogue.h"
#include "models/training.h"

namespace {

using actmem::alloc::CachingAllocator;

// Under ASan or TSan resident memory says nothing about leaks: the sanitizer keeps freed memory in
// quarantine and grows its shadow and history as it likes. LeakSanitizer checks at exit instead.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kResidentIsMeaningful = false;
#else
constexpr bool kResidentIsMeaningful = true;
#endif
// On the CPU, device memory and the host pool are resident memory too, and each new budget changes
// what they reserve, and what the C library's heap keeps: a run must see its budgets several times
// over before a growth means a leak.
constexpr int kStepsToCheckResident = 1000;

constexpr double MiB = 1024.0 * 1024.0;

struct Options {
  int steps = 200;
  int change_every = 50;
  std::vector<std::string> models = actmem::models::model_names();
  unsigned seed = 18;
  bool verbose = false;  // a line per step
};

bool resident_checked(const Options& options) {
  return kResidentIsMeaningful && options.steps >= kStepsToCheckResident;
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "actmem_soak: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--steps") {
      options.steps = std::stoi(value());
    } else if (arg == "--change-every") {
      options.change_every = std::stoi(value());
    } else if (arg == "--seed") {
      options.seed = static_cast<unsigned>(std::stoul(value()));
    } else if (arg == "--verbose") {
      options.verbose = true;
    } else if (arg == "--models") {
      options.models.clear();
      std::istringstream list(value());
      for (std::string name; std::getline(list, name, ',');) options.models.push_back(name);
    } else {
      std::fprintf(stderr, "usage: actmem_soak [--steps N] [--change-every K] [--models LIST] "
                           "[--seed S] [--verbose]\n");
      std::exit(2);
    }
  }
  if (options.steps < 10 || options.change_every < 1) {
    std::fprintf(stderr, "actmem_soak: --steps must be at least 10, --change-every at least 1\n");
    std::exit(2);
  }
  return options;
}

// The process's resident bytes (/proc/self/statm).
double resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

struct Soak {
  int steps = 0, refused = 0, failures = 0;
  std::int64_t level = -1;  // device bytes allocated after the first step that fitted
  double resident_early = 0, resident_late = 0;
  std::int64_t evictions = 0, recomputations = 0;
};

Soak soak(const std::string& name, const Options& options, CachingAllocator& device) {
  namespace models = actmem::models;
  Soak result;
  auto model = models::make_model(name, models::Size::kTiny, /*seed=*/3);
  const models::Batch batch = model->make_batch(models::default_batch(name, models::Size::kTiny), 5);
  auto optimizer = models::make_optimizer(*model);
  const auto fail = [&](int step, const std::string& what) {
    if (result.failures++ < 5) std::fprintf(stderr, "%s, step %d: %s\n", name.c_str(), step, what.c_str());
  };

  // What keep reserves above the step's start: the scale the budgets are drawn on.
  std::int64_t start = 0, room = 0;
  {
    actmem::ActivationScope keep(actmem::make_device_policy("keep"));
    models::train_step(*model, *optimizer, batch);
    device.empty_cache();
    device.reset_peak_stats();
    start = device.stats().allocated_bytes.current;
    models::train_step(*model, *optimizer, batch);
    room = device.stats().reserved_bytes.peak - start;
  }

  std::mt19937 random(options.seed);
  std::uniform_real_distribution<double> share(0.4, 1.4);
  actmem::ActivationScope scope(actmem::make_device_policy("auto"));
  for (int step = 0; step < options.steps; ++step) {
    if (step % options.change_every == 0) {
      device.set_budget(static_cast<std::size_t>(start + share(random) * room));
    }
    bool fitted = true;
    try {
      models::train_step(*model, *optimizer, batch);
    } catch (const actmem::OutOfMemoryError& error) {
      fitted = false;
      ++result.refused;
      if (options.verbose) std::printf("%s\n", error.what());
    }
    ++result.steps;
    const std::int64_t allocated = device.stats().allocated_bytes.current;
    if (fitted && result.level < 0) result.level = allocated;
    if (fitted && allocated != result.level) {
      fail(step, "device bytes after the step " + std::to_string(allocated) + ", not " +
                     std::to_string(result.level));
    }
    // Its gradients may stay, as far as the failed backward got: no more than a step's.
    if (!fitted && result.level >= 0 && allocated > result.level) {
      fail(step, "a step that did not fit left " + std::to_string(allocated - result.level) +
                     " device bytes behind");
    }
    const std::int64_t pooled = scope.host_store().pool().stats().allocated_bytes.current;
    if (options.verbose) {
      std::printf("%s step %d: budget %.2f MiB, %s, allocated %.2f MiB, reserved %.2f MiB, host "
                  "pool %.2f MiB\n",
                  name.c_str(), step, static_cast<double>(device.budget().value_or(0)) / MiB,
                  fitted ? "fitted" : "did not fit", allocated / MiB,
                  static_cast<double>(device.stats().reserved_bytes.current) / MiB, pooled / MiB);
    }
    if (pooled != 0) fail(step, "the host pool holds " + std::to_string(pooled) + " bytes");
    // The most resident in the second quarter, against the most in the second half.
    if (step >= options.steps / 4) {
      double& most = step < options.steps / 2 ? result.resident_early : result.resident_late;
      most = std::max(most, resident_bytes());
    }
  }
  const auto stats = scope.stats();
  result.evictions = stats.evictions;
  result.recomputations = stats.recomputations;
  device.set_budget(std::nullopt);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  setenv("ACTMEM_BACKEND", "host", /*overwrite=*/0);
  actmem::install();
  CachingAllocator& device = actmem::device_memory();
  constexpr double kResidentSlack = 16 * MiB;
  int failed = 0;
  for (const std::string& name : options.models) {
    const Soak s = soak(name, options, device);
    device.empty_cache();  // the next model starts from no cached segment, as it would alone
    const double growth = s.resident_late - s.resident_early;
    const bool ok = s.failures == 0 && s.level >= 0 &&
                    (!resident_checked(options) || growth <= kResidentSlack);
    failed += !ok;
    std::printf("%-8s %d steps, %d did not fit their budget; device bytes after a step %.2f MiB; "
                "%d broken checks (device level, host pool); resident %.1f -> %.1f MiB (%+.1f%s); "
                "%lld evictions, %lld segment reruns: %s\n",
                name.c_str(), s.steps, s.refused, s.level / MiB, s.failures, s.resident_early / MiB,
                s.resident_late / MiB, growth / MiB,
                resident_checked(options) ? ""
                : kResidentIsMeaningful   ? ", not checked in a run this short"
                                          : ", not checked under a sanitizer",
                static_cast<long long>(s.evictions), static_cast<long long>(s.recomputations),
                ok ? "flat" : "FAILED");
    std::fflush(stdout);
  }
  return failed == 0 ? 0 : 1;
}

// Fault injection at every CUDA call: fault_client runs a scripted workload through the C ABI, and
// through the LD_PRELOAD shim, against the fake libcudart. A first run counts the calls of each
// CUDA function; then, for every function and every N up to its count, a run fails the Nth call
// (FAKE_CUDART_FAIL). Each run must:
// - exit normally (no abort, no crash);
// - tell of the failure where the program saw one: the injected message (or "out of memory",
//   for a failed cudaMalloc) on its output whenever an allocation or a free failed, or the
//   allocator reported an error it carried on from;
// - end consistent: nothing allocated, and every byte the fake still holds is one actmem says it
//   has reserved (through the C ABI, after empty_cache, nothing at all, and no event alive).
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>

#include "tests/support/run_process.h"

namespace {

using actmem::testing::read_file;
using actmem::testing::run_process;
using actmem::testing::temp_path;

using ClientRun = actmem::testing::ReportingRun;

ClientRun run_client(const std::string& environment, const std::string& client) {
  return actmem::testing::run_reporting(environment + " " + client);
}

// The fake's call counts, by function.
std::map<std::string, int> calls(const ClientRun& run) {
  std::map<std::string, int> counts;
  const std::string prefix = "fake.calls.";
  for (const auto& [key, value] : run.values) {
    if (key.rfind(prefix, 0) == 0) counts[key.substr(prefix.size())] = std::stoi(value);
  }
  return counts;
}

// "current" of one of the first device's stats in actmem's JSON.
long long stat(const std::string& json, const std::string& name) {
  const std::string key = "\"" + name + "\":{\"current\":";
  const std::size_t at = json.find(key);
  return at == std::string::npos ? -1 : std::stoll(json.substr(at + key.size()));
}

struct Mode {
  std::string name;
  std::string client;       // the program
  std::string environment;  // what it runs under
  bool process_allocators;  // it runs on actmem's process allocators, which write ACTMEM_STATS
};

// Runs `mode` once per (function, N) and checks each run; returns the faults injected.
int inject_every_fault(const Mode& mode) {
  const ClientRun clean = run_client(mode.environment, mode.client);
  EXPECT_EQ(clean.exit_code, 0) << clean.output;
  EXPECT_LE(clean.number("malloc_failures"), 0) << clean.output;  // -1: not a key it prints
  EXPECT_LE(clean.number("free_errors"), 0) << clean.output;
  EXPECT_LE(clean.number("errors"), 0) << clean.output;
  const auto counts = calls(clean);
  EXPECT_GE(counts.count("cudaEventRecord"), 1u) << "the workload must use events: " << clean.output;
  int injected = 0;
  for (const auto& [function, count] : counts) {
    for (int nth = 1; nth <= count; ++nth) {
      const std::string stats = temp_path("actmem-fault-stats");
      const std::string fault = function + ":" + std::to_string(nth);
      SCOPED_TRACE(mode.name + ", " + fault);
      const ClientRun run = run_client(
          mode.environment + " ACTMEM_STATS=" + stats + " FAKE_CUDART_FAIL=" + fault, mode.client);
      ++injected;
      EXPECT_EQ(run.exit_code, 0) << run.output;

      const std::string json = read_file(stats);
      std::remove(stats.c_str());
      const bool allocation_call = function == "cudaMalloc" || function == "cudaHostAlloc";
      const bool told =
          run.output.find("injected failure of " + function + " #" + std::to_string(nth)) !=
              std::string::npos ||
          (allocation_call && run.output.find("out of memory") != std::string::npos);
      const bool seen = run.number("malloc_failures") > 0 || run.number("free_errors") > 0 ||
                        run.number("errors") > 0 ||
                        (!json.empty() && json.find("\"backend_errors\":0") == std::string::npos);
      if (seen) {
        EXPECT_TRUE(told) << "a failure the program saw was not told:\n" << run.output;
      }
      EXPECT_LE(run.number("free_failures"), 0) << "a free failed twice:\n" << run.output;

      if (mode.process_allocators) {
        EXPECT_NE(json, "") << "ACTMEM_STATS was not written:\n" << run.output;
        EXPECT_EQ(stat(json, "allocated_bytes"), 0) << json;
        EXPECT_EQ(stat(json, "reserved_bytes"), run.number("fake.live_bytes"))
            << "the bytes the runtime holds are not what actmem says it reserved:\n"
            << json << "\n"
            << run.output;
      }
      if (mode.name != "runtime") {  // the shim's allocators live on to the end of the process
        EXPECT_EQ(run.number("fake.live_bytes"), 0) << run.output;
        EXPECT_EQ(run.number("fake.live_events"), 0) << run.output;
        EXPECT_EQ(run.number("fake.live_streams"), 0) << run.output;
        EXPECT_EQ(run.number("fake.pinned_bytes"), 0) << run.output;
      }
      if (::testing::Test::HasFailure()) return injected;  // the first failing run says enough
    }
  }
  return injected;
}

TEST(CudaFaults, EveryFailedCallThroughTheCApiIsToldAndLeavesNothingBehind) {
  const int injected = inject_every_fault({"capi", FAULT_CLIENT_CAPI, "", true});
  std::printf("faults injected through the C ABI: %d\n", injected);
  RecordProperty("faults_injected", injected);
}

TEST(CudaFaults, EveryFailedCallUnderThePreloadShimIsToldAndLeavesNothingBehind) {
  const int injected = inject_every_fault(
      {"runtime", FAULT_CLIENT_RUNTIME, "LD_PRELOAD=" ACTMEM_PRELOAD_SO " ACTMEM_BUDGET=64MiB",
       true});
  std::printf("faults injected under the shim: %d\n", injected);
  RecordProperty("faults_injected", injected);
}

TEST(CudaFaults, EveryFailedCallOfTheCopyEngineAndThePinnedPoolIsToldAndLeavesNothingBehind) {
  const int injected =
      inject_every_fault({"copy", COPY_FAULT_CLIENT, "LD_PRELOAD=" FAKE_CUDART_PRELOAD, false});
  std::printf("faults injected into the copy engine and the pinned pool: %d\n", injected);
  RecordProperty("faults_injected", injected);
}

}  // namespace

// The LD_PRELOAD shim, tested for real on CPU: shim_client links a fake libcudart that serves host
// memory and counts its calls; it is run with and without LD_PRELOAD=libactmem_preload.so.
#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>

#include "tests/support/run_process.h"

namespace {

using actmem::testing::read_file;
using actmem::testing::run_process;
using actmem::testing::temp_path;

constexpr long long MiB = 1 << 20;

using ClientRun = actmem::testing::ReportingRun;

ClientRun run_client(const std::string& environment, const std::string& client = SHIM_CLIENT) {
  return actmem::testing::run_reporting(environment + " " + client);
}

std::string preload(const std::string& more = "") {
  return "LD_PRELOAD=" ACTMEM_PRELOAD_SO " ACTMEM_BUDGET=64MiB " + more;
}

TEST(PreloadShim, WithoutTheShimEveryAllocationReachesTheRuntime) {
  const ClientRun run = run_client("");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_GE(run.number("fake.malloc_calls"), 3000);
  EXPECT_EQ(run.number("double_free"), 1);  // cudaErrorInvalidValue from the runtime itself
  EXPECT_EQ(run.number("fake.free_errors"), 1);
}

TEST(PreloadShim, ServesAllocationsFromSegmentsAndTheCache) {
  const std::string stats = temp_path("actmem-shim-stats");
  const ClientRun run = run_client(preload("ACTMEM_STATS=" + stats));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("loop_failures"), 0);
  // 3,007 allocations reach the runtime as three segments (2 MiB small, 20 MiB large, 2 MiB small
  // for the second stream), plus the program's own direct call.
  EXPECT_EQ(run.number("fake.malloc_calls"), 4) << run.output;
  std::istringstream sizes(run.text("fake.malloc_sizes"));
  std::string size;
  int segment_sized = 0;
  while (std::getline(sizes, size, ',')) {
    if (std::stoll(size) == 4096) continue;  // fake_cudart_direct_malloc, not through the shim
    EXPECT_EQ(std::stoll(size) % (2 * MiB), 0) << "not a segment size: " << size;
    ++segment_sized;
  }
  EXPECT_EQ(segment_sized, 3);
  EXPECT_GE(run.number("fake.synchronize_calls"), 3000) << "cudaFree must keep its sync contract";

  // The stats account for every byte still live: 1000 B (rounded to 1024) and 12 MiB.
  const std::string json = read_file(stats);
  EXPECT_NE(json.find("\"backend\":\"cuda\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"allocated_bytes\":{\"current\":" + std::to_string(1024 + 12 * MiB)),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"requested_bytes\":{\"current\":" + std::to_string(1000 + 12 * MiB)),
            std::string::npos)
      << json;
  // 3,004, and the three blocks of the per-thread-stream section, which come from the cudaMalloc
  // segment (StreamEvents::across_threads in allocator/stream_events.h).
  EXPECT_NE(json.find("\"allocations\":3007,\"cache_hits\":3004"), std::string::npos) << json;
  EXPECT_NE(json.find("\"reserved_bytes\":{\"current\":" + std::to_string(24 * MiB)),
            std::string::npos)
      << json;
  std::remove(stats.c_str());
}

TEST(PreloadShim, ForeignPointersPassThroughAndDoubleFreesAreRefused) {
  const ClientRun run = run_client(preload());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("foreign_free"), 0);
  EXPECT_EQ(run.number("fake.free_calls"), 1) << "only the foreign pointer reaches cudaFree";
  EXPECT_EQ(run.number("double_free"), 1);
  EXPECT_EQ(run.number("fake.free_errors"), 0) << "a double free must never reach the runtime";
  EXPECT_NE(run.output.find("double free"), std::string::npos) << run.output;
  EXPECT_EQ(run.number("malloc_async"), 0);
  EXPECT_EQ(run.number("free_async"), 0);
  EXPECT_EQ(run.number("zero_size"), 0);
}

TEST(PreloadShim, ABlockFreedOnOneThreadsPerThreadStreamWaitsForThatThreadsWork) {
  const ClientRun run = run_client(preload());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("per_thread_failures"), 0);
  EXPECT_EQ(run.number("per_thread_block_reused_at_once"), 0)
      << "the second thread got the first one's block before its free's event completed";
  EXPECT_EQ(run.number("per_thread_block_reused_after_its_event"), 1)
      << "the block never came back";
}

TEST(PreloadShim, MemGetInfoAnswersWithinTheBudget) {
  const ClientRun run = run_client(preload());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("mem_total"), 64 * MiB);
  EXPECT_EQ(run.number("mem_free"), 64 * MiB - (1024 + 12 * MiB));
}

TEST(PreloadShim, ARuntimeThatCallsItselfDoesNotRecurseIntoTheAllocator) {
  const ClientRun run = run_client(preload("FAKE_CUDART_REENTER=1"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("loop_failures"), 0);
  // The runtime's own 256-byte calls went straight to it, not into actmem's pools.
  EXPECT_NE(run.text("fake.malloc_sizes").find("256"), std::string::npos) << run.output;
}

TEST(PreloadShim, ARuntimeWithoutTheEventFunctionsIsPassedThroughAndTheUserIsToldOnce) {
  const ClientRun run = run_client(preload(), SHIM_CLIENT_WITHOUT_EVENTS);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("loop_failures"), 0);
  EXPECT_GE(run.number("fake.malloc_calls"), 3000) << "every call must reach the runtime";
  const std::string warning =
      "actmem: libactmem_preload.so is not managing CUDA memory: the CUDA runtime beneath it "
      "lacks cudaEventRecord, cudaEventQuery. Every call goes to the runtime unchanged; "
      "ACTMEM_BUDGET=64MiB is not in force.";
  const std::size_t at = run.output.find(warning);
  EXPECT_NE(at, std::string::npos) << run.output;
  EXPECT_EQ(run.output.find(warning, at + 1), std::string::npos) << "told more than once";
}

TEST(PreloadShim, ARuntimeLoadedLocallyIsFoundAndServed) {
  // local_client dlopens a library that links the fake runtime RTLD_LOCAL, as Python loads
  // extension modules: the shim's RTLD_NEXT lookup cannot see that runtime.
  const ClientRun run =
      run_client(preload(), std::string(LOCAL_CLIENT) + " " + LOCAL_CUDA_USER);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.number("loop_failures"), 0) << run.output;
  EXPECT_EQ(run.number("fake.malloc_calls"), 1) << "one segment, then the cache:\n" << run.output;
  EXPECT_EQ(run.output.find("not managing"), std::string::npos) << run.output;
}

TEST(PreloadShim, AMalformedBudgetStopsTheProgramAtStart) {
  const ClientRun run = run_client("LD_PRELOAD=" ACTMEM_PRELOAD_SO " ACTMEM_BUDGET=lots");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.output.find("ACTMEM_BUDGET='lots' is invalid"), std::string::npos) << run.output;
  EXPECT_EQ(run.values.count("loop_failures"), 0u) << "main must not run";
}

}  // namespace

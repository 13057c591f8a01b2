// The C ABI of libactmem_alloc.so, in process (ctest sets ACTMEM_BACKEND=host and
// ACTMEM_BUDGET=64MiB for this binary), and through a probe program for what happens at load and
// at exit.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "allocator/actmem_alloc.h"
#include "tests/support/run_process.h"

namespace {

using actmem::testing::read_file;
using actmem::testing::run_process;
using actmem::testing::temp_path;

constexpr size_t MiB = 1 << 20;

TEST(CApi, MallocAndFreeRoundTripThroughTheCache) {
  void* p = actmem_malloc(1000, 0, nullptr);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 512, 0u);
  actmem_free(p, 1000, 0, nullptr);
  void* q = actmem_malloc(1000, 0, nullptr);
  EXPECT_EQ(q, p);
  actmem_free(q, 1000, 0, nullptr);
  const std::string json = actmem_stats_json();
  EXPECT_NE(json.find("\"devices\":{\"0\":{\"backend\":\"host\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"cache_hits\":"), std::string::npos) << json;
}

TEST(CApi, ZeroBytesAndNullAreHarmless) {
  EXPECT_EQ(actmem_malloc(0, 0, nullptr), nullptr);
  actmem_free(nullptr, 0, 0, nullptr);
}

TEST(CApi, BudgetComesFromTheEnvironmentAndCanBeChanged) {
  EXPECT_EQ(actmem_get_budget(0), 64 * MiB);
  EXPECT_EQ(actmem_malloc(65 * MiB, 0, nullptr), nullptr);
  const char* error = actmem_last_error();
  ASSERT_NE(error, nullptr);
  EXPECT_NE(std::string(error).find("exceeds the budget"), std::string::npos) << error;
  actmem_set_budget(0, 128 * MiB);
  void* p = actmem_malloc(65 * MiB, 0, nullptr);
  EXPECT_NE(p, nullptr);
  actmem_free(p, 65 * MiB, 0, nullptr);
  actmem_empty_cache();
  actmem_set_budget(0, 64 * MiB);
}

// PyTorch's CUDAPluggableAllocator does not check for NULL: its entry point throws instead.
TEST(CApi, TheTorchEntryPointThrowsWhereMallocReturnsNull) {
  try {
    actmem_torch_malloc(65 * MiB, 0, nullptr);
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("exceeds the budget"), std::string::npos)
        << error.what();
  }
  EXPECT_NE(std::string(actmem_last_error()).find("exceeds the budget"), std::string::npos);
  void* p = actmem_torch_malloc(1000, 0, nullptr);
  ASSERT_NE(p, nullptr);
  actmem_free(p, 1000, 0, nullptr);
  EXPECT_EQ(actmem_torch_malloc(0, 0, nullptr), nullptr);
}

TEST(CApiDeathTest, ADoubleFreeAbortsWithAMessage) {
  void* p = actmem_malloc(4096, 0, nullptr);
  actmem_free(p, 4096, 0, nullptr);
  EXPECT_DEATH(actmem_free(p, 4096, 0, nullptr), "double free");
  int local = 0;
  EXPECT_DEATH(actmem_free(&local, 4, 0, nullptr), "never allocated by actmem");
}

TEST(CApiProcess, MalformedEnvironmentStopsTheProgramAtLoad) {
  const auto result = run_process("ACTMEM_BUDGET=12XB " ACTMEM_C_API_PROBE);
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("ACTMEM_BUDGET='12XB' is invalid"), std::string::npos)
      << result.output;
  EXPECT_EQ(result.output.find("probe ran"), std::string::npos) << "main ran: " << result.output;
  const auto conf = run_process("ACTMEM_ALLOC_CONF=max_split:3 " ACTMEM_C_API_PROBE);
  EXPECT_EQ(conf.exit_code, 2) << conf.output;
  EXPECT_NE(conf.output.find("unknown key 'max_split'"), std::string::npos) << conf.output;
}

TEST(CApiProcess, StatsAreWrittenAtExit) {
  const std::string stats = temp_path("actmem-stats");
  const auto result = run_process("ACTMEM_BACKEND=host ACTMEM_STATS=" + stats + " " +
                                  ACTMEM_C_API_PROBE);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const std::string json = read_file(stats);
  // The probe allocates 3 x 1000 bytes (rounded to 1024) and frees one.
  EXPECT_NE(json.find("\"allocated_bytes\":{\"current\":2048,\"peak\":3072,\"total\":3072}"),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"backend_allocs\":1"), std::string::npos) << json;
  std::remove(stats.c_str());
}

}  // namespace

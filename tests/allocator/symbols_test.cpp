// The shared libraries export exactly their contract: the C ABI, or the interposed CUDA functions.
#include <gtest/gtest.h>

#include <set>
#include <sstream>
#include <string>

#include "tests/support/run_process.h"

namespace {

std::set<std::string> exported_symbols(const std::string& library) {
  const auto result = actmem::testing::run_process("nm -D --defined-only " + library);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  std::set<std::string> symbols;
  std::istringstream lines(result.output);
  std::string address, type, name;
  while (lines >> address >> type >> name) symbols.insert(name);
  return symbols;
}

TEST(ExportedSymbols, LibActmemAllocExportsOnlyTheCApi) {
  EXPECT_EQ(exported_symbols(ACTMEM_ALLOC_SO),
            (std::set<std::string>{"actmem_empty_cache", "actmem_free", "actmem_get_budget",
                                   "actmem_last_error", "actmem_malloc", "actmem_record_stream",
                                   "actmem_set_budget", "actmem_stats_json", "actmem_torch_malloc"}));
}

TEST(ExportedSymbols, ThePreloadShimExportsOnlyTheInterposedFunctions) {
#if defined(ACTMEM_PRELOAD_SO)
  EXPECT_EQ(exported_symbols(ACTMEM_PRELOAD_SO),
            (std::set<std::string>{"cudaFree", "cudaFreeAsync", "cudaMalloc", "cudaMallocAsync",
                                   "cudaMemGetInfo"}));
#else
  GTEST_SKIP() << "built without the CUDA toolkit: no LD_PRELOAD shim";
#endif
}

}  // namespace

// What Google Benchmark says of a run that did not complete, across its versions: 1.7 has
// Run::error_occurred and Run::error_message; 1.8 replaced them with Run::skipped (an enum that
// also covers SkipWithMessage) and Run::skip_message. CMake compiles a probe against the installed
// version and defines ACTMEM_BENCHMARK_RUN_SKIPPED when it has the second form.
#pragma once

#include <benchmark/benchmark.h>

#include <string>

namespace actmem::bench {

// True when the run stopped with SkipWithError (or, on 1.8 and later, SkipWithMessage): it has no
// measurement to report.
inline bool run_failed(const benchmark::BenchmarkReporter::Run& run) {
#if defined(ACTMEM_BENCHMARK_RUN_SKIPPED)
  return run.skipped != benchmark::internal::NotSkipped;
#else
  return run.error_occurred;
#endif
}

// The message the run stopped with; empty for a run that completed.
inline const std::string& run_failure_message(const benchmark::BenchmarkReporter::Run& run) {
#if defined(ACTMEM_BENCHMARK_RUN_SKIPPED)
  return run.skip_message;
#else
  return run.error_message;
#endif
}

}  // namespace actmem::bench

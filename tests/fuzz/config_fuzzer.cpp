// Fuzzes the parsers of every ACTMEM_* variable the C++ side reads: the allocator's
// (ACTMEM_BACKEND, ACTMEM_BUDGET, ACTMEM_ALLOC_CONF, ACTMEM_STATS, ACTMEM_TRACE) and the policy's
// (ACTMEM_POLICY, ACTMEM_OFFLOAD_MIN_BYTES, ACTMEM_HOST_BUDGET, ACTMEM_PREFETCH_WINDOW,
// ACTMEM_LOG). The input is their values, separated by NUL bytes, in that order (fewer values:
// the rest unset).
//
// A malformed value must be refused with the library's own error (ConfigError from the
// allocator's, std::invalid_argument from the policy's) naming the variable; any other exception,
// a crash or a sanitizer report is a finding. A byte count that parses comes back the same when
// printed in bytes and parsed again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "allocator/config.h"
#include "allocator/errors.h"
#include "policy/policy_config.h"

namespace {

constexpr const char* kVariables[] = {
    "ACTMEM_BACKEND", "ACTMEM_BUDGET",          "ACTMEM_ALLOC_CONF",  "ACTMEM_STATS",
    "ACTMEM_TRACE",   "ACTMEM_POLICY",          "ACTMEM_OFFLOAD_MIN_BYTES",
    "ACTMEM_HOST_BUDGET", "ACTMEM_PREFETCH_WINDOW", "ACTMEM_LOG"};
constexpr std::size_t kCount = sizeof(kVariables) / sizeof(kVariables[0]);

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "config_fuzzer: %s\n", what.c_str());
  std::abort();
}

void expect_names(const std::exception& error, const char* variable) {
  if (std::string(error.what()).find(variable) == std::string::npos) {
    finding(std::string("an error does not name ") + variable + ": " + error.what());
  }
}

void check_byte_count(const std::string& text) {
  std::size_t bytes = 0;
  try {
    bytes = actmem::alloc::parse_bytes(text, "ACTMEM_BUDGET");
  } catch (const actmem::alloc::ConfigError& error) {
    expect_names(error, "ACTMEM_BUDGET");
    return;
  }
  const std::string printed = std::to_string(bytes) + "B";
  if (actmem::alloc::parse_bytes(printed, "again") != bytes) {
    finding("'" + text + "' parsed as " + std::to_string(bytes) + ", which does not read back");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> values;
  std::string current;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      values.push_back(current);
      current.clear();
    } else {
      current += static_cast<char>(data[i]);
    }
  }
  values.push_back(current);
  const auto getenv = [&](const char* name) -> const char* {
    for (std::size_t i = 0; i < kCount && i < values.size(); ++i) {
      if (std::string(name) == kVariables[i]) return values[i].c_str();
    }
    return nullptr;
  };

  try {
    actmem::alloc::ProcessConfig::from_environment(getenv);
  } catch (const actmem::alloc::ConfigError& error) {
    if (std::string(error.what()).find("ACTMEM_") == std::string::npos) {
      finding(std::string("an error names no variable: ") + error.what());
    }
  }
  try {
    actmem::PolicyConfig::from_environment(getenv);
  } catch (const std::invalid_argument& error) {
    if (std::string(error.what()).find("ACTMEM_") == std::string::npos) {
      finding(std::string("an error names no variable: ") + error.what());
    }
  }
  if (values.size() > 1) check_byte_count(values[1]);
  return 0;
}

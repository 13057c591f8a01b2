// ACTMEM_* parsing: every accepted form, and a clear error for every malformed one.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "allocator/config.h"
#include "allocator/errors.h"

namespace actmem::alloc {
namespace {

ProcessConfig from(const std::map<std::string, std::string>& env) {
  return ProcessConfig::from_environment([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

// The ConfigError message for `env`, or "" if it parsed.
std::string error_of(const std::map<std::string, std::string>& env) {
  try {
    from(env);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

TEST(ParseBytes, AcceptsNumbersAndUnits) {
  EXPECT_EQ(parse_bytes("1048576", "X"), 1048576u);
  EXPECT_EQ(parse_bytes("512MiB", "X"), 512ull << 20);
  EXPECT_EQ(parse_bytes("6GiB", "X"), 6ull << 30);
  EXPECT_EQ(parse_bytes("1500MB", "X"), 1500000000u);
  EXPECT_EQ(parse_bytes("1.5 GB", "X"), 1500000000u);
  EXPECT_EQ(parse_bytes("2kib", "X"), 2048u);
  EXPECT_EQ(parse_bytes(" 64 B ", "X"), 64u);
  EXPECT_EQ(parse_bytes("1TiB", "X"), 1ull << 40);
}

TEST(ParseBytes, RejectsMalformedValuesNamingTheSource) {
  for (const char* bad : {"", "abc", "12XB", "-5MiB", "0", "0.3", "1.5B", "GiB", "1e30", "nan"}) {
    try {
      parse_bytes(bad, "ACTMEM_BUDGET");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ConfigError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find("ACTMEM_BUDGET='"), std::string::npos) << message;
      EXPECT_NE(message.find(bad), std::string::npos) << message;
    }
  }
  EXPECT_NE(error_of({{"ACTMEM_BUDGET", "12XB"}}).find("unknown unit 'XB'"), std::string::npos);
}

TEST(ProcessConfig, DefaultsWhenNothingIsSet) {
  const ProcessConfig config = from({});
  EXPECT_EQ(config.backend, BackendKind::kAuto);
  EXPECT_FALSE(config.allocator.budget_bytes.has_value());
  EXPECT_EQ(config.allocator.max_split_size, static_cast<std::size_t>(-1));
  EXPECT_FALSE(config.allocator.record_trace);
  EXPECT_TRUE(config.allocator.reclaim_holes);
  EXPECT_TRUE(config.stats_path.empty());
}

TEST(ProcessConfig, ReadsEveryVariable) {
  const ProcessConfig config = from({{"ACTMEM_BACKEND", "host"},
                                     {"ACTMEM_BUDGET", "6GiB"},
                                     {"ACTMEM_ALLOC_CONF",
                                      "max_split_size_mb:128, pressure_rounds:2,trace:true,"
                                      "trace_capacity:1000,backend:vmm,reclaim_holes:false"},
                                     {"ACTMEM_STATS", "/tmp/stats.json"}});
  EXPECT_EQ(config.backend, BackendKind::kHost);
  EXPECT_EQ(config.allocator.budget_bytes, std::optional<std::size_t>(6ull << 30));
  EXPECT_EQ(config.allocator.max_split_size, 128ull << 20);
  EXPECT_EQ(config.allocator.pressure_rounds, 2);
  EXPECT_TRUE(config.allocator.record_trace);
  EXPECT_EQ(config.allocator.trace_capacity, 1000u);
  EXPECT_EQ(config.allocator.growable, std::optional<bool>(true));
  EXPECT_FALSE(config.allocator.reclaim_holes);
  EXPECT_EQ(from({{"ACTMEM_ALLOC_CONF", "backend:cuda"}}).allocator.growable,
            std::optional<bool>(false));
  EXPECT_EQ(from({}).allocator.growable, std::nullopt);
  EXPECT_EQ(config.stats_path, "/tmp/stats.json");
  const ProcessConfig traced = from({{"ACTMEM_TRACE", "/tmp/trace.txt"}});
  EXPECT_TRUE(traced.allocator.record_trace);
  EXPECT_EQ(traced.trace_path, "/tmp/trace.txt");
}

TEST(ProcessConfig, MalformedValuesAreClearErrors) {
  const std::map<std::string, std::map<std::string, std::string>> cases = {
      {"expected one of host, cuda, auto", {{"ACTMEM_BACKEND", "gpu"}}},
      {"unknown key 'max_split_mb'", {{"ACTMEM_ALLOC_CONF", "max_split_mb:128"}}},
      {"keys: backend, max_split_size_mb, pressure_rounds, reclaim_holes, trace, trace_capacity",
       {{"ACTMEM_ALLOC_CONF", "bogus:1"}}},
      {"expected key:value", {{"ACTMEM_ALLOC_CONF", "max_split_size_mb"}}},
      {"expected a whole number from 21", {{"ACTMEM_ALLOC_CONF", "max_split_size_mb:20"}}},
      {"expected a whole number", {{"ACTMEM_ALLOC_CONF", "pressure_rounds:many"}}},
      {"expected true or false", {{"ACTMEM_ALLOC_CONF", "trace:yes please"}}},
      {"ACTMEM_ALLOC_CONF reclaim_holes", {{"ACTMEM_ALLOC_CONF", "reclaim_holes:sometimes"}}},
      {"expected vmm (growable segments) or classic", {{"ACTMEM_ALLOC_CONF", "backend:gpu"}}},
      {"expected a file path", {{"ACTMEM_STATS", "  "}}},
  };
  for (const auto& [expected, env] : cases) {
    const std::string message = error_of(env);
    EXPECT_NE(message.find(expected), std::string::npos)
        << "for " << env.begin()->first << "=" << env.begin()->second << " got: " << message;
    EXPECT_NE(message.find(env.begin()->first), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace actmem::alloc

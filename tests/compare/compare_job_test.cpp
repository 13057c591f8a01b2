// The main job end to end on one tiny model: its JSON schema, the rows it writes, and its refusal
// of bad options.
#include <gtest/gtest.h>

#include <string>

#include "tests/support/json_parser.h"
#include "tests/support/run_process.h"

namespace actmem::testing {
namespace {

const char* const kRowFields[] = {
    "model", "size", "policy", "budget_bytes", "batch", "fits", "least_budget_bytes",
    "peak_bytes", "reserved_bytes", "step_seconds", "step_seconds_min", "step_seconds_max",
    "measured_steps", "step_vs_keep", "samples_per_second", "max_batch", "max_batch_budget_bytes",
    "offloaded_bytes", "recomputed_bytes", "grad_max_abs_diff_vs_keep"};

TEST(CompareJob, WritesOneRecordPerModelAndPolicyWithEveryField) {
  const std::string out = temp_path("compare");
  const ProcessResult result = run_process(
      std::string(ACTMEM_COMPARE) +
      " --size tiny --models lstm --policies keep,recompute,offload --steps 2 --out " + out);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("lstm (tiny) keep: 3 warm-up steps and a memory step"),
            std::string::npos)
      << "a progress line per phase";
  EXPECT_NE(result.output.find("lstm (tiny): 3 rows take turns: a shared round, then 2 measured"),
            std::string::npos);
  EXPECT_NE(result.output.find("## lstm (tiny)"), std::string::npos) << "the table on the terminal";

  const Json summary = parse_json(read_file(out + "/summary.json"));
  const Json& rows = summary.at("rows");
  ASSERT_EQ(rows.items.size(), 3u);
  std::int64_t keep_peak = 0;
  for (const Json& row : rows.items) {
    for (const char* field : kRowFields) EXPECT_NO_THROW(row.at(field)) << field;
    const std::string policy = row.at("policy").text;
    EXPECT_EQ(row.at("model").text, "lstm");
    EXPECT_EQ(row.at("size").text, "tiny");
    EXPECT_GT(row.at("peak_bytes").number(), 0) << policy;
    EXPECT_GT(row.at("max_batch").number(), 0) << policy;
    EXPECT_EQ(row.at("grad_max_abs_diff_vs_keep").number(), 0.0) << policy;
    EXPECT_TRUE(row.at("fits").boolean) << policy;
    EXPECT_EQ(row.at("measured_steps").number(), 2) << policy;
    EXPECT_LE(row.at("step_seconds_min").number(), row.at("step_seconds").number()) << policy;
    EXPECT_GE(row.at("step_seconds_max").number(), row.at("step_seconds").number()) << policy;
    EXPECT_GT(row.at("step_vs_keep").number(), 0) << policy;
    if (policy == "keep") keep_peak = static_cast<std::int64_t>(row.at("peak_bytes").number());
  }
  EXPECT_EQ(rows.items[0].at("policy").text, "keep");
  EXPECT_EQ(rows.items[0].at("step_vs_keep").number(), 1.0) << "keep against itself, per round";
  EXPECT_LT(rows.items[1].at("peak_bytes").number(), keep_peak) << "recompute saves memory";
  EXPECT_GT(rows.items[1].at("recomputed_bytes").number(), 0);
  EXPECT_GT(rows.items[2].at("offloaded_bytes").number(), 0);
  EXPECT_NE(read_file(out + "/summary.md").find("| recompute |"), std::string::npos);
  EXPECT_EQ(read_file(out + "/summary.svg").rfind("<svg", 0), 0u);
}

// A budget a step cannot fit is an outcome of its row, not a failure of the job.
TEST(CompareJob, ARowThatDoesNotFitIsReportedAndTheJobSucceeds) {
  const std::string out = temp_path("compare_tight");
  const ProcessResult result =
      run_process(std::string(ACTMEM_COMPARE) +
                  " --size tiny --models lstm --policies auto --auto-budgets 5 --no-max-batch "
                  "--warmup 1 --steps 1 --out " + out);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const Json rows = parse_json(read_file(out + "/summary.json")).at("rows");
  ASSERT_EQ(rows.items.size(), 3u) << "keep, auto at 5 %, auto at keep's reserved bytes";
  EXPECT_EQ(rows.items[0].at("policy").text, "keep") << "keep is always the reference";
  const Json& tight = rows.items[1];
  EXPECT_FALSE(tight.at("fits").boolean);
  EXPECT_GT(tight.at("least_budget_bytes").number(), tight.at("budget_bytes").number());
  EXPECT_TRUE(rows.items[2].at("fits").boolean);
  EXPECT_NE(read_file(out + "/summary.md").find("does not fit: needs ≥"), std::string::npos);
}

TEST(CompareJob, RefusesBadOptionsNamingThem) {
  const std::string compare = ACTMEM_COMPARE;
  struct Case {
    std::string args, message;
  } cases[] = {
      {"--models resnet,alexnet", "--models: unknown 'alexnet'; valid: resnet, densenet, lstm, vnet"},
      {"--policies keep,fast", "--policies: unknown 'fast'"},
      {"--size huge", "unknown size 'huge'; valid sizes: tiny, small, full"},
      {"--steps 0", "--steps needs a whole number from 1 to 1000, got '0'"},
      {"--budget lots", "--budget"},
      {"--frobnicate", "unknown option '--frobnicate' (see --help)"},
      {"--out", "--out needs a value"},
      {"--device tpu", "--device: unknown 'tpu'; valid: cpu, cuda"},
      {"--preset fast", "--preset: unknown 'fast'; valid: gpu-check"},
      {"--device cuda", "--device cuda: actmem manages CPU in this process"},
      {"--benchmark_filter=lstm", "choose rows with --models and --policies"},
  };
  for (const Case& c : cases) {
    const ProcessResult result = run_process(compare + " " + c.args);
    EXPECT_EQ(result.exit_code, 2) << c.args << "\n" << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.args << "\n" << result.output;
  }
  const ProcessResult help = run_process(compare + " --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--auto-budgets LIST"), std::string::npos);
}

}  // namespace
}  // namespace actmem::testing

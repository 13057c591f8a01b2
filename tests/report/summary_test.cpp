// The main job's report: JSON that parses and holds every field, Markdown ratios against the keep
// row of the same model and size, an SVG with a bar per row per metric and escaped text, and the
// three files written (or a clear error).
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/report/summary.h"
#include "tests/support/json_parser.h"

namespace actmem::report {
namespace {

constexpr std::int64_t kMiB = 1 << 20;

using testing::Json;
using testing::parse_json;


TEST(JsonParserSelfTest, RejectsWhatIsNotJson) {
  for (const char* bad :
       {"{\"a\":NaN}", "{\"a\":inf}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":\"\n\"}",
        "{\"a\":\"\\x\"}", "{\"a\":1,}", "[1 2]", "{\"a\":1}}", "\"abc"}) {
    EXPECT_THROW(parse_json(bad), std::runtime_error) << bad;
  }
  EXPECT_EQ(parse_json("{\"a\":[1e-07,-0.5,null,\"\\u0001\\\"\"]}").at("a").items.size(), 4u);
}

// --- summaries ---

SummaryRow make_row(const std::string& model, const std::string& size, const std::string& policy,
                    std::int64_t peak_bytes, double step_seconds) {
  SummaryRow row;
  row.model = model;
  row.size = size;
  row.policy = policy;
  row.batch = 32;
  row.peak_bytes = peak_bytes;
  row.reserved_bytes = peak_bytes + 2 * kMiB;
  row.step_seconds = step_seconds;
  row.samples_per_second = 32 / step_seconds;
  return row;
}

// Two models, each under keep, recompute and offload, every field distinct from its neighbours'.
Summary two_models_three_policies() {
  Summary summary;
  summary.machine = "x86_64, 2 cores, CPU LibTorch 2.11";
  summary.command = "./run.sh --sizes small";
  const char* const policies[] = {"keep", "recompute", "offload"};
  std::int64_t n = 0;
  for (const char* model : {"resnet", "lstm"}) {
    for (const char* policy : policies) {
      ++n;
      SummaryRow row =
          make_row(model, "small", policy, n * 10 * kMiB, 0.125 * static_cast<double>(n));
      row.budget_bytes = n * 100 * kMiB;
      row.batch = 16 + n;
      row.reserved_bytes = n * 11 * kMiB + 1;
      row.samples_per_second = 1000.5 + static_cast<double>(n);
      row.max_batch = 64 + n;
      row.step_seconds_min = row.step_seconds * 0.75;
      row.step_seconds_max = row.step_seconds * 1.5;
      row.measured_steps = 4 + n;
      row.offloaded_bytes = n * 3 + 1;
      row.recomputed_bytes = n * 5 + 2;
      row.copy_seconds = 0.001 * static_cast<double>(n);
      row.copy_hidden = 1.0 / static_cast<double>(n);
      row.grad_max_abs_diff_vs_keep = 1e-7 * static_cast<double>(n);
      summary.rows.push_back(row);
    }
  }
  return summary;
}

const char* const kRowFields[] = {"model",
                                  "size",
                                  "policy",
                                  "budget_bytes",
                                  "batch",
                                  "fits",
                                  "least_budget_bytes",
                                  "peak_bytes",
                                  "reserved_bytes",
                                  "step_seconds",
                                  "step_seconds_min",
                                  "step_seconds_max",
                                  "measured_steps",
                                  "step_vs_keep",
                                  "samples_per_second",
                                  "max_batch",
                                  "max_batch_budget_bytes",
                                  "offloaded_bytes",
                                  "recomputed_bytes",
                                  "copy_seconds",
                                  "copy_hidden",
                                  "grad_max_abs_diff_vs_keep"};

std::string as_text(std::int64_t value) { return std::to_string(value); }

TEST(SummaryJson, EveryFieldOfEveryRowByName) {
  const Summary summary = two_models_three_policies();
  const std::string json = to_json(summary);
  Json document;
  ASSERT_NO_THROW(document = parse_json(json)) << json;
  ASSERT_EQ(document.type, Json::Type::kObject);
  ASSERT_EQ(document.members.size(), 3u);
  EXPECT_EQ(document.at("machine").text, summary.machine);
  EXPECT_EQ(document.at("command").text, summary.command);
  const Json& rows = document.at("rows");
  ASSERT_EQ(rows.type, Json::Type::kArray);
  ASSERT_EQ(rows.items.size(), 6u);
  for (std::size_t i = 0; i < rows.items.size(); ++i) {
    SCOPED_TRACE("row " + std::to_string(i));
    const Json& got = rows.items[i];
    const SummaryRow& want = summary.rows[i];
    ASSERT_EQ(got.type, Json::Type::kObject);
    ASSERT_EQ(got.members.size(), std::size(kRowFields));
    for (std::size_t f = 0; f < std::size(kRowFields); ++f) {
      EXPECT_EQ(got.members[f].first, kRowFields[f]);
    }
    EXPECT_EQ(got.at("model").type, Json::Type::kString);
    EXPECT_EQ(got.at("model").text, want.model);
    EXPECT_EQ(got.at("size").text, want.size);
    EXPECT_EQ(got.at("policy").text, want.policy);
    // Integers as exact text, not through a double.
    EXPECT_EQ(got.at("budget_bytes").text, as_text(want.budget_bytes));
    EXPECT_EQ(got.at("batch").text, as_text(want.batch));
    EXPECT_EQ(got.at("peak_bytes").text, as_text(want.peak_bytes));
    EXPECT_EQ(got.at("reserved_bytes").text, as_text(want.reserved_bytes));
    EXPECT_EQ(got.at("max_batch").text, as_text(want.max_batch));
    EXPECT_EQ(got.at("max_batch_budget_bytes").text, as_text(want.max_batch_budget_bytes));
    EXPECT_EQ(got.at("measured_steps").text, as_text(want.measured_steps));
    EXPECT_EQ(got.at("least_budget_bytes").text, as_text(want.least_budget_bytes));
    EXPECT_EQ(got.at("fits").type, Json::Type::kBool);
    EXPECT_TRUE(got.at("fits").boolean);
    EXPECT_EQ(got.at("offloaded_bytes").text, as_text(want.offloaded_bytes));
    EXPECT_EQ(got.at("recomputed_bytes").text, as_text(want.recomputed_bytes));
    // Doubles round-trip exactly.
    EXPECT_EQ(got.at("step_seconds").number(), want.step_seconds);
    EXPECT_EQ(got.at("samples_per_second").number(), want.samples_per_second);
    EXPECT_EQ(got.at("step_seconds_min").number(), want.step_seconds_min);
    EXPECT_EQ(got.at("step_seconds_max").number(), want.step_seconds_max);
    EXPECT_EQ(got.at("copy_seconds").number(), want.copy_seconds);
    EXPECT_EQ(got.at("copy_hidden").number(), want.copy_hidden);
    EXPECT_EQ(got.at("grad_max_abs_diff_vs_keep").number(), want.grad_max_abs_diff_vs_keep);
  }
}

TEST(SummaryJson, LargeAndNegativeIntegersAreExact) {
  Summary summary;
  SummaryRow row = make_row("resnet", "full", "keep", (std::int64_t{1} << 53) + 1, 1.0);
  row.max_batch = -1;
  row.budget_bytes = std::numeric_limits<std::int64_t>::max();
  summary.rows.push_back(row);
  const Json document = parse_json(to_json(summary));
  const Json& got = document.at("rows").items.at(0);
  EXPECT_EQ(got.at("peak_bytes").text, "9007199254740993");
  EXPECT_EQ(got.at("max_batch").text, "-1");
  EXPECT_EQ(got.at("budget_bytes").text, "9223372036854775807");
}

TEST(SummaryJson, EscapesQuotesBackslashesAndControlCharacters) {
  Summary summary;
  summary.machine = "tab\there, bell\a, nul-free \x1f end";
  summary.command = "./run.sh --name \"a b\" C:\\out";
  summary.rows.push_back(make_row("res\"net\\v2\nnext", "small", "keep", kMiB, 1.0));
  summary.rows[0].size = std::string("sm\r\b\fa\0ll", 9);
  summary.rows[0].policy = "auto – ünïcode";
  const std::string json = to_json(summary);
  Json document;
  ASSERT_NO_THROW(document = parse_json(json)) << json;
  EXPECT_EQ(document.at("machine").text, summary.machine);
  EXPECT_EQ(document.at("command").text, summary.command);
  const Json& row = document.at("rows").items.at(0);
  EXPECT_EQ(row.at("model").text, summary.rows[0].model);
  EXPECT_EQ(row.at("size").text, summary.rows[0].size);
  EXPECT_EQ(row.at("policy").text, summary.rows[0].policy);
  EXPECT_NE(json.find(R"("res\"net\\v2\nnext")"), std::string::npos) << json;
  EXPECT_NE(json.find(R"(bell\u0007)"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("sm\r\b\fa\u0000ll")"), std::string::npos) << json;
}

TEST(SummaryJson, NonFiniteDoublesAreNull) {
  Summary summary;
  SummaryRow row = make_row("lstm", "tiny", "offload", kMiB, 1.0);
  row.step_seconds = std::numeric_limits<double>::quiet_NaN();
  row.samples_per_second = std::numeric_limits<double>::infinity();
  row.step_seconds_max = -std::numeric_limits<double>::infinity();
  row.grad_max_abs_diff_vs_keep = std::numeric_limits<double>::quiet_NaN();
  summary.rows.push_back(row);
  const std::string json = to_json(summary);
  Json document;
  ASSERT_NO_THROW(document = parse_json(json)) << json;
  const Json& got = document.at("rows").items.at(0);
  for (const char* field : {"step_seconds", "samples_per_second", "step_seconds_max",
                            "grad_max_abs_diff_vs_keep"}) {
    EXPECT_EQ(got.at(field).type, Json::Type::kNull) << field;
  }
  EXPECT_EQ(got.at("peak_bytes").text, as_text(kMiB));
}

TEST(SummaryJson, AnEmptySummaryIsValid) {
  const Json document = parse_json(to_json(Summary{}));
  EXPECT_EQ(document.at("rows").type, Json::Type::kArray);
  EXPECT_TRUE(document.at("rows").items.empty());
}

// --- Markdown ---

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The cells of a table line "| a | b |" (cells holding no '|').
std::vector<std::string> cells_of(const std::string& line) {
  std::vector<std::string> cells;
  std::size_t start = line.find('|');
  while (start != std::string::npos) {
    const std::size_t end = line.find('|', start + 1);
    if (end == std::string::npos) break;
    std::string cell = line.substr(start + 1, end - start - 1);
    cell.erase(0, cell.find_first_not_of(' '));
    cell.erase(cell.find_last_not_of(' ') + 1);
    cells.push_back(cell);
    start = end;
  }
  return cells;
}

// The table under the heading "## <heading>": one map from column header to cell per line, keyed
// by the policy cell.
std::map<std::string, std::map<std::string, std::string>> table_under(const std::string& markdown,
                                                                      const std::string& heading) {
  const std::vector<std::string> lines = split_lines(markdown);
  std::size_t i = 0;
  while (i < lines.size() && lines[i] != "## " + heading) ++i;
  if (i == lines.size()) throw std::runtime_error("no heading " + heading + " in\n" + markdown);
  while (i < lines.size() && lines[i].rfind("|", 0) != 0) ++i;
  if (i + 1 >= lines.size()) throw std::runtime_error("no table under " + heading);
  const std::vector<std::string> header = cells_of(lines[i]);
  std::map<std::string, std::map<std::string, std::string>> table;
  for (i += 2; i < lines.size() && lines[i].rfind("|", 0) == 0; ++i) {
    const std::vector<std::string> cells = cells_of(lines[i]);
    if (cells.size() != header.size()) throw std::runtime_error("ragged line " + lines[i]);
    std::map<std::string, std::string> line;
    for (std::size_t c = 0; c < cells.size(); ++c) line[header[c]] = cells[c];
    table[cells[0]] = line;
  }
  return table;
}

TEST(SummaryMarkdown, RatiosAgainstKeepOfTheSameModelAndSize) {
  Summary summary;
  summary.rows.push_back(make_row("resnet", "tiny", "keep", 10 * kMiB, 0.1));
  summary.rows.push_back(make_row("resnet", "small", "keep", 200 * kMiB, 2.0));
  summary.rows.push_back(make_row("resnet", "small", "recompute", 100 * kMiB, 3.0));
  summary.rows.push_back(make_row("resnet", "tiny", "recompute", 8 * kMiB, 0.1));
  summary.rows.push_back(make_row("lstm", "small", "keep", 50 * kMiB, 1.0));
  summary.rows.push_back(make_row("lstm", "small", "offload", 25 * kMiB, 4.0));
  const std::string markdown = to_markdown(summary);

  const auto small = table_under(markdown, "resnet (small)");
  ASSERT_EQ(small.size(), 2u) << markdown;
  EXPECT_EQ(small.at("keep").at("peak vs keep"), "1.00");
  EXPECT_EQ(small.at("keep").at("step vs keep"), "1.00");
  EXPECT_EQ(small.at("recompute").at("peak (MiB)"), "100");
  EXPECT_EQ(small.at("recompute").at("peak vs keep"), "0.50");
  EXPECT_EQ(small.at("recompute").at("step vs keep"), "1.50");

  const auto tiny = table_under(markdown, "resnet (tiny)");
  EXPECT_EQ(tiny.at("recompute").at("peak vs keep"), "0.80");
  EXPECT_EQ(tiny.at("recompute").at("step vs keep"), "1.00");

  const auto lstm = table_under(markdown, "lstm (small)");
  EXPECT_EQ(lstm.at("offload").at("peak vs keep"), "0.50");
  EXPECT_EQ(lstm.at("offload").at("step vs keep"), "4.00");

  // Groups in the order of their first row.
  EXPECT_LT(markdown.find("## resnet (tiny)"), markdown.find("## resnet (small)"));
  EXPECT_LT(markdown.find("## resnet (small)"), markdown.find("## lstm (small)"));
}

TEST(SummaryMarkdown, DashWhenThereIsNoKeepRow) {
  Summary summary;
  summary.rows.push_back(make_row("vnet", "small", "keep", 100 * kMiB, 1.0));
  summary.rows.push_back(make_row("vnet", "full", "recompute", 100 * kMiB, 1.0));
  summary.rows.push_back(make_row("vnet", "full", "offload", 80 * kMiB, 2.0));
  const auto full = table_under(to_markdown(summary), "vnet (full)");
  for (const char* policy : {"recompute", "offload"}) {
    EXPECT_EQ(full.at(policy).at("peak vs keep"), "–") << policy;
    EXPECT_EQ(full.at(policy).at("step vs keep"), "–") << policy;
  }
}

TEST(SummaryMarkdown, KeepWithoutBudgetIsTheReference) {
  Summary summary;
  SummaryRow budgeted_keep = make_row("densenet", "small", "keep", 40 * kMiB, 1.0);
  budgeted_keep.budget_bytes = 512 * kMiB;
  summary.rows.push_back(budgeted_keep);
  summary.rows.push_back(make_row("densenet", "small", "keep", 80 * kMiB, 2.0));
  summary.rows.push_back(make_row("densenet", "small", "recompute", 20 * kMiB, 3.0));
  const auto table = table_under(to_markdown(summary), "densenet (small)");
  EXPECT_EQ(table.at("recompute").at("peak vs keep"), "0.25");
  EXPECT_EQ(table.at("recompute").at("step vs keep"), "1.50");
  EXPECT_EQ(table.at("keep @ 512 MiB").at("peak vs keep"), "0.50");
}

TEST(SummaryMarkdown, BudgetMaxBatchAndZeroKeepValuesReadably) {
  Summary summary;
  SummaryRow keep = make_row("lstm", "tiny", "keep", 0, 0.0);
  summary.rows.push_back(keep);
  SummaryRow auto_row = make_row("lstm", "tiny", "auto", 3 * kMiB, 0.5);
  auto_row.budget_bytes = 512 * kMiB;
  auto_row.max_batch = 96;
  auto_row.max_batch_budget_bytes = 256 * kMiB;
  auto_row.offloaded_bytes = 3 * kMiB / 2;
  auto_row.recomputed_bytes = 0;
  summary.rows.push_back(auto_row);
  const std::string markdown = to_markdown(summary);
  const auto table = table_under(markdown, "lstm (tiny)");
  ASSERT_EQ(table.count("auto @ 512 MiB"), 1u) << markdown;
  const auto& line = table.at("auto @ 512 MiB");
  EXPECT_EQ(line.at("peak vs keep"), "–") << "keep's peak is 0: no ratio";
  EXPECT_EQ(line.at("step vs keep"), "–") << "keep's step time is 0: no ratio";
  EXPECT_EQ(line.at("max batch"), "96 @ 256 MiB");
  EXPECT_EQ(line.at("offloaded (MiB)"), "1.50");
  EXPECT_EQ(line.at("recomputed (MiB)"), "0");
  EXPECT_EQ(line.at("step (ms)"), "500");
  EXPECT_EQ(table.at("keep").at("max batch"), "–") << "not searched";
}

TEST(SummaryMarkdown, TheStepIsTheMedianWithItsSpread) {
  Summary summary;
  SummaryRow keep = make_row("vnet", "small", "keep", 100 * kMiB, 0.5);
  keep.step_seconds_min = 0.48;
  keep.step_seconds_max = 0.61;
  keep.measured_steps = 5;
  summary.rows.push_back(keep);
  SummaryRow single = make_row("vnet", "small", "recompute", 50 * kMiB, 0.75);
  single.measured_steps = 1;
  summary.rows.push_back(single);
  SummaryRow paired = make_row("vnet", "small", "offload", 40 * kMiB, 0.6);
  paired.step_vs_keep = 1.42;  // the median of per-round ratios, not 0.6 / 0.5
  summary.rows.push_back(paired);
  const auto table = table_under(to_markdown(summary), "vnet (small)");
  EXPECT_EQ(table.at("keep").at("step (ms)"), "500 (480–610)");
  EXPECT_EQ(table.at("recompute").at("step (ms)"), "750") << "one step has no spread";
  EXPECT_EQ(table.at("recompute").at("step vs keep"), "1.50") << "not paired: medians divided";
  EXPECT_EQ(table.at("offload").at("step vs keep"), "1.42") << "paired, as measured";
}

TEST(SummaryMarkdown, CopiesGiveTheirTimeAndTheShareHidden) {
  Summary summary;
  summary.rows.push_back(make_row("resnet", "full", "keep", 100 * kMiB, 0.5));
  SummaryRow offload = make_row("resnet", "full", "offload", 40 * kMiB, 0.55);
  offload.copy_seconds = 0.0125;
  offload.copy_hidden = 0.934;
  summary.rows.push_back(offload);
  const auto table = table_under(to_markdown(summary), "resnet (full)");
  EXPECT_EQ(table.at("offload").at("copies (ms, hidden)"), "12.5 (93 %)");
  EXPECT_EQ(table.at("keep").at("copies (ms, hidden)"), "–") << "nothing copied";
}

// keep, and auto at 30 MiB that does not fit, needing at least 45 MiB.
Summary keep_and_a_row_that_does_not_fit() {
  Summary summary;
  summary.rows.push_back(make_row("lstm", "small", "keep", 100 * kMiB, 0.5));
  SummaryRow tight = make_row("lstm", "small", "auto", 0, 0);
  tight.budget_bytes = 30 * kMiB;
  tight.fits = false;
  tight.least_budget_bytes = 45 * kMiB;
  summary.rows.push_back(tight);
  return summary;
}

TEST(SummaryMarkdown, ARowThatDoesNotFitSaysWhatItNeeds) {
  Summary summary = keep_and_a_row_that_does_not_fit();
  SummaryRow unknown = summary.rows[1];
  unknown.budget_bytes = 20 * kMiB;
  unknown.least_budget_bytes = 0;
  summary.rows.push_back(unknown);
  const std::string markdown = to_markdown(summary);
  const auto table = table_under(markdown, "lstm (small)");  // throws on a ragged line
  EXPECT_EQ(table.at("auto @ 30.0 MiB").at("peak (MiB)"), "does not fit: needs ≥ 45.0 MiB");
  EXPECT_EQ(table.at("auto @ 30.0 MiB").at("step (ms)"), "–");
  EXPECT_EQ(table.at("auto @ 30.0 MiB").at("grad diff"), "–");
  EXPECT_EQ(table.at("auto @ 20.0 MiB").at("peak (MiB)"), "does not fit");
  const Json row = parse_json(to_json(summary)).at("rows").items.at(1);
  EXPECT_FALSE(row.at("fits").boolean);
  EXPECT_EQ(row.at("least_budget_bytes").text, as_text(45 * kMiB));
}

TEST(SummaryMarkdown, MarkupInNamesIsEscaped) {
  Summary summary;
  summary.machine = "a|b <i>";
  summary.rows.push_back(make_row("re|snet", "small", "keep", kMiB, 1.0));
  const std::string markdown = to_markdown(summary);
  EXPECT_NE(markdown.find("## re\\|snet (small)"), std::string::npos) << markdown;
  EXPECT_NE(markdown.find("a\\|b \\<i\\>"), std::string::npos) << markdown;
  EXPECT_EQ(markdown.find("<i>"), std::string::npos) << markdown;
}

// --- SVG ---

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

// Checks the XML well-formedness that matters here: tags balance and nest, attribute values are
// quoted, '<' never appears in text and every '&' starts an entity. Returns "" or the problem.
std::string xml_problem(const std::string& xml) {
  std::vector<std::string> open;
  auto entity_ok = [&](std::size_t at) {
    const std::size_t end = xml.find(';', at);
    if (end == std::string::npos) return false;
    const std::string name = xml.substr(at + 1, end - at - 1);
    if (name == "lt" || name == "gt" || name == "amp" || name == "quot" || name == "apos") {
      return true;
    }
    return name.size() > 1 && name[0] == '#' &&
           name.find_first_not_of("0123456789", 1) == std::string::npos;
  };
  std::size_t i = 0;
  bool seen_root = false;
  while (i < xml.size()) {
    const char c = xml[i];
    if (c == '&') {
      if (!entity_ok(i)) return "bad entity at " + std::to_string(i);
      ++i;
      continue;
    }
    if (c != '<') {
      if (open.empty() && c != '\n' && c != ' ') return "text outside the root";
      ++i;
      continue;
    }
    const bool closing = i + 1 < xml.size() && xml[i + 1] == '/';
    std::size_t j = i + (closing ? 2 : 1);
    const std::size_t name_start = j;
    while (j < xml.size() &&
           (std::isalnum(static_cast<unsigned char>(xml[j])) || xml[j] == '-' || xml[j] == ':')) {
      ++j;
    }
    const std::string name = xml.substr(name_start, j - name_start);
    if (name.empty()) return "bad tag at " + std::to_string(i);
    bool self_closing = false;
    while (true) {  // attributes
      while (j < xml.size() && xml[j] == ' ') ++j;
      if (j >= xml.size()) return "unterminated tag " + name;
      if (xml[j] == '>') break;
      if (xml[j] == '/' && j + 1 < xml.size() && xml[j + 1] == '>') {
        self_closing = true;
        ++j;
        break;
      }
      if (closing) return "attributes on a closing tag";
      const std::size_t eq = xml.find('=', j);
      if (eq == std::string::npos || eq + 1 >= xml.size() || xml[eq + 1] != '"') {
        return "unquoted attribute in " + name;
      }
      const std::size_t value_end = xml.find('"', eq + 2);
      if (value_end == std::string::npos) return "unterminated attribute in " + name;
      const std::string value = xml.substr(eq + 2, value_end - eq - 2);
      if (value.find('<') != std::string::npos) return "'<' in an attribute of " + name;
      for (std::size_t a = value.find('&'); a != std::string::npos; a = value.find('&', a + 1)) {
        if (!entity_ok(eq + 2 + a)) return "bad entity in an attribute of " + name;
      }
      j = value_end + 1;
    }
    if (closing) {
      if (open.empty() || open.back() != name) return "unbalanced </" + name + ">";
      open.pop_back();
    } else if (!self_closing) {
      if (open.empty() && seen_root) return "a second root element";
      open.push_back(name);
      seen_root = true;
    }
    i = j + 1;
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  return "";
}

TEST(SummarySvg, WellFormedWithABarPerRowPerMetric) {
  const Summary summary = two_models_three_policies();
  const std::string svg = to_svg(summary);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(svg.substr(svg.find_last_not_of('\n') - 5, 6), "</svg>");
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(count(svg, "class=\"bar peak\""), summary.rows.size());
  EXPECT_EQ(count(svg, "class=\"bar time\""), summary.rows.size());
  EXPECT_EQ(count(svg, "<script"), 0u);
  EXPECT_EQ(count(svg, "href"), 0u) << "nothing external";
  EXPECT_EQ(count(svg, "@font-face"), 0u);
  for (const char* words :
       {"resnet (small)", "lstm (small)", "Peak memory", "Time per sample", "(MiB)"}) {
    EXPECT_NE(svg.find(words), std::string::npos) << words;
  }
}

TEST(SummarySvg, BarsAreScaledAndValuesWritten) {
  Summary summary;
  summary.rows.push_back(make_row("resnet", "small", "keep", 200 * kMiB, 3.2));
  summary.rows.push_back(make_row("resnet", "small", "recompute", 100 * kMiB, 6.4));
  const std::string svg = to_svg(summary);
  // Peak bars: keep is the longest, recompute half of it.
  auto width_of = [&](std::size_t nth, const std::string& css_class) {
    std::size_t at = 0;
    for (std::size_t k = 0; k <= nth; ++k) at = svg.find("class=\"bar " + css_class + "\"", at + 1);
    const std::size_t w = svg.find("width=\"", at) + 7;
    return std::stod(svg.substr(w, svg.find('"', w) - w));
  };
  EXPECT_GT(width_of(0, "peak"), 0);
  EXPECT_NEAR(width_of(1, "peak"), width_of(0, "peak") / 2, 0.1);
  EXPECT_NEAR(width_of(0, "time"), width_of(1, "time") / 2, 0.1);
  EXPECT_NE(svg.find(">200 MiB<"), std::string::npos) << svg;
  EXPECT_NE(svg.find(">100 MiB (0.50× keep)<"), std::string::npos) << svg;
  EXPECT_NE(svg.find(">100 ms<"), std::string::npos) << svg;  // 3.2 s / 32 samples
  EXPECT_NE(svg.find(">200 ms (2.00× keep)<"), std::string::npos) << svg;
}

TEST(SummarySvg, TextIsEscaped) {
  Summary summary;
  summary.machine = "a \"quoted\" 'machine'";
  summary.command = "run <&>";
  SummaryRow row = make_row("net<&", "small", "keep", kMiB, 1.0);
  row.policy = "po<l>icy&";
  summary.rows.push_back(row);
  const std::string svg = to_svg(summary);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_NE(svg.find("net&lt;&amp; (small)"), std::string::npos) << svg;
  EXPECT_NE(svg.find("po&lt;l&gt;icy&amp;"), std::string::npos) << svg;
  EXPECT_NE(svg.find("run &lt;&amp;&gt;"), std::string::npos) << svg;
  EXPECT_EQ(svg.find("net<&"), std::string::npos);
}

TEST(SummarySvg, NonFiniteAndMissingValuesGetEmptyBars) {
  Summary summary;
  SummaryRow row = make_row("vnet", "tiny", "offload", kMiB, 1.0);
  row.step_seconds = std::numeric_limits<double>::quiet_NaN();
  summary.rows.push_back(row);
  SummaryRow no_batch = make_row("vnet", "tiny", "auto", kMiB, 1.0);
  no_batch.batch = 0;
  summary.rows.push_back(no_batch);
  const std::string svg = to_svg(summary);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(count(svg, "class=\"bar time\""), 2u);
  EXPECT_EQ(count(svg, ">n/a<"), 2u) << svg;
  EXPECT_EQ(count(svg, "nan"), 0u) << svg;
}

TEST(SummarySvg, ARowThatDoesNotFitGetsEmptyBarsSayingSo) {
  const std::string svg = to_svg(keep_and_a_row_that_does_not_fit());
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(count(svg, ">does not fit: needs ≥ 45.0 MiB<"), 2u) << "in both charts\n" << svg;
  EXPECT_EQ(count(svg, "width=\"0.0\""), 2u) << svg;
}

TEST(SummarySvg, DeterministicAndEmptyIsValid) {
  EXPECT_EQ(to_svg(two_models_three_policies()), to_svg(two_models_three_policies()));
  const std::string empty = to_svg(Summary{});
  EXPECT_EQ(xml_problem(empty), "") << empty;
  EXPECT_EQ(count(empty, "class=\"bar"), 0u);
}

// --- files ---

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "actmem-report-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(WriteSummary, CreatesTheThreeFilesInAFreshDirectory) {
  TempDir temp;
  const std::filesystem::path directory = temp.path() / "nested" / "out";
  const Summary summary = two_models_three_policies();
  write_summary(summary, directory);
  EXPECT_EQ(read_file(directory / "summary.json"), to_json(summary));
  EXPECT_EQ(read_file(directory / "summary.md"), to_markdown(summary));
  EXPECT_EQ(read_file(directory / "summary.svg"), to_svg(summary));
  // Again over existing files: replaced, not appended to.
  write_summary(summary, directory);
  EXPECT_EQ(read_file(directory / "summary.json"), to_json(summary));
}

// (Permissions cannot make a directory unwritable for root, so a file stands in the way.)
TEST(WriteSummary, ThrowsNamingTheDirectoryItCannotCreate) {
  TempDir temp;
  std::ofstream(temp.path() / "a-file") << "x";
  const std::filesystem::path directory = temp.path() / "a-file" / "out";
  try {
    write_summary(two_models_three_policies(), directory);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find(directory.string()), std::string::npos)
        << error.what();
  }
}

TEST(WriteSummary, ThrowsNamingTheFileItCannotWrite) {
  TempDir temp;
  std::filesystem::create_directory(temp.path() / "summary.md");  // a directory where a file goes
  try {
    write_summary(two_models_three_policies(), temp.path());
    FAIL() << "expected an error";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find((temp.path() / "summary.md").string()),
              std::string::npos)
        << error.what();
  }
  EXPECT_TRUE(std::filesystem::is_regular_file(temp.path() / "summary.json"));
}

}  // namespace
}  // namespace actmem::report

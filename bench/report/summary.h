// The main job's report: memory policies compared on a few models, written as JSON (for
// programs), Markdown (for people reading tables) and SVG (for people reading charts).
//
// Torch-free: the benchmark fills a Summary, this module only formats and writes it.
//
// Every row is compared against the `keep` row of the same model and size (its "keep row"): the
// first row with policy "keep" and no budget, or failing that the first row with policy "keep".
// Groups (a model at a size) and the rows within them appear in the order of their first row in
// Summary::rows. The output depends on nothing but the Summary: no clock, no locale.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace actmem::report {

// One measured configuration: a model at a size under one policy (and budget).
struct SummaryRow {
  std::string model;              // "resnet", "densenet", "lstm", "vnet"
  std::string size;               // "tiny", "small", "full"
  std::string policy;             // "keep", "recompute", "offload", "auto"
  std::int64_t budget_bytes = 0;  // 0: no budget
  std::int64_t batch = 0;
  // False when a step ran out of memory within the budget: the row has no figures but
  // least_budget_bytes, a lower bound of the budget the step needs (0 when unknown).
  bool fits = true;
  std::int64_t least_budget_bytes = 0;
  // Peak device bytes allocated during the step, above the step's start.
  std::int64_t peak_bytes = 0;
  std::int64_t reserved_bytes = 0;  // peak bytes reserved by the allocator
  double step_seconds = 0;          // the median of the measured steps
  double step_seconds_min = 0;      // their spread
  double step_seconds_max = 0;
  std::int64_t measured_steps = 0;
  // The step time against the keep row's, measured paired (the median of per-round ratios); 0
  // when not measured so, and the report then divides the medians.
  double step_vs_keep = 0;
  double samples_per_second = 0;  // batch / the median step
  std::int64_t max_batch = -1;    // largest batch that fits the budget; -1 when not searched
  std::int64_t max_batch_budget_bytes = 0;  // the budget max_batch was searched under
  std::int64_t offloaded_bytes = 0;
  std::int64_t recomputed_bytes = 0;
  // The offload pipeline's host copies (hooks/host_store.h): their time per step, both ways, and
  // the share of it that compute hid (the rest it waited for). 0 and 1 when nothing was copied.
  double copy_seconds = 0;
  double copy_hidden = 1;
  double grad_max_abs_diff_vs_keep = 0;  // max |grad - keep's grad| over every parameter
};

struct Summary {
  std::string machine;  // e.g. "x86_64, 2 cores, CPU LibTorch 1.13" — free text
  std::string command;  // the command line that produced it
  std::vector<SummaryRow> rows;
};

// {"machine":..,"command":..,"rows":[..]}, each row an object with every SummaryRow field under
// its own name, in declaration order. Strings are escaped (quotes, backslash, control characters;
// other bytes, UTF-8 included, pass through); integers are exact; a double is written in its
// shortest round-trip form, or null when it is not finite.
std::string to_json(const Summary& summary);

// A heading per model and size, then a table with a line per row: policy (with its budget, as in
// "auto @ 512 MiB"), batch, peak and reserved MiB, step time (the median, with the least and
// greatest measured in brackets), each of peak and step time as a ratio of the keep row's ("–"
// when there is no keep row or its value is not positive), samples/s, max batch and the budget it
// was searched under, offloaded and recomputed MiB, the copy time per step with the share of it
// hidden ("–" when nothing was copied), and the gradient difference. A row that does
// not fit says so ("does not fit: needs ≥ X MiB") in place of its figures.
std::string to_markdown(const Summary& summary);

// A self-contained SVG (no scripts, no external resources): per model and size, a bar chart of
// peak memory and one of time per sample (step_seconds / batch), one bar per row in each, coloured
// by policy, with the value and its ratio to the keep row written at the bar, axis labels and a
// legend. Each bar is a <rect> of class "bar peak" or "bar time"; a value that is not finite, or a
// time per sample with no batch, gets an empty bar labelled "n/a", and a row that does not fit an
// empty bar labelled "does not fit: needs ≥ X MiB".
std::string to_svg(const Summary& summary);

// Writes to_json, to_markdown and to_svg into `directory`/summary.{json,md,svg}, creating the
// directory if it is missing. Throws std::runtime_error naming the directory or the file that
// could not be created or written; files written before the failure are left in place.
void write_summary(const Summary& summary, const std::filesystem::path& directory);

}  // namespace actmem::report

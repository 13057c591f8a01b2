#include "bench/report/summary.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

namespace actmem::report {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr const char* kDash = "–";

// Numbers go through std::to_chars: the same text whatever the global locale.
std::string chars(double value, std::chars_format format, int precision) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value, format, precision);
  return std::string(buffer, result.ptr);
}

std::string shortest(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

std::string fixed(double value, int decimals) {
  return chars(value, std::chars_format::fixed, decimals);
}

// Three significant digits without an exponent ("1234", "12.3", "0.0123"); an exponent only
// below 1e-4 ("1.23e-07"); "nan" and "inf" as they are.
std::string significant(double value) {
  if (!std::isfinite(value) || value == 0) return shortest(value);
  const double magnitude = std::floor(std::log10(std::fabs(value)));
  if (magnitude < -4) return chars(value, std::chars_format::general, 3);
  return fixed(value, static_cast<int>(std::clamp(2 - magnitude, 0.0, 6.0)));
}

std::string mib(std::int64_t bytes) { return significant(static_cast<double>(bytes) / kMiB); }

// value / base, or nothing when the ratio would mean nothing.
std::optional<double> ratio(double value, double base) {
  if (!std::isfinite(value) || !std::isfinite(base) || base <= 0) return std::nullopt;
  return value / base;
}

std::optional<double> seconds_per_sample(const SummaryRow& row) {
  if (row.batch <= 0 || !std::isfinite(row.step_seconds)) return std::nullopt;
  return row.step_seconds / static_cast<double>(row.batch);
}

// "does not fit: needs ≥ 120 MiB", or without the bound when it is unknown.
std::string does_not_fit(const SummaryRow& row) {
  std::string text = "does not fit";
  if (row.least_budget_bytes > 0) text += ": needs ≥ " + mib(row.least_budget_bytes) + " MiB";
  return text;
}

std::string policy_label(const SummaryRow& row) {
  if (row.budget_bytes <= 0) return row.policy;
  return row.policy + " @ " + mib(row.budget_bytes) + " MiB";
}

// A model at a size, with its rows in input order.
struct Group {
  std::string model;
  std::string size;
  std::vector<const SummaryRow*> rows;
  const SummaryRow* keep = nullptr;  // the keep row, see the header
};

std::vector<Group> group_rows(const Summary& summary) {
  std::vector<Group> groups;
  for (const SummaryRow& row : summary.rows) {
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.model == row.model && g.size == row.size;
    });
    if (group == groups.end()) {
      group = groups.emplace(groups.end());
      group->model = row.model;
      group->size = row.size;
    }
    group->rows.push_back(&row);
    if (row.policy == "keep" &&
        (group->keep == nullptr || (group->keep->budget_bytes > 0 && row.budget_bytes <= 0))) {
      group->keep = &row;
    }
  }
  return groups;
}

std::string group_title(const Group& group) { return group.model + " (" + group.size + ")"; }

// --- JSON ---

void append_json_string(std::string& out, std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  out += '"';
  for (const char c : text) {
    const std::size_t short_escape = std::string_view("\b\f\n\r\t").find(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (short_escape != std::string_view::npos) {
      out += '\\';
      out += "bfnrt"[short_escape];
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += "\\u00";
      out += kHex[(c >> 4) & 0xf];
      out += kHex[c & 0xf];
    } else {
      out += c;
    }
  }
  out += '"';
}

void append_json_number(std::string& out, double value) {
  out += std::isfinite(value) ? shortest(value) : "null";
}

void append_json_number(std::string& out, std::int64_t value) { out += std::to_string(value); }

// Appends `"name":value`, preceded by a comma unless it is the first member.
template <typename T>
void append_member(std::string& out, const char* name, const T& value, bool first = false) {
  if (!first) out += ',';
  append_json_string(out, name);
  out += ':';
  if constexpr (std::is_same_v<T, std::string>) {
    append_json_string(out, value);
  } else {
    append_json_number(out, value);
  }
}

// --- Markdown ---

// Text that CommonMark and GFM tables show as written: ASCII punctuation they would read as markup
// is backslash-escaped, line breaks become spaces.
std::string markdown_text(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '\n' || c == '\r') {
      out += ' ';
    } else {
      if (std::string_view("\\`*_[]<>|#&!~").find(c) != std::string_view::npos) out += '\\';
      out += c;
    }
  }
  return out;
}

// A code span that holds `text` whatever backticks it contains.
std::string markdown_code(std::string_view text) {
  std::size_t longest = 0, run = 0;
  for (const char c : text) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  std::string flat(text);
  std::replace(flat.begin(), flat.end(), '\n', ' ');
  std::replace(flat.begin(), flat.end(), '\r', ' ');
  const std::string fence(longest + 1, '`');
  const bool pad = !flat.empty() && (flat.front() == '`' || flat.back() == '`');
  return fence + (pad ? " " : "") + flat + (pad ? " " : "") + fence;
}

std::string ratio_cell(std::optional<double> value) {
  return value ? fixed(*value, 2) : std::string(kDash);
}

std::string max_batch_cell(const SummaryRow& row) {
  if (row.max_batch < 0) return kDash;
  std::string cell = std::to_string(row.max_batch);
  if (row.max_batch_budget_bytes > 0) cell += " @ " + mib(row.max_batch_budget_bytes) + " MiB";
  return cell;
}

// "533 (520–561)": the median step in ms, and the least and greatest measured.
std::string step_cell(const SummaryRow& row) {
  std::string cell = significant(row.step_seconds * 1e3);
  if (row.measured_steps > 1) {
    cell += " (" + significant(row.step_seconds_min * 1e3) + kDash +
            significant(row.step_seconds_max * 1e3) + ")";
  }
  return cell;
}

// "12.5 (93 %)": the copy time per step in ms, and the share of it hidden.
std::string copies_cell(const SummaryRow& row) {
  if (!(row.copy_seconds > 0)) return kDash;
  return significant(row.copy_seconds * 1e3) + " (" +
         chars(std::round(row.copy_hidden * 100), std::chars_format::fixed, 0) + " %)";
}

// --- SVG ---

// Text and attribute values for XML 1.0: markup characters as entities; control characters it
// does not allow as spaces.
std::string xml_text(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '&') {
      out += "&amp;";
    } else if (c == '<') {
      out += "&lt;";
    } else if (c == '>') {
      out += "&gt;";
    } else if (c == '"') {
      out += "&quot;";
    } else if (c == '\'') {
      out += "&apos;";
    } else {
      out += static_cast<unsigned char>(c) >= 0x20 || c == '\t' ? c : ' ';
    }
  }
  return out;
}

std::string px(double value) { return fixed(value, 1); }

const char* policy_colour(const std::string& policy) {
  if (policy == "keep") return "#4c72b0";
  if (policy == "recompute") return "#dd8452";
  if (policy == "offload") return "#55a868";
  if (policy == "auto") return "#c44e52";
  return "#8172b3";
}

// One chart: a metric of every row of a group, in the unit of its axis.
struct Metric {
  const char* css_class;  // "peak" or "time"
  const char* title;
  const char* axis_label;
  const char* unit;
  std::optional<double> (*value)(const SummaryRow&);
};

std::optional<double> peak_mib(const SummaryRow& row) {
  return static_cast<double>(row.peak_bytes) / kMiB;
}

std::optional<double> ms_per_sample(const SummaryRow& row) {
  const std::optional<double> seconds = seconds_per_sample(row);
  if (!seconds || !std::isfinite(*seconds)) return std::nullopt;
  return *seconds * 1e3;
}

constexpr Metric kMetrics[] = {
    {"peak", "Peak memory", "peak bytes allocated during a step (MiB)", "MiB", peak_mib},
    {"time", "Time per sample", "step time / batch (ms per sample)", "ms", ms_per_sample},
};

constexpr double kWidth = 1000;
constexpr double kMargin = 20;
constexpr double kChartGap = 40;
constexpr double kValueRoom = 150;
constexpr double kRowHeight = 22;
constexpr double kBarHeight = 16;
constexpr double kCharWidth = 7;  // a generous width of a 12px sans-serif character

class SvgWriter {
 public:
  void text(double x, double y, std::string_view content, std::string_view attributes = {}) {
    body_ += "<text x=\"" + px(x) + "\" y=\"" + px(y) + "\"";
    if (!attributes.empty()) body_ += " " + std::string(attributes);
    body_ += ">" + xml_text(content) + "</text>\n";
  }
  void rect(double x, double y, double width, double height, std::string_view css_class,
            std::string_view fill) {
    body_ += "<rect class=\"" + std::string(css_class) + "\" x=\"" + px(x) + "\" y=\"" + px(y) +
             "\" width=\"" + px(width) + "\" height=\"" + px(height) + "\" fill=\"" +
             std::string(fill) + "\"/>\n";
  }
  void line(double x1, double y1, double x2, double y2) {
    body_ += "<line x1=\"" + px(x1) + "\" y1=\"" + px(y1) + "\" x2=\"" + px(x2) + "\" y2=\"" +
             px(y2) + "\" stroke=\"#333333\"/>\n";
  }
  const std::string& body() const { return body_; }

 private:
  std::string body_;
};

// Draws `metric` for every row of `group` with its left edge at x and top at y; returns the
// height used.
double draw_chart(SvgWriter& svg, const Group& group, const Metric& metric, double x, double y,
                  double label_width) {
  const double chart_width = (kWidth - 2 * kMargin - kChartGap) / 2;
  const double bar_left = x + label_width;
  const double bar_area = chart_width - label_width - kValueRoom;
  double largest = 0;
  for (const SummaryRow* row : group.rows) {
    const std::optional<double> value = row->fits ? metric.value(*row) : std::nullopt;
    if (value && std::isfinite(*value)) largest = std::max(largest, *value);
  }
  const std::optional<double> keep_value =
      group.keep ? metric.value(*group.keep) : std::optional<double>();

  svg.text(bar_left, y + 12, metric.title, "font-weight=\"bold\"");
  const double rows_top = y + 20;
  for (std::size_t i = 0; i < group.rows.size(); ++i) {
    const SummaryRow& row = *group.rows[i];
    const double row_top = rows_top + static_cast<double>(i) * kRowHeight;
    const double baseline = row_top + kRowHeight / 2 + 4;
    svg.text(bar_left - 6, baseline, policy_label(row), "text-anchor=\"end\"");
    const std::optional<double> value = row.fits ? metric.value(row) : std::nullopt;
    const bool known = value && std::isfinite(*value);
    const double width = known && largest > 0 ? bar_area * std::max(*value, 0.0) / largest : 0;
    svg.rect(bar_left, row_top + (kRowHeight - kBarHeight) / 2, width, kBarHeight,
             std::string("bar ") + metric.css_class, policy_colour(row.policy));
    std::string label = known ? significant(*value) + " " + metric.unit
                        : row.fits ? "n/a"
                                   : does_not_fit(row);
    if (known && &row != group.keep && keep_value) {
      if (const std::optional<double> r = ratio(*value, *keep_value)) {
        label += " (" + fixed(*r, 2) + "× keep)";
      }
    }
    svg.text(bar_left + width + 4, baseline, label);
  }
  const double rows_bottom = rows_top + static_cast<double>(group.rows.size()) * kRowHeight;
  svg.line(bar_left, rows_top, bar_left, rows_bottom);
  svg.line(bar_left, rows_bottom, bar_left + bar_area, rows_bottom);
  svg.text(bar_left, rows_bottom + 14, "0", "text-anchor=\"middle\" fill=\"#555555\"");
  svg.text(bar_left + bar_area, rows_bottom + 14, significant(largest),
           "text-anchor=\"middle\" fill=\"#555555\"");
  svg.text(bar_left + bar_area / 2, rows_bottom + 30, metric.axis_label,
           "text-anchor=\"middle\" fill=\"#555555\"");
  return rows_bottom + 30 - y;
}

}  // namespace

std::string to_json(const Summary& summary) {
  std::string out = "{";
  append_member(out, "machine", summary.machine, /*first=*/true);
  out += ",\n";
  append_member(out, "command", summary.command, /*first=*/true);
  out += ",\n\"rows\":[";
  for (std::size_t i = 0; i < summary.rows.size(); ++i) {
    const SummaryRow& row = summary.rows[i];
    out += i == 0 ? "\n{" : ",\n{";
    append_member(out, "model", row.model, /*first=*/true);
    append_member(out, "size", row.size);
    append_member(out, "policy", row.policy);
    append_member(out, "budget_bytes", row.budget_bytes);
    append_member(out, "batch", row.batch);
    out += ",\"fits\":";
    out += row.fits ? "true" : "false";
    append_member(out, "least_budget_bytes", row.least_budget_bytes);
    append_member(out, "peak_bytes", row.peak_bytes);
    append_member(out, "reserved_bytes", row.reserved_bytes);
    append_member(out, "step_seconds", row.step_seconds);
    append_member(out, "step_seconds_min", row.step_seconds_min);
    append_member(out, "step_seconds_max", row.step_seconds_max);
    append_member(out, "measured_steps", row.measured_steps);
    append_member(out, "step_vs_keep", row.step_vs_keep);
    append_member(out, "samples_per_second", row.samples_per_second);
    append_member(out, "max_batch", row.max_batch);
    append_member(out, "max_batch_budget_bytes", row.max_batch_budget_bytes);
    append_member(out, "offloaded_bytes", row.offloaded_bytes);
    append_member(out, "recomputed_bytes", row.recomputed_bytes);
    append_member(out, "copy_seconds", row.copy_seconds);
    append_member(out, "copy_hidden", row.copy_hidden);
    append_member(out, "grad_max_abs_diff_vs_keep", row.grad_max_abs_diff_vs_keep);
    out += '}';
  }
  out += "\n]}\n";
  return out;
}

std::string to_markdown(const Summary& summary) {
  std::string out = "# Memory policies compared\n\n";
  out += "- Machine: " + markdown_text(summary.machine) + "\n";
  out += "- Command: " + markdown_code(summary.command) + "\n\n";
  out +=
      "Peak: device bytes allocated during a training step above the step's start. Ratios are "
      "against the `keep` row of the same model and size (" +
      std::string(kDash) +
      " where there is none). Step: the median of the measured steps in ms, with the least and "
      "greatest in brackets; step vs keep: the median of the ratios of the steps taken in the same "
      "round, where the rows took turns. Max batch: the largest batch that fits the budget named. "
      "Copies: the offload pipeline's host copies, both ways, in ms per step, and the share of "
      "that time compute hid rather than waited for. Grad diff: "
      "the largest |grad - keep's grad| over every parameter. A row that ran out of memory within "
      "its budget does not fit; the budget it needs is at least the one named.\n";
  const std::vector<Group> groups = group_rows(summary);
  if (groups.empty()) out += "\nNo rows.\n";
  for (const Group& group : groups) {
    out += "\n## " + markdown_text(group_title(group)) + "\n\n";
    out +=
        "| policy | batch | peak (MiB) | peak vs keep | reserved (MiB) | step (ms) | step vs keep "
        "| samples/s | max batch | offloaded (MiB) | recomputed (MiB) | copies (ms, hidden) | grad diff "
        "|\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for (const SummaryRow* row : group.rows) {
      if (!row->fits) {
        out += "| " + markdown_text(policy_label(*row)) + " | " + std::to_string(row->batch) +
               " | " + markdown_text(does_not_fit(*row)) + " |";
        for (int i = 0; i < 5; ++i) out += " " + std::string(kDash) + " |";
        out += " " + max_batch_cell(*row) + " |";
        for (int i = 0; i < 4; ++i) out += " " + std::string(kDash) + " |";
        out += "\n";
        continue;
      }
      const std::optional<double> peak_ratio =
          group.keep ? ratio(static_cast<double>(row->peak_bytes),
                             static_cast<double>(group.keep->peak_bytes))
                     : std::nullopt;
      const std::optional<double> step_ratio =
          row->step_vs_keep > 0 ? std::optional<double>(row->step_vs_keep)
          : group.keep          ? ratio(row->step_seconds, group.keep->step_seconds)
                                : std::nullopt;
      const std::string cells[] = {
          markdown_text(policy_label(*row)),
          std::to_string(row->batch),
          mib(row->peak_bytes),
          ratio_cell(peak_ratio),
          mib(row->reserved_bytes),
          step_cell(*row),
          ratio_cell(step_ratio),
          significant(row->samples_per_second),
          max_batch_cell(*row),
          mib(row->offloaded_bytes),
          mib(row->recomputed_bytes),
          copies_cell(*row),
          chars(row->grad_max_abs_diff_vs_keep, std::chars_format::general, 3)};
      out += "|";
      for (const std::string& cell : cells) out += " " + cell + " |";
      out += "\n";
    }
  }
  return out;
}

std::string to_svg(const Summary& summary) {
  const std::vector<Group> groups = group_rows(summary);
  std::size_t longest_label = 0;
  std::vector<std::string> policies;  // in order of first appearance, for the legend
  for (const SummaryRow& row : summary.rows) {
    longest_label = std::max(longest_label, policy_label(row).size());
    if (std::find(policies.begin(), policies.end(), row.policy) == policies.end()) {
      policies.push_back(row.policy);
    }
  }
  const double label_width =
      std::clamp(static_cast<double>(longest_label) * kCharWidth + 12, 80.0, 220.0);

  SvgWriter svg;
  svg.text(kMargin, 28, "Memory policies compared: peak memory and time per sample",
           "font-size=\"18\" font-weight=\"bold\"");
  svg.text(kMargin, 48, summary.machine, "fill=\"#555555\"");
  double legend_x = kMargin;
  for (const std::string& policy : policies) {
    svg.rect(legend_x, 62, 12, 12, "swatch", policy_colour(policy));
    svg.text(legend_x + 17, 72, policy);
    legend_x += 17 + static_cast<double>(policy.size()) * kCharWidth + 20;
  }
  double y = 90;
  for (const Group& group : groups) {
    svg.text(kMargin, y + 18, group_title(group), "font-size=\"15\" font-weight=\"bold\"");
    y += 28;
    double height = 0;
    for (std::size_t m = 0; m < std::size(kMetrics); ++m) {
      const double x = kMargin + static_cast<double>(m) * ((kWidth - 2 * kMargin + kChartGap) / 2);
      height = std::max(height, draw_chart(svg, group, kMetrics[m], x, y, label_width));
    }
    y += height + 24;
  }
  const double height = y + kMargin;

  std::string out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + px(kWidth) +
                    "\" height=\"" + px(height) + "\" viewBox=\"0 0 " + px(kWidth) + " " +
                    px(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  out += "<title>Memory policies compared: peak memory and time per sample</title>\n";
  out += "<desc>" + xml_text(summary.machine + "; " + summary.command) + "</desc>\n";
  out += "<rect x=\"0\" y=\"0\" width=\"" + px(kWidth) + "\" height=\"" + px(height) +
         "\" fill=\"#ffffff\"/>\n";
  out += svg.body();
  out += "</svg>\n";
  return out;
}

void write_summary(const Summary& summary, const std::filesystem::path& directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error || !std::filesystem::is_directory(directory, error)) {
    throw std::runtime_error("actmem::report: cannot create directory " + directory.string() +
                             (error ? ": " + error.message() : ": not a directory"));
  }
  const std::pair<const char*, std::string> files[] = {
      {"summary.json", to_json(summary)},
      {"summary.md", to_markdown(summary)},
      {"summary.svg", to_svg(summary)},
  };
  for (const auto& [name, content] : files) {
    const std::filesystem::path path = directory / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.close();
    if (!out) throw std::runtime_error("actmem::report: cannot write " + path.string());
  }
}

}  // namespace actmem::report

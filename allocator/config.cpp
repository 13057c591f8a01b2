#include "allocator/config.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "allocator/errors.h"

namespace actmem::alloc {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

[[noreturn]] void fail(std::string_view what, std::string_view value, std::string_view expected) {
  throw ConfigError("actmem: " + std::string(what) + "='" + std::string(value) +
                    "' is invalid: " + std::string(expected));
}

// A whole number in [low, high].
long long parse_integer(std::string_view text, std::string_view what, long long low,
                        long long high) {
  const std::string value(trim(text));
  char* end = nullptr;
  errno = 0;
  const long long n = value.empty() ? 0 : std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || n < low || n > high) {
    fail(what, text,
         "expected a whole number from " + std::to_string(low) + " to " + std::to_string(high));
  }
  return n;
}

struct Unit {
  const char* name;
  double factor;
};
constexpr Unit kUnits[] = {{"", 1.0},
                           {"B", 1.0},
                           {"KB", 1e3},
                           {"MB", 1e6},
                           {"GB", 1e9},
                           {"TB", 1e12},
                           {"KiB", 1024.0},
                           {"MiB", 1048576.0},
                           {"GiB", 1073741824.0},
                           {"TiB", 1099511627776.0}};
constexpr const char* kSizeHelp =
    "expected a positive byte count such as 1048576, 1500MB or 6GiB (units B, KB, MB, GB, TB, "
    "KiB, MiB, GiB, TiB)";

bool parse_flag(std::string_view value, std::string_view what) {
  const std::string_view v = trim(value);
  if (iequals(v, "true") || v == "1") return true;
  if (iequals(v, "false") || v == "0") return false;
  fail(what, value, "expected true or false");
}

// One ACTMEM_ALLOC_CONF key: its name, what it expects, and how it sets the options.
struct ConfKey {
  const char* name;
  void (*apply)(std::string_view value, AllocatorOptions& options);
};

constexpr ConfKey kConfKeys[] = {
    {"backend",
     [](std::string_view value, AllocatorOptions& o) {
       const std::string_view v = trim(value);
       if (iequals(v, "vmm")) {
         o.growable = true;
       } else if (iequals(v, "classic") || iequals(v, "cuda")) {
         o.growable = false;
       } else {
         fail("ACTMEM_ALLOC_CONF backend", value,
              "expected vmm (growable segments) or classic (fixed segments; cuda is the same)");
       }
     }},
    {"max_split_size_mb",
     [](std::string_view value, AllocatorOptions& o) {
       o.max_split_size = static_cast<std::size_t>(parse_integer(
                              value, "ACTMEM_ALLOC_CONF max_split_size_mb", 21, 1 << 30)) *
                          1048576;
     }},
    {"pressure_rounds",
     [](std::string_view value, AllocatorOptions& o) {
       o.pressure_rounds =
           static_cast<int>(parse_integer(value, "ACTMEM_ALLOC_CONF pressure_rounds", 0, 64));
     }},
    {"reclaim_holes",
     [](std::string_view value, AllocatorOptions& o) {
       o.reclaim_holes = parse_flag(value, "ACTMEM_ALLOC_CONF reclaim_holes");
     }},
    {"trace",
     [](std::string_view value, AllocatorOptions& o) {
       o.record_trace = parse_flag(value, "ACTMEM_ALLOC_CONF trace");
     }},
    {"trace_capacity",
     [](std::string_view value, AllocatorOptions& o) {
       o.trace_capacity = static_cast<std::size_t>(
           parse_integer(value, "ACTMEM_ALLOC_CONF trace_capacity", 1, 1LL << 32));
     }},
};

std::string known_conf_keys() {
  std::string keys;
  for (const ConfKey& key : kConfKeys) keys += (keys.empty() ? "" : ", ") + std::string(key.name);
  return keys;
}

}  // namespace

std::size_t parse_bytes(std::string_view text, std::string_view what) {
  const std::string value(trim(text));
  char* end = nullptr;
  errno = 0;
  const double number = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
  if (value.empty() || end == value.c_str() || errno != 0 || !std::isfinite(number) ||
      value[0] == '-' || value[0] == '+') {
    fail(what, text, kSizeHelp);
  }
  const std::string_view unit = trim(std::string_view(end));
  for (const Unit& u : kUnits) {
    if (!iequals(unit, u.name)) continue;
    const double bytes = number * u.factor;
    if (bytes < 1.0 || bytes > 9.0e18) fail(what, text, kSizeHelp);
    if (bytes != std::floor(bytes)) fail(what, text, "the byte count is not a whole number");
    return static_cast<std::size_t>(bytes);
  }
  fail(what, text, "unknown unit '" + std::string(unit) + "'; " + kSizeHelp);
}

std::size_t parse_bytes_or_zero(std::string_view text, std::string_view what) {
  const std::string value(trim(text));
  char* end = nullptr;
  if (!value.empty() && std::isdigit(static_cast<unsigned char>(value[0])) &&
      std::strtod(value.c_str(), &end) == 0.0 && end != value.c_str()) {
    const std::string_view unit = trim(std::string_view(end));
    for (const Unit& u : kUnits) {
      if (iequals(unit, u.name)) return 0;
    }
  }
  try {
    return parse_bytes(text, what);
  } catch (const ConfigError&) {
    fail(what, text,
         "expected 0 or a positive byte count such as 1048576, 1500MB or 6GiB (units B, KB, MB, "
         "GB, TB, KiB, MiB, GiB, TiB)");
  }
}

void apply_alloc_conf(std::string_view conf, AllocatorOptions& options) {
  while (!conf.empty()) {
    const std::size_t comma = conf.find(',');
    const std::string_view item = trim(conf.substr(0, comma));
    conf = comma == std::string_view::npos ? std::string_view() : conf.substr(comma + 1);
    if (item.empty()) continue;
    const std::size_t colon = item.find(':');
    if (colon == std::string_view::npos) {
      fail("ACTMEM_ALLOC_CONF", item, "expected key:value (keys: " + known_conf_keys() + ")");
    }
    const std::string_view key = trim(item.substr(0, colon));
    const ConfKey* match = nullptr;
    for (const ConfKey& k : kConfKeys) {
      if (key == k.name) match = &k;
    }
    if (match == nullptr) {
      fail("ACTMEM_ALLOC_CONF", item,
           "unknown key '" + std::string(key) + "' (keys: " + known_conf_keys() + ")");
    }
    match->apply(item.substr(colon + 1), options);
  }
}

ProcessConfig ProcessConfig::from_environment(
    const std::function<const char*(const char*)>& getenv) {
  const auto get = [&](const char* name) -> const char* {
    return getenv ? getenv(name) : std::getenv(name);
  };
  ProcessConfig config;
  if (const char* backend = get("ACTMEM_BACKEND")) {
    const std::string_view b = trim(backend);
    if (iequals(b, "auto")) {
      config.backend = BackendKind::kAuto;
    } else if (iequals(b, "host")) {
      config.backend = BackendKind::kHost;
    } else if (iequals(b, "cuda")) {
      config.backend = BackendKind::kCuda;
    } else {
      fail("ACTMEM_BACKEND", backend, "expected one of host, cuda, auto");
    }
  }
  if (const char* budget = get("ACTMEM_BUDGET")) {
    config.allocator.budget_bytes = parse_bytes(budget, "ACTMEM_BUDGET");
  }
  if (const char* conf = get("ACTMEM_ALLOC_CONF")) apply_alloc_conf(conf, config.allocator);
  if (const char* stats = get("ACTMEM_STATS")) {
    if (trim(stats).empty()) fail("ACTMEM_STATS", stats, "expected a file path");
    config.stats_path = stats;
  }
  if (const char* trace = get("ACTMEM_TRACE")) {
    if (trim(trace).empty()) fail("ACTMEM_TRACE", trace, "expected a file path");
    config.trace_path = trace;
    config.allocator.record_trace = true;
  }
  return config;
}

}  // namespace actmem::alloc

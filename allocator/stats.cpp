#include "allocator/stats.h"

#include <cinttypes>
#include <cstdio>
#include <sstream>

namespace actmem::alloc {
namespace {

void write_stat(std::ostringstream& out, const char* name, const Stat& stat) {
  out << "\"" << name << "\":{\"current\":" << stat.current << ",\"peak\":" << stat.peak
      << ",\"total\":" << stat.total << "},";
}

}  // namespace

std::string to_json(const AllocatorStats& s, const std::string& backend_name) {
  std::ostringstream out;
  out << "{\"backend\":\"" << backend_name << "\",";
  write_stat(out, "allocated_bytes", s.allocated_bytes);
  write_stat(out, "requested_bytes", s.requested_bytes);
  write_stat(out, "reserved_bytes", s.reserved_bytes);
  write_stat(out, "active_bytes", s.active_bytes);
  write_stat(out, "segments", s.segments);
  write_stat(out, "live_blocks", s.live_blocks);
  out << "\"allocations\":" << s.allocations << ",\"cache_hits\":" << s.cache_hits
      << ",\"cache_hit_rate\":" << s.cache_hit_rate() << ",\"backend_allocs\":" << s.backend_allocs
      << ",\"backend_frees\":" << s.backend_frees << ",\"splits\":" << s.splits
      << ",\"merges\":" << s.merges << ",\"ooms\":" << s.ooms
      << ",\"pressure_calls\":" << s.pressure_calls
      << ",\"pressure_freed_bytes\":" << s.pressure_freed_bytes
      << ",\"backend_errors\":" << s.backend_errors
      << ",\"fragmentation_at_peak_bytes\":" << s.fragmentation_at_peak_bytes
      << ",\"reserved_at_peak_bytes\":" << s.reserved_at_peak_bytes
      << ",\"budget_bytes\":" << s.budget_bytes
      << ",\"largest_free_block_bytes\":" << s.largest_free_block_bytes << "}";
  return out.str();
}

std::string format_bytes(std::int64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while ((value >= 1024.0 || value <= -1024.0) && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[96];
  if (unit == 0) {
    std::snprintf(buffer, sizeof buffer, "%" PRId64 " B", bytes);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.2f %s (%" PRId64 " bytes)", value, kUnits[unit], bytes);
  }
  return buffer;
}

}  // namespace actmem::alloc

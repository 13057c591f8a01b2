// The allocator's options: one typed table, read from the environment once.
//
// Sources (each documented in README.md):
//   ACTMEM_BACKEND     host | cuda | auto (default auto: cuda when a device answers, else host)
//   ACTMEM_BUDGET      cap on reserved bytes per device: "6GiB", "1500MB", "1048576"
//   ACTMEM_ALLOC_CONF  "key:value,key:value" (PyTorch's convention); keys in kConfKeys below
//   ACTMEM_STATS       path: the stats JSON is written there at exit
//   ACTMEM_TRACE       path: the allocator records its event trace and writes it there at exit
// An unknown ACTMEM_ALLOC_CONF key or a malformed value throws ConfigError naming the variable,
// the value and what was expected.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace actmem::alloc {

enum class BackendKind { kAuto, kHost, kCuda };

// What one CachingAllocator needs.
struct AllocatorOptions {
  std::optional<std::size_t> budget_bytes;  // no cap when empty
  // Blocks larger than this are never split (PyTorch's max_split_size_mb): large requests then
  // cannot chop up big cached blocks that a later large request needs whole. Above the 20 MiB
  // segment size, or every segment would count as oversize.
  std::size_t max_split_size = static_cast<std::size_t>(-1);
  // Rounds of pressure handlers one allocation may ask for before it reports out-of-memory.
  int pressure_rounds = 4;
  bool record_trace = false;
  std::size_t trace_capacity = std::size_t{1} << 22;  // entries; later ones are dropped
  // The layout of the process allocators (ACTMEM_ALLOC_CONF backend): true for growable segments
  // over the device's virtual memory (`vmm`, Note [Growable segments]), false for the classic
  // fixed segments (`classic`, or `cuda`); empty: the device's default (classic, for now, on both).
  std::optional<bool> growable;
  // The vmm layout unmaps free granules before it maps past the most it ever reserved (Note
  // [Reclaiming holes] in caching_allocator.cpp; ACTMEM_ALLOC_CONF reclaim_holes).
  bool reclaim_holes = true;
};

// What a process-wide allocator (the C ABI, the LD_PRELOAD shim) needs on top.
struct ProcessConfig {
  AllocatorOptions allocator;
  BackendKind backend = BackendKind::kAuto;
  std::string stats_path;  // empty: no stats file
  std::string trace_path;  // empty: no trace file

  // Reads the variables above through `getenv` (std::getenv by default; tests pass their own).
  static ProcessConfig from_environment(
      const std::function<const char*(const char*)>& getenv = nullptr);
};

// Parses a byte count: an integer or decimal number with an optional unit B, KB, MB, GB, TB
// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive; "6GiB", "1.5 GB".
// `what` names the source in the error message.
std::size_t parse_bytes(std::string_view text, std::string_view what);
// The same, where 0 means something (none at all): "0", "0B", "0 GiB" parse as 0.
std::size_t parse_bytes_or_zero(std::string_view text, std::string_view what);

// Applies one ACTMEM_ALLOC_CONF string to `options`.
void apply_alloc_conf(std::string_view conf, AllocatorOptions& options);

}  // namespace actmem::alloc

// The process-wide allocators behind the C ABI and the LD_PRELOAD shim: one CachingAllocator per
// device, configured once from the environment (ProcessConfig::from_environment).
//
// The instance is created on first use and never destroyed: memory may still be freed by other
// static destructors after main returns. When ACTMEM_STATS or ACTMEM_TRACE name a file, it is
// written at exit.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "allocator/caching_allocator.h"
#include "allocator/config.h"

namespace actmem::alloc {

class ProcessAllocators {
 public:
  static constexpr int kMaxDevices = 64;

  // Throws ConfigError when the environment is malformed.
  static ProcessAllocators& instance();

  const ProcessConfig& config() const { return config_; }

  // The allocator of `device` (ignored, and 0 used, on the host backend); created on first use.
  // Throws AllocatorError for a device number out of range or a CUDA backend that cannot start.
  CachingAllocator& for_device(int device);
  // The allocator of `device` if it was created, else nullptr.
  CachingAllocator* existing(int device);

  // Caps every device's allocator at `bytes` (nullopt: no cap), those created later too, in place
  // of the configuration's budget (ACTMEM_BUDGET). For a process that learns its budget after
  // start-up, before it knows which device it will use (actmem.enable(budget=...) in Python).
  void set_budget(std::optional<std::size_t> bytes);

  // Which backend the allocators use, once resolved ("host" or "cuda").
  BackendKind backend_kind();

  // {"devices":{"0":{...stats...}}} for every device created so far, followed by each section
  // added: {"devices":{...},"NAME":VALUE,...}.
  std::string stats_json();
  // A section of stats_json() (and so of the ACTMEM_STATS file written at exit) that the allocator
  // does not own: `json` returns its value, a JSON value, whenever the stats are written. Added
  // again under the same name, it replaces the earlier one. (The Python package adds the
  // activations' statistics.)
  void set_stats_section(const std::string& name, std::function<std::string()> json);
  void empty_cache();

  // Writes the stats and trace files that the configuration names.
  void write_files();

 private:
  explicit ProcessAllocators(ProcessConfig config);
  std::unique_ptr<CachingAllocator> make_allocator(int device);

  ProcessConfig config_;
  std::mutex mutex_;  // guards creation, sections_ and budget_
  // set_budget's, for allocators created after it; none: the configuration's.
  std::optional<std::optional<std::size_t>> budget_;
  std::vector<std::pair<std::string, std::function<std::string()>>> sections_;
  std::once_flag backend_resolved_;
  BackendKind backend_ = BackendKind::kAuto;
  std::array<std::atomic<CachingAllocator*>, kMaxDevices> allocators_{};
};

}  // namespace actmem::alloc

// The policy's environment variables, read and checked once:
//   ACTMEM_POLICY             keep | recompute | offload | auto (default keep)
//   ACTMEM_OFFLOAD_MIN_BYTES  tensors smaller than this are kept (default 64 KiB, for the CPU
//                             build's smaller tensors; 1 MiB is meant for CUDA, not yet built)
//   ACTMEM_LOG                off | info | debug (default off)
//   ACTMEM_HOST_BUDGET        cap on the host pool offloaded tensors live in, a byte count (0 turns
//                             offload off: a tensor the policy offloads is kept, and counted);
//                             no cap by default
//   ACTMEM_PREFETCH_WINDOW    device bytes the offload pipeline copies back ahead of the unpacks
//                             that need them (default: none on the CPU, 256 MiB on CUDA)
// A malformed value throws std::invalid_argument naming the variable and the valid values.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "policy/policy.h"

namespace actmem {

struct PolicyConfig {
  std::string policy = "keep";
  std::size_t offload_min_bytes = 64 * 1024;
  LogLevel log = LogLevel::kOff;
  std::optional<std::size_t> host_budget;
  std::optional<std::size_t> prefetch_window;

  static PolicyConfig from_environment(
      const std::function<const char*(const char*)>& getenv = nullptr);
};

}  // namespace actmem

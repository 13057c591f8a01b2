// The policy's environment variables, read and checked once:
//   ACTMEM_POLICY             keep | recompute | offload | auto (default keep)
//   ACTMEM_OFFLOAD_MIN_BYTES  tensors smaller than this are kept (default 64 KiB, for the CPU
//                             build's smaller tensors; 1 MiB is meant for CUDA, not yet built)
//   ACTMEM_LOG                off | info | debug (default off)
// A malformed value throws std::invalid_argument naming the variable and the valid values.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "policy/policy.h"

namespace actmem {

struct PolicyConfig {
  std::string policy = "keep";
  std::size_t offload_min_bytes = 64 * 1024;
  LogLevel log = LogLevel::kOff;

  static PolicyConfig from_environment(
      const std::function<const char*(const char*)>& getenv = nullptr);
};

}  // namespace actmem

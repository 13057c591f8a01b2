#include "policy/policy_config.h"

#include <cstdlib>
#include <stdexcept>

#include "allocator/config.h"
#include "allocator/errors.h"
#include "policy/policy.h"

namespace actmem {

PolicyConfig PolicyConfig::from_environment(const std::function<const char*(const char*)>& getenv) {
  const auto get = [&](const char* name) -> const char* {
    return getenv ? getenv(name) : std::getenv(name);
  };
  PolicyConfig config;  // the CUDA default (1 MiB) comes with the CUDA LibTorch build
  if (const char* policy = get("ACTMEM_POLICY")) {
    try {
      make_policy(policy);
    } catch (const std::invalid_argument& error) {
      std::string reason = error.what();
      if (reason.rfind("actmem: ", 0) == 0) reason.erase(0, 8);
      throw std::invalid_argument(std::string("actmem: ACTMEM_POLICY='") + policy + "': " + reason);
    }
    config.policy = policy;
  }
  if (const char* min_bytes = get("ACTMEM_OFFLOAD_MIN_BYTES")) {
    try {
      config.offload_min_bytes = alloc::parse_bytes(min_bytes, "ACTMEM_OFFLOAD_MIN_BYTES");
    } catch (const alloc::ConfigError& error) {
      throw std::invalid_argument(error.what());
    }
  }
  for (const auto& [name, field] : {std::pair{"ACTMEM_HOST_BUDGET", &config.host_budget},
                                    std::pair{"ACTMEM_PREFETCH_WINDOW", &config.prefetch_window}}) {
    if (const char* value = get(name)) {
      try {
        *field = alloc::parse_bytes_or_zero(value, name);  // 0: no pool, no prefetch
      } catch (const alloc::ConfigError& error) {
        throw std::invalid_argument(error.what());
      }
    }
  }
  if (const char* log = get("ACTMEM_LOG")) {
    const std::string level = log;
    if (level == "off") {
      config.log = LogLevel::kOff;
    } else if (level == "info") {
      config.log = LogLevel::kInfo;
    } else if (level == "debug") {
      config.log = LogLevel::kDebug;
    } else {
      throw std::invalid_argument("actmem: ACTMEM_LOG='" + level +
                                  "' is invalid: expected off, info or debug");
    }
  }
  return config;
}

}  // namespace actmem

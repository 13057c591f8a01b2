// The one place where actmem's code may differ between LibTorch versions. actmem needs 2.0 or
// later (cmake/ActmemTorch.cmake checks) and is built and tested against 2.11.
#pragma once

#include <torch/version.h>

#define ACTMEM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||         \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

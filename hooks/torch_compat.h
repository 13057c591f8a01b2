// The one place where actmem's code differs between LibTorch 1.13 and 2.x.
#pragma once

#include <c10/core/Allocator.h>
#include <torch/version.h>

#define ACTMEM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||         \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// c10::Allocator::allocate lost its const in 2.x, and gained a pure virtual copy_data.
#if ACTMEM_TORCH_AT_LEAST(2, 0)
#define ACTMEM_ALLOCATE_CONST
#else
#define ACTMEM_ALLOCATE_CONST const
#endif

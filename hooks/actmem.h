// actmem's public C++ API, in one include:
//   actmem::install()            hooks and allocator into LibTorch
//   actmem::ActivationScope      manage the tensors autograd saves, under a policy
//   actmem::segment()            mark a recomputable piece of a forward
//   actmem::make_policy()        keep | recompute | offload
//   actmem::device_memory()      the caching allocator and its stats
#pragma once

#include "allocator/caching_allocator.h"
#include "hooks/activation_scope.h"
#include "hooks/install.h"
#include "hooks/segment.h"
#include "policy/policy.h"
#include "policy/policy_config.h"

// Internal: the autograd Engine subclass through which actmem's saved-tensor hooks reach
// autograd (LibTorch has no public C++ API for default saved-tensor hooks).
#pragma once

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <memory>

namespace actmem::detail {

// The hooks for a tensor saved on this thread now: capture hooks during a segment's rerun,
// managed hooks under an ActivationScope, nullptr otherwise (autograd then saves as usual).
std::unique_ptr<torch::autograd::SavedVariableHooks> hooks_for_this_thread();

class ActmemEngine final : public torch::autograd::Engine {
 public:
  static ActmemEngine& instance();
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks()
      override {
    return hooks_for_this_thread();
  }

 private:
  ActmemEngine() = default;
};

}  // namespace actmem::detail

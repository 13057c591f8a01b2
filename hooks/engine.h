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
// Ends the step of the scope active on this thread, if one is in progress (scope_state.h).
void backward_finished();

class ActmemEngine final : public torch::autograd::Engine {
 public:
  static ActmemEngine& instance();
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks()
      override {
    return hooks_for_this_thread();
  }

  // A backward that returns ends the step of the scope active on this thread (if any).
  torch::autograd::variable_list execute(const torch::autograd::edge_list& roots,
                                         const torch::autograd::variable_list& inputs,
                                         bool keep_graph, bool create_graph, bool accumulate_grad,
                                         const torch::autograd::edge_list& outputs) override {
    auto result =
        Engine::execute(roots, inputs, keep_graph, create_graph, accumulate_grad, outputs);
    backward_finished();
    return result;
  }

 private:
  ActmemEngine() = default;
};

}  // namespace actmem::detail

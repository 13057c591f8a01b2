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
// End, or discard, the step of the scope active on this thread, if one is in progress.
void backward_finished();
void backward_failed();

class ActmemEngine final : public torch::autograd::Engine {
 public:
  static ActmemEngine& instance();
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks()
      override {
    return hooks_for_this_thread();
  }

  // The outermost backward on this thread ends the step of the scope active on it (if any):
  // returning hands the step's profile to the policy, throwing discards it. A backward nested in
  // another (torch::autograd::grad inside a forward, a reentrant Function) ends nothing.
  torch::autograd::variable_list execute(const torch::autograd::edge_list& roots,
                                         const torch::autograd::variable_list& inputs,
                                         bool keep_graph, bool create_graph, bool accumulate_grad,
                                         const torch::autograd::edge_list& outputs) override {
    static thread_local int depth = 0;
    struct Depth {
      Depth() { ++depth; }
      ~Depth() { --depth; }
    };
    torch::autograd::variable_list result;
    {
      Depth nested;
      try {
        result =
            Engine::execute(roots, inputs, keep_graph, create_graph, accumulate_grad, outputs);
      } catch (...) {
        if (depth == 1) backward_failed();
        throw;
      }
    }
    if (depth == 0) backward_finished();
    return result;
  }

 private:
  ActmemEngine() = default;
};

}  // namespace actmem::detail

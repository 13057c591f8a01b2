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
// LibTorch's engine leaves the tasks of a backward that threw (out of memory in a backward kernel,
// say) in its ready queues, holding their part of the graph and every tensor it saved (offloaded
// ones' host blocks included) until the next backward on that queue pops and drops them: a
// program that catches the error and goes on would hold all that into its next forward, and could
// fail there for it. When the outermost backward throws, the engine runs this, which drops them at
// once: a backward of a one-element graph, which saves nothing, on this thread's CPU queue and on
// the managed device's. Never throws (a failure leaves the tasks to the next backward).
void release_failed_backward() noexcept;

// Counts the backwards running on this thread, nested ones included. A backward run under one
// (a reentrant Function, release_failed_backward's) ends no step.
class BackwardDepth {
 public:
  BackwardDepth() { ++depth_; }
  ~BackwardDepth() { --depth_; }
  BackwardDepth(const BackwardDepth&) = delete;
  BackwardDepth& operator=(const BackwardDepth&) = delete;
  static int depth() { return depth_; }

 private:
  static inline thread_local int depth_ = 0;
};

class ActmemEngine final : public torch::autograd::Engine {
 public:
  static ActmemEngine& instance();
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks()
      override {
    return hooks_for_this_thread();
  }

  // The outermost full backward on this thread ends the step of the scope active on it (if any):
  // returning hands the step's profile to the policy, throwing discards it. A backward nested in
  // another (a reentrant Function) ends nothing, nor does one for some inputs only
  // (torch::autograd::grad, backward(inputs=…): a derivative taken inside a forward or a gradient
  // penalty is part of the step), as PyTorch's own engine tells actmem's Python package.
  torch::autograd::variable_list execute(const torch::autograd::edge_list& roots,
                                         const torch::autograd::variable_list& inputs,
                                         bool keep_graph, bool create_graph, bool accumulate_grad,
                                         const torch::autograd::edge_list& outputs) override {
    const bool full = outputs.empty();
    torch::autograd::variable_list result;
    {
      BackwardDepth nested;
      try {
        result =
            Engine::execute(roots, inputs, keep_graph, create_graph, accumulate_grad, outputs);
      } catch (...) {
        if (BackwardDepth::depth() == 1) {
          if (full) backward_failed();
          release_failed_backward();  // nested: it ends no step
        }
        throw;
      }
    }
    if (BackwardDepth::depth() == 0 && full) backward_finished();
    return result;
  }

 private:
  ActmemEngine() = default;
};

}  // namespace actmem::detail

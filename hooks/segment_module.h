// What a segment's rerun needs of the module it runs (segment.h): the training flags of the module
// and its submodules, in force again while it reruns, and its buffers (BatchNorm's running
// stats), put back after it so that they move once per step. LibTorch's torch::nn::Module is one
// (torch_segment_module); the Python package adapts a Python nn.Module (python/).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace actmem {

class SegmentModule {
 public:
  virtual ~SegmentModule() = default;

  // The module itself: a segment and the segments nested in it name each module once.
  virtual const void* identity() const = 0;
  // The training flag of the module and of each submodule, in a fixed order.
  virtual std::vector<bool> training_flags() const = 0;
  // Gives each of them its own flag again, from what training_flags() returned.
  virtual void set_training_flags(const std::vector<bool>& flags) = 0;
  // The buffers of the module and its submodules (one shared by two may come twice).
  virtual std::vector<at::Tensor> buffers() const = 0;
};

// A LibTorch module, which must outlive the segment's backward; null for null.
std::shared_ptr<SegmentModule> torch_segment_module(torch::nn::Module* module);

}  // namespace actmem

// Checkpoint segments: named pieces of a model's forward whose saved tensors can be dropped and
// produced again in backward.
//
//   auto out = actmem::segment("layer3.4", [&](const TensorList& in) { return {block(in[0])}; },
//                              {x}, block.ptr());
//
// Contract:
// - Outside an ActivationScope, segment() just calls fn.
// - Inside one, every tensor saved while fn runs carries the segment's name to the policy. The
//   segment keeps its inputs and what its forward ran under, and (when the policy recomputes any of
//   its tensors) reruns fn in backward, at the first unpack that needs it, under that context
//   again: grad mode; autocast's state for the CPU and CUDA (enabled, dtype); the training flag of
//   `module` and its submodules; and, when the forward drew random numbers, the generators' states
//   (the default ones, and any the function passed to an operator itself). `module`'s buffers
//   are put back after the rerun, so BatchNorm running stats move once per step as without
//   actmem. The rerun stops as soon as every tensor it must produce again has been produced (it
//   runs to the end when the forward drew random numbers), and each recomputed tensor is released
//   when backward consumes it. A tensor fn saved cannot be recomputed before fn has returned:
//   differentiating it inside fn (autograd::grad) throws, naming the segment.
// - A forward that drew no random numbers (no operator taking a Generator ran in it) leaves the
//   generator alone in its rerun, so other threads' draws are never disturbed. One that drew is
//   rerun from the generator's state of its forward, and that state is put back after: while
//   that rerun runs, another thread drawing from the same default generator would get its numbers
//   from the wrong place. actmem detects it (the rerun does not end where the forward did) and
//   throws, naming the segment; such programs must keep or offload those segments, or give the
//   other thread a generator of its own.
// - Nested segments are flattened into the outermost one (one segment, one recompute); the modules
//   the inner ones name are restored with it.
// - A saved tensor changed in place after it was saved is PyTorch's error at unpack, under every
//   policy, naming the segment. An input changed in place after the segment ran cannot be rerun:
//   an error naming the segment, where plain LibTorch (if no op saved that input) would go on.
// - fn must be deterministic given its inputs and that context, and `module` must outlive the
//   backward pass. A second backward (retain_graph=true) recomputes again. A rerun that saves a
//   tensor of another shape or dtype than the forward did is an error naming the segment.
// - If fn throws, nothing is left active and the error propagates; if the rerun in backward
//   throws, the context is restored and the error surfaces from backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <vector>

#include "hooks/segment_module.h"

namespace actmem {

using TensorList = std::vector<at::Tensor>;
using SegmentFn = std::function<TensorList(const TensorList& inputs)>;

TensorList segment(const std::string& name, const SegmentFn& fn, const TensorList& inputs,
                   torch::nn::Module* module = nullptr);
// The same for any module behind the SegmentModule interface (a Python one, from python/).
TensorList segment(const std::string& name, const SegmentFn& fn, const TensorList& inputs,
                   std::shared_ptr<SegmentModule> module);

// The common case of one input and one output: `x = segment("layer1.0", *block, fn, x)`.
at::Tensor segment(const std::string& name, torch::nn::Module& module,
                   const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& input);

}  // namespace actmem

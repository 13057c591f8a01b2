// Checkpoint segments: named pieces of a model's forward whose saved tensors can be dropped and
// produced again in backward.
//
//   auto out = actmem::segment("layer3.4", [&](const TensorList& in) { return {block(in[0])}; },
//                              {x}, block.ptr());
//
// Contract:
// - Outside an ActivationScope, segment() just calls fn.
// - Inside one, every tensor saved while fn runs carries the segment's name to the policy. The
//   segment keeps its inputs, the CPU RNG state, and (when the policy recomputes any of its
//   tensors) reruns fn in backward, at the first unpack that needs it: with grad mode on, the
//   saved RNG state, and `module`'s buffers restored afterwards, so BatchNorm running stats are
//   updated once per step as without actmem. The rerun stops as soon as every tensor it must
//   produce again has been produced, and each recomputed tensor is released when backward
//   consumes it.
// - Nested segments are flattened into the outermost one: one segment, one recompute.
// - fn must be deterministic given its inputs and the RNG state, and `module` must outlive the
//   backward pass. A second backward (retain_graph=true) recomputes again.
// - If fn throws, nothing is left active and the error propagates; if the rerun in backward
//   throws, the RNG state and buffers are restored and the error surfaces from backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <vector>

namespace actmem {

using TensorList = std::vector<at::Tensor>;
using SegmentFn = std::function<TensorList(const TensorList& inputs)>;

TensorList segment(const std::string& name, const SegmentFn& fn, const TensorList& inputs,
                   torch::nn::Module* module = nullptr);

// The common case of one input and one output: `x = segment("layer1.0", *block, fn, x)`.
at::Tensor segment(const std::string& name, torch::nn::Module& module,
                   const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& input);

}  // namespace actmem

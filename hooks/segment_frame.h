// Internal: one segment's state between its forward and its recomputation in backward.
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hooks/scope_state.h"
#include "hooks/segment.h"

namespace actmem::detail {

struct SegmentFrame {
  std::string name;
  SegmentFn fn;
  TensorList inputs;  // detached leaves, requiring grad as the originals did: the rerun's inputs
  std::vector<std::int64_t> input_versions;  // to refuse a rerun on inputs changed in place
  at::Generator cpu_rng;
  torch::nn::Module* module = nullptr;
  std::shared_ptr<ScopeState> scope;

  // One entry per tensor saved during the forward, in order: produced again by the rerun?
  std::vector<char> wanted;

  // Returns the tensor saved as pack `index`, rerunning the segment first if needed, and lets
  // the frame forget it.
  at::Tensor take(std::int64_t index);

  // Called by the capture hooks during a rerun.
  void capture(const at::Tensor& tensor);

 private:
  void rerun();  // mutex_ held

  std::mutex mutex_;
  std::vector<at::Tensor> recomputed_;
  std::int64_t capture_index_ = 0;
  std::int64_t last_wanted_ = -1;
  std::int64_t outstanding_ = 0;
  bool materialized_ = false;
};

// The frame whose forward runs on this thread, or null.
const std::shared_ptr<SegmentFrame>& forward_frame();
// The frame being rerun on this thread, or nullptr.
SegmentFrame* capturing_frame();

}  // namespace actmem::detail

// Internal: one segment's state between its forward and its recomputation in backward.
#pragma once

#include <ATen/core/Generator.h>

#include <atomic>
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
                      // (undefined where input_entries holds it)
  std::vector<std::int64_t> input_versions;  // to refuse a rerun on inputs changed in place
  at::Generator cpu_rng;
  torch::nn::Module* module = nullptr;
  std::shared_ptr<ScopeState> scope;

  // Inputs read through the kept entries that saved them (null where `inputs` holds the input):
  // set by ScopeState::settle so that the frame does not pin an input the pressure handler may
  // offload. The rerun takes each from its entry, wherever it is by then.
  std::vector<std::shared_ptr<SavedEntry>> input_entries;
  std::vector<char> input_requires_grad;

  // Filled during the forward, read by ScopeState::settle when it ends: the kept entries that may
  // hold the frame so that the pressure handler can drop them, and the kept entries of this
  // segment that saved one of its inputs, by storage.
  std::vector<std::weak_ptr<SavedEntry>> droppable;
  std::vector<std::pair<const void*, std::weak_ptr<SavedEntry>>> kept_inputs;

  // Steady-clock time of its forward (launch time on CUDA): what a rerun costs, for eviction;
  // 0 until the forward has ended.
  std::atomic<std::int64_t> forward_ns{0};

  // Registers the next tensor saved during the forward; returns its pack index. `wanted`: the
  // rerun must produce it again (it is recomputed).
  std::int64_t add_pack(bool wanted);
  // Under pressure: asks the rerun to produce pack `index` too, so that its kept copy can be
  // dropped. Refuses (false) while the segment is being rerun or its rerun's tensors are still
  // out, and when an input changed in place since the forward (a rerun would fail).
  bool want_later(std::int64_t index);
  // Whether the rerun must produce any tensor yet.
  bool recomputes_any();

  // Returns the tensor saved as pack `index`, rerunning the segment first if needed, and lets
  // the frame forget it.
  at::Tensor take(std::int64_t index);

  // Called by the capture hooks during a rerun.
  void capture(const at::Tensor& tensor);

 private:
  void rerun();  // mutex_ held
  // The rerun's inputs: `inputs`, with those read through entries filled in; throws if one was
  // changed in place since the forward.
  TensorList rerun_inputs();

  std::mutex mutex_;          // everything below
  std::vector<char> wanted_;  // one per tensor saved during the forward: produced by the rerun?
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

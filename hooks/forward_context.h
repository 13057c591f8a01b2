// Internal: what a segment's forward ran under besides its inputs, captured when it begins and in
// force again while it is rerun in backward, so that the rerun computes what the forward did:
// - the default generators' states, and those of generators the program gave operators itself,
//   when the forward drew random numbers (rng_use.h); a forward that drew none leaves the
//   generators alone in its rerun, unless it seeded one (torch.manual_seed in the block): then
//   the rerun puts back the states it found;
// - autocast's state for the CPU and CUDA (enabled, dtype);
// - grad mode, outside inference mode (a backward called under torch.inference_mode() reruns
//   outside it, as its forward ran);
// - the default dtype (torch.set_default_dtype), which factory functions in the segment read;
// - the switches that choose kernels (kernel_choice.h: cuDNN and oneDNN flags, deterministic
//   algorithms, TF32, the attention backends);
// - the training flag of every module the segment and the segments nested in it named, and their
//   submodules; their buffers (BatchNorm's running stats) are put back after the rerun, so that
//   they move once per step.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DefaultDtype.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hooks/kernel_choice.h"
#include "hooks/rng_state.h"
#include "hooks/segment_module.h"

namespace actmem::detail {

class ForwardContext {
  struct Autocast {
    bool enabled = false;
    c10::ScalarType dtype = c10::ScalarType::Undefined;
    static Autocast of(c10::DeviceType device);
    void apply(c10::DeviceType device) const;
  };

 public:
  // Captures autocast, grad mode and the kernel choice now, as a segment begins.
  ForwardContext();

  // The forward about to run may be rerun: captures the generator's state, for forward_ended and
  // the rerun. (Segments that are never rerun, under keep or offload, skip the copy.)
  void capture_generator();

  // A module whose training flag (and its submodules') the rerun must see as now, and whose
  // buffers it must leave as it finds them. Null, and modules already added, are skipped.
  void add_module(std::shared_ptr<SegmentModule> module);

  // The forward about to run may be rerun: the buffers of the modules added, and of those added
  // later (when they are added), are copied, so that the rerun reads them as the forward did (a
  // block that updates a buffer and reads it, spectral norm's power iteration).
  void capture_buffers();
  // No rerun can come (the segment's tensors are all kept, none may be dropped): the copies go.
  void forget_buffers() { buffers_at_start_.clear(); }

  // The forward has ended: `drew` says whether it drew random numbers, and `generators_given`
  // which generators of the program's own it drew from, with their states before it did
  // (RngUseWatch). When it drew, the rerun restores those too, and the generators' states now are
  // what it checks the rerun against (capture_generator must have run).
  void forward_ended(bool drew, const std::vector<GeneratorState>& generators_given);
  // Whether the forward drew random numbers: then a rerun must run to the segment's end, so that
  // Rerun::finish can check where the generator ended.
  bool drew() const { return rng_end_.has_value(); }

  // While a Rerun lives, the forward's context is in force; it is undone when the Rerun ends,
  // however it ends. finish() checks that the generator ended where the forward left it: when it
  // did not, something else drew from it while the forward or the rerun ran (another thread),
  // and the rerun cannot have reproduced the forward's numbers; throws std::runtime_error naming
  // `segment`.
  class Rerun {
   public:
    explicit Rerun(const ForwardContext& context);
    ~Rerun();
    Rerun(const Rerun&) = delete;
    Rerun& operator=(const Rerun&) = delete;
    void finish(const std::string& segment) const;

   private:
    const ForwardContext& context_;
    std::optional<RngState> rng_before_;
    Autocast cpu_before_, cuda_before_;
    std::optional<KernelChoice> kernels_before_;  // when the forward's differed
    bool cache_before_;
    bool grad_before_;
    caffe2::TypeMeta default_dtype_before_;
    std::optional<c10::InferenceMode> not_inference_;  // set when the backward runs in it
    std::vector<std::vector<bool>> training_before_;  // by module
    // Each buffer of the modules, once (nested modules share theirs), with its value now.
    std::vector<std::pair<at::Tensor, at::Tensor>> buffers_before_;
  };

 private:
  std::optional<RngState> rng_start_;  // set by capture_generator
  std::optional<RngState> rng_end_;    // set when the forward drew
  std::vector<std::uint64_t> seeds_at_start_;  // the default generators' (capture_generator)
  bool sets_generator_ = false;  // it drew nothing and seeded a default generator
  Autocast cpu_, cuda_;
  KernelChoice kernels_;
  caffe2::TypeMeta default_dtype_;
  bool grad_ = true;
  std::vector<std::shared_ptr<SegmentModule>> modules_;
  bool capture_buffers_ = false;
  // Each buffer of the modules, once, with its value when its module was added (capture_buffers).
  std::vector<std::pair<at::Tensor, at::Tensor>> buffers_at_start_;
  void snapshot_buffers(const SegmentModule& module);
  std::vector<std::vector<bool>> training_;  // each module's flags when it was added
};

}  // namespace actmem::detail

// Internal: one segment's state between its forward and its recomputation in backward.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hooks/forward_context.h"
#include "hooks/scope_state.h"
#include "hooks/segment.h"

namespace actmem::detail {

// Thrown by SegmentFrame::capture once the rerun produced every tensor it must: it stops the rerun
// early, through the segment's function. Code in between that is not C++ (a Python forward, in
// python/) must carry it across and throw it again.
struct StopRerun {};

struct SegmentFrame {
  std::string name;
  SegmentFn fn;
  // Detached leaves, requiring grad as the originals did: the rerun's inputs (undefined where
  // input_entries holds one, or where the segment dropped the input for a chain). Written by the
  // forward's thread, and by read_inputs_through.
  TensorList inputs;
  std::vector<char> input_requires_grad;  // the originals'
  // Where the segment let go of input i for a recompute chain (policy.h's SegmentLink): the
  // segment that returned it, and which of its outputs it was. The rerun takes it from that
  // segment's rerun. Written by the forward's thread before fn runs.
  struct Link {
    std::shared_ptr<SegmentFrame> producer;
    std::size_t output = 0;
  };
  std::vector<std::optional<Link>> links;
  std::int64_t chain_position = 0;  // links in a row up to this segment (0: its inputs are not)
  // Which of its outputs a later segment dropped as a link: what a rerun for the chain keeps.
  std::vector<char> outputs_linked;
  // Each input's version when the segment began, and its version counter (which holds no memory):
  // a rerun on an input changed in place since would compute something else.
  std::vector<std::int64_t> input_versions;
  // Inputs the segment's own forward changed in place (found when it ends): a rerun would start
  // from the changed values. Written by the forward's thread before the frame is shared.
  std::vector<char> changed_by_forward;
  std::vector<c10::VariableVersion> input_counters;
  // What the forward ran under (generator, autocast, grad mode, the modules' training flags): in
  // force again while the segment is rerun. Written by the forward's thread while it runs.
  ForwardContext context;
  std::shared_ptr<ScopeState> scope;

  // Filled during the forward, read by ScopeState::settle when it ends: the kept entries that may
  // hold the frame so that the pressure handler can drop them, and the kept entries of this
  // segment that saved one of its inputs exactly (the same view, at the same version), by input.
  std::vector<std::weak_ptr<SavedEntry>> droppable;
  std::vector<std::pair<std::size_t, std::weak_ptr<SavedEntry>>> kept_inputs;

  // Steady-clock time of its forward (launch time on CUDA): what a rerun costs, for eviction;
  // 0 until the forward has ended.
  std::atomic<std::int64_t> forward_ns{0};
  // Set once the forward has returned: before, nothing it saved can be recomputed (a rerun would
  // run the segment again inside its own forward, from the generator's state of the moment).
  std::atomic<bool> forward_over{false};
  // Note [A segment's forward may read what it saved]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
  // A forward can differentiate through what it saved itself: autograd::grad with create_graph
  // inside the segment (a force as the derivative of an energy, a physics-informed residual). Its
  // unpacks come before the forward has returned, when nothing can be recomputed yet. So a tensor
  // saved for recompute stays held by its entry until the forward returns (ScopeState::settle lets
  // go of `held_in_forward`), and an unpack until then returns it. By the end of its forward a
  // segment holds what its rerun brings back in backward, over the same kept inputs: the reference
  // models' peaks did not move (RESULTS). torch.utils.checkpoint instead reruns the segment inside
  // its forward.
  // The rerun's own saved tensors are held the same way while it runs (CaptureHooks).
  std::vector<std::weak_ptr<SavedEntry>> held_in_forward;
  // Something was unpacked inside the forward (on its thread, or a tensor it held for recompute):
  // its rerun holds its own saved tensors while it runs (CaptureHooks).
  std::atomic<bool> read_in_forward{false};
  // Lets go of held_in_forward: when the forward returned (ScopeState::settle) or threw.
  void let_go_of_held();

  // Registers the next tensor saved during the forward; returns its pack index. `wanted`: the
  // rerun must produce it again (it is recomputed).
  std::int64_t add_pack(bool wanted);
  // Under pressure: asks the rerun to produce pack `index` too, so that its kept copy can be
  // dropped. Refuses (false) once the segment has been rerun, while this thread holds the frame
  // (a rerun's allocation asking for room), and when an input changed in place since the forward
  // (a rerun would compute something else).
  bool want_later(std::int64_t index);
  // Whether the rerun must produce any tensor yet.
  bool recomputes_any();
  // From now on the rerun reads input i through entries[i] where that is set (wherever the
  // entry's tensor is by then: kept or offloaded), and the frame lets go of its own alias, so
  // that it pins no input the pressure handler may offload. (The other inputs are tiny: the frame
  // keeps them; one changed in place after a drop makes the rerun fail, naming the segment.)
  // Entries over an input must not hold a frame themselves (no cycle): the hooks never let an
  // input's entry hold one.
  void read_inputs_through(std::vector<std::shared_ptr<SavedEntry>> entries);
  // Whether input i was changed in place since the segment began.
  bool input_changed(std::size_t i) const;

  // Returns the tensor saved as pack `index`, rerunning the segment first if needed, and lets
  // the frame forget it (but for a weak reference: read again while the memory it handed out is
  // alive, it hands out the same, so each segment reruns once per backward).
  at::Tensor take(std::int64_t index);

  // For the segment after it in a chain: output `index` of this segment's rerun, rerunning it (to
  // its end) if it has not been; the tensors its rerun must produce come back with it, for take().
  at::Tensor output_for_chain(std::size_t index);

  // Called by the capture hooks during a rerun.
  void capture(const at::Tensor& tensor);

  // Note [A rerun that ran out of memory]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
  // Backward holds more than the forward did, so a rerun can run out of memory where its forward
  // fitted. Usually that error leaves the rerun and backward as it is, LibTorch's out-of-memory
  // error. But a function that catches it and goes on another way (a fallback that computes in
  // chunks) saves other tensors than its forward did, and the rerun's check would call that a
  // function that does not repeat its work: for a caller that halves its batch on out-of-memory,
  // an error it does not catch. So a rerun counts the out-of-memory errors that left the allocators
  // on its thread while it ran (one an operator's worker thread met is not seen), and a mismatch
  // after one is reported as out of memory (fail_rerun).
  //
  // Throws `message` as the rerun's mismatch: an OutOfMemoryError (hooks/out_of_memory.h) saying
  // the rerun ran out of memory if its last rerun did, else std::runtime_error.
  [[noreturn]] void fail_rerun(const std::string& message) const;

 private:
  // mutex_ held. `outputs`: keep what fn returns, for output_for_chain (and run it to the end).
  void rerun(bool outputs);
  // Reruns the run of segments behind a dropped link (the one that returned `output` of
  // `producer`, the one before it, ...) oldest first, back to the first whose output is at hand,
  // so that each rerun finds its own link's output ready: a run of any length recurses one level.
  static void rerun_run_behind(std::shared_ptr<SegmentFrame> producer, std::size_t output);
  // Whether output `index` of a rerun for the chain is at hand (taken by output_for_chain).
  bool has_output_for_chain(std::size_t index);
  // The first input this segment let go of for a chain and reads from its producer's rerun (not
  // kept, not read through an entry); none when it needs none.
  std::optional<Link> link_to_rerun();
  // Reruns it for the chain unless output `index` is at hand.
  void prepare_output_for_chain(std::size_t index);
  // The error for a function that caught the StopRerun its rerun threw, and went on.
  [[noreturn]] void throw_stop_swallowed() const;
  // The rerun's inputs: `inputs`, with those read through entries filled in; throws if one was
  // changed in place since the forward.
  TensorList rerun_inputs();

  // Lock order: a SavedEntry's mutex may be taken while this one is held (rerun_inputs reads the
  // input entries), never the other way round: eviction, which holds entry locks, only tries it.
  std::mutex mutex_;  // everything below, and `inputs` once the forward is over
  std::vector<std::shared_ptr<SavedEntry>> input_entries_;  // see read_inputs_through
  std::vector<char> wanted_;  // one per tensor saved during the forward: produced by the rerun?
  bool reran_ = false;        // a rerun happened: later drops would re-produce taken tensors
  std::vector<at::Tensor> recomputed_;
  // What take() handed out, by pack index: its memory (weakly) and how the tensor lay in it, so
  // that a second read while that memory is alive gets the same tensor (autograd hands out its
  // own copy of the tensor object: only the storage tells that the first read is still alive).
  struct Taken {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    at::TensorOptions options;
    std::vector<std::int64_t> sizes, strides;
    std::int64_t offset = 0;
  };
  std::vector<std::optional<Taken>> taken_;
  std::int64_t capture_index_ = 0;
  std::int64_t last_wanted_ = -1;
  std::int64_t outstanding_ = 0;
  bool materialized_ = false;
  bool capturing_ = true;     // the rerun in progress keeps the tensors it must produce
  bool stop_thrown_ = false;  // it threw StopRerun: a return from the function after that means
                              // the function swallowed it
  std::atomic<bool> ran_out_of_memory_{false};  // in the last rerun (see fail_rerun)
  TensorList chain_outputs_;  // what the rerun returned, until the next segment takes it
};

// The frame whose forward runs on this thread, or null.
const std::shared_ptr<SegmentFrame>& forward_frame();
// The frame being rerun on this thread, or nullptr.
SegmentFrame* capturing_frame();
// A step ended on this thread: its last segment can no longer be linked to (a segment of the next
// step taking its output, undetached, would otherwise chain back into a finished step).
void forget_last_segment();

}  // namespace actmem::detail

// Whether the ops run on this thread draw random numbers: what a segment's forward must know to
// leave the generators alone in its rerun when it drew none (another thread may be drawing from
// them: setting and restoring a shared generator's state would undo its draws).
//
// It watches the ATen operators called on this thread while it lives, through a thread-local
// RecordFunction callback, and counts a draw for every operator that takes a Generator (dropout's
// bernoulli_, randn's normal_, randint, multinomial...) and the few that draw from the default one
// without taking it (CUDA's fused dropout, attention with dropout): structural, so another
// thread's draws never count. An operator given its own generator counts too (the answer errs on
// the side of restoring), and the watch keeps that generator, with its state before the first
// operator given it drew: the rerun must put it back too. (So the callback asks for each
// operator's inputs: about 2 us more a segment of a few operators, bench/segment_overhead.) So
// does the default generator of a CUDA device the captured state leaves out, when an operator on
// that device draws from it (a model split over two GPUs, or CUDA tensors where actmem manages
// the CPU): torch.utils.checkpoint keeps the generators of its inputs' devices for the same reason.
#pragma once

#include <cstdint>
#include <vector>

#include "hooks/rng_state.h"

namespace actmem {

class RngUseWatch {
 public:
  RngUseWatch();
  ~RngUseWatch();
  RngUseWatch(const RngUseWatch&) = delete;
  RngUseWatch& operator=(const RngUseWatch&) = delete;

  // True once an operator that takes a Generator ran on this thread since the watch began
  // (watches nest: an inner one's draws are the outer one's too).
  bool drew() const;
  // The generators other than the default ones RngState::capture() took as the outermost watch
  // began (the CPU's, and where actmem manages CUDA the CUDA device current then) that operators
  // on this thread were given, or drew from by default (another CUDA device's), since the watch
  // began, each once, with its state before the first of them drew (an inner watch's are the
  // outer one's too). So open the outermost watch right after that capture. Throws what the watch
  // failed to record while an operator ran (an allocation that failed): without that state the
  // rerun would draw other numbers.
  std::vector<GeneratorState> generators_given() const;

 private:
  std::uint64_t draws_at_start_;
  std::size_t given_at_start_;
  std::uint64_t failures_at_start_;
};

}  // namespace actmem

#include "hooks/forward_context.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <unordered_set>

namespace actmem::detail {
namespace {

// Puts `value` back into `buffer` (grad mode off) through variable_data(), which has a version
// counter of its own: the forward saved some buffers (BatchNorm's running stats) for backward, and
// putting back the values they had must not look like an in-place change to them. A buffer the
// forward resized (an observer's min_val, empty until its first batch) first gets its old shape
// back, which does show as a change: one saved for backward then fails, as it would in PyTorch.
// A buffer whose elements share memory (registered expanded) cannot be written in place, by the
// forward or here: it is left as it is.
void put_back(const at::Tensor& buffer, const at::Tensor& value) {
  if (at::has_internal_overlap(buffer) == at::MemOverlap::Yes) return;
  if (buffer.sizes() != value.sizes()) buffer.resize_(value.sizes());
  buffer.variable_data().copy_(value);
}

}  // namespace

ForwardContext::Autocast ForwardContext::Autocast::of(c10::DeviceType device) {
  return {at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
}

void ForwardContext::Autocast::apply(c10::DeviceType device) const {
  at::autocast::set_autocast_enabled(device, enabled);
  at::autocast::set_autocast_dtype(device, dtype);
}

ForwardContext::ForwardContext()
    : cpu_(Autocast::of(c10::DeviceType::CPU)),
      cuda_(Autocast::of(c10::DeviceType::CUDA)),
      kernels_(KernelChoice::now()),
      default_dtype_(c10::get_default_dtype()),
      grad_(c10::GradMode::is_enabled()) {}

void ForwardContext::add_module(std::shared_ptr<SegmentModule> module) {
  if (!module) return;
  for (const auto& added : modules_) {
    if (added->identity() == module->identity()) return;
  }
  training_.push_back(module->training_flags());
  if (capture_buffers_) snapshot_buffers(*module);
  modules_.push_back(std::move(module));
}

void ForwardContext::capture_buffers() {
  if (capture_buffers_) return;
  capture_buffers_ = true;
  for (const auto& module : modules_) snapshot_buffers(*module);
}

void ForwardContext::snapshot_buffers(const SegmentModule& module) {
  at::NoGradGuard no_grad;
  for (const at::Tensor& buffer : module.buffers()) {
    if (!buffer.defined()) continue;
    const bool seen = std::any_of(buffers_at_start_.begin(), buffers_at_start_.end(),
                                  [&](const auto& entry) {
                                    return entry.first.unsafeGetTensorImpl() ==
                                           buffer.unsafeGetTensorImpl();
                                  });
    if (!seen) buffers_at_start_.emplace_back(buffer, buffer.clone());
  }
}

void ForwardContext::capture_generator() {
  rng_start_ = RngState::capture();
  seeds_at_start_ = RngState::default_seeds();
}

void ForwardContext::forward_ended(bool drew, const std::vector<GeneratorState>& generators_given) {
  if (!rng_start_) return;
  if (!drew) {
    // Drew nothing, yet seeded a default generator (torch.manual_seed in a block): its rerun will
    // too, in backward, where the program's later draws would start from that seed. The rerun puts
    // back the states it found, as torch.utils.checkpoint's fork_rng does. (Another thread's draws
    // move a generator's state, never its seed: a forward that only ran beside them is left alone.)
    sets_generator_ = RngState::default_seeds() != seeds_at_start_;
    return;
  }
  for (const GeneratorState& given : generators_given) rng_start_->add(given);
  rng_end_ = RngState::capture(rng_start_->others());
}

ForwardContext::Rerun::Rerun(const ForwardContext& context)
    : context_(context),
      cpu_before_(Autocast::of(c10::DeviceType::CPU)),
      cuda_before_(Autocast::of(c10::DeviceType::CUDA)),
      cache_before_(at::autocast::is_autocast_cache_enabled()),
      grad_before_(c10::GradMode::is_enabled()),
      default_dtype_before_(c10::get_default_dtype()) {
  // First: inference mode sets grad mode too, which the rest sets as the forward had it.
  if (c10::InferenceMode::is_enabled()) not_inference_.emplace(/*enabled=*/false);
  {
    at::NoGradGuard no_grad;
    std::unordered_set<const c10::TensorImpl*> seen;
    for (const auto& module : context_.modules_) {
      for (const at::Tensor& buffer : module->buffers()) {
        if (seen.insert(buffer.unsafeGetTensorImpl()).second) {
          buffers_before_.emplace_back(buffer, buffer.clone());
        }
      }
    }
  }
  {
    // The forward's own values, where it changed a buffer before reading it.
    at::NoGradGuard no_grad;
    for (const auto& [buffer, value] : context_.buffers_at_start_) put_back(buffer, value);
  }
  for (const auto& module : context_.modules_) training_before_.push_back(module->training_flags());
  for (std::size_t i = 0; i < context_.modules_.size(); ++i) {
    context_.modules_[i]->set_training_flags(context_.training_[i]);
  }
  if (context_.rng_end_) {
    rng_before_ = RngState::capture(context_.rng_start_->others());
    context_.rng_start_->restore();
  } else if (context_.sets_generator_) {
    rng_before_ = RngState::capture();
  }
  context_.cpu_.apply(c10::DeviceType::CPU);
  context_.cuda_.apply(c10::DeviceType::CUDA);
  if (KernelChoice now = KernelChoice::now(); now != context_.kernels_) {
    kernels_before_ = now;
    context_.kernels_.apply();
  }
  // No cached casts: what the rerun casts is freed with it, whatever the caller's cache holds.
  at::autocast::set_autocast_cache_enabled(false);
  c10::set_default_dtype(context_.default_dtype_);
  c10::GradMode::set_enabled(context_.grad_);
}

void ForwardContext::Rerun::finish(const std::string& segment) const {
  if (context_.rng_end_ && RngState::capture(context_.rng_end_->others()) != *context_.rng_end_) {
    throw std::runtime_error(
        "actmem: segment '" + segment +
        "' draws random numbers, and its rerun did not leave the generators where its forward "
        "did: another thread drew from one of them while the segment ran or was "
        "recomputed (or the segment's function draws differently each time), so the rerun "
        "cannot reproduce the forward's numbers. Keep or offload this segment's tensors, or draw "
        "the other thread's numbers from a generator of its own");
  }
}

ForwardContext::Rerun::~Rerun() {
  c10::GradMode::set_enabled(grad_before_);
  c10::set_default_dtype(default_dtype_before_);
  at::autocast::set_autocast_cache_enabled(cache_before_);
  if (kernels_before_) {
    try {
      kernels_before_->apply();
    } catch (const std::exception& error) {  // a destructor: say it, do not end the process
      std::fprintf(stderr, "actmem: the kernel switches could not be put back after a rerun: %s\n",
                   error.what());
    }
  }
  cuda_before_.apply(c10::DeviceType::CUDA);
  cpu_before_.apply(c10::DeviceType::CPU);
  if (rng_before_) rng_before_->restore();
  for (std::size_t i = 0; i < context_.modules_.size(); ++i) {
    context_.modules_[i]->set_training_flags(training_before_[i]);
  }
  at::NoGradGuard no_grad;
  for (const auto& [buffer, value] : buffers_before_) {
    try {
      put_back(buffer, value);
    } catch (const std::exception& error) {  // a destructor: say it, do not end the process
      std::fprintf(stderr, "actmem: a buffer could not be put back after a rerun: %s\n",
                   error.what());
    }
  }
}

}  // namespace actmem::detail

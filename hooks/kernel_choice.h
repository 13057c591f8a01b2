// Internal: the process-wide switches that choose which kernel an operator runs, and with it the
// bits it computes and what it saves for backward: cuDNN and oneDNN on or off, their deterministic
// and benchmark modes, NNPACK, PyTorch's deterministic algorithms, TF32 for cuBLAS and cuDNN, the
// float32 matmul precision, and scaled_dot_product_attention's backends and their order.
//
// Programs switch them for a forward only (`with sdpa_kernel(SDPBackend.MATH): out = model(x)`,
// `torch.backends.cudnn.flags(...)`, `torch.backends.mkldnn.flags(enabled=False)`) and call
// backward outside: a segment's rerun must run under the forward's switches, or it computes other
// bits and, with another attention backend, saves other tensors. (torch.utils.checkpoint does not
// do this.) They are process-wide: while a rerun runs under switches other than the current ones,
// other threads see them too, as they would under the program's own `with`.
#pragma once

#include <ATen/Context.h>

#include <array>
#include <optional>

namespace actmem::detail {

class KernelChoice {
 public:
  // The switches now.
  static KernelChoice now();
  // Sets each switch that differs from now to this choice's value.
  void apply() const;

  bool operator==(const KernelChoice& other) const;
  bool operator!=(const KernelChoice& other) const { return !(*this == other); }

 private:
  bool cudnn_ = true, cudnn_deterministic_ = false, cudnn_benchmark_ = false;
  bool mkldnn_ = true, mkldnn_deterministic_ = false, nnpack_ = true;
  bool deterministic_ = false, deterministic_warn_only_ = false;
  bool tf32_cublas_ = false, tf32_cudnn_ = true;
  at::Float32MatmulPrecision matmul_precision_ = at::Float32MatmulPrecision::HIGHEST;
  bool sdp_flash_ = true, sdp_memory_efficient_ = true, sdp_math_ = true, sdp_cudnn_ = true;
  bool sdp_overrideable_ = true, sdp_math_reduced_precision_ = false;
  std::array<at::SDPBackend, at::num_sdp_backends> sdp_order_{};
};

}  // namespace actmem::detail

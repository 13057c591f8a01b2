#include "hooks/kernel_choice.h"

#include <cstdint>
#include <vector>

namespace actmem::detail {
namespace {

const char* name_of(at::Float32MatmulPrecision precision) {
  switch (precision) {
    case at::Float32MatmulPrecision::HIGHEST:
      return "highest";
    case at::Float32MatmulPrecision::HIGH:
      return "high";
    case at::Float32MatmulPrecision::MEDIUM:
      return "medium";
  }
  return "highest";
}

}  // namespace

KernelChoice KernelChoice::now() {
  at::Context& context = at::globalContext();
  KernelChoice choice;
  choice.cudnn_ = context.userEnabledCuDNN();
  choice.cudnn_deterministic_ = context.deterministicCuDNN();
  choice.cudnn_benchmark_ = context.benchmarkCuDNN();
  choice.mkldnn_ = context.userEnabledMkldnn();
  choice.mkldnn_deterministic_ = context.deterministicMkldnn();
  choice.nnpack_ = context.userEnabledNNPACK();
  choice.deterministic_ = context.deterministicAlgorithms();
  choice.deterministic_warn_only_ = context.deterministicAlgorithmsWarnOnly();
  choice.tf32_cublas_ = context.allowTF32CuBLAS();
  choice.tf32_cudnn_ = context.allowTF32CuDNN();
  choice.matmul_precision_ = context.float32MatmulPrecision();
  choice.sdp_flash_ = context.userEnabledFlashSDP();
  choice.sdp_memory_efficient_ = context.userEnabledMemEfficientSDP();
  choice.sdp_math_ = context.userEnabledMathSDP();
  choice.sdp_cudnn_ = context.userEnabledCuDNNSDP();
  choice.sdp_overrideable_ = context.userEnabledOverrideableSDP();
  choice.sdp_math_reduced_precision_ = context.allowFP16BF16ReductionMathSDP();
  choice.sdp_order_ = context.sDPPriorityOrder();
  return choice;
}

void KernelChoice::apply() const {
  const KernelChoice current = now();
  at::Context& context = at::globalContext();
  // Only what differs: some setters warn (TF32's older spelling), and most runs change nothing.
  if (cudnn_ != current.cudnn_) context.setUserEnabledCuDNN(cudnn_);
  if (cudnn_deterministic_ != current.cudnn_deterministic_) {
    context.setDeterministicCuDNN(cudnn_deterministic_);
  }
  if (cudnn_benchmark_ != current.cudnn_benchmark_) context.setBenchmarkCuDNN(cudnn_benchmark_);
  if (mkldnn_ != current.mkldnn_) context.setUserEnabledMkldnn(mkldnn_);
  if (mkldnn_deterministic_ != current.mkldnn_deterministic_) {
    context.setDeterministicMkldnn(mkldnn_deterministic_);
  }
  if (nnpack_ != current.nnpack_) context.setUserEnabledNNPACK(nnpack_);
  if (deterministic_ != current.deterministic_ ||
      deterministic_warn_only_ != current.deterministic_warn_only_) {
    context.setDeterministicAlgorithms(deterministic_, deterministic_warn_only_);
  }
  if (tf32_cublas_ != current.tf32_cublas_) context.setAllowTF32CuBLAS(tf32_cublas_);
  if (tf32_cudnn_ != current.tf32_cudnn_) context.setAllowTF32CuDNN(tf32_cudnn_);
  if (matmul_precision_ != current.matmul_precision_) {
    context.setFloat32MatmulPrecision(name_of(matmul_precision_));
  }
  if (sdp_flash_ != current.sdp_flash_) context.setSDPUseFlash(sdp_flash_);
  if (sdp_memory_efficient_ != current.sdp_memory_efficient_) {
    context.setSDPUseMemEfficient(sdp_memory_efficient_);
  }
  if (sdp_math_ != current.sdp_math_) context.setSDPUseMath(sdp_math_);
  if (sdp_cudnn_ != current.sdp_cudnn_) context.setSDPUseCuDNN(sdp_cudnn_);
  if (sdp_overrideable_ != current.sdp_overrideable_) {
    context.setSDPUseOverrideable(sdp_overrideable_);
  }
  if (sdp_math_reduced_precision_ != current.sdp_math_reduced_precision_) {
    context.setAllowFP16BF16ReductionMathSDP(sdp_math_reduced_precision_);
  }
  if (sdp_order_ != current.sdp_order_) {
    std::vector<std::int64_t> order;
    for (const at::SDPBackend backend : sdp_order_) order.push_back(static_cast<std::int64_t>(backend));
    context.setSDPPriorityOrder(order);
  }
}

bool KernelChoice::operator==(const KernelChoice& other) const {
  return cudnn_ == other.cudnn_ && cudnn_deterministic_ == other.cudnn_deterministic_ &&
         cudnn_benchmark_ == other.cudnn_benchmark_ && mkldnn_ == other.mkldnn_ &&
         mkldnn_deterministic_ == other.mkldnn_deterministic_ && nnpack_ == other.nnpack_ &&
         deterministic_ == other.deterministic_ &&
         deterministic_warn_only_ == other.deterministic_warn_only_ &&
         tf32_cublas_ == other.tf32_cublas_ && tf32_cudnn_ == other.tf32_cudnn_ &&
         matmul_precision_ == other.matmul_precision_ && sdp_flash_ == other.sdp_flash_ &&
         sdp_memory_efficient_ == other.sdp_memory_efficient_ && sdp_math_ == other.sdp_math_ &&
         sdp_cudnn_ == other.sdp_cudnn_ && sdp_overrideable_ == other.sdp_overrideable_ &&
         sdp_math_reduced_precision_ == other.sdp_math_reduced_precision_ &&
         sdp_order_ == other.sdp_order_;
}

}  // namespace actmem::detail

#include "hooks/segment_module.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/instancenorm.h>

#include <typeindex>

namespace actmem {
namespace {

// A module whose training-mode forward writes its buffers without reading them: LibTorch's
// BatchNorm and InstanceNorm themselves, not a subclass (whose forward may read them).
bool writes_running_stats_only(const torch::nn::Module& m) {
  static const std::type_index kTypes[] = {
      typeid(torch::nn::BatchNorm1dImpl),    typeid(torch::nn::BatchNorm2dImpl),
      typeid(torch::nn::BatchNorm3dImpl),    typeid(torch::nn::InstanceNorm1dImpl),
      typeid(torch::nn::InstanceNorm2dImpl), typeid(torch::nn::InstanceNorm3dImpl),
  };
  const std::type_index type = typeid(m);
  for (const std::type_index& known : kTypes) {
    if (type == known) return true;
  }
  return false;
}

class TorchSegmentModule final : public SegmentModule {
 public:
  explicit TorchSegmentModule(torch::nn::Module& module) : module_(module) {}

  const void* identity() const override { return &module_; }

  // Pre-order, the module first: setting them in this order leaves each with its own flag,
  // although train() recurses into submodules.
  std::vector<bool> training_flags() const override {
    std::vector<bool> flags{module_.is_training()};
    for (const auto& m : module_.modules(/*include_self=*/false)) flags.push_back(m->is_training());
    return flags;
  }

  // Called from a destructor too (ForwardContext::Rerun's): flags for submodules added since are
  // left out, never thrown for.
  void set_training_flags(const std::vector<bool>& flags) override {
    if (flags.empty()) return;
    module_.train(flags[0]);
    std::size_t i = 1;
    for (const auto& m : module_.modules(/*include_self=*/false)) {
      if (i >= flags.size()) break;
      m->train(flags[i++]);
    }
  }

  std::vector<at::Tensor> buffers() const override { return module_.buffers(); }

  std::vector<at::Tensor> buffers_read_by_forward() const override {
    std::vector<at::Tensor> buffers;
    const auto add_own = [&](const torch::nn::Module& m) {
      if (m.is_training() && writes_running_stats_only(m)) return;
      for (const at::Tensor& buffer : m.buffers(/*recurse=*/false)) buffers.push_back(buffer);
    };
    add_own(module_);
    for (const auto& m : module_.modules(/*include_self=*/false)) add_own(*m);
    return buffers;
  }

 private:
  torch::nn::Module& module_;
};

}  // namespace

std::shared_ptr<SegmentModule> torch_segment_module(torch::nn::Module* module) {
  if (module == nullptr) return nullptr;
  return std::make_shared<TorchSegmentModule>(*module);
}

}  // namespace actmem

#include "hooks/segment_module.h"

#include <torch/nn/module.h>

namespace actmem {
namespace {

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

 private:
  torch::nn::Module& module_;
};

}  // namespace

std::shared_ptr<SegmentModule> torch_segment_module(torch::nn::Module* module) {
  if (module == nullptr) return nullptr;
  return std::make_shared<TorchSegmentModule>(*module);
}

}  // namespace actmem

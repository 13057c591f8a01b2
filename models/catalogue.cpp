#include "models/catalogue.h"

#include <torch/utils.h>

#include <functional>
#include <map>
#include <stdexcept>

#include "models/densenet.h"
#include "models/lstm_lm.h"
#include "models/resnet.h"
#include "models/vnet.h"

namespace actmem::models {
namespace {

struct Entry {
  std::function<std::shared_ptr<Model>()> make;
  std::int64_t batch;
};

// The sizes. `tiny` and `small` shrink width or vocabulary more than resolution or batch, so that
// activations, not parameters (with their gradients and momentum), dominate a step's memory, as at
// `full` size.
Entry entry(const std::string& name, Size size) {
  if (name == "resnet") {
    switch (size) {
      case Size::kTiny: return {[] { return make_preact_resnet({20, 16, 10, 32}); }, 16};
      case Size::kSmall: return {[] { return make_preact_resnet({56, 16, 10, 32}); }, 32};
      case Size::kFull: return {[] { return make_preact_resnet({1001, 16, 10, 32}); }, 64};
    }
  }
  if (name == "densenet") {
    switch (size) {
      case Size::kTiny: return {[] { return make_densenet({{2, 4, 4, 2}, 12, 4, 0.5, 24, 64, 10}); }, 8};
      case Size::kSmall: return {[] { return make_densenet({{6, 12, 24, 16}, 12, 4, 0.5, 24, 64, 10}); }, 16};
      case Size::kFull: return {[] { return make_densenet(densenet264()); }, 16};
    }
  }
  if (name == "lstm") {
    switch (size) {
      case Size::kTiny: return {[] { return make_lstm_lm({2000, 64, 64, 2, 0.2, 35, 4, 10}); }, 32};
      case Size::kSmall: return {[] { return make_lstm_lm({10000, 200, 200, 2, 0.2, 35, 4, 10}); }, 64};
      case Size::kFull: return {[] { return make_lstm_lm(LstmLmConfig{}); }, 256};
    }
  }
  if (name == "vnet") {
    switch (size) {
      case Size::kTiny: return {[] { return make_vnet({2, {32, 32, 32}, 5, 2}); }, 2};
      case Size::kSmall: return {[] { return make_vnet({4, {64, 64, 32}, 5, 2}); }, 2};
      case Size::kFull: return {[] { return make_vnet(VNetConfig{}); }, 2};
    }
  }
  std::string valid;
  for (const std::string& known : model_names()) valid += (valid.empty() ? "" : ", ") + known;
  throw std::invalid_argument("unknown model '" + name + "'; valid models: " + valid);
}

}  // namespace

const char* to_string(Size size) {
  switch (size) {
    case Size::kTiny: return "tiny";
    case Size::kSmall: return "small";
    case Size::kFull: return "full";
  }
  return "?";
}

Size parse_size(const std::string& text) {
  for (Size size : {Size::kTiny, Size::kSmall, Size::kFull}) {
    if (text == to_string(size)) return size;
  }
  throw std::invalid_argument("unknown size '" + text + "'; valid sizes: tiny, small, full");
}

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = {"resnet", "densenet", "lstm", "vnet"};
  return names;
}

std::shared_ptr<Model> make_model(const std::string& name, Size size, std::uint64_t seed,
                                  c10::Device device) {
  const Entry e = entry(name, size);
  torch::manual_seed(seed);  // the initial weights, drawn on the CPU whatever the device
  std::shared_ptr<Model> model = e.make();
  if (!device.is_cpu()) model->to(device);
  return model;
}

std::int64_t default_batch(const std::string& name, Size size) { return entry(name, size).batch; }

}  // namespace actmem::models

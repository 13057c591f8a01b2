// The `full` configurations against the published figures: parameter counts, and the output shape
// of a forward pass on one sample without gradients (VNet's on a smaller volume: its full one
// costs hundreds of GFLOP per sample on CPU; its parameters do not depend on the volume).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/catalogue.h"
#include "models/densenet.h"
#include "models/lstm_lm.h"
#include "models/resnet.h"
#include "models/vnet.h"

namespace actmem::models {
namespace {

std::int64_t parameter_count(Model& model) {
  std::int64_t count = 0;
  for (const auto& p : model.parameters()) count += p.numel();
  return count;
}

// Convolution and linear weights only: what the ResNet paper counts (BatchNorm's scale and shift
// add 0.15 M at depth 1001).
std::int64_t weight_count(Model& model) {
  std::int64_t count = 0;
  for (const auto& p : model.parameters()) count += p.dim() > 1 ? p.numel() : 0;
  return count;
}

std::vector<std::int64_t> output_shape(Model& model) {
  torch::NoGradGuard no_grad;
  model.eval();
  return model.forward(model.make_batch(1, 0).input).sizes().vec();
}

TEST(FullModels, ResNet50MatchesThePublishedCount) {
  auto model = make_resnet50();
  EXPECT_EQ(parameter_count(*model), 25'557'032);  // torchvision's resnet50
  EXPECT_EQ(output_shape(*model), (std::vector<std::int64_t>{1, 1000}));
}

TEST(FullModels, PreactResNet164And1001MatchThePaper) {
  // "Identity Mappings in Deep Residual Networks", table 3: 1.7 M and 10.2 M parameters.
  auto resnet164 = make_preact_resnet({164, 16, 10, 32});
  EXPECT_NEAR(weight_count(*resnet164) / 1e6, 1.7, 0.05);
  auto resnet1001 = make_model("resnet", Size::kFull);
  EXPECT_NEAR(weight_count(*resnet1001) / 1e6, 10.2, 0.05);
  EXPECT_EQ(output_shape(*resnet1001), (std::vector<std::int64_t>{1, 10}));
}

TEST(FullModels, DenseNet121And264MatchThePublishedCounts) {
  auto densenet121 = make_densenet(DenseNetConfig{});
  EXPECT_EQ(parameter_count(*densenet121), 7'978'856);  // torchvision's densenet121
  EXPECT_EQ(output_shape(*densenet121), (std::vector<std::int64_t>{1, 1000}));
  auto densenet264 = make_model("densenet", Size::kFull);  // the full size is 264
  EXPECT_NEAR(parameter_count(*densenet264) / 1e6, 33.3, 0.2);
}

TEST(FullModels, LstmLanguageModelHasTheExampleShape) {
  auto model = make_model("lstm", Size::kFull);
  const std::int64_t vocabulary = 33278, width = 200;
  const std::int64_t lstm_layer = 4 * width * (width + width) + 2 * 4 * width;
  EXPECT_EQ(parameter_count(*model),
            vocabulary * width + 2 * lstm_layer + width * vocabulary + vocabulary);
  EXPECT_EQ(output_shape(*model), (std::vector<std::int64_t>{35, 1, vocabulary}));
}

TEST(FullModels, VNetKeepsTheVolumeAndGivesTwoClasses) {
  auto full = make_model("vnet", Size::kFull);
  EXPECT_EQ(full->make_batch(1, 0).input.sizes().vec(),
            (std::vector<std::int64_t>{1, 1, 128, 128, 64}));
  VNetConfig config;  // the full channels, 16-32-64-128-256, on a 32x32x16 volume
  config.volume = {32, 32, 16};
  auto model = make_vnet(config);
  EXPECT_EQ(parameter_count(*model), parameter_count(*full));
  EXPECT_EQ(output_shape(*model), (std::vector<std::int64_t>{1, 2, 32, 32, 16}));
}

TEST(Models, UnknownNamesAndBadShapesAreRefusedClearly) {
  try {
    make_model("resnext", Size::kTiny);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "unknown model 'resnext'; valid models: resnet, densenet, lstm, vnet");
  }
  EXPECT_THROW(parse_size("medium"), std::invalid_argument);
  EXPECT_THROW(make_preact_resnet({50, 16, 10, 32}), std::invalid_argument);
  EXPECT_THROW(make_vnet({16, {100, 128, 64}, 5, 2}), std::invalid_argument);
}

TEST(Models, BatchesAreDeterministicPerSeed) {
  for (const std::string& name : model_names()) {
    auto model = make_model(name, Size::kTiny);
    const Batch a = model->make_batch(2, 5), b = model->make_batch(2, 5), c = model->make_batch(2, 6);
    EXPECT_TRUE(torch::equal(a.input, b.input) && torch::equal(a.target, b.target)) << name;
    EXPECT_FALSE(torch::equal(a.input, c.input)) << name;
    EXPECT_EQ(a.samples, 2) << name;
  }
}

}  // namespace
}  // namespace actmem::models

// The reference models by name and size, with the batch each size is measured at.
//
//   auto model = actmem::models::make_model("resnet", actmem::models::Size::kSmall);
//   auto batch = model->make_batch(actmem::models::default_batch("resnet", Size::kSmall), 1);
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "models/model.h"

namespace actmem::models {

// "resnet", "densenet", "lstm", "vnet".
const std::vector<std::string>& model_names();

// The model `name` at `size`, its weights drawn from `seed` (on the CPU, so the same on every
// device), on `device`. Throws std::invalid_argument for an unknown name, listing the valid ones.
std::shared_ptr<Model> make_model(const std::string& name, Size size, std::uint64_t seed = 0,
                                  c10::Device device = c10::Device(c10::DeviceType::CPU));

// The batch the main job and the tests use for `name` at `size`.
std::int64_t default_batch(const std::string& name, Size size);

}  // namespace actmem::models

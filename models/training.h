// The plain training step every caller uses: tests, benchmarks and the main job. It works
// unchanged under every policy: the policy is whatever ActivationScope is active around it.
#pragma once

#include <torch/optim/sgd.h>

#include <memory>

#include "models/model.h"

namespace actmem::models {

// SGD with momentum 0.9 and learning rate 0.01 over the model's parameters.
std::unique_ptr<torch::optim::SGD> make_optimizer(Model& model);

// Zeroes the gradients, computes the loss, runs backward and the optimizer step. Returns the loss.
// The gradients of this step stay in the parameters until the next step.
double train_step(Model& model, torch::optim::Optimizer& optimizer, const Batch& batch);

}  // namespace actmem::models

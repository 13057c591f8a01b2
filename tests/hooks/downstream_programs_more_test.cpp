// More small LibTorch programs written as downstream users write them, not for actmem (an
// exploration beyond downstream_programs_test.cpp): each runs plain and under every policy and must
// give plain's digest (losses, gradients, buffers, to the bit) or plain's error. Categories: shared
// weights, aliasing outputs, inputs without grad, no-grad pieces, retain_graph and double
// backward, gradient accumulation, unrolled and branching segments, random numbers (explicit
// generators too), buffers of other modules than BatchNorm, exceptions and forward-only steps,
// sparse and complex tensors, custom autograd functions.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "allocator/errors.h"
#include "hooks/actmem.h"
#include "tests/hooks/downstream_harness.h"

namespace actmem {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;
using namespace downstream;  // NOLINT: the harness is what every test here uses

std::vector<torch::Tensor> grads_of(const nn::Module& module) {
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : module.parameters()) {
    grads.push_back(p.grad().defined() ? p.grad().clone() : torch::full({1}, -12345.0));
  }
  return grads;
}

void add_module(std::vector<torch::Tensor>& digest, const nn::Module& module) {
  for (const torch::Tensor& g : grads_of(module)) digest.push_back(g);
  for (const torch::Tensor& p : module.parameters()) digest.push_back(p.detach().clone());
  for (const torch::Tensor& b : module.buffers()) digest.push_back(b.clone());
}

// --- 1. Weights shared between segments, a parameter used inside and outside ---

TEST(DownstreamSharing, SharedWeightsAcrossSegmentsAndOutside) {
  expect_as_plain(
      [] {
        torch::manual_seed(101);
        nn::Linear shared(16, 16);
        nn::Linear head(16, 4);
        torch::optim::SGD opt(shared->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
        const torch::Tensor x = torch::randn({8, 16});
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          opt.zero_grad();
          head->zero_grad();
          torch::Tensor h = x;
          for (int i = 0; i < 3; ++i) {
            h = segment(
                "s" + std::to_string(i), *shared,
                [&](const torch::Tensor& t) { return torch::tanh(shared(t)) * shared->bias; }, h);
          }
          // The same weight outside the segments too.
          const torch::Tensor loss =
              head(h).pow(2).mean() + (h.mm(shared->weight)).sin().mean();
          loss.backward();
          opt.step();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *shared);
        add_module(digest, *head);
        return digest;
      },
      false);
}

// --- 2. Outputs aliasing inputs: the input itself, a view of it, an unused output ---

TEST(DownstreamSharing, SegmentReturnsItsInputAViewAndAnUnusedOutput) {
  expect_as_plain(
      [] {
        torch::manual_seed(102);
        nn::Linear a(12, 12), b(12, 12), c(12, 12);
        const torch::Tensor x = torch::randn({6, 12}, torch::requires_grad());
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          a->zero_grad();
          b->zero_grad();
          c->zero_grad();
          x.mutable_grad() = torch::Tensor();
          const torch::Tensor h = a(x).sigmoid();
          const TensorList first = segment(
              "first",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor y = b(in[0]).tanh();
                // the input itself, a transposed view of it, a new tensor, an unused one
                return {in[0], in[0].t(), y, y.exp()};
              },
              {h});
          const TensorList second = segment(
              "second",
              [&](const TensorList& in) -> TensorList {
                return {c(in[0]).cos() + in[1].t().sin(), in[2]};  // passes one through
              },
              {first[0], first[1], first[2]});
          const torch::Tensor third = segment(
              "third", [](const TensorList& in) -> TensorList { return {in[0] * in[1].sin()}; },
              {second[1], second[0]})[0];
          const torch::Tensor loss = third.pow(2).mean() + second[0].mean();
          loss.backward();
          digest.push_back(loss.detach().clone());
          digest.push_back(x.grad().clone());
        }
        add_module(digest, *a);
        add_module(digest, *b);
        add_module(digest, *c);
        return digest;
      },
      false);
}

// --- 3. Inputs that need no grad: data, integer and bool tensors; outputs that need none ---

TEST(DownstreamInputs, DataIntegerAndBoolInputsAndNonDifferentiableOutputs) {
  expect_as_plain(
      [] {
        torch::manual_seed(103);
        nn::Embedding embed(30, 8);
        nn::Linear proj(8, 8), out(8, 30);
        const torch::Tensor tokens = torch::randint(30, {5, 7}, torch::kLong);
        const torch::Tensor mask = torch::rand({5, 7}) > 0.3;
        const torch::Tensor idx = torch::tensor({0, 2, 4}, torch::kLong);
        std::vector<torch::Tensor> digest;
        nn::Sequential all(embed, proj, out);
        for (int step = 0; step < 2; ++step) {
          all->zero_grad();
          const TensorList first = segment(
              "embed",
              [&](const TensorList& in) -> TensorList {
                torch::Tensor e = embed(in[0]);                                 // [5,7,8]
                e = e.masked_fill(in[1].logical_not().unsqueeze(-1), 0.0);       // bool input
                torch::Tensor h = proj(e).relu().index_select(0, in[2]);         // long input
                const torch::Tensor argmax = h.argmax(-1);                       // no grad
                return {h, argmax, in[1].sum(-1)};
              },
              {tokens, mask, idx});
          const TensorList second = segment(
              "out",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor logits = out(in[0]);
                const torch::Tensor picked = logits.gather(-1, in[1].unsqueeze(-1));
                return {F::cross_entropy(logits.reshape({-1, 30}), in[1].reshape({-1})) +
                        picked.mean(), in[2].to(torch::kFloat)};
              },
              {first[0], first[1], first[2]});
          const torch::Tensor loss = second[0] + second[1].mean() * 0.0;
          loss.backward();
          digest.push_back(loss.detach().clone());
          digest.push_back(first[1].clone());
        }
        add_module(digest, *all);
        return digest;
      },
      false);
}

// Validation between training steps under inference mode and under no_grad, through the same
// segments: nothing is saved there, and the training steps around it train as without actmem.
TEST(DownstreamInputs, ValidationUnderInferenceModeAndNoGradBetweenSteps) {
  expect_as_plain(
      [] {
        torch::manual_seed(131);
        nn::Sequential first(nn::Linear(8, 16), nn::BatchNorm1d(16), nn::ReLU(), nn::Dropout(0.2));
        nn::Linear second(16, 4);
        torch::optim::SGD opt(first->parameters(), torch::optim::SGDOptions(0.1));
        auto forward = [&](const torch::Tensor& x) {
          const torch::Tensor h = segment(
              "first", *first, [&](const torch::Tensor& t) { return first->forward(t); }, x);
          return segment("second", *second, [&](const torch::Tensor& t) { return second(t); }, h);
        };
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          opt.zero_grad();
          second->zero_grad();
          const torch::Tensor loss = forward(torch::randn({6, 8})).pow(2).mean();
          loss.backward();
          opt.step();
          digest.push_back(loss.detach().clone());
          first->eval();
          {
            c10::InferenceMode inference;
            digest.push_back(forward(torch::randn({6, 8})).clone());
          }
          {
            torch::NoGradGuard no_grad;
            digest.push_back(forward(torch::randn({6, 8})));
          }
          first->train();
        }
        add_module(digest, *first);
        add_module(digest, *second);
        return digest;
      },
      false);
}

// --- 4. No grad inside segments; a frozen backbone segment run under NoGradGuard feeding a head
//        segment (a link); detach inside ---

TEST(DownstreamInputs, NoGradBackboneSegmentFeedsATrainedHeadSegment) {
  expect_as_plain(
      [] {
        torch::manual_seed(104);
        nn::Sequential backbone(nn::Linear(16, 32), nn::BatchNorm1d(32), nn::ReLU(),
                                nn::Dropout(0.25));
        nn::Sequential head(nn::Linear(32, 32), nn::Dropout(0.1), nn::Linear(32, 3));
        backbone->train();
        head->train();
        torch::optim::Adam opt(head->parameters(), torch::optim::AdamOptions(1e-2));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          opt.zero_grad();
          const torch::Tensor x = torch::randn({10, 16});
          torch::Tensor feats;
          {
            torch::NoGradGuard no_grad;
            feats = segment(
                "backbone", *backbone, [&](const torch::Tensor& t) { return backbone->forward(t); },
                x);
          }
          const torch::Tensor y = segment(
              "head", *head,
              [&](const torch::Tensor& t) {
                const torch::Tensor h = head[0]->as<nn::Linear>()->forward(t);
                // a detached branch and a no-grad piece inside the segment
                torch::Tensor scale;
                {
                  torch::NoGradGuard inner;
                  scale = h.abs().mean() + 1.0;
                }
                const torch::Tensor d = head[1]->as<nn::Dropout>()->forward(h.tanh()) / scale;
                return head[2]->as<nn::Linear>()->forward(d + h.detach().sin());
              },
              feats);
          const torch::Tensor loss = y.pow(2).mean();
          loss.backward();
          opt.step();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *backbone);
        add_module(digest, *head);
        return digest;
      },
      false);
}

// --- 5. retain_graph and two backwards ---

TEST(DownstreamBackwards, RetainGraphTwoBackwardsOfDifferentLosses) {
  expect_as_plain(
      [] {
        torch::manual_seed(105);
        nn::Sequential net(nn::Linear(10, 20), nn::Tanh(), nn::Dropout(0.2), nn::Linear(20, 10));
        net->train();
        const torch::Tensor x = torch::randn({6, 10});
        torch::Tensor h = x;
        for (int i = 0; i < 2; ++i) {
          h = segment(
              "s" + std::to_string(i), *net, [&](const torch::Tensor& t) { return net->forward(t); },
              h);
        }
        const torch::Tensor loss1 = h.pow(2).mean();
        const torch::Tensor loss2 = h.sin().sum();
        loss1.backward({}, /*retain_graph=*/true);
        std::vector<torch::Tensor> digest = grads_of(*net);
        loss2.backward({}, /*retain_graph=*/true);
        for (const torch::Tensor& g : grads_of(*net)) digest.push_back(g);
        loss1.backward();
        add_module(digest, *net);
        return digest;
      },
      false);
}

// Actor-critic style: two losses, the first backward kept, a step of some parameters in between
// (the first layer on data: no saved tensor depends on its weight, so plain LibTorch allows it).
TEST(DownstreamBackwards, AStepOnAFirstLayerBetweenTwoBackwardsOfOneGraph) {
  // Recompute reruns the trunk with the stepped weights (the step does not move their version
  // counters, so nothing can tell): README, What recompute needs of a segment.
  expect_as_plain_under(
      [] {
        torch::manual_seed(106);
        nn::Linear first(8, 16), second(16, 4);
        torch::optim::SGD opt_first(first->parameters(), torch::optim::SGDOptions(0.5));
        const torch::Tensor x = torch::randn({5, 8});
        const torch::Tensor y = segment(
            "trunk",
            [&](const TensorList& in) -> TensorList {
              return {second(torch::tanh(first(in[0])))};
            },
            {x})[0];
        const torch::Tensor loss1 = y.pow(2).mean();
        const torch::Tensor loss2 = y.sum();
        loss1.backward({}, /*retain_graph=*/true);
        opt_first.step();  // changes first's weight in place
        second->zero_grad();
        loss2.backward();
        std::vector<torch::Tensor> digest;
        add_module(digest, *first);
        add_module(digest, *second);
        return digest;
      },
      false, {"keep", "offload", "auto"});
}

// --- 6. Double backward: a gradient penalty through segments, and autograd::grad inside one ---

TEST(DownstreamBackwards, GradientPenaltyThroughSegments) {
  expect_as_plain(
      [] {
        torch::manual_seed(107);
        nn::Sequential critic(nn::Linear(6, 16), nn::Tanh(), nn::Linear(16, 16), nn::Softplus(),
                              nn::Linear(16, 1));
        torch::optim::Adam opt(critic->parameters(), torch::optim::AdamOptions(1e-3));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          opt.zero_grad();
          const torch::Tensor x = torch::randn({7, 6}).requires_grad_(true);
          torch::Tensor h = x;
          h = segment("c0",
                      [&](const TensorList& in) -> TensorList {
                        return {critic[1]->as<nn::Tanh>()->forward(
                            critic[0]->as<nn::Linear>()->forward(in[0]))};
                      },
                      {h})[0];
          h = segment("c1",
                      [&](const TensorList& in) -> TensorList {
                        return {critic[3]->as<nn::Softplus>()->forward(
                            critic[2]->as<nn::Linear>()->forward(in[0]))};
                      },
                      {h})[0];
          const torch::Tensor score = critic[4]->as<nn::Linear>()->forward(h);
          const torch::Tensor g = torch::autograd::grad({score.sum()}, {x}, {},
                                                        /*retain_graph=*/true,
                                                        /*create_graph=*/true)[0];
          const torch::Tensor loss = score.mean() + (g.norm(2, 1) - 1).pow(2).mean();
          loss.backward();
          opt.step();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *critic);
        return digest;
      },
      false);
}

// A physics-informed style segment: it takes a derivative of its own output with respect to its
// input, with create_graph, inside its forward. That reads what the segment saved before its
// forward has returned: under recompute too, the hooks hold it until then (it used to be
// actmem's error there: "differentiates through a tensor it saved itself").
TEST(DownstreamBackwards, AutogradGradInsideASegment) {
  const Program program = [] {
    torch::manual_seed(108);
    nn::Sequential net(nn::Linear(2, 16), nn::Tanh(), nn::Linear(16, 1));
    const torch::Tensor x = torch::randn({9, 2}).requires_grad_(true);
    const torch::Tensor du = segment(
        "pde",
        [&](const TensorList& in) -> TensorList {
          const torch::Tensor u = net->forward(in[0]);
          return {torch::autograd::grad({u.sum()}, {in[0]}, {}, true, true)[0]};
        },
        {x})[0];
    const torch::Tensor loss = du.pow(2).mean();
    loss.backward();
    std::vector<torch::Tensor> digest = {loss.detach().clone()};
    add_module(digest, *net);
    return digest;
  };
  expect_as_plain(program, false);
}

// Energy blocks in a row, trained: each segment's force is the derivative of an energy of its
// input, taken inside the segment with create_graph, and the loss goes through both, so backward
// differentiates twice through what each segment saved (once inside its forward, once from the
// loss) and through the links between them.
std::vector<torch::Tensor> energy_blocks(int steps) {
  torch::manual_seed(118);
  nn::Sequential e1(nn::Linear(12, 32), nn::Tanh(), nn::Dropout(0.2), nn::Linear(32, 1));
  nn::Sequential e2(nn::Linear(12, 32), nn::Tanh(), nn::Linear(32, 1));
  torch::optim::SGD opt(std::vector<torch::Tensor>{}, torch::optim::SGDOptions(0.05));
  for (auto* e : {&e1, &e2}) opt.add_param_group({(*e)->parameters()});
  std::vector<torch::Tensor> digest;
  for (int step = 0; step < steps; ++step) {
    const torch::Tensor x = torch::randn({8, 12});
    torch::Tensor h = x;
    int block = 0;
    for (auto* e : {&e1, &e2}) {
      h = segment(
          "energy" + std::to_string(block++),
          [e](const TensorList& in) -> TensorList {
            const torch::Tensor xr =
                in[0].requires_grad() ? in[0] : in[0].detach().requires_grad_(true);
            const torch::Tensor force =
                torch::autograd::grad({(*e)->forward(xr).sum()}, {xr}, {},
                                      /*retain_graph=*/true, /*create_graph=*/true)[0];
            return {in[0] - 0.1 * force};
          },
          {h})[0];
    }
    const torch::Tensor loss = h.pow(2).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    digest.push_back(loss.detach().clone());
  }
  add_module(digest, *e1);
  add_module(digest, *e2);
  return digest;
}

TEST(DownstreamBackwards, EnergyBlocksInARowTrain) {
  expect_as_plain([] { return energy_blocks(2); }, false);
}

// The derivatives taken inside the forward are part of the step: only loss.backward() ends one
// (each used to end a step of its own: auto planned from fragments of steps).
TEST(DownstreamBackwards, ADerivativeInsideAForwardEndsNoStep) {
  install();
  ActivationScope scope(policy_for("auto"));
  energy_blocks(3);
  EXPECT_EQ(scope.stats().steps, 3);
}

// A custom Function whose backward reads its saved tensors twice, in a segment: the second read
// hands out what the first did (alive in the backward), so the segment reruns once per backward
// (it reran twice: issue 15's "each segment reruns exactly once per backward").
struct SquareReadTwice : torch::autograd::Function<SquareReadTwice> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x) {
    ctx->save_for_backward({x});
    return x * x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const torch::Tensor x = ctx->get_saved_variables()[0];
    const torch::Tensor again = ctx->get_saved_variables()[0];
    return {grad[0] * (x + again)};
  }
};

std::vector<torch::Tensor> read_twice_program() {
  torch::manual_seed(119);
  nn::Linear lin(16, 16);
  const torch::Tensor x = torch::randn({8, 16});
  const torch::Tensor y = segment(
      "twice",
      [&](const TensorList& in) -> TensorList {
        return {SquareReadTwice::apply(lin(in[0]).tanh())};
      },
      {x})[0];
  y.sum().backward();
  std::vector<torch::Tensor> digest;
  add_module(digest, *lin);
  return digest;
}

TEST(DownstreamBackwards, AFunctionReadingItsSavedTensorsTwiceRerunsItsSegmentOnce) {
  expect_as_plain(read_twice_program, false);
  install();
  ActivationScope scope(policy_for("recompute"));
  read_twice_program();
  EXPECT_EQ(scope.stats().recomputations, 1);
}

// --- 7. Gradient accumulation over micro-batches, zero_grad(set_to_none) ---

TEST(DownstreamBackwards, GradientAccumulationOverMicroBatches) {
  expect_as_plain(
      [] {
        torch::manual_seed(109);
        nn::Sequential net(nn::Linear(12, 24), nn::BatchNorm1d(24), nn::GELU(), nn::Dropout(0.1),
                           nn::Linear(24, 12), nn::LayerNorm(nn::LayerNormOptions({12})),
                           nn::Linear(12, 2));
        net->train();
        torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(1e-2));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          opt.zero_grad(/*set_to_none=*/true);
          for (int micro = 0; micro < 3; ++micro) {
            const torch::Tensor x = torch::randn({4, 12});
            const torch::Tensor target = torch::randint(2, {4}, torch::kLong);
            torch::Tensor h = segment(
                "a", *net,
                [&](const torch::Tensor& t) {
                  return net[3]->as<nn::Dropout>()->forward(net[2]->as<nn::GELU>()->forward(
                      net[1]->as<nn::BatchNorm1d>()->forward(net[0]->as<nn::Linear>()->forward(t))));
                },
                x);
            h = segment(
                "b", *net,
                [&](const torch::Tensor& t) {
                  return net[6]->as<nn::Linear>()->forward(
                      net[5]->as<nn::LayerNorm>()->forward(net[4]->as<nn::Linear>()->forward(t)));
                },
                h);
            const torch::Tensor loss = F::cross_entropy(h, target) / 3;
            loss.backward();
            digest.push_back(loss.detach().clone());
          }
          opt.step();
        }
        add_module(digest, *net);
        return digest;
      },
      false);
}

// --- 8. An RNN-like unrolled loop: the same cell segment called repeatedly, a branch feeding two
//        later segments, a loss on part of the outputs ---

TEST(DownstreamSharing, UnrolledCellBranchesAndPartialLoss) {
  expect_as_plain(
      [] {
        torch::manual_seed(110);
        nn::GRUCell cell(6, 10);
        nn::Linear left(10, 5), right(10, 5);
        nn::Dropout drop(0.2);
        drop->train();
        const torch::Tensor xs = torch::randn({5, 3, 6});
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          cell->zero_grad();
          left->zero_grad();
          right->zero_grad();
          torch::Tensor h = torch::zeros({3, 10});
          std::vector<torch::Tensor> outs;
          for (int t = 0; t < 5; ++t) {
            const TensorList r = segment(
                "cell",
                [&](const TensorList& in) -> TensorList {
                  const torch::Tensor next = cell(in[0], in[1]);
                  return {drop(next), next.sum(-1)};  // the second is never used
                },
                {xs[t], h}, cell.ptr().get());
            h = r[0];
            outs.push_back(h);
          }
          // A branch: the last state feeds two segments.
          const torch::Tensor l = segment(
              "left", [&](const TensorList& in) -> TensorList { return {left(in[0]).tanh()}; },
              {h})[0];
          const torch::Tensor r = segment(
              "right", [&](const TensorList& in) -> TensorList { return {right(in[0]).sin()}; },
              {h})[0];
          // Part of the outputs only: a slice of one, two of the five steps.
          const torch::Tensor loss = (l * r).narrow(1, 0, 3).sum() + outs[1].pow(2).mean() +
                                     outs[3].narrow(0, 1, 1).sum();
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *cell);
        add_module(digest, *left);
        add_module(digest, *right);
        return digest;
      },
      false);
}

// --- 9. Random numbers: dropout 0 and 1, functional dropout, rand/randn/randperm/bernoulli ---

TEST(DownstreamRandom, RandomOpsInsideSegments) {
  expect_as_plain(
      [] {
        torch::manual_seed(111);
        nn::Linear l1(8, 8), l2(8, 8);
        nn::Dropout none(0.0), all(1.0);
        const torch::Tensor x = torch::randn({6, 8});
        std::vector<torch::Tensor> digest;
        nn::Sequential mods(l1, l2, none, all);
        mods->train();
        for (int step = 0; step < 3; ++step) {
          mods->zero_grad();
          torch::Tensor h = segment(
              "r0",
              [&](const TensorList& in) -> TensorList {
                torch::Tensor a = none(l1(in[0])) + all(in[0]);
                a = F::dropout(a, F::DropoutFuncOptions().p(0.3).training(true));
                const torch::Tensor perm = torch::randperm(8);
                a = a.index_select(1, perm) * torch::rand({6, 8}) + torch::randn({8}) * 0.1;
                return {a.tanh()};
              },
              {x}, mods.ptr().get())[0];
          h = segment(
              "r1",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor mask = torch::bernoulli(torch::full({6, 8}, 0.7));
                // (Not normal_(0, 0.5) on an empty tensor, nor uniform_ and F::normalize below: g++
                // 12 under ASan warns inside their optional arguments, and warnings are errors.)
                const torch::Tensor noise = torch::randn({6, 8}) * 0.5;
                const torch::Tensor pick = torch::multinomial(torch::ones({8}), 4);
                return {(l2(in[0] * mask) + noise).index_select(1, pick).sigmoid()};
              },
              {h}, mods.ptr().get())[0];
          const torch::Tensor loss = h.pow(2).mean();
          loss.backward();
          digest.push_back(loss.detach().clone());
          digest.push_back(torch::rand({3}));  // where the generator ended
        }
        add_module(digest, *mods);
        return digest;
      },
      false);
}

// Dropout through a generator of the program's own, passed explicitly. `armed`, when given, is
// true while the first operator that draws from it runs.
Program dropout_from_its_own_generator(std::function<at::Generator()> make_generator,
                                       bool* armed = nullptr) {
  return [make_generator, armed] {
    torch::manual_seed(112);
    nn::Linear l1(8, 8), l2(8, 4);
    at::Generator gen = make_generator();
    const torch::Tensor x = torch::randn({6, 8});
    std::vector<torch::Tensor> digest;
    for (int step = 0; step < 2; ++step) {
      l1->zero_grad();
      l2->zero_grad();
      const torch::Tensor y = segment(
          "noisy",
          [&](const TensorList& in) -> TensorList {
            const torch::Tensor h = l1(in[0]).relu();
            if (armed != nullptr) *armed = true;
            const torch::Tensor keep = torch::bernoulli(torch::full_like(h, 0.5), gen);
            if (armed != nullptr) *armed = false;
            const torch::Tensor noise = torch::randn({6, 8}, gen);
            return {l2((h * keep + noise).tanh())};
          },
          {x})[0];
      const torch::Tensor loss = y.pow(2).mean();
      loss.backward();
      digest.push_back(loss.detach().clone());
      digest.push_back(torch::rand({3}, gen));  // where the program's generator ended
    }
    add_module(digest, *l1);
    add_module(digest, *l2);
    return digest;
  };
}

TEST(DownstreamRandom, AnExplicitGeneratorInsideASegment) {
  expect_as_plain(
      dropout_from_its_own_generator([] { return at::detail::createCPUGenerator(/*seed_val=*/4242); }),
      false);
}

// A generator whose state cannot be read while an operator runs: reading a generator's state
// allocates a tensor, which fails where actmem manages the CPU under a tight budget. The draw watch
// read the state of a program's generator as the operator that drew from it began, inside a
// RecordFunction callback, whose exceptions LibTorch swallows: the rerun then left that generator
// alone and drew another mask (gradients differed, silently). It keeps a clone now and reads its
// state after the forward, where a failure reaches the program.
class StateUnreadableWhileArmed final : public at::CPUGeneratorImpl {
 public:
  explicit StateUnreadableWhileArmed(std::uint64_t seed) : at::CPUGeneratorImpl(seed) {}
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
    TORCH_CHECK_WITH(OutOfMemoryError, !armed, "out of memory reading a generator's state");
    return at::CPUGeneratorImpl::get_state();
  }
  static inline thread_local bool armed = false;
};

TEST(DownstreamRandom, AGeneratorWhoseStateCannotBeReadWhileItsOperatorRuns) {
  expect_as_plain(
      dropout_from_its_own_generator(
          [] { return at::make_generator<StateUnreadableWhileArmed>(/*seed=*/4343); },
          &StateUnreadableWhileArmed::armed),
      false);
}

// What the draw watch cannot record while an operator runs (here, cloning the generator fails)
// fails the segment's forward, with that error: LibTorch would swallow it in the callback, and the
// rerun would draw other numbers.
class CloneFailsWhileArmed final : public at::CPUGeneratorImpl {
 public:
  explicit CloneFailsWhileArmed(std::uint64_t seed) : at::CPUGeneratorImpl(seed) {}
  static inline thread_local bool armed = false;

 private:
  at::CPUGeneratorImpl* clone_impl() const override {
    TORCH_CHECK_WITH(OutOfMemoryError, !armed, "out of memory cloning a generator");
    auto* clone = new at::CPUGeneratorImpl();
    clone->set_engine(const_cast<CloneFailsWhileArmed*>(this)->engine());
    return clone;
  }
};

TEST(DownstreamRandom, WhatTheDrawWatchCannotRecordFailsTheForward) {
  const Program program = [] {
    torch::manual_seed(114);
    nn::Linear l1(8, 8);
    at::Generator gen = at::make_generator<CloneFailsWhileArmed>(/*seed=*/4444);
    const torch::Tensor y = segment(
        "noisy",
        [&](const TensorList& in) -> TensorList {
          CloneFailsWhileArmed::armed = true;
          const torch::Tensor keep = torch::bernoulli(torch::full({6, 8}, 0.5), gen);
          CloneFailsWhileArmed::armed = false;
          return {l1(in[0]) * keep};
        },
        {torch::randn({6, 8})})[0];
    y.pow(2).mean().backward();
    return std::vector<torch::Tensor>{l1->weight.grad()};
  };
  EXPECT_EQ(run("plain", program).error, "");
  EXPECT_EQ(run("keep", program).error, "");  // keep never reruns: nothing to record
  for (const char* policy : {"recompute", "auto"}) {
    EXPECT_EQ(run(policy, program).error, "out of memory cloning a generator") << policy;
  }
}

// A block that seeds the generator in its forward and draws nothing: its rerun seeded it again in
// backward, and the next step's data came from that seed. The rerun now leaves the generator as
// it found it (as torch.utils.checkpoint's fork_rng does).
TEST(DownstreamRandom, ABlockThatSeedsTheGeneratorAndDrawsNothing) {
  expect_as_plain(
      [] {
        torch::manual_seed(121);
        nn::Linear l1(8, 8), l2(8, 8);
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          l1->zero_grad();
          l2->zero_grad();
          torch::Tensor h = torch::randn({4, 8});  // the step's data, from the generator
          int seed = 100;
          for (nn::Linear* layer : {&l1, &l2}) {
            h = segment(
                "seeding-" + std::to_string(seed),
                [layer, seed](const TensorList& in) -> TensorList {
                  torch::manual_seed(seed);
                  return {in[0] + torch::tanh((*layer)(in[0]))};
                },
                {h})[0];
            ++seed;
          }
          const torch::Tensor loss = h.pow(2).sum();
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        digest.push_back(torch::rand({3}));  // where the generator ended
        add_module(digest, *l1);
        add_module(digest, *l2);
        return digest;
      },
      false);
}

// Dropout on CUDA tensors where actmem manages the CPU (this suite runs with ACTMEM_BACKEND=host,
// on the GPU machine too): the CUDA generator is not among the states a segment captures up
// front, and its rerun drew another mask (gradients differed, silently) until the draw watch kept
// the default generator of the device an operator draws on. A model split over two GPUs, where
// actmem manages the first, is the same case on the second.
TEST(DownstreamRandom, CudaDropoutWhereActmemManagesTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA device (none here)";
  ASSERT_EQ(managed_device(), c10::DeviceType::CPU) << "the suite runs with ACTMEM_BACKEND=host";
  expect_as_plain(
      [] {
        torch::manual_seed(7);
        torch::cuda::manual_seed_all(7);
        nn::Linear l1(64, 64), l2(64, 8);
        l1->to(torch::kCUDA);
        l2->to(torch::kCUDA);
        const torch::Tensor x = torch::randn({32, 64}, torch::kCUDA);
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          l1->zero_grad();
          l2->zero_grad();
          const torch::Tensor y = segment(
              "cuda-dropout",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor h = torch::dropout(l1(in[0]).relu(), 0.5, /*train=*/true);
                return {l2(h + 0.1 * torch::rand_like(h))};
              },
              {x})[0];
          const torch::Tensor loss = y.pow(2).mean();
          loss.backward();
          digest.push_back(loss.detach().cpu());
          digest.push_back(torch::rand({3}, torch::kCUDA).cpu());  // where the generator ended
        }
        for (const auto& p : l1->parameters()) digest.push_back(p.grad().cpu());
        for (const auto& p : l2->parameters()) digest.push_back(p.grad().cpu());
        return digest;
      },
      false);
}

// RReLU in training saves its noise before its kernel fills it (and moves no version counter):
// an offload copied at pack would carry the empty noise (Note [An offload waits for the operator
// that saved the tensor]).
TEST(DownstreamRandom, RReLUSavesItsNoiseBeforeFillingIt) {
  expect_as_plain(
      [] {
        torch::manual_seed(132);
        nn::Sequential block(nn::Linear(16, 16), nn::RReLU(), nn::Linear(16, 16), nn::RReLU());
        nn::Linear head(16, 1);
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          block->zero_grad();
          head->zero_grad();
          const torch::Tensor h = segment(
              "rrelu", *block, [&](const torch::Tensor& t) { return block->forward(t); },
              torch::randn({64, 16}));
          const torch::Tensor loss = head(h).sum();
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *block);
        add_module(digest, *head);
        return digest;
      },
      false);
}

// --- 10. Buffers other than BatchNorm's ---

struct StepCounterImpl : nn::Module {
  torch::Tensor count, mean;
  nn::Linear linear{nullptr};
  StepCounterImpl() {
    count = register_buffer("count", torch::zeros({1}));
    mean = register_buffer("mean", torch::zeros({8}));
    linear = register_module("linear", nn::Linear(8, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    {
      torch::NoGradGuard no_grad;
      count.add_(1);
      mean.mul_(0.9).add_(x.mean(0) * 0.1);
    }
    return linear(x - mean.clone()) * (count.clone() + 1).reciprocal();  // reads both after
  }
};
TORCH_MODULE(StepCounter);

TEST(DownstreamBuffers, CustomBuffersAndNormsWithUnusualRunningStats) {
  expect_as_plain(
      [] {
        torch::manual_seed(113);
        StepCounter counter;
        nn::BatchNorm1d cumulative(nn::BatchNorm1dOptions(8).momentum(c10::nullopt));
        nn::BatchNorm1d untracked(nn::BatchNorm1dOptions(8).track_running_stats(false));
        nn::InstanceNorm1d instance(nn::InstanceNorm1dOptions(8).track_running_stats(true));
        nn::GroupNorm group(nn::GroupNormOptions(2, 8));
        nn::Sequential net(counter, cumulative, untracked, instance, group);
        net->train();
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          net->zero_grad();
          const torch::Tensor x = torch::randn({5, 8});
          torch::Tensor h = segment(
              "counted", *net,
              [&](const torch::Tensor& t) { return cumulative(counter(t)).tanh(); }, x);
          h = segment(
              "norms", *net,
              [&](const torch::Tensor& t) {
                const torch::Tensor u = untracked(t);
                const torch::Tensor i = instance(u.unsqueeze(-1).expand({5, 8, 4}).contiguous());
                return group(i.mean(-1)).sin();
              },
              h);
          const torch::Tensor loss = h.pow(2).mean();
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *net);
        return digest;
      },
      false);
}

// An observer's buffer, empty until the first batch resizes it in place (torch.ao's MinMax
// observers), and a buffer registered expanded (its elements share memory: nothing can write it).
// A rerun put the buffers back by copying into them: the first failed on the shape, the second on
// the overlap (found by a helper's Python scripts).
struct ObserverImpl : nn::Module {
  torch::Tensor low, shift;
  nn::Linear linear{nullptr};
  ObserverImpl() {
    low = register_buffer("low", torch::empty({0}));
    shift = register_buffer("shift", torch::full({1, 8}, 0.1).expand({5, 8}));
    linear = register_module("linear", nn::Linear(8, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = linear(x) + shift;
    {
      torch::NoGradGuard no_grad;
      const torch::Tensor m = std::get<0>(h.min(0));
      if (low.numel() == 0) {
        low.resize_(m.sizes());
        low.copy_(m);
      } else {
        low.copy_(torch::minimum(low, m));
      }
    }
    return (h - low).tanh();
  }
};
TORCH_MODULE(Observer);

TEST(DownstreamBuffers, ABufferResizedByTheFirstForwardAndAnExpandedOne) {
  expect_as_plain(
      [] {
        torch::manual_seed(117);
        Observer first, second;
        nn::Sequential net(first, second);
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          net->zero_grad();
          torch::Tensor h = torch::randn({5, 8});
          h = segment("first", *first, [&](const torch::Tensor& t) { return first(t); }, h);
          h = segment("second", *second, [&](const torch::Tensor& t) { return second(t); }, h);
          const torch::Tensor loss = h.pow(2).mean();
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *net);
        return digest;
      },
      false);
}

// MoCo-style: a queue of the outer model, read (cloned) inside the encoder's segment and updated
// in place before the backward. The segment names the encoder, its natural module.
TEST(DownstreamOuterState, AQueueOfTheOuterModelUpdatedBeforeBackward) {
  // Recompute reruns the encoder on the queue as changed since: README, What recompute needs of a
  // segment.
  expect_as_plain_under(
      [] {
        torch::manual_seed(114);
        nn::Linear encoder(8, 8);
        torch::Tensor queue = torch::randn({8, 16});  // the outer model's buffer
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          encoder->zero_grad();
          const torch::Tensor x = torch::randn({4, 8});
          const torch::Tensor logits = segment(
              "query", *encoder,
              [&](const torch::Tensor& t) {
                const torch::Tensor e = encoder(t);
                const torch::Tensor q = e / e.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
                return q.mm(queue.clone().detach()) / 0.07;
              },
              x);
          {
            torch::NoGradGuard no_grad;
            queue.narrow(1, 0, 4).copy_(torch::randn({8, 4}));  // enqueue
          }
          const torch::Tensor loss = F::cross_entropy(logits, torch::zeros({4}, torch::kLong));
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *encoder);
        return digest;
      },
      false, {"keep", "offload", "auto"});
}

// --- 11. An exception in a segment's first forward; a forward-only step ---

TEST(DownstreamFailures, AnExceptionInTheFirstForwardAndAForwardOnlyStep) {
  expect_as_plain(
      [] {
        torch::manual_seed(115);
        nn::Sequential net(nn::Linear(8, 8), nn::BatchNorm1d(8), nn::Dropout(0.3),
                           nn::Linear(8, 8));
        net->train();
        torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 4; ++step) {
          opt.zero_grad();
          const torch::Tensor x = torch::randn({6, 8});
          try {
            torch::Tensor h = segment(
                "a", *net,
                [&](const torch::Tensor& t) {
                  const torch::Tensor y = net[2]->as<nn::Dropout>()->forward(
                      net[1]->as<nn::BatchNorm1d>()->forward(net[0]->as<nn::Linear>()->forward(t)));
                  if (step == 0) throw std::runtime_error("a bad batch");
                  return y.tanh();
                },
                x);
            h = segment(
                "b", *net,
                [&](const torch::Tensor& t) { return net[3]->as<nn::Linear>()->forward(t).sin(); },
                h);
            const torch::Tensor loss = h.pow(2).mean();
            digest.push_back(loss.detach().clone());
            if (step == 1) continue;  // forward only: the graph is dropped
            loss.backward();
            opt.step();
          } catch (const std::runtime_error& e) {
            if (std::string(e.what()) != "a bad batch") throw;
          }
        }
        add_module(digest, *net);
        return digest;
      },
      false);
}

// --- 12. Sparse and complex tensors; a custom autograd function ---

TEST(DownstreamLayouts, GraphConvolutionWithASparseAdjacency) {
  expect_as_plain(
      [] {
        torch::manual_seed(116);
        nn::Linear w1(6, 12), w2(12, 3);
        const torch::Tensor indices = torch::randint(10, {2, 30}, torch::kLong);
        const torch::Tensor adj =
            torch::sparse_coo_tensor(indices, torch::rand({30}), {10, 10}).coalesce();
        const torch::Tensor feats = torch::randn({10, 6});
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          w1->zero_grad();
          w2->zero_grad();
          torch::Tensor h = segment(
              "gc1",
              [&](const TensorList& in) -> TensorList {
                return {torch::relu(torch::mm(in[1], w1(in[0])))};
              },
              {feats, adj})[0];
          h = segment(
              "gc2",
              [&](const TensorList& in) -> TensorList { return {torch::mm(in[1], w2(in[0]))}; },
              {h, adj})[0];
          const torch::Tensor loss = F::cross_entropy(h, torch::arange(10) % 3);
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *w1);
        add_module(digest, *w2);
        return digest;
      },
      false);
}

// |z|^2 written as z * conj(z): mul saves a conjugate view.
TEST(DownstreamLayouts, ComplexActivationsWithConjugateViews) {
  expect_as_plain(
      [] {
        torch::manual_seed(117);
        nn::Linear re(8, 8), im(8, 8), out(8, 2);
        const torch::Tensor x = torch::randn({5, 8});
        const torch::Tensor y = segment(
            "complex",
            [&](const TensorList& in) -> TensorList {
              const torch::Tensor z = torch::complex(re(in[0]), im(in[0]));
              const torch::Tensor w = z * z.conj();  // saves conj(z): a conjugate view
              const torch::Tensor spectrum = torch::fft::fft(z * z.conj().neg().sin(), 8, 1);
              return {out(torch::real(w) + torch::real(spectrum) * torch::imag(spectrum))};
            },
            {x})[0];
        const torch::Tensor loss = y.pow(2).mean();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *re);
        add_module(digest, *im);
        add_module(digest, *out);
        return digest;
      },
      false);
}

struct ScaledSquare : torch::autograd::Function<ScaledSquare> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& x, double scale) {
    const torch::Tensor y = x * x * scale;
    const torch::Tensor sign = x.sign();
    ctx->save_for_backward({x, y});
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({sign});
    return {y, sign};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double scale = ctx->saved_data["scale"].toDouble();
    // uses both the input and the output it saved
    return {grads[0] * (2 * scale * saved[0] + 0 * saved[1]), torch::Tensor()};
  }
};

TEST(DownstreamBackwards, ACustomAutogradFunctionInsideASegment) {
  expect_as_plain(
      [] {
        torch::manual_seed(118);
        nn::Linear l1(8, 8), l2(8, 8);
        const torch::Tensor x = torch::randn({5, 8});
        const TensorList r = segment(
            "custom",
            [&](const TensorList& in) -> TensorList {
              const auto outs = ScaledSquare::apply(l1(in[0]), 0.5);
              return {l2(outs[0]).tanh() * outs[1], outs[1]};
            },
            {x});
        const torch::Tensor loss = r[0].pow(2).mean() + r[1].sum() * 0;
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *l1);
        add_module(digest, *l2);
        return digest;
      },
      false);
}

// --- 13. Views: in place on a view inside a segment, expanded and strided saved tensors ---

TEST(DownstreamLayouts, InPlaceOnViewsAndStridedSavedTensorsInsideSegments) {
  expect_as_plain(
      [] {
        torch::manual_seed(119);
        nn::Linear l1(8, 16), l2(8, 8);
        const torch::Tensor x = torch::randn({6, 8});
        const torch::Tensor bias = torch::randn({1, 8}, torch::requires_grad());
        const torch::Tensor y = segment(
            "views",
            [&](const TensorList& in) -> TensorList {
              torch::Tensor h = l1(in[0]);
              h.narrow(1, 0, 4).mul_(2.0);               // in place on a view (CopySlices)
              h.select(0, 1).add_(in[1].squeeze(0).repeat({2}));
              const torch::Tensor strided = h.slice(1, 0, 16, 2);  // gaps: not dense
              const torch::Tensor expanded = in[1].expand({6, 8});  // stride 0
              const torch::Tensor t = h.slice(1, 8, 16).t();        // transposed
              return {l2(strided * expanded).mm(t).sigmoid()};
            },
            {x, bias})[0];
        const torch::Tensor loss = y.pow(2).mean();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone(), bias.grad().clone()};
        add_module(digest, *l1);
        add_module(digest, *l2);
        return digest;
      },
      false);
}

// --- 14. Reduced precision without autocast ---

TEST(DownstreamDtypes, HalfAndBFloat16ModulesInSegments) {
  expect_as_plain(
      [] {
        torch::manual_seed(120);
        nn::Linear a(8, 8), b(8, 8);
        a->to(torch::kBFloat16);
        b->to(torch::kHalf);
        const torch::Tensor x = torch::randn({4, 8}, torch::kBFloat16);
        torch::Tensor h =
            segment("bf16", [&](const TensorList& in) -> TensorList { return {a(in[0]).tanh()}; },
                    {x})[0];
        h = segment("f16",
                    [&](const TensorList& in) -> TensorList {
                      return {b(in[0].to(torch::kHalf)).sigmoid().to(torch::kFloat)};
                    },
                    {h})[0];
        const torch::Tensor loss = h.pow(2).mean();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *a);
        add_module(digest, *b);
        return digest;
      },
      false);
}

// --- 15. More: negative views, tensor hooks and retain_grad, anomaly mode, an LSTM, a siamese
//         pair, a parameter as a segment input, a backward that throws ---

TEST(DownstreamLayouts, NegativeViewSaved) {
  expect_as_plain(
      [] {
        torch::manual_seed(121);
        nn::Linear re(8, 8), im(8, 8);
        const torch::Tensor x = torch::randn({5, 8});
        const torch::Tensor y = segment(
            "neg",
            [&](const TensorList& in) -> TensorList {
              const torch::Tensor z = torch::complex(re(in[0]), im(in[0]));
              const torch::Tensor minus_imag = torch::imag(z.conj());  // a negative view
              return {(re(in[0]) * minus_imag).sin()};                 // mul saves it
            },
            {x})[0];
        const torch::Tensor loss = y.sum();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *re);
        add_module(digest, *im);
        return digest;
      },
      false);
}

TEST(DownstreamOuterState, TensorHooksAndRetainGradInsideASegment) {
  // Under recompute the variable the function assigns holds the rerun's tensor, whose .grad()
  // is never set: README, What recompute needs of a segment.
  expect_as_plain_under(
      [] {
        torch::manual_seed(122);
        nn::Linear l1(8, 8), l2(8, 8);
        const torch::Tensor x = torch::randn({5, 8});
        torch::Tensor kept;
        int calls = 0;
        const torch::Tensor y = segment(
            "hooked",
            [&](const TensorList& in) -> TensorList {
              torch::Tensor h = l1(in[0]).tanh();
              h.register_hook([&calls](torch::Tensor g) {
                ++calls;
                return g.clamp(-0.01, 0.01);  // clips the gradient flowing back
              });
              h.retain_grad();
              kept = h;
              return {l2(h).sigmoid()};
            },
            {x})[0];
        const torch::Tensor loss = y.pow(2).sum();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone(),
                                             torch::full({1}, static_cast<double>(calls)),
                                             kept.grad().defined() ? kept.grad().clone()
                                                                   : torch::zeros({1})};
        add_module(digest, *l1);
        add_module(digest, *l2);
        return digest;
      },
      false, {"keep", "offload", "auto"});
}

TEST(DownstreamBackwards, AnomalyModeAndAnLSTMInASegment) {
  expect_as_plain(
      [] {
        torch::autograd::DetectAnomalyGuard anomaly;
        torch::manual_seed(123);
        nn::LSTM lstm(nn::LSTMOptions(4, 6).num_layers(2).dropout(0.3).batch_first(true));
        nn::Linear out(6, 1);
        lstm->train();
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          lstm->zero_grad();
          out->zero_grad();
          const torch::Tensor x = torch::randn({3, 5, 4});
          const TensorList r = segment(
              "lstm",
              [&](const TensorList& in) -> TensorList {
                auto [seq, state] = lstm(in[0]);
                return {seq, std::get<0>(state), std::get<1>(state)};
              },
              {x}, lstm.ptr().get());
          const torch::Tensor loss = out(r[0]).pow(2).mean() + r[2].sum() * 0.1;
          loss.backward();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *lstm);
        add_module(digest, *out);
        return digest;
      },
      false);
}

TEST(DownstreamSharing, SiamesePairThroughTheSameSegmentsWithBatchNorm) {
  expect_as_plain(
      [] {
        torch::manual_seed(124);
        nn::Sequential tower(nn::Linear(8, 16), nn::BatchNorm1d(16), nn::ReLU(), nn::Dropout(0.2),
                             nn::Linear(16, 8));
        tower->train();
        torch::optim::SGD opt(tower->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          opt.zero_grad();
          std::vector<torch::Tensor> embeddings;
          for (int side = 0; side < 2; ++side) {
            const torch::Tensor x = torch::randn({6, 8});
            torch::Tensor h = segment(
                "low", *tower,
                [&](const torch::Tensor& t) {
                  return tower[3]->as<nn::Dropout>()->forward(tower[2]->as<nn::ReLU>()->forward(
                      tower[1]->as<nn::BatchNorm1d>()->forward(
                          tower[0]->as<nn::Linear>()->forward(t))));
                },
                x);
            embeddings.push_back(segment(
                "high", *tower,
                [&](const torch::Tensor& t) { return tower[4]->as<nn::Linear>()->forward(t); },
                h));
          }
          const torch::Tensor loss =
              (embeddings[0] - embeddings[1]).pow(2).sum(1).add(1e-6).sqrt().mean();
          loss.backward();
          opt.step();
          digest.push_back(loss.detach().clone());
        }
        add_module(digest, *tower);
        return digest;
      },
      false);
}

// A parameter passed to the segment as an input, changed by a step between two backwards.
TEST(DownstreamOuterState, AParameterAsASegmentInputChangedBetweenBackwards) {
  // As AStepOnAFirstLayerBetweenTwoBackwardsOfOneGraph, with the weight passed as an input: the
  // step moves no version counter, so the rerun cannot see the change.
  expect_as_plain_under(
      [] {
        torch::manual_seed(125);
        nn::Linear first(8, 16), second(16, 4);
        torch::optim::SGD opt_first(first->parameters(), torch::optim::SGDOptions(0.5));
        const torch::Tensor x = torch::randn({5, 8});
        const torch::Tensor y = segment(
            "trunk",
            [&](const TensorList& in) -> TensorList {
              return {second(torch::tanh(F::linear(in[0], in[1], in[2])))};
            },
            {x, first->weight, first->bias})[0];
        y.pow(2).mean().backward({}, /*retain_graph=*/true);
        opt_first.step();
        second->zero_grad();
        y.sum().backward();
        std::vector<torch::Tensor> digest;
        add_module(digest, *first);
        add_module(digest, *second);
        return digest;
      },
      false, {"keep", "offload", "auto"});
}

// A gradient hook throws in the first backward (a NaN guard, say); the program skips that step and
// trains on.
TEST(DownstreamFailures, ABackwardThatThrowsThenTrainingGoesOn) {
  expect_as_plain(
      [] {
        torch::manual_seed(126);
        nn::Sequential net(nn::Linear(8, 8), nn::Dropout(0.3), nn::Linear(8, 8));
        net->train();
        torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          opt.zero_grad();
          const torch::Tensor x = torch::randn({4, 8});
          torch::Tensor h = segment(
              "a", *net,
              [&](const torch::Tensor& t) {
                torch::Tensor u = net[1]->as<nn::Dropout>()->forward(
                    net[0]->as<nn::Linear>()->forward(t).tanh());
                if (step == 0) {
                  u.register_hook([](const torch::Tensor&) -> torch::Tensor {
                    throw std::runtime_error("non-finite gradient");
                  });
                }
                return u;
              },
              x);
          h = segment(
              "b", *net,
              [&](const torch::Tensor& t) { return net[2]->as<nn::Linear>()->forward(t).sin(); },
              h);
          const torch::Tensor loss = h.pow(2).mean();
          try {
            loss.backward();
          } catch (const std::exception& e) {
            if (std::string(e.what()).find("non-finite gradient") == std::string::npos) throw;
            continue;
          }
          opt.step();
          digest.push_back(loss.detach().clone());
        }
        digest.push_back(torch::rand({2}));
        add_module(digest, *net);
        return digest;
      },
      false);
}

// --- 16. auto under a budget too small for keep: it evicts (offloads or drops for reruns) and
//         must still train to plain's bits ---

struct BigNet : nn::Module {
  std::vector<nn::Sequential> blocks;
  BigNet() {
    for (int i = 0; i < 4; ++i) {
      blocks.push_back(register_module(
          "b" + std::to_string(i),
          nn::Sequential(nn::Linear(256, 256), nn::BatchNorm1d(256), nn::Functional(torch::tanh),
                         nn::Dropout(0.2))));
    }
  }
};

std::vector<torch::Tensor> big_steps(bool scoped, const std::string& policy, std::int64_t budget,
                                     std::int64_t* reserved_peak) {
  install();
  device_memory().empty_cache();
  torch::manual_seed(127);
  auto net = std::make_shared<BigNet>();
  net->train();
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const torch::Tensor x = torch::randn({512, 256});
  const ScopedDeviceBudget scoped_budget(budget);
  std::unique_ptr<ActivationScope> scope;
  if (scoped) {
    ScopeOptions options;
    options.offload_min_bytes = 0;
    scope = std::make_unique<ActivationScope>(policy_for(policy), options);
  }
  device_memory().reset_peak_stats();
  std::vector<torch::Tensor> digest;
  for (int step = 0; step < 4; ++step) {
    opt.zero_grad();
    torch::Tensor h = x;
    for (std::size_t i = 0; i < net->blocks.size(); ++i) {
      h = segment("block" + std::to_string(i), *net->blocks[i],
                  [&, i](const torch::Tensor& t) { return net->blocks[i]->forward(t); }, h);
    }
    const torch::Tensor loss = h.pow(2).mean();
    loss.backward();
    opt.step();
    digest.push_back(loss.detach().clone());
  }
  if (reserved_peak) *reserved_peak = device_memory().stats().reserved_bytes.peak;
  add_module(digest, *net);
  return digest;
}

TEST(DownstreamAutoBudget, AutoUnderATightBudgetTrainsAsPlain) {
  const std::vector<torch::Tensor> plain = big_steps(false, "", 0, nullptr);
  std::int64_t keep = 0;
  big_steps(true, "keep", 0, &keep);
  for (const double fraction : {0.8, 0.6}) {
    std::int64_t budget = static_cast<std::int64_t>(keep * fraction);
    bool fitted = false;
    for (int attempt = 0; attempt < 12 && !fitted; ++attempt) {
      try {
        const std::vector<torch::Tensor> got = big_steps(true, "auto", budget, nullptr);
        fitted = true;
        expect_same(Outcome{plain, ""}, Outcome{got, ""},
                    "auto at " + std::to_string(fraction) + " of keep's reserved peak");
      } catch (const OutOfMemoryError& error) {
        budget = static_cast<std::int64_t>(error.least_budget_bytes());
      }
    }
    EXPECT_TRUE(fitted) << "auto never fitted a budget near " << fraction << " of keep's peak";
  }
}

// --- 17. LibTorch's DCGAN example, shrunk: the generator's forward before the discriminator's
//         step, its backward after; BatchNorm in both; labels drawn between segments ---

TEST(DownstreamSharing, TheDCGANExampleLoop) {
  expect_as_plain(
      [] {
        torch::manual_seed(128);
        nn::Sequential generator(nn::Linear(4, 16), nn::BatchNorm1d(16), nn::ReLU(),
                                 nn::Linear(16, 8), nn::Tanh());
        nn::Sequential discriminator(nn::Linear(8, 16), nn::LeakyReLU(
                                         nn::LeakyReLUOptions().negative_slope(0.2)),
                                     nn::Linear(16, 16), nn::BatchNorm1d(16), nn::LeakyReLU(),
                                     nn::Linear(16, 1), nn::Sigmoid());
        torch::optim::Adam g_opt(generator->parameters(), torch::optim::AdamOptions(2e-3));
        torch::optim::Adam d_opt(discriminator->parameters(), torch::optim::AdamOptions(5e-3));
        auto gen = [&](const torch::Tensor& z) {
          torch::Tensor h = segment(
              "g0", *generator,
              [&](const torch::Tensor& t) {
                return generator[2]->as<nn::ReLU>()->forward(generator[1]->as<nn::BatchNorm1d>()->forward(
                    generator[0]->as<nn::Linear>()->forward(t)));
              },
              z);
          return segment(
              "g1", *generator,
              [&](const torch::Tensor& t) {
                return generator[4]->as<nn::Tanh>()->forward(
                    generator[3]->as<nn::Linear>()->forward(t));
              },
              h);
        };
        auto disc = [&](const torch::Tensor& x) {
          torch::Tensor h = segment(
              "d0", *discriminator,
              [&](const torch::Tensor& t) {
                return discriminator[1]->as<nn::LeakyReLU>()->forward(
                    discriminator[0]->as<nn::Linear>()->forward(t));
              },
              x);
          return segment(
              "d1", *discriminator,
              [&](const torch::Tensor& t) {
                torch::Tensor u = discriminator[2]->as<nn::Linear>()->forward(t);
                u = discriminator[4]->as<nn::LeakyReLU>()->forward(
                    discriminator[3]->as<nn::BatchNorm1d>()->forward(u));
                return discriminator[6]->as<nn::Sigmoid>()->forward(
                    discriminator[5]->as<nn::Linear>()->forward(u));
              },
              h);
        };
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 3; ++step) {
          discriminator->zero_grad();
          const torch::Tensor real = torch::randn({8, 8});
          const torch::Tensor real_labels = torch::rand({8}) * 0.2 + 0.8;
          const torch::Tensor d_loss_real =
              torch::binary_cross_entropy(disc(real).reshape({8}), real_labels);
          d_loss_real.backward();
          const torch::Tensor noise = torch::randn({8, 4});
          const torch::Tensor fake = gen(noise);
          torch::Tensor fake_labels = torch::zeros({8});
          const torch::Tensor d_loss_fake =
              torch::binary_cross_entropy(disc(fake.detach()).reshape({8}), fake_labels);
          d_loss_fake.backward();
          d_opt.step();
          generator->zero_grad();
          fake_labels.fill_(1);
          const torch::Tensor g_loss =
              torch::binary_cross_entropy(disc(fake).reshape({8}), fake_labels);
          g_loss.backward();
          g_opt.step();
          digest.push_back(d_loss_real.detach().clone());
          digest.push_back(d_loss_fake.detach().clone());
          digest.push_back(g_loss.detach().clone());
        }
        add_module(digest, *generator);
        add_module(digest, *discriminator);
        return digest;
      },
      false);
}

// The minimal form of the strided case above: mm saves a transposed slice with gaps.
TEST(DownstreamLayouts, MmSavesATransposedSliceWithGaps) {
  expect_as_plain(
      [] {
        torch::manual_seed(119);
        nn::Linear l1(8, 16);
        const torch::Tensor x = torch::randn({6, 8});
        const torch::Tensor y = segment(
            "mm",
            [&](const TensorList& in) -> TensorList {
              const torch::Tensor h = l1(in[0]);
              return {h.slice(1, 0, 8).contiguous().mm(h.slice(1, 8, 16).t())};
            },
            {x})[0];
        const torch::Tensor loss = y.pow(2).mean();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *l1);
        return digest;
      },
      false);
}

// --- 18. Kernel switches set for the forward only ---

// A program that turns oneDNN off and picks attention's math backend for its forward and calls
// backward outside (Python's `with torch.backends.mkldnn.flags(enabled=False)` and
// `with sdpa_kernel(SDPBackend.MATH)`). The rerun ran under the switches backward found: oneDNN's
// convolution and the CPU flash attention kernel, other bits (and the attention saved other
// tensors). It runs under the forward's now (hooks/kernel_choice.h), and they are back afterwards.
TEST(DownstreamKernels, SwitchesSetForTheForwardOnly) {
  expect_as_plain(
      [] {
        torch::manual_seed(120);
        nn::Conv2d conv(nn::Conv2dOptions(4, 4, 3).padding(1));
        nn::Linear qkv(16, 48);
        const torch::Tensor x = torch::randn({2, 4, 4, 4});
        at::Context& context = at::globalContext();
        const bool mkldnn = context.userEnabledMkldnn();
        const bool flash = context.userEnabledFlashSDP();
        std::vector<torch::Tensor> digest;
        for (int step = 0; step < 2; ++step) {
          conv->zero_grad();
          qkv->zero_grad();
          context.setUserEnabledMkldnn(false);
          context.setSDPUseFlash(false);
          const torch::Tensor y = segment(
              "conv-attention",
              [&](const TensorList& in) -> TensorList {
                const torch::Tensor h = torch::tanh(conv(in[0])).reshape({2, 4, 16});
                const std::vector<torch::Tensor> qkv_ = qkv(h).view({2, 4, 3, 2, 8}).unbind(2);
                const torch::Tensor a = at::scaled_dot_product_attention(
                    qkv_[0].transpose(1, 2), qkv_[1].transpose(1, 2), qkv_[2].transpose(1, 2));
                return {a.transpose(1, 2).reshape({2, 4, 16}) + h};
              },
              {x})[0];
          context.setUserEnabledMkldnn(mkldnn);
          context.setSDPUseFlash(flash);
          const torch::Tensor loss = y.pow(2).mean();
          loss.backward();
          digest.push_back(loss.detach().clone());
          // The switches as the program set them: the rerun put its own back.
          digest.push_back(torch::tensor({context.userEnabledMkldnn(), context.userEnabledFlashSDP()}));
        }
        add_module(digest, *conv);
        add_module(digest, *qkv);
        return digest;
      },
      false);
}

// The default dtype set for the forward only: a factory function in the segment made a float
// constant in the rerun where the forward made a double one.
TEST(DownstreamKernels, ADefaultDtypeSetForTheForwardOnly) {
  expect_as_plain(
      [] {
        torch::manual_seed(122);
        nn::Linear linear(8, 8);
        const torch::Tensor x = torch::randn({4, 8});
        const caffe2::TypeMeta before = c10::get_default_dtype();
        c10::set_default_dtype(caffe2::TypeMeta::Make<double>());
        const torch::Tensor y = segment(
            "scaled",
            [&](const TensorList& in) -> TensorList {
              return {torch::tanh(linear(in[0])) * torch::full({8}, 1.0 / 3.0)};
            },
            {x})[0];
        c10::set_default_dtype(before);
        const torch::Tensor loss = y.pow(2).sum();
        loss.backward();
        std::vector<torch::Tensor> digest = {loss.detach().clone(),
                                             torch::tensor({c10::get_default_dtype() == before})};
        add_module(digest, *linear);
        return digest;
      },
      false);
}

// backward() called under inference mode (the forward ran outside it): the rerun ran in it,
// saved nothing, and failed ("saved 3 tensors in its forward but only 0 when rerun").
TEST(DownstreamKernels, ABackwardUnderInferenceMode) {
  expect_as_plain(
      [] {
        torch::manual_seed(123);
        nn::Linear linear(8, 8);
        const torch::Tensor y = segment(
            "tanh",
            [&](const TensorList& in) -> TensorList { return {torch::tanh(linear(in[0]))}; },
            {torch::randn({4, 8})})[0];
        const torch::Tensor loss = y.pow(2).sum();
        {
          c10::InferenceMode inference;
          loss.backward();
        }
        std::vector<torch::Tensor> digest = {loss.detach().clone()};
        add_module(digest, *linear);
        return digest;
      },
      false);
}

}  // namespace
}  // namespace actmem

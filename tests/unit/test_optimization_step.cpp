// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/loop/optimization_step.hpp"

using namespace torchfit;

namespace {
struct Recorder : TrainerCallback {
  std::vector<std::string> events;
  std::vector<double> lr_seen;
  torch::optim::Optimizer* optimizer = nullptr;
  void on_pre_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    events.push_back("pre");
  }
  void on_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    events.push_back("step");
  }
};
}  // namespace

TEST_CASE("an update clips, steps between HF's two events, reports the lr it used, then steps the schedule",
          "[unit][optimization_step]") {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
  auto scheduler = get_scheduler("linear", optimizer, 0, 4);
  CallbackHandler handler;
  auto recorder = handler.add_callback<Recorder>();
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  OptimizationStep update(optimizer, *scheduler, nullptr, model->parameters(), 1.0);

  update.backward(model->forward(torch::full({1, 2}, 100.0)).sum());
  const torch::Tensor expected_norm =
      torch::stack({model->weight.grad().norm(), model->bias.grad().norm()}).norm();
  update.run(handler, args, state, control);
  CHECK(recorder->events == std::vector<std::string>{"pre", "step"});
  CHECK(update.grad_norm().item<double>() == Approx(expected_norm.item<double>()));  // before clipping
  CHECK(update.learning_rate() == 0.5);                                              // used by this update
  CHECK(scheduler->get_last_lr().at(0) == Approx(0.375));                            // the schedule moved on
  for (const auto& p : model->parameters())  // zeroed, or unset by libtorch 2.x's zero_grad (set_to_none)
    CHECK((!p.grad().defined() || p.grad().abs().sum().item<double>() == 0));

  SECTION("without clipping there is no norm") {
    OptimizationStep unclipped(optimizer, *scheduler, nullptr, model->parameters(), 0);
    unclipped.backward(model->forward(torch::ones({1, 2})).sum());
    unclipped.run(handler, args, state, control);
    CHECK_FALSE(unclipped.grad_norm().defined());
  }
}

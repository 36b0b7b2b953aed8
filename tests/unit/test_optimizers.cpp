// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/optimizers.hpp"

using namespace torchfit;

namespace {
// The optimizer `optim` names, as the Trainer creates it (HF's groups: weight decay on weights only).
std::unique_ptr<torch::optim::Optimizer> optimizer_for(const std::string& optim, torch::nn::Module& model) {
  TrainingArguments args;
  args.optim = optim;
  args.learning_rate = 1e-2;
  args.weight_decay = 0.01;
  return create_optimizer(args, model);
}

std::vector<torch::Tensor> parameters_with_gradients() {
  torch::manual_seed(5);
  std::vector<torch::Tensor> params{torch::randn({8, 4}).requires_grad_(),
                                    torch::randn({4}).requires_grad_()};
  for (auto& p : params) p.mutable_grad() = 3 * torch::randn_like(p);
  return params;
}
}  // namespace

#ifdef TORCHFIT_HAS_FUSED_ADAMW
namespace {
// The loss of each of `steps` full-batch updates of a small MLP (clipped at 1.0) from fixed initial weights.
std::vector<double> train_losses(const std::string& optim, int steps) {
  torch::manual_seed(11);
  test::Mlp model(4, 32, 1, /*dropout=*/0.0);
  const auto [x, y] = test::regression_data(64);
  auto optimizer = optimizer_for(optim, *model);
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    const torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    clip_grad_norm(model->parameters(), 1.0);
    optimizer->step();
    optimizer->zero_grad();
    losses.push_back(loss.item<double>());
  }
  return losses;
}
}  // namespace

TEST_CASE("adamw_torch_fused trains as adamw_torch: losses agree to 1e-5 over 100 steps",
          "[unit][optimizers]") {
  const std::vector<double> unfused = train_losses("adamw_torch", 100);
  const std::vector<double> fused = train_losses("adamw_torch_fused", 100);
  for (std::size_t i = 0; i < unfused.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(fused[i] == Approx(unfused[i]).margin(1e-5).epsilon(0));
  }
  CHECK(unfused.back() < unfused.front() / 2);  // it did train
}

TEST_CASE("a fused AdamW's state loads into AdamW: same options and per-parameter state",
          "[unit][optimizers]") {
  torch::manual_seed(3);
  test::Mlp model(4, 8, 1, /*dropout=*/0.0);
  auto fused = optimizer_for("adamw_torch_fused", *model);
  const auto [x, y] = test::regression_data(16);
  for (int step = 0; step < 3; ++step) {
    torch::mse_loss(model->forward(x), y).backward();
    fused->step();
    fused->zero_grad();
  }
  torch::serialize::OutputArchive out;
  fused->save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  auto plain = optimizer_for("adamw_torch", *model);
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  plain->load(in);
  for (const auto& p : model->parameters()) {
    const auto& a =
        static_cast<const torch::optim::AdamWParamState&>(*fused->state().at(p.unsafeGetTensorImpl()));
    const auto& b =
        static_cast<const torch::optim::AdamWParamState&>(*plain->state().at(p.unsafeGetTensorImpl()));
    CHECK(b.step() == 3);
    CHECK(torch::equal(a.exp_avg(), b.exp_avg()));
    CHECK(torch::equal(a.exp_avg_sq(), b.exp_avg_sq()));
  }
}
#else
TEST_CASE("adamw_torch_fused before libtorch 2.4 is an ArgumentError naming --optim", "[unit][optimizers]") {
  test::Mlp model;
  CHECK_THROWS_AS(optimizer_for("adamw_torch_fused", *model), ArgumentError);
  CHECK_THROWS_WITH(optimizer_for("adamw_torch_fused", *model),
                    Catch::Contains("--optim adamw_torch_fused needs libtorch 2.4 or later") &&
                        Catch::Contains("use --optim adamw_torch"));
}
#endif

TEST_CASE("clip_grad_norm scales as libtorch's clip_grad_norm_ and returns the norm before clipping",
          "[unit][optimizers]") {
  for (const double max_norm : {0.5, 1000.0}) {  // clipping, and a norm already within bounds
    INFO("max_norm " << max_norm);
    auto ours = parameters_with_gradients();
    auto reference = parameters_with_gradients();
    const torch::Tensor norm = clip_grad_norm(ours, max_norm);
    const double reference_norm = torch::nn::utils::clip_grad_norm_(reference, max_norm);
    CHECK(norm.item<double>() == Approx(reference_norm).epsilon(1e-6));
    for (std::size_t i = 0; i < ours.size(); ++i) CHECK(torch::allclose(ours[i].grad(), reference[i].grad()));
  }
}

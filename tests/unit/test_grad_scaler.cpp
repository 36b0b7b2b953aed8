// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/detail/amp.hpp"

using torchfit::detail::GradScaler;

namespace {
// ATen's AMP kernels exist for CUDA, and for the CPU only in newer libtorch releases.
bool amp_kernels_on(const torch::Device& device) {
  try {
    auto found = torch::zeros({1}, torch::TensorOptions().device(device));
    std::vector<torch::Tensor> grads{torch::ones({1}, torch::TensorOptions().device(device))};
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found,
                                                   torch::ones({1}, torch::TensorOptions().device(device)));
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}
}  // namespace

TEST_CASE("the fp16 loss scaler skips steps whose gradients overflow, backs off and grows as PyTorch's",
          "[unit][grad_scaler][cuda]") {
  const torch::Device device =
      torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  if (!amp_kernels_on(device)) {
    WARN("this libtorch has no AMP kernels for " << device << ": the loss scaler's arithmetic was not run");
    return;
  }
  auto weight = torch::ones({2}, torch::TensorOptions().device(device).requires_grad(true));
  torch::optim::SGD optimizer({weight}, torch::optim::SGDOptions(0.1));
  GradScaler scaler(device);
  CHECK(scaler.state() == torchfit::json{{"scale", 65536.0}, {"growth_tracker", 0}});

  scaler.scale((weight * 2).sum()).backward();
  scaler.unscale({weight});
  CHECK(weight.grad().cpu().equal(torch::full({2}, 2.0f)));  // unscaled back
  CHECK(scaler.step(optimizer));
  CHECK(weight.detach().cpu().equal(torch::full({2}, 0.8f)));

  optimizer.zero_grad();
  scaler.scale((weight * INFINITY).sum()).backward();
  scaler.unscale({weight});
  CHECK_FALSE(scaler.step(optimizer));                         // overflow: skipped
  CHECK(weight.detach().cpu().equal(torch::full({2}, 0.8f)));  // unchanged
  CHECK(scaler.state().at("scale") == 32768.0);                // backed off by 0.5

  scaler.load_state({{"scale", 4.0}, {"growth_tracker", 1999}});
  optimizer.zero_grad();
  scaler.scale(weight.sum()).backward();
  scaler.unscale({weight});
  CHECK(scaler.step(optimizer));
  CHECK(scaler.state() ==
        torchfit::json{{"scale", 8.0}, {"growth_tracker", 0}});  // grown after 2000 clean steps
}

TEST_CASE("a loss scaler state that does not fit is refused whole", "[unit][grad_scaler]") {
  GradScaler scaler(torch::kCPU);
  CHECK_THROWS_WITH(scaler.load_state({{"scale", -1.0}, {"growth_tracker", 0}}),
                    Catch::Contains("\"scale\" must be a positive finite number"));
  CHECK(scaler.state().at("scale") == 65536.0);
}

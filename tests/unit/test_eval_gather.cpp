// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/detail/eval_gather.hpp"

using torchfit::detail::concat_padded;
using torchfit::detail::EvalGatherer;

TEST_CASE("outputs of different widths are padded with -100 on the right, as HF's nested_concat",
          "[unit][eval_gather]") {
  const torch::Tensor a = torch::ones({2, 3}), b = torch::full({1, 5}, 2.0);
  const torch::Tensor out = concat_padded({a, b});
  CHECK(out.sizes() == torch::IntArrayRef({3, 5}));
  CHECK(out[0].equal(torch::tensor({1.0f, 1.0f, 1.0f, -100.0f, -100.0f})));
  CHECK(out[2].equal(torch::full({5}, 2.0f)));
  CHECK(concat_padded({torch::zeros({2}), torch::ones({3})})
            .equal(torch::tensor({0.0f, 0.0f, 1.0f, 1.0f, 1.0f})));
  CHECK_THROWS_WITH(
      concat_padded({torch::zeros({2, 3, 4}), torch::zeros({2, 3, 5})}),
      Catch::Matchers::StartsWith("cannot concatenate evaluation outputs of shapes [2, 3, 4] and [2, 3, 5]"));
}

TEST_CASE("gathered batches reach the host every eval_accumulation_steps batches, in order",
          "[unit][eval_gather]") {
  for (const std::optional<int64_t> steps : {std::optional<int64_t>(), std::optional<int64_t>(2)}) {
    EvalGatherer gatherer(steps);
    for (int64_t k = 0; k < 5; ++k) {
      gatherer.add(torch::full({1, k + 1}, static_cast<float>(k)));
      gatherer.step(k + 1);
    }
    const torch::Tensor out = gatherer.result();
    CHECK(out.sizes() == torch::IntArrayRef({5, 5}));
    CHECK(out.select(1, 0).equal(torch::arange(5, torch::kFloat)));
    CHECK(out[0][1].item<float>() == -100.0f);
  }
  CHECK_FALSE(EvalGatherer(std::nullopt).result().defined());
}

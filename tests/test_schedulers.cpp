// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>
#include <cmath>

#include "support.hpp"
#include "torchfit/schedulers.hpp"

using namespace torchfit;

namespace {

constexpr double pi = 3.14159265358979323846;
constexpr int64_t T = 10, W = 3;

struct Setup {
  torch::Tensor a = torch::zeros({1}, torch::requires_grad());
  torch::Tensor b = torch::zeros({1}, torch::requires_grad());
  torch::optim::AdamW optimizer{
      {torch::optim::OptimizerParamGroup({a}, std::make_unique<torch::optim::AdamWOptions>(0.1)),
       torch::optim::OptimizerParamGroup({b}, std::make_unique<torch::optim::AdamWOptions>(0.02))},
      torch::optim::AdamWOptions(0.1)};
};

// The rates of both groups at steps 0..T+2, read from the optimizer itself.
std::vector<std::pair<double, double>> run(LRScheduler& s, torch::optim::Optimizer& o) {
  std::vector<std::pair<double, double>> out;
  for (int64_t step = 0; step <= T + 2; ++step) {
    out.emplace_back(o.param_groups()[0].options().get_lr(), o.param_groups()[1].options().get_lr());
    CHECK(s.get_last_lr() == std::vector<double>{out.back().first, out.back().second});
    s.step();
  }
  return out;
}

void check_schedule(const std::string& name, const std::function<double(int64_t)>& expected,
                    int64_t warmup = W, const json& kwargs = json::object()) {
  Setup setup;
  auto scheduler = get_scheduler(name, setup.optimizer, warmup, T, kwargs);
  const auto rates = run(*scheduler, setup.optimizer);
  for (int64_t s = 0; s < static_cast<int64_t>(rates.size()); ++s) {
    INFO(name << " at step " << s);
    CHECK(rates[static_cast<std::size_t>(s)].first == Approx(0.1 * expected(s)).margin(1e-15).epsilon(1e-12));
    CHECK(rates[static_cast<std::size_t>(s)].second ==
          Approx(0.02 * expected(s)).margin(1e-15).epsilon(1e-12));
  }
}

double warm(int64_t s, int64_t w = W) {
  return static_cast<double>(s) / static_cast<double>(std::max<int64_t>(1, w));
}
double progress(int64_t s, int64_t w = W) {
  return static_cast<double>(s - w) / static_cast<double>(std::max<int64_t>(1, T - w));
}

}  // namespace

TEST_CASE("each schedule follows HF's formula, warmup included", "[schedulers]") {
  check_schedule("linear",
                 [](int64_t s) { return s < W ? warm(s) : std::max(0.0, double(T - s) / (T - W)); });
  check_schedule(
      "linear", [](int64_t s) { return std::max(0.0, double(T - s) / T); }, 0);  // W = 0: full lr first
  check_schedule("cosine", [](int64_t s) {
    return s < W ? warm(s) : std::max(0.0, 0.5 * (1 + std::cos(pi * progress(s))));
  });
  check_schedule("cosine",
                 [](int64_t s) {
                   return s < W ? warm(s) : std::max(0.0, 0.5 * (1 + std::cos(pi * 2 * 1.5 * progress(s))));
                 },
                 W, {{"num_cycles", 1.5}});
  check_schedule("cosine_with_restarts",
                 [](int64_t s) {
                   if (s < W) return warm(s);
                   const double p = progress(s);
                   return p >= 1 ? 0.0 : std::max(0.0, 0.5 * (1 + std::cos(pi * std::fmod(2.0 * p, 1.0))));
                 },
                 W, {{"num_cycles", 2}});
  check_schedule("polynomial",
                 [](int64_t s) {
                   if (s < W) return warm(s);
                   if (s > T) return 1e-7 / 0.1;
                   return ((0.1 - 1e-7) * std::pow(1.0 - progress(s), 2.0) + 1e-7) / 0.1;
                 },
                 W, {{"power", 2.0}});
  check_schedule("constant", [](int64_t) { return 1.0; });
  check_schedule("constant_with_warmup", [](int64_t s) { return s < W ? warm(s) : 1.0; });
  check_schedule("inverse_sqrt", [](int64_t s) { return s < W ? warm(s) : 1.0 / std::sqrt(double(s) / W); });
  check_schedule(
      "inverse_sqrt", [](int64_t s) { return 1.0 / std::sqrt((s + 10000.0) / 10000.0); }, 0);
  check_schedule("cosine_with_min_lr",
                 [](int64_t s) {
                   return s < W ? warm(s) : std::max(0.0, 0.5 * (1 + std::cos(pi * progress(s))) * 0.9 + 0.1);
                 },
                 W, {{"min_lr_rate", 0.1}});
  check_schedule("warmup_stable_decay",
                 [](int64_t s) {
                   if (s < W) return warm(s) * 0.8 + 0.2;
                   if (s < W + 3) return 1.0;
                   if (s < W + 7) return std::max(0.0, (1.0 - (s - W - 3) / 4.0) * 0.8 + 0.2);
                   return 0.2;
                 },
                 W, {{"num_decay_steps", 4}, {"decay_type", "linear"}, {"min_lr_ratio", 0.2}});
}

TEST_CASE("state() and load_state() resume the same sequence", "[schedulers]") {
  Setup first, second;
  auto a = get_scheduler("cosine", first.optimizer, W, T);
  for (int i = 0; i < 4; ++i) a->step();
  auto b = get_scheduler("cosine", second.optimizer, W, T);
  b->load_state(a->state());
  CHECK(b->last_step() == 4);
  for (int i = 0; i < 5; ++i) {
    CHECK(b->get_last_lr() == a->get_last_lr());
    a->step();
    b->step();
  }
  CHECK_THROWS_AS(b->load_state(json{{"last_step", "x"}}), CheckpointError);
}

TEST_CASE("ReduceLROnPlateau reduces after patience evaluations without improvement", "[schedulers]") {
  Setup setup;
  auto s = get_scheduler("reduce_lr_on_plateau", setup.optimizer, 0, T, {{"patience", 1}, {"factor", 0.5}});
  auto& plateau = dynamic_cast<ReduceLROnPlateau&>(*s);
  s->step();  // per-update steps do nothing
  CHECK(s->get_last_lr()[0] == 0.1);
  plateau.step(1.0);
  plateau.step(1.0);  // one bad evaluation: within patience
  CHECK(s->get_last_lr()[0] == 0.1);
  plateau.step(1.0);  // two: reduce
  CHECK(s->get_last_lr() == std::vector<double>{0.05, 0.01});
  plateau.step(0.5);
  CHECK(s->get_last_lr()[0] == 0.05);
}

TEST_CASE("unknown schedules and bad kwargs name the flag and the value", "[schedulers]") {
  Setup setup;
  CHECK_THROWS_WITH(get_scheduler("cosnie", setup.optimizer, 0, T),
                    Catch::StartsWith("--lr_scheduler_type: \"cosnie\" is not a schedule"));
  CHECK_THROWS_WITH(
      get_scheduler("cosine", setup.optimizer, 0, T, {{"cycles", 1}}),
      "--lr_scheduler_kwargs: unknown key \"cycles\" for --lr_scheduler_type cosine (accepted: num_cycles)");
  CHECK_THROWS_WITH(
      get_scheduler("cosine", setup.optimizer, 0, T, {{"num_cycles", "two"}}),
      "--lr_scheduler_kwargs: \"num_cycles\" must be a number for --lr_scheduler_type cosine (got \"two\")");
  CHECK_THROWS_WITH(
      get_scheduler("polynomial", setup.optimizer, 0, T, {{"lr_end", 0.5}}),
      Catch::Contains("lr_end") && Catch::Contains("must be smaller than the initial learning rate"));
  CHECK_THROWS_WITH(get_scheduler("cosine_with_min_lr", setup.optimizer, 0, T),
                    Catch::Contains("needs exactly one of min_lr and min_lr_rate"));
  CHECK_THROWS_WITH(get_scheduler("warmup_stable_decay", setup.optimizer, 0, T),
                    Catch::Contains("needs num_decay_steps"));
  CHECK(num_warmup_steps(0, 0.25, 10) == 3);
  CHECK(num_warmup_steps(5, 0.25, 10) == 5);
}

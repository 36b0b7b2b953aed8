// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "torchfit/loop/best_metric.hpp"

using namespace torchfit;

TEST_CASE("the best metric improves strictly, in the metric's direction, as HF's _determine_best_metric",
          "[unit][best_metric]") {
  TrainingArguments args;
  args.metric_for_best_model = "loss";
  args.greater_is_better = false;
  TrainerState state;
  state.global_step = 10;
  CHECK(BestMetric::key(args) == "eval_loss");
  CHECK(BestMetric::update(args, state, {{"eval_loss", 0.5}}));
  CHECK(*state.best_metric == 0.5);
  CHECK(*state.best_global_step == 10);
  state.global_step = 20;
  CHECK_FALSE(BestMetric::update(args, state, {{"eval_loss", 0.5}}));  // a tie is no improvement
  CHECK_FALSE(BestMetric::update(args, state, {{"eval_loss", 0.7}}));
  CHECK(*state.best_global_step == 10);
  CHECK(BestMetric::update(args, state, {{"eval_loss", 0.4}}));
  CHECK(*state.best_global_step == 20);

  SECTION("greater is better, and a key already prefixed") {
    args.metric_for_best_model = "eval_accuracy";
    args.greater_is_better = true;
    TrainerState s;
    CHECK(BestMetric::key(args) == "eval_accuracy");
    CHECK(BestMetric::update(args, s, {{"eval_accuracy", 0.8}}));
    CHECK_FALSE(BestMetric::update(args, s, {{"eval_accuracy", 0.7}}));
  }
  SECTION("a NaN first metric leaves the bound, as HF writes Infinity") {
    TrainerState s;
    CHECK_FALSE(BestMetric::update(args, s, {{"eval_loss", NAN}}));
    CHECK(*s.best_metric == INFINITY);
  }
  SECTION("without saving, no best step is recorded") {
    args.save_strategy = SaveStrategy::no;
    TrainerState s;
    CHECK(BestMetric::update(args, s, {{"eval_loss", 1.0}}));
    CHECK_FALSE(s.best_global_step);
  }
  SECTION("a missing metric names the flag and lists what evaluation produced") {
    CHECK_THROWS_WITH(
        BestMetric::update(args, state, {{"eval_f1", 1.0}, {"epoch", 1}}),
        "--metric_for_best_model \"loss\": the evaluation at step 20 produced no numeric \"eval_loss\" "
        "(it produced: eval_f1, epoch); return it from compute_metrics or pick one of these");
  }
  SECTION("without a metric nothing is tracked") {
    args.metric_for_best_model.reset();
    TrainerState s;
    CHECK_FALSE(BestMetric::update(args, s, {{"eval_loss", 1.0}}));
    CHECK_FALSE(s.best_metric);
  }
}

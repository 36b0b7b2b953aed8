// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/integrations/jsonl.hpp"
#include "torchfit/torchfit.hpp"

using namespace torchfit;
using torchfit::test::Mlp;
using torchfit::test::TraceCallback;

namespace {

using Events = std::vector<std::string>;

TrainingArguments quiet_args(const test::TempDir& dir) {
  TrainingArguments args;
  args.output_dir = dir.path().string();
  args.per_device_train_batch_size = 2;
  args.per_device_eval_batch_size = 2;
  args.learning_rate = 1e-2;
  args.save_strategy = SaveStrategy::no;
  args.num_train_epochs = 1;
  return args;
}

// Trains an MLP on `n_train` samples (and 4 eval samples) and returns the trace of events.
using MlpTrainer = Trainer<Mlp, std::pair<torch::Tensor, torch::Tensor>>;

template <typename Setup = void (*)(MlpTrainer&)>
Events trace_run(
    TrainingArguments args, int64_t n_train, Setup setup = [](auto&) {}) {
  torch::manual_seed(0);
  MlpTrainer trainer(Mlp(), args, test::regression_data(n_train), test::regression_data(4, 4, 99),
                     test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  auto trace = trainer.add_callback<TraceCallback>();
  setup(trainer);
  trainer.train();
  return trace->events;
}

// The events of one optimizer update of `micro` micro-batches ending at global step `gs`.
Events update(int gs, int micro = 1) {
  Events e{"on_step_begin"};
  for (int i = 1; i < micro; ++i) e.push_back("on_substep_end");
  e.insert(e.end(),
           {"on_pre_optimizer_step", "on_optimizer_step", "on_step_end(gs=" + std::to_string(gs) + ")"});
  return e;
}
Events evaluation(int batches = 2) {
  Events e(static_cast<std::size_t>(batches), "on_prediction_step");
  e.insert(e.end(), {"on_log(eval)", "on_evaluate"});
  return e;
}
Events concat(std::initializer_list<Events> parts) {
  Events out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

TEST_CASE("the worked trace of HF (5 batches, GA 2, log 1, eval and save every 2) plus the final evaluation",
          "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.gradient_accumulation_steps = 2;
  args.logging_steps = 1;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 2;
  args.save_strategy = SaveStrategy::steps;
  args.save_steps = 2;
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1, 2),
                                  {"on_log(loss)"},
                                  update(2, 2),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  {"on_save(gs=2)"},
                                  update(3, 1),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  {"on_save(gs=3)"},
                                  {"on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 10) == expected);
}

TEST_CASE("epoch strategies with a short last accumulation group, over two epochs", "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.gradient_accumulation_steps = 2;
  args.num_train_epochs = 2;
  args.logging_strategy = IntervalStrategy::epoch;
  args.eval_strategy = IntervalStrategy::epoch;
  args.save_strategy = SaveStrategy::epoch;
  const Events epoch_end_pass = concat({{"on_epoch_end", "on_log(loss)"}, evaluation()});
  // No forced log at the last step: with logging_strategy "epoch" HF logs only at epoch ends.
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1, 2),
                                  update(2, 2),
                                  update(3, 1),
                                  epoch_end_pass,
                                  {"on_save(gs=3)", "on_epoch_begin"},
                                  update(4, 2),
                                  update(5, 2),
                                  update(6, 1),
                                  epoch_end_pass,
                                  {"on_save(gs=6)", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 10) == expected);
}

TEST_CASE("max_steps that is not a multiple of the eval and save steps still ends with a log, eval and save",
          "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.max_steps = 5;
  args.logging_steps = 2;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 2;
  args.save_strategy = SaveStrategy::steps;
  args.save_steps = 3;
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1),
                                  update(2),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  update(3),
                                  {"on_save(gs=3)"},
                                  update(4),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  update(5),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  {"on_save(gs=5)"},
                                  {"on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 20) == expected);
}

TEST_CASE("fractional epochs stop mid-epoch with HF's fractional epoch values", "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.num_train_epochs = 1.5;
  args.logging_steps = 1;
  torch::manual_seed(0);
  Trainer trainer(Mlp(), args, test::regression_data(8), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  auto trace = trainer.add_callback<TraceCallback>();
  trainer.train();
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1),
                                  {"on_log(loss)"},
                                  update(2),
                                  {"on_log(loss)"},
                                  update(3),
                                  {"on_log(loss)"},
                                  update(4),
                                  {"on_log(loss)"},
                                  {"on_epoch_end", "on_epoch_begin"},
                                  update(5),
                                  {"on_log(loss)"},
                                  update(6),
                                  {"on_log(loss)", "on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace->events == expected);
  const auto& s = trainer.state();
  CHECK(s.max_steps == 6);
  CHECK(s.num_train_epochs == 2);
  std::vector<double> epochs;
  for (const auto& e : s.log_history) epochs.push_back(e.at("epoch").get<double>());
  CHECK(epochs == std::vector<double>{0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.5});
}

TEST_CASE("logging_strategy no logs nothing during training, not even the last step", "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_strategy = IntervalStrategy::no;
  args.logging_steps = 1;
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1),
                                  update(2),
                                  update(3),
                                  {"on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 6) == expected);
}

TEST_CASE(
    "callbacks given to the constructor come after the integrations, receive on_init_end, and keep their "
    "events",
    "[trainer][callbacks]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.report_to = {"jsonl"};
  auto first = std::make_shared<TraceCallback>();
  auto stopper = std::make_shared<EarlyStoppingCallback>(2);
  Trainer trainer(Mlp(), args, test::regression_data(6), test::regression_data(4), test::mse_loss, {},
                  {first, stopper});
  CHECK(trainer.callback_handler().callback_list() ==
        "DefaultFlowCallback\nJSONLinesCallback\nTraceCallback\nEarlyStoppingCallback\nProgressCallback");
  CHECK(first->events == Events{"on_init_end"});
  // The static type decided which events the callback is visited for, as with add_callback.
  CHECK(trainer.callback_handler().events_of(2) == all_events);
  CHECK(trainer.callback_handler().events_of(3) == overridden_events<EarlyStoppingCallback>());
}

TEST_CASE("an entry logged before the first step says \"epoch\": 0, as HF's int", "[trainer][state]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.eval_strategy = IntervalStrategy::epoch;
  args.eval_on_start = true;
  Trainer trainer(Mlp(), args, test::regression_data(4), test::regression_data(4), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  trainer.train();
  trainer.save_state();
  const std::string written = test::read_file(dir / "trainer_state.json");
  const auto first_entry = written.find("\"eval_loss\"");
  REQUIRE(first_entry != std::string::npos);
  CHECK(written.substr(written.rfind('{', first_entry), first_entry - written.rfind('{', first_entry))
            .find("\"epoch\": 0,\n") != std::string::npos);
  CHECK(trainer.state().log_history.front().at("step") == 0);
  CHECK(trainer.state().log_history.back().at("epoch").dump() == "1.0");
}

TEST_CASE("logging_first_step logs step 1 even when logging every 100 steps", "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 100;
  args.logging_first_step = true;
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1),
                                  {"on_log(loss)"},
                                  update(2),
                                  update(3),
                                  {"on_log(loss)", "on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 6) == expected);
}

TEST_CASE("eval_delay postpones step evaluations", "[trainer][events]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 100;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 1;
  args.eval_delay = 3;
  const Events expected = concat({{"on_train_begin", "on_epoch_begin"},
                                  update(1),
                                  update(2),
                                  update(3),
                                  evaluation(),
                                  update(4),
                                  {"on_log(loss)"},
                                  evaluation(),
                                  {"on_epoch_end", "on_log(summary)", "on_train_end"}});
  CHECK(trace_run(args, 8) == expected);
}

TEST_CASE("control flags raised by a user callback take effect", "[trainer][control]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 100;
  args.num_train_epochs = 2;

  struct RaiseAt : TrainerCallback {
    RaiseAt(int64_t step, std::function<void(TrainerControl&)> raise) : at(step), act(std::move(raise)) {}
    void on_step_end(const Args&, TrainerState& s, TrainerControl& c, const CallbackContext&) override {
      if (s.global_step == at) act(c);
    }
    int64_t at;
    std::function<void(TrainerControl&)> act;
  };
  using T = MlpTrainer;

  SECTION("should_training_stop ends training after this step, with the epoch-end pass and summary") {
    auto events = trace_run(args, 8, [](T& t) {
      t.add_callback<RaiseAt>(2, [](TrainerControl& c) { c.should_training_stop = true; });
    });
    CHECK(events == concat({{"on_train_begin", "on_epoch_begin"},
                            update(1),
                            update(2),
                            {"on_epoch_end", "on_log(summary)", "on_train_end"}}));
  }
  SECTION("should_epoch_stop ends only the current epoch") {
    auto events = trace_run(args, 4, [](T& t) {
      t.add_callback<RaiseAt>(1, [](TrainerControl& c) { c.should_epoch_stop = true; });
    });
    // Step 3 is the last one taken but not max_steps (4), so nothing forces a log.
    CHECK(events == concat({{"on_train_begin", "on_epoch_begin"},
                            update(1),
                            {"on_epoch_end", "on_epoch_begin"},
                            update(2),
                            update(3),
                            {"on_epoch_end", "on_log(summary)", "on_train_end"}}));
  }
  SECTION("forced log, evaluation and save happen at that step") {
    args.eval_strategy = IntervalStrategy::no;
    auto events = trace_run(args, 4, [](T& t) {
      t.add_callback<RaiseAt>(1, [](TrainerControl& c) { c.should_log = c.should_save = true; });
    });
    CHECK(events == concat({{"on_train_begin", "on_epoch_begin"},
                            update(1),
                            {"on_log(loss)", "on_save(gs=1)"},
                            update(2),
                            {"on_epoch_end", "on_epoch_begin"},
                            update(3),
                            update(4),
                            {"on_log(loss)", "on_epoch_end", "on_log(summary)", "on_train_end"}}));
    CHECK(checkpoint::list(dir.path()).size() == 1);
  }
  SECTION("a forced evaluation runs the evaluation loop") {
    test::TempDir d2;
    auto a = quiet_args(d2);
    a.logging_steps = 100;
    torch::manual_seed(0);
    Trainer trainer(Mlp(), a, test::regression_data(4), test::regression_data(4, 4, 9), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    auto trace = trainer.add_callback<TraceCallback>();
    trainer.add_callback<RaiseAt>(1, [](TrainerControl& c) { c.should_evaluate = true; });
    trainer.train();
    CHECK(trace->events == concat({{"on_train_begin", "on_epoch_begin"},
                                   update(1),
                                   evaluation(),
                                   update(2),
                                   {"on_log(loss)", "on_epoch_end", "on_log(summary)", "on_train_end"}}));
  }
}

TEST_CASE("logged losses are means of the step losses and learning rates follow the schedule",
          "[trainer][logs]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 2;
  args.gradient_accumulation_steps = 2;
  args.num_train_epochs = 1;
  args.max_grad_norm = 1.0;

  // Sums the micro-batch losses of each update (each already divided by the group size).
  struct StepLosses : TrainerCallback {
    std::vector<double> per_step;
    double current = 0;
    void on_substep_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
      current += ctx.loss->item<double>();
    }
    void on_pre_optimizer_step(const Args&, TrainerState&, TrainerControl&,
                               const CallbackContext& ctx) override {
      current += ctx.loss->item<double>();
      per_step.push_back(current);
      current = 0;
    }
  };
  torch::manual_seed(0);
  Trainer trainer(Mlp(), args, test::regression_data(16), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  auto losses = trainer.add_callback<StepLosses>();
  const auto out = trainer.train();

  const auto& h = trainer.state().log_history;
  REQUIRE(h.size() == 3);  // steps 2 and 4, then the summary
  const auto& p = losses->per_step;
  REQUIRE(p.size() == 4);
  CHECK(h[0].at("loss").get<double>() == Approx((p[0] + p[1]) / 2).epsilon(1e-6));
  CHECK(h[1].at("loss").get<double>() == Approx((p[2] + p[3]) / 2).epsilon(1e-6));
  // linear decay from 1e-2 over 4 steps; the lr logged is the one used by the step just taken
  CHECK(h[0].at("learning_rate").get<double>() == Approx(1e-2 * 3 / 4));
  CHECK(h[1].at("learning_rate").get<double>() == Approx(1e-2 * 1 / 4));
  CHECK(h[0].at("grad_norm").get<double>() > 0);
  std::vector<std::string> keys;
  for (const auto& item : h[0].items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"loss", "grad_norm", "learning_rate", "epoch", "step"});
  CHECK(h[0].at("step") == 2);
  CHECK(h[2].at("train_loss").get<double>() == Approx((p[0] + p[1] + p[2] + p[3]) / 4).epsilon(1e-6));
  CHECK(out.training_loss == h[2].at("train_loss").get<double>());
  for (const char* key : {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                          "train_loss", "epoch", "step"})
    CHECK(h[2].contains(key));
}

TEST_CASE("gradient accumulation of 4 x 8 samples equals one batch of 32", "[trainer][accumulation]") {
  const auto data = test::regression_data(32);
  auto train_once = [&](int64_t batch, int64_t ga) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    args.optim = "sgd";
    args.lr_scheduler_type = "constant";
    args.learning_rate = 0.1;
    args.max_grad_norm = 0;
    args.per_device_train_batch_size = batch;
    args.gradient_accumulation_steps = ga;
    args.max_steps = 1;
    torch::manual_seed(3);
    Mlp model(4, 16, 1, /*dropout=*/0.0);
    Trainer trainer(model, args, data, test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    trainer.train();
    return std::make_pair(model->fc1->weight.clone(), model->fc2->weight.clone());
  };
  const auto [big1, big2] = train_once(32, 1);
  const auto [acc1, acc2] = train_once(8, 4);
  CHECK(torch::allclose(big1, acc1, 1e-6, 1e-7));
  CHECK(torch::allclose(big2, acc2, 1e-6, 1e-7));
  const auto [one1, one2] = train_once(8, 1);  // a different update, so the comparison can fail
  CHECK(!torch::allclose(big1, one1, 1e-6, 1e-7));
}

TEST_CASE("data loading workers build the same batches in the same order", "[trainer][data]") {
  auto train_with = [](int64_t workers) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    args.dataloader_num_workers = workers;
    args.num_train_epochs = 2;
    torch::manual_seed(5);
    Mlp model;
    Trainer trainer(model, args, test::regression_data(30), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    trainer.train();
    return model->fc1->weight.clone();
  };
  const auto reference = train_with(0);
  CHECK(torch::equal(train_with(2), reference));
  CHECK(torch::equal(train_with(3), reference));
}

TEST_CASE("the loss is read back from the device only on logging steps", "[trainer][sync]") {
  auto reads_for = [](int64_t steps, double logging_steps) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    args.max_steps = steps;
    args.logging_steps = logging_steps;
    Trainer trainer(Mlp(), args, test::regression_data(64), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    const int64_t before = torchfit::detail::host_reads();
    trainer.train();
    return torchfit::detail::host_reads() - before;
  };
  // Two logs each: loss + grad_norm per log, and one read for the summary.
  CHECK(reads_for(10, 5) == 5);
  CHECK(reads_for(30, 15) == 5);
}

TEST_CASE("bad input is reported clearly", "[trainer][errors]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  const auto data = test::regression_data(8);

  SECTION("a loss that is not a scalar") {
    auto per_sample = [](Mlp& m, const torch::data::Example<>& b) {
      return (m->forward(b.data) - b.target).pow(2);
    };
    Trainer trainer(Mlp(), args, data, per_sample);
    CHECK_THROWS_WITH(trainer.train(),
                      Catch::Contains("loss_fn must return a scalar tensor, got shape [2, 1]") &&
                          Catch::Contains("at step 1"));
  }
  SECTION("an empty train dataset") {
    Trainer trainer(Mlp(), args, std::make_pair(torch::zeros({0, 4}), torch::zeros({0, 1})), test::mse_loss);
    CHECK_THROWS_WITH(trainer.train(), Catch::Contains("train dataset is empty"));
  }
  SECTION("a batch size of 0") {
    args.per_device_train_batch_size = 0;
    CHECK_THROWS_AS(Trainer(Mlp(), args, data, test::mse_loss), ArgumentError);
    CHECK_THROWS_WITH(Trainer(Mlp(), args, data, test::mse_loss),
                      Catch::Contains("--per_device_train_batch_size"));
  }
  SECTION("metric_for_best_model naming a metric evaluation never produces") {
    args.eval_strategy = IntervalStrategy::steps;
    args.eval_steps = 2;
    args.metric_for_best_model = "f1";
    Trainer trainer(Mlp(), args, data, test::regression_data(4), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    CHECK_THROWS_WITH(trainer.train(), Catch::Contains("--metric_for_best_model \"f1\"") &&
                                           Catch::Contains("no numeric \"eval_f1\"") &&
                                           Catch::Contains("at step 2") && Catch::Contains("eval_loss"));
  }
  SECTION("load_best_model_at_end with mismatched strategies") {
    args.load_best_model_at_end = true;
    args.eval_strategy = IntervalStrategy::epoch;
    args.save_strategy = SaveStrategy::steps;
    CHECK_THROWS_WITH(
        Trainer(Mlp(), args, data, test::regression_data(4), test::mse_loss),
        Catch::Contains("--load_best_model_at_end requires the save and eval strategy to match"));
  }
  SECTION("an eval strategy without an eval dataset") {
    args.eval_strategy = IntervalStrategy::steps;
    CHECK_THROWS_WITH(Trainer(Mlp(), args, data, test::mse_loss), Catch::Contains("needs an eval dataset"));
  }
  SECTION("eval_on_start without an eval dataset") {
    args.eval_on_start = true;
    CHECK_THROWS_AS(Trainer(Mlp(), args, data, test::mse_loss), ArgumentError);
    CHECK_THROWS_WITH(Trainer(Mlp(), args, data, test::mse_loss),
                      Catch::Matchers::StartsWith("--eval_on_start needs an eval dataset"));
  }
  SECTION("a step count that does not fit") {
    args.num_train_epochs = 1e300;
    Trainer trainer(Mlp(), args, data, test::mse_loss);
    CHECK_THROWS_AS(trainer.train(), ArgumentError);
    CHECK_THROWS_WITH(trainer.train(), Catch::Contains("--num_train_epochs 1e+300 is too large"));
    CHECK(trainer.state().global_step == 0);
  }
  SECTION("inputs and targets of different lengths") {
    Trainer trainer(Mlp(), args, std::make_pair(torch::zeros({8, 4}), torch::zeros({7, 1})), test::mse_loss);
    CHECK_THROWS_WITH(trainer.train(),
                      Catch::Contains("same number of samples") && Catch::Contains("8 and 7"));
  }
}

TEST_CASE("evaluate and predict report HF-shaped metrics", "[trainer][eval]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  auto loss_fn = [](Mlp& m, const torch::data::Example<>& b) {
    auto out = m->forward(b.data);
    return LossOutput{torch::mse_loss(out, b.target), out, b.target};
  };
  auto metrics_fn = [](const EvalPrediction& p) {
    return Logs{{"mae", (p.predictions - p.label_ids).abs().mean().item<double>()},
                {"n", p.predictions.size(0)}};
  };
  const auto eval = test::regression_data(5, 4, 11);  // 3 batches of 2, 2, 1
  Trainer trainer(Mlp(), args, test::regression_data(8), eval, loss_fn, metrics_fn);
  trainer.remove_callback<ProgressCallback>();
  auto trace = trainer.add_callback<TraceCallback>();
  const Logs metrics = trainer.evaluate();
  std::vector<std::string> keys;
  for (const auto& item : metrics.items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"eval_loss", "eval_mae", "eval_n", "eval_runtime",
                                         "eval_samples_per_second", "eval_steps_per_second"});
  CHECK(metrics.at("eval_n") == 5);
  CHECK(trace->events == Events{"on_prediction_step", "on_prediction_step", "on_prediction_step",
                                "on_log(eval)", "on_evaluate"});
  // The exact mean over the 5 samples (HF would weight the last single-sample batch as 2).
  torch::NoGradGuard no_grad;
  trainer.model()->eval();
  const double expected = torch::mse_loss(trainer.model()->forward(eval.first), eval.second).item<double>();
  CHECK(metrics.at("eval_loss").get<double>() == Approx(expected).epsilon(1e-6));

  const auto prediction = trainer.predict(eval);
  CHECK(prediction.predictions.sizes() == torch::IntArrayRef{5, 1});
  CHECK(prediction.metrics.contains("test_loss"));
  CHECK(prediction.metrics.contains("test_mae"));
  CHECK(trace->events.back() == "on_predict");
  CHECK(trainer.state().log_history.size() == 1);  // predict does not log (HF)

  // Other datasets and prefixes, as HF's evaluate(eval_dataset, metric_key_prefix=...).
  const Logs holdout = trainer.evaluate(test::regression_data(3, 4, 12), "eval_holdout");
  CHECK(holdout.at("eval_holdout_n") == 3);
  CHECK(holdout.contains("eval_holdout_loss"));
  CHECK(trainer.state().log_history.back().contains("eval_holdout_mae"));
  CHECK(trainer.predict(eval, "val").metrics.contains("val_mae"));
}

TEST_CASE("on CUDA the model trains on the GPU, with bf16 autocast and fp16 loss scaling",
          "[trainer][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: the [cuda] checks did not run");
    return;
  }
  for (const bool fp16 : {false, true}) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    args.max_steps = 20;
    args.logging_steps = 10;
    (fp16 ? args.fp16 : args.bf16) = true;
    torch::manual_seed(0);
    Mlp model;
    Trainer trainer(model, args, test::regression_data(64), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    const int64_t reads_before = torchfit::detail::host_reads();
    trainer.train();
    CHECK(trainer.device().is_cuda());
    CHECK(model->fc1->weight.device().is_cuda());
    CHECK(model->fc1->weight.dtype() == torch::kFloat);  // autocast keeps fp32 master weights
    const auto& h = trainer.state().log_history;
    CHECK(std::isfinite(h.front().at("loss").get<double>()));
    CHECK(h.front().at("loss").get<double>() > h[1].at("loss").get<double>());
    CHECK(torchfit::detail::host_reads() - reads_before ==
          5);  // fp16's overflow check is the scaler's own read
  }
}

namespace {

// A map-style libtorch dataset: examples are read one by one and stacked into batches.
struct PairsDataset : torch::data::datasets::Dataset<PairsDataset> {
  explicit PairsDataset(std::pair<torch::Tensor, torch::Tensor> d) : data(std::move(d)) {}
  torch::data::Example<> get(std::size_t i) override {
    return {data.first[static_cast<int64_t>(i)], data.second[static_cast<int64_t>(i)]};
  }
  torch::optional<std::size_t> size() const override { return static_cast<std::size_t>(data.first.size(0)); }
  std::pair<torch::Tensor, torch::Tensor> data;
};

}  // namespace

TEST_CASE("a map-style torch dataset trains exactly like the same tensors", "[trainer][data]") {
  const auto data = test::regression_data(20);
  auto train = [](auto dataset) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    torch::manual_seed(2);
    Mlp model;
    Trainer trainer(model, args, std::move(dataset), test::mse_loss);
    trainer.template remove_callback<ProgressCallback>();
    trainer.train();
    return model->fc1->weight.clone();
  };
  CHECK(torch::equal(train(PairsDataset(data)), train(data)));
}

TEST_CASE("a user-supplied optimizer and scheduler are used", "[trainer][optimizer]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 1;
  args.max_steps = 3;
  torch::manual_seed(0);
  Mlp model;
  Trainer trainer(model, args, test::regression_data(16), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  auto sgd = std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.5));
  trainer.set_optimizer(sgd);
  trainer.set_scheduler(std::shared_ptr<LRScheduler>(get_scheduler("constant", *sgd, 0, 3)));
  trainer.train();
  CHECK(trainer.optimizer() == sgd.get());
  for (int i = 0; i < 3; ++i)
    CHECK(trainer.state().log_history[static_cast<std::size_t>(i)].at("learning_rate") == 0.5);
}

TEST_CASE("logging_nan_inf_filter replaces a non-finite step loss by the running mean, as HF",
          "[trainer][logs]") {
  auto run = [](bool filter) {
    test::TempDir dir;
    auto args = quiet_args(dir);
    args.max_steps = 4;
    args.logging_steps = 4;
    args.logging_nan_inf_filter = filter;
    int calls = 0;
    // Step 3's loss value is NaN; its gradient is the ordinary one (the NaN is a detached constant).
    auto loss_fn = [&calls](Mlp& m, const torch::data::Example<>& b) {
      auto loss = test::mse_loss(m, b);
      return ++calls == 3 ? loss + torch::full({}, NAN) : loss;
    };
    struct StepLoss : TrainerCallback {
      std::vector<float> values;
      void on_step_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
        values.push_back(ctx.loss->item<float>());
      }
    };
    torch::manual_seed(0);
    Trainer trainer(Mlp(), args, test::regression_data(16), loss_fn);
    trainer.remove_callback<ProgressCallback>();
    auto seen = trainer.add_callback<StepLoss>();
    trainer.train();
    return std::make_pair(trainer.state().log_history.front().at("loss").get<double>(), seen->values);
  };
  const auto [filtered, p] = run(true);
  REQUIRE(p.size() == 4);
  REQUIRE(std::isnan(p[2]));
  float sum = p[0] + p[1];
  sum += sum / 3.0f;  // step 3: 1 + global_step (2) - last logged (0)
  sum += p[3];
  CHECK(filtered == Approx(static_cast<double>(sum) / 4).epsilon(1e-6));
  CHECK(std::isnan(run(false).first));
}

TEST_CASE(
    "evaluation outputs of different widths are padded with -100, with or without eval_accumulation_steps",
    "[trainer][eval]") {
  SECTION("concat_padded") {
    const auto a = torch::tensor({1, 2, 3, 4}, torch::kLong).reshape({2, 2});
    const auto b = torch::tensor({5, 6, 7}, torch::kLong).reshape({1, 3});
    const auto c = torch::tensor({8}, torch::kLong).reshape({1, 1});
    const auto out = torchfit::detail::concat_padded({a, b, c});
    CHECK(torch::equal(
        out, torch::tensor({1, 2, -100, 3, 4, -100, 5, 6, 7, 8, -100, -100}, torch::kLong).reshape({4, 3})));
    CHECK(torch::equal(torchfit::detail::concat_padded({a, a}), torch::cat({a, a})));
    CHECK(torch::equal(torchfit::detail::concat_padded({a.flatten(), c.flatten()}),
                       torch::tensor({1, 2, 3, 4, 8}, torch::kLong)));
    CHECK_THROWS_WITH(
        torchfit::detail::concat_padded({a, torch::zeros({2, 2, 2}, torch::kLong)}),
        Catch::Contains("cannot concatenate evaluation outputs of shapes [2, 2] and [2, 2, 2]"));
  }
  SECTION("predict") {
    test::TempDir dir;
    const auto eval = test::regression_data(5, 4, 11);  // batches of 2, 2 and 1 samples
    auto predictions_with = [&](std::optional<int64_t> accumulation) {
      auto args = quiet_args(dir);
      args.eval_accumulation_steps = accumulation;
      // Batch k predicts k + 1 values per sample: a sequence output whose length varies between batches.
      auto loss_fn = [calls = 0](Mlp& m, const torch::data::Example<>& b) mutable {
        auto out = m->forward(b.data);
        const int64_t width = calls++ % 3 + 1;
        return LossOutput{torch::mse_loss(out, b.target), out.expand({out.size(0), width}), {}};
      };
      torch::manual_seed(0);
      Trainer trainer(Mlp(), args, test::regression_data(8), eval, loss_fn);
      trainer.remove_callback<ProgressCallback>();
      return trainer.predict(eval);
    };
    const auto all = predictions_with(std::nullopt);
    REQUIRE(all.predictions.sizes() == torch::IntArrayRef{5, 3});
    CHECK(torch::equal(all.predictions.slice(0, 0, 2).slice(1, 1), torch::full({2, 2}, -100.0)));
    CHECK(torch::equal(all.predictions.slice(0, 2, 4).slice(1, 2), torch::full({2, 1}, -100.0)));
    CHECK((all.predictions.slice(0, 4) != -100).all().item<bool>());
    CHECK(all.label_ids.sizes() == torch::IntArrayRef{5, 1});
    for (int64_t steps : {1, 2, 4}) {
      const auto grouped = predictions_with(steps);
      CHECK(torch::equal(grouped.predictions, all.predictions));
      CHECK(torch::equal(grouped.label_ids, all.label_ids));
    }
  }
}

namespace {
// An MLP that counts its floating point operations like HF's PreTrainedModel: 6 x samples x parameters.
struct CountingMlpImpl : test::MlpImpl {
  double floating_point_ops(const torch::data::Example<>& batch) const {
    int64_t n = 0;
    for (const auto& p : parameters()) n += p.numel();
    return 6.0 * static_cast<double>(batch.data.size(0) * n);
  }
};
TORCH_MODULE(CountingMlp);
}  // namespace

TEST_CASE("total_flos sums the model's floating_point_ops over micro-batches, and is 0 without it",
          "[trainer][flos]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.gradient_accumulation_steps = 2;
  args.save_strategy = SaveStrategy::epoch;
  auto loss_fn = [](CountingMlp& m, const torch::data::Example<>& b) {
    return torch::mse_loss(m->forward(b.data), b.target);
  };
  Trainer counted(CountingMlp(), args, test::regression_data(7),
                  loss_fn);  // 4 micro-batches: 2, 2, 2, 1 samples
  counted.remove_callback<ProgressCallback>();
  const auto out = counted.train();
  const double per_sample = 6.0 * (4 * 16 + 16 + 16 * 1 + 1);
  CHECK(counted.state().total_flos == 7 * per_sample);
  CHECK(out.metrics.at("total_flos").get<double>() == 7 * per_sample);
  const auto saved = TrainerState::load_from_json(dir.path() / "checkpoint-2" / "trainer_state.json");
  CHECK(saved.total_flos == 7 * per_sample);

  test::TempDir plain_dir;
  Trainer plain(Mlp(), quiet_args(plain_dir), test::regression_data(7), test::mse_loss);
  plain.remove_callback<ProgressCallback>();
  CHECK(plain.train().metrics.at("total_flos") == 0.0);
}

TEST_CASE(
    "skip_memory_metrics false adds HF's memory metrics, CPU peaks come from the kernel's high-water mark",
    "[trainer][memory]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.skip_memory_metrics = false;
  args.eval_strategy = IntervalStrategy::epoch;
  constexpr int64_t temporary_bytes = 64 << 20;
  // The first training step touches a 64 MiB temporary and frees it: the stage ends lower than it peaked.
  auto loss_fn = [first = true](Mlp& m, const torch::data::Example<>& b) mutable {
    auto loss = torch::mse_loss(m->forward(b.data), b.target);
    if (first && m->is_training()) {
      first = false;
      loss = loss + 0 * torch::ones({temporary_bytes / 4}).sum();
    }
    return loss;
  };
  Trainer trainer(Mlp(), args, test::regression_data(8), test::regression_data(4, 4, 99), loss_fn);
  trainer.remove_callback<ProgressCallback>();
  const auto out = trainer.train();
  std::vector<std::string> keys;
  for (const auto& item : out.metrics.items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"train_runtime", "train_samples_per_second",
                                         "train_steps_per_second", "total_flos", "train_loss",
                                         "init_mem_cpu_alloc_delta", "init_mem_cpu_peaked_delta",
                                         "train_mem_cpu_alloc_delta", "train_mem_cpu_peaked_delta",
                                         "before_init_mem_cpu", "epoch"});
  CHECK(out.metrics.at("train_mem_cpu_peaked_delta").get<int64_t>() >= temporary_bytes * 3 / 4);
  CHECK(out.metrics.at("before_init_mem_cpu").get<int64_t>() > 0);
  auto memory_keys = [](const Logs& logs) {
    std::vector<std::string> found;
    for (const auto& item : logs.items())
      if (item.key().find("_mem_") != std::string::npos) found.push_back(item.key());
    return found;
  };
  // The evaluation inside training is nested in the train stage and reports nothing of its own; the summary is
  // logged with the memory metrics (HF).
  const auto& history = trainer.state().log_history;
  REQUIRE(history.size() == 3);  // loss, eval, summary
  CHECK(history[1].contains("eval_loss"));
  CHECK(memory_keys(history[1]).empty());
  CHECK(memory_keys(history[2]).size() == 5);

  const Logs eval = trainer.evaluate();
  CHECK(eval.contains("eval_mem_cpu_alloc_delta"));
  CHECK(eval.contains("eval_mem_cpu_peaked_delta"));
  CHECK_FALSE(eval.contains("init_mem_cpu_alloc_delta"));  // init is reported once
  CHECK_FALSE(trainer.state().log_history.back().contains("eval_mem_cpu_alloc_delta"));  // added after on_log
  const auto prediction = trainer.predict(test::regression_data(4, 4, 99));
  CHECK(prediction.metrics.contains("test_mem_cpu_alloc_delta"));

  test::TempDir skip_dir;
  Trainer skipping(Mlp(), quiet_args(skip_dir), test::regression_data(8), test::mse_loss);
  skipping.remove_callback<ProgressCallback>();
  CHECK(memory_keys(skipping.train().metrics).empty());
}

TEST_CASE("num_input_tokens_seen counts input elements (all) or non-padding ones, without a sync per step",
          "[trainer][tokens]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.logging_steps = 2;
  args.max_steps = 4;
  // 8 samples of 4 inputs; a 0 marks padding: every sample ends with one, so any order counts 6 per step.
  auto data = test::regression_data(8);
  data.first.select(1, 3).zero_();
  auto train = [&](TokenCounting counting, bool per_second, std::optional<int64_t> pad) {
    args.include_num_input_tokens_seen = counting;
    args.include_tokens_per_second = per_second;
    torch::manual_seed(0);
    auto trainer = std::make_unique<MlpTrainer>(Mlp(), args, data, std::nullopt, test::mse_loss);
    trainer->remove_callback<ProgressCallback>();
    if (pad) trainer->set_pad_token_id(*pad);
    torchfit::detail::host_reads() = 0;
    trainer->train();
    return trainer;
  };

  SECTION("all") {
    const auto trainer = train(TokenCounting::all, false, std::nullopt);
    CHECK(trainer->state().num_input_tokens_seen == 32);
    const auto& h = trainer->state().log_history;
    REQUIRE(h.size() == 3);
    std::vector<std::string> keys;
    for (const auto& item : h[0].items()) keys.push_back(item.key());
    CHECK(keys == std::vector<std::string>{"loss", "grad_norm", "learning_rate", "epoch",
                                           "num_input_tokens_seen", "train_runtime",
                                           "train_tokens_per_second", "step"});
    CHECK(h[0].at("num_input_tokens_seen") == 16);
    CHECK(h[1].at("num_input_tokens_seen") == 32);
    CHECK(h[2].at("num_input_tokens_seen") == 32);
    CHECK_FALSE(
        h[2].contains("train_tokens_per_second"));  // the summary has it only with include_tokens_per_second
    CHECK(torchfit::detail::host_reads() ==
          5);  // loss and grad_norm at the two logs, the loss for the summary
  }
  SECTION("non_padding, read on the logging steps") {
    const auto trainer = train(TokenCounting::non_padding, true, 0);
    CHECK(trainer->state().num_input_tokens_seen == 24);
    const auto& h = trainer->state().log_history;
    CHECK(h[0].at("num_input_tokens_seen") == 12);
    CHECK(h[2].contains("train_tokens_per_second"));  // include_tokens_per_second: all elements of this call
    CHECK(torchfit::detail::host_reads() == 8);       // plus one token count per log
  }
  SECTION("non_padding without a padding value counts every element, with a warning") {
    test::CaptureLog log;
    const auto trainer = train(TokenCounting::non_padding, false, std::nullopt);
    CHECK(trainer->state().num_input_tokens_seen == 32);
    CHECK_THAT(log.text(), Catch::Contains("no padding value was given (Trainer::set_pad_token_id)"));
  }
  SECTION("no counting") {
    const auto trainer = train(TokenCounting::no, false, std::nullopt);
    CHECK(trainer->state().num_input_tokens_seen == 0);
    CHECK_FALSE(trainer->state().log_history[0].contains("num_input_tokens_seen"));
  }
}

TEST_CASE("several named eval datasets are evaluated in order, logged apart and tracked together",
          "[trainer][eval]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.eval_strategy = IntervalStrategy::epoch;
  args.num_train_epochs = 2;
  args.metric_for_best_model = "val_loss";
  using Data = std::pair<torch::Tensor, torch::Tensor>;
  const NamedDatasets<Data> evals{{"val", test::regression_data(4, 4, 99)},
                                  {"test", test::regression_data(2, 4, 98)}};
  torch::manual_seed(0);
  test::CaptureLog log;
  Trainer trainer(Mlp(), args, test::regression_data(8), evals, test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  auto trace = trainer.add_callback<TraceCallback>();
  trainer.add_callback<EarlyStoppingCallback>(5);
  trainer.train();
  const auto& h = trainer.state().log_history;
  REQUIRE(h.size() == 6);  // val, test; the last step's loss, val, test; the summary
  CHECK(h[0].contains("eval_val_loss"));
  CHECK(h[1].contains("eval_test_loss"));
  CHECK_FALSE(h[1].contains("eval_val_loss"));
  CHECK(h[3].contains("eval_val_loss"));
  CHECK(*trainer.state().best_metric ==
        std::min(h[0].at("eval_val_loss").get<double>(), h[3].at("eval_val_loss").get<double>()));
  CHECK(log.text().empty());  // EarlyStopping watches eval_val_loss and ignores the test evaluations
  const auto first_epoch_end =
      std::find(trace->events.begin(), trace->events.end(), "on_epoch_end") - trace->events.begin();
  CHECK(Events(trace->events.begin() + first_epoch_end, trace->events.begin() + first_epoch_end + 7) ==
        Events{"on_epoch_end", "on_prediction_step", "on_prediction_step", "on_log(eval)", "on_evaluate",
               "on_prediction_step", "on_log(eval)"});

  const Logs merged = trainer.evaluate();
  CHECK(merged.contains("eval_val_loss"));
  CHECK(merged.contains("eval_test_runtime"));

  auto build = [&](NamedDatasets<Data> sets) {
    Trainer t(Mlp(), args, test::regression_data(8), std::move(sets), test::mse_loss);
  };
  CHECK_THROWS_WITH(build({{"val", evals[0].second}, {"", evals[1].second}}),
                    "eval dataset 1 has no name: name every one of several eval datasets");
  CHECK_THROWS_WITH(build({{"val", evals[0].second}, {"val", evals[1].second}}),
                    "two eval datasets are named \"val\"");
}

TEST_CASE("tune_cpu_allocator: CPU training steps re-use freed buffers instead of page-faulting them in",
          "[trainer][allocator]") {
  SECTION("a malloc the user configured is left alone") {
    test::ScopedEnv tunables("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000");
    CHECK_FALSE(tune_cpu_allocator());
  }
  SECTION("tuned, a step of an MLP 784-256-256-10 on a batch of 64 faults almost no page in") {
    test::ScopedEnv tunables("GLIBC_TUNABLES", std::nullopt), mmap("MALLOC_MMAP_THRESHOLD_", std::nullopt),
        trim("MALLOC_TRIM_THRESHOLD_", std::nullopt);
    REQUIRE(tune_cpu_allocator());
    torch::nn::Sequential model(torch::nn::Linear(784, 256), torch::nn::ReLU(), torch::nn::Linear(256, 256),
                                torch::nn::ReLU(), torch::nn::Linear(256, 10));
    torch::optim::AdamW optimizer(model->parameters());
    const auto x = torch::randn({64, 784});
    const auto y = torch::randint(0, 10, {64});
    const auto minor_faults = [] {
      rusage usage{};
      getrusage(RUSAGE_SELF, &usage);
      return usage.ru_minflt;
    };
    const auto step = [&] {
      torch::cross_entropy_loss(model->forward(x), y).backward();
      clip_grad_norm(model->parameters(), 1.0);
      optimizer.step();
      optimizer.zero_grad();
    };
    for (int i = 0; i < 3; ++i) step();  // the optimizer's state and the heap grow to their size
    const auto before = minor_faults();
    for (int i = 0; i < 20; ++i) step();
    // glibc's default here: about 390 faults a step (the gradient and activation buffers, again and again);
    // tuned, about 3.
    CHECK((minor_faults() - before) / 20 < 20);
  }
}

namespace {

// A training run of 10 updates (2 epochs of 5, GA 2, dropout) saving every 3 steps; the signal tests run it in a
// child process (the hidden test case below) so that the process can end as a signal makes it.
TrainingArguments signal_run_args(const std::string& output_dir) {
  TrainingArguments args;
  args.output_dir = output_dir;
  args.per_device_train_batch_size = 4;
  args.gradient_accumulation_steps = 2;
  args.num_train_epochs = 2;
  args.learning_rate = 1e-2;
  args.logging_steps = 2;
  args.save_steps = 3;
  args.disable_tqdm = true;
  return args;
}

// Sends itself `signal` `times` times between the two micro-batches of update `step`.
struct SignalDuringStep : TrainerCallback {
  SignalDuringStep(int64_t at_step, int sig, int count) : step(at_step), signal(sig), times(count) {}
  void on_substep_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (state.global_step + 1 != step) return;
    for (int i = 0; i < times; ++i) std::raise(signal);
  }
  int64_t step;
  int signal;
  int times;
};

struct ChildResult {
  int status = 0;
  std::string stderr_text;
};

// Runs the hidden "signal child" test case of this executable with the given environment.
ChildResult run_signal_child(const std::filesystem::path& dir, const std::string& mode, int signal = 0,
                             int times = 0) {
  const auto err = dir / ("stderr-" + mode + ".txt");
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = open("/dev/null", O_WRONLY);
    if (fd < 0 || dup2(fd, STDERR_FILENO) < 0 || null < 0 || dup2(null, STDOUT_FILENO) < 0) _exit(126);
    setenv("TORCHFIT_SIGNAL_DIR", dir.c_str(), 1);
    setenv("TORCHFIT_SIGNAL_MODE", mode.c_str(), 1);
    setenv("TORCHFIT_SIGNAL", std::to_string(signal).c_str(), 1);
    setenv("TORCHFIT_SIGNAL_TIMES", std::to_string(times).c_str(), 1);
    execl("/proc/self/exe", "test_trainer", "signal child", nullptr);
    _exit(127);
  }
  ChildResult result;
  REQUIRE(waitpid(pid, &result.status, 0) == pid);
  result.stderr_text = test::read_file(err);
  return result;
}

bool has_leftovers(const std::filesystem::path& dir) {
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().filename().string().rfind(".checkpoint-", 0) == 0) return true;
  return false;
}

}  // namespace

TEST_CASE("signal child", "[.signal_child]") {
  const std::string dir = std::getenv("TORCHFIT_SIGNAL_DIR");
  const std::string mode = std::getenv("TORCHFIT_SIGNAL_MODE");
  torch::manual_seed(3);
  Trainer trainer(Mlp(), signal_run_args(dir + "/" + (mode == "resume" ? "signal" : mode)),
                  test::regression_data(36), test::mse_loss);
  trainer.remove_callback<PrinterCallback>();
  if (mode == "signal")
    trainer.add_callback<SignalDuringStep>(7, std::atoi(std::getenv("TORCHFIT_SIGNAL")),
                                           std::atoi(std::getenv("TORCHFIT_SIGNAL_TIMES")));
  trainer.train(mode == "resume" ? std::optional<std::string>("last") : std::nullopt);
  trainer.save_model(dir + "/final-" + mode);
}

TEST_CASE(
    "SIGTERM and SIGINT stop after the current update, save a checkpoint, exit with 143 and 130, and the run "
    "resumes bit-exactly",
    "[trainer][signals]") {
  for (const int signal : {SIGTERM, SIGINT}) {
    test::TempDir dir;
    INFO("signal " << signal);
    REQUIRE(run_signal_child(dir.path(), "reference").status == 0);
    const ChildResult stopped = run_signal_child(dir.path(), "signal", signal, 1);
    REQUIRE(WIFEXITED(stopped.status));
    CHECK(WEXITSTATUS(stopped.status) == 128 + signal);
    const auto run_dir = dir / "signal";
    // Update 7 was finished and saved (its micro-batches were half done when the signal came); nothing after it.
    CHECK(checkpoint::list(run_dir) == std::vector<std::filesystem::path>{checkpoint::dir_for(run_dir, 3),
                                                                          checkpoint::dir_for(run_dir, 6),
                                                                          checkpoint::dir_for(run_dir, 7)});
    CHECK_FALSE(has_leftovers(run_dir));
    const std::string name = signal == SIGTERM ? "SIGTERM" : "SIGINT";
    CHECK(stopped.stderr_text ==
          "[torchfit] warning: training stopped by " + name + " after step 7; checkpoint in " +
              checkpoint::dir_for(run_dir, 7).string() + " (resume with --resume_from_checkpoint last)\n");
    REQUIRE(run_signal_child(dir.path(), "resume").status == 0);
    CHECK(test::read_file(dir / "final-resume" / "model.safetensors") ==
          test::read_file(dir / "final-reference" / "model.safetensors"));
  }
}

TEST_CASE("a second signal ends the process at once", "[trainer][signals]") {
  test::TempDir dir;
  const ChildResult killed = run_signal_child(dir.path(), "signal", SIGINT, 2);
  REQUIRE(WIFSIGNALED(killed.status));
  CHECK(WTERMSIG(killed.status) == SIGINT);
  const auto run_dir = dir / "signal";
  CHECK(checkpoint::list(run_dir) ==
        std::vector<std::filesystem::path>{checkpoint::dir_for(run_dir, 3), checkpoint::dir_for(run_dir, 6)});
}

TEST_CASE("with set_exit_on_signal(false) train() returns after the clean stop and names the signal",
          "[trainer][signals]") {
  test::TempDir dir;
  torch::manual_seed(3);
  Trainer trainer(Mlp(), signal_run_args(dir.path().string()), test::regression_data(36), test::mse_loss);
  trainer.remove_callback<PrinterCallback>();
  trainer.add_callback<SignalDuringStep>(4, SIGTERM, 1);
  trainer.set_exit_on_signal(false);
  struct sigaction before {};
  sigaction(SIGTERM, nullptr, &before);
  test::CaptureLog log;
  const auto out = trainer.train();
  CHECK(out.global_step == 4);
  CHECK(trainer.interrupted_by() == SIGTERM);
  CHECK(checkpoint::is_complete(checkpoint::dir_for(dir.path(), 4)));
  // No stop reason is recorded: a resumed run trains on (unlike an early stop).
  CHECK(trainer.control().stop_reason.empty());
  CHECK(log.text().empty());
  // The handlers are gone after train(): the previous one is back.
  struct sigaction after {};
  sigaction(SIGTERM, nullptr, &after);
  CHECK(after.sa_handler == before.sa_handler);
}

TEST_CASE("TerminateOnNan stops a diverging run at the next log, records why, and costs no sync between logs",
          "[trainer][terminate_on_nan]") {
  test::TempDir dir;
  auto args = quiet_args(dir);
  args.optim = "sgd";
  args.max_grad_norm = 0;
  args.max_steps = 40;
  args.logging_steps = 5;
  args.num_train_epochs = 100;
  SECTION("a diverging run") {
    args.learning_rate = 1e6;
    args.terminate_on_nan = true;
    args.save_strategy = SaveStrategy::steps;
    args.save_steps = 5;
    Trainer trainer(Mlp(), args, test::regression_data(16), test::mse_loss);
    trainer.remove_callback<ProgressCallback>();
    test::CaptureLog log;
    trainer.train();
    const int64_t stopped_at = trainer.state().global_step;
    CHECK(stopped_at < 40);
    CHECK(stopped_at % 5 == 0);
    CHECK(trainer.control().stop_reason ==
          "the training loss became NaN or infinite before step " + std::to_string(stopped_at));
    CHECK(log.text() == "[torchfit] warning: TerminateOnNanCallback: stopping training: " +
                            trainer.control().stop_reason + "\n");
    // The diverged model is not saved at the stopping step.
    CHECK_FALSE(std::filesystem::exists(checkpoint::dir_for(dir.path(), stopped_at)));
  }
  SECTION("one extra read per log, none between logs") {
    args.learning_rate = 1e-3;
    const auto reads = [&](bool terminate_on_nan) {
      args.terminate_on_nan = terminate_on_nan;
      Trainer trainer(Mlp(), args, test::regression_data(16), test::mse_loss);
      trainer.remove_callback<ProgressCallback>();
      const int64_t before = torchfit::detail::host_reads();
      trainer.train();
      CHECK(trainer.state().global_step == 40);
      return torchfit::detail::host_reads() - before;
    };
    CHECK(reads(true) - reads(false) == 8);  // 8 training logs
  }
}

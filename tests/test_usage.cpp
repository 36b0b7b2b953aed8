// SPDX-License-Identifier: MIT
// What a new user meets first: seeding, the model summary, arguments changed after parsing, and the messages
// the Trainer prints at construction and at the end of training.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
#include "torchfit/torchfit.hpp"

using namespace torchfit;
using torchfit::test::Mlp;

namespace {

TrainingArguments small_run(const test::TempDir& dir) {
  TrainingArguments args;
  args.output_dir = dir.path().string();
  args.per_device_train_batch_size = 4;
  args.save_strategy = SaveStrategy::no;
  args.max_steps = 2;
  args.disable_tqdm = true;
  return args;
}

// A command line whose strings live as long as it does.
struct CommandLine {
  std::vector<std::string> tokens;
  std::vector<const char*> argv{"train"};
  explicit CommandLine(std::vector<std::string> t) : tokens(std::move(t)) {
    for (const auto& token : tokens) argv.push_back(token.c_str());
  }
  TrainingArguments parse() const {
    return TrainingArguments::from_argv(static_cast<int>(argv.size()), argv.data());
  }
};

struct TinyImpl : torch::nn::Module {
  TinyImpl()
      : encoder(register_module("encoder", torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::ReLU(),
                                                                 torch::nn::BatchNorm1d(8)))),
        head(register_module("head", torch::nn::Linear(8, 2))),
        scale(register_parameter("scale", torch::ones({2}), /*requires_grad=*/false)) {}
  torch::nn::Sequential encoder;
  torch::nn::Linear head;
  torch::Tensor scale;
};
TORCH_MODULE(Tiny);

// Restores libtorch's global determinism switch, which set_seed(..., true) turns on.
struct DeterminismGuard {
  bool before = at::globalContext().deterministicAlgorithms();
  ~DeterminismGuard() { at::globalContext().setDeterministicAlgorithms(before, false); }
};

}  // namespace

TEST_CASE("set_seed before building the model gives the same initial weights", "[usage][seed]") {
  const auto weights = [](int64_t seed) {
    set_seed(seed);
    return Mlp()->fc1->weight.clone();
  };
  CHECK(torch::equal(weights(3), weights(3)));
  CHECK_FALSE(torch::equal(weights(3), weights(4)));
  set_seed(5);
  const int first = std::rand();
  set_seed(5);
  CHECK(std::rand() == first);

  DeterminismGuard guard;
  at::globalContext().setDeterministicAlgorithms(false, false);
  set_seed(5, /*deterministic=*/true);
  CHECK(at::globalContext().deterministicAlgorithms());
  CHECK(std::string(std::getenv("CUBLAS_WORKSPACE_CONFIG")) == ":16:8");
}

TEST_CASE("full_determinism warns unless determinism was on before the model was built", "[usage][seed]") {
  test::TempDir dir;
  DeterminismGuard guard;
  auto args = small_run(dir);
  args.full_determinism = true;
  {
    at::globalContext().setDeterministicAlgorithms(false, false);
    test::CaptureLog log;
    Trainer trainer(Mlp(), args, test::regression_data(8), test::mse_loss);
    CHECK(log.text() ==
          "[torchfit] warning: --full_determinism: deterministic algorithms are switched on by the Trainer, "
          "after the "
          "model's weights were drawn; call torchfit::set_seed(args.seed, /*deterministic=*/true) before "
          "building the "
          "model so that the whole run is deterministic\n");
    CHECK(at::globalContext().deterministicAlgorithms());
  }
  {
    at::globalContext().setDeterministicAlgorithms(false, false);
    set_seed(args.seed, /*deterministic=*/true);
    test::CaptureLog log;
    Trainer trainer(Mlp(), args, test::regression_data(8), test::mse_loss);
    CHECK(log.text().empty());
  }
}

TEST_CASE("model_summary lists submodules with their parameter counts and the totals", "[usage][summary]") {
  Tiny model;
  // Linear(4, 8): 32 + 8; BatchNorm1d(8): 8 + 8 (and 17 buffer values); Linear(8, 2): 16 + 2; scale: 2,
  // frozen.
  CHECK(model_summary(*model) ==
        "Model: Tiny\n"
        "Layer (type)          Param #\n"
        "=============================\n"
        "encoder (Sequential)       56\n"
        "head (Linear)              18\n"
        "scale (Parameter)           2\n"
        "=============================\n"
        "Total params: 76 (304 B)\n"
        "Trainable params: 74 (296 B)\n"
        "Non-trainable params: 2 (8 B)\n"
        "Buffers: 17 (72 B)\n");
  const std::string deep = model_summary(*model, 2);
  CHECK_THAT(deep, Catch::Contains("encoder (Sequential)          56\n"
                                   "encoder.0 (Linear)            40\n"
                                   "encoder.1 (ReLU)               0\n"
                                   "encoder.2 (BatchNorm1d)       16\n"
                                   "head (Linear)                 18\n"));
  CHECK(torchfit::detail::thousands(1234567) == "1,234,567");
  CHECK(torchfit::detail::byte_size(1536) == "1.50 KiB");
}

TEST_CASE("the Trainer logs the model summary at info level when training starts", "[usage][summary]") {
  test::TempDir dir;
  Trainer trainer(Mlp(), small_run(dir), test::regression_data(8), test::mse_loss);
  {
    test::CaptureLog notices(log::Level::notice);
    trainer.train();
    CHECK(notices.text().find("Model: Mlp") == std::string::npos);
  }
  test::CaptureLog info(log::Level::info);
  trainer.train();
  CHECK_THAT(info.text(), Catch::Contains("[torchfit] Model: Mlp\nLayer (type)") &&
                              Catch::Contains("fc1 (Linear)") && Catch::Contains("Total params: 97 (388 B)"));
}

TEST_CASE("fields changed after parsing are honoured: the Trainer derives eval_steps and logging_dir",
          "[usage]") {
  test::TempDir dir;
  auto args = CommandLine({"--output_dir", (dir / "parsed").string(), "--eval_strategy", "steps",
                           "--logging_steps", "50", "--max_steps", "4", "--disable_tqdm"})
                  .parse();
  args.logging_steps = 2;
  args.output_dir = (dir / "changed").string();
  Trainer trainer(Mlp(), args, test::regression_data(8), test::regression_data(4), test::mse_loss);
  CHECK(trainer.args().eval_steps == 2.0);
  CHECK(trainer.args().logging_dir.rfind((dir / "changed" / "runs").string(), 0) == 0);
  trainer.train();
  std::vector<int64_t> evaluated;
  for (const auto& entry : trainer.state().log_history)
    if (entry.contains("eval_loss")) evaluated.push_back(entry.at("step").get<int64_t>());
  CHECK(evaluated == std::vector<int64_t>{2, 4});
}

TEST_CASE("an error-like metric_for_best_model warns once, from parsing to the Trainer", "[usage]") {
  test::TempDir dir;
  test::CaptureLog log;
  const auto args = CommandLine({"--output_dir", dir.path().string(), "--metric_for_best_model", "usage_rmse",
                                 "--max_steps", "1", "--disable_tqdm"})
                        .parse();
  Trainer trainer(Mlp(), args, test::regression_data(8), test::mse_loss);
  CHECK(trainer.args().greater_is_better == true);  // HF's rule is kept
  const std::string text = log.text();
  CHECK_THAT(text, Catch::StartsWith("[torchfit] warning: \"usage_rmse\" looks like an error measure"));
  CHECK(text.find("looks like") == text.rfind("looks like"));  // once
}

TEST_CASE("loading the best model and early stopping are printed by default", "[usage]") {
  {
    test::ScopedEnv unset("TORCHFIT_VERBOSITY", std::nullopt);
    CHECK(log::detail::level_from_env() == log::Level::notice);
    test::ScopedEnv quieter("TORCHFIT_VERBOSITY", "warning");
    CHECK(log::detail::level_from_env() == log::Level::warning);
  }
  test::TempDir dir;
  auto args = small_run(dir);
  args.max_steps = 6;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 1;
  args.save_strategy = SaveStrategy::steps;
  args.save_steps = 1;
  args.load_best_model_at_end = true;
  args.learning_rate = 0;  // the loss never improves: early stopping after the second evaluation
  Trainer trainer(Mlp(), args, test::regression_data(8), test::regression_data(4), test::mse_loss);
  trainer.add_callback<EarlyStoppingCallback>(1);
  test::CaptureLog log(log::Level::notice);
  trainer.train();
  CHECK_THAT(log.text(),
             Catch::Contains(
                 "[torchfit] early stopping: eval_loss did not improve by more than 0.0 for 1 evaluation "
                 "(best ") &&
                 Catch::Contains("); training stops at step 2\n") &&
                 Catch::Contains("[torchfit] Loading best model from " + (dir / "checkpoint-1").string() +
                                 " (score: "));
}

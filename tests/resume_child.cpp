// SPDX-License-Identifier: MIT
// Trains the test MLP in its own process so a test can SIGKILL it at any moment and resume from what it left.
// Usage: torchfit_resume_child OUTPUT_DIR [resume | die-saving STEP]
// Writes OUTPUT_DIR/final/model.safetensors and OUTPUT_DIR/final/trainer_state.json when training completes.
// `die-saving STEP` SIGKILLs the process in the middle of writing checkpoint STEP: after the model and optimizer
// files, before trainer_state.json and the rename.
#include <csignal>
#include <iostream>
#include <string>

#include "support.hpp"
#include "torchfit/torchfit.hpp"

namespace {
// Checkpoints ask callbacks for their state() after writing the weights and before trainer_state.json.
struct DieWhileSaving : torchfit::TrainerCallback {
  explicit DieWhileSaving(int64_t die_at) : step_to_die(die_at) {}
  void on_step_end(const Args&, torchfit::TrainerState& state, torchfit::TrainerControl&,
                   const torchfit::CallbackContext&) override {
    step = state.global_step;
  }
  torchfit::json state() const override {
    if (step == step_to_die) std::raise(SIGKILL);
    return nullptr;
  }
  int64_t step_to_die;
  int64_t step = 0;
};
}  // namespace

int main(int argc, char** argv) try {
  const std::string mode = argc > 2 ? argv[2] : "";
  if (argc < 2 || (mode == "die-saving" && argc < 4)) {
    std::cerr << "usage: torchfit_resume_child OUTPUT_DIR [resume | die-saving STEP]\n";
    return 2;
  }
  torchfit::TrainingArguments args;
  args.output_dir = argv[1];
  args.per_device_train_batch_size = 4;
  args.gradient_accumulation_steps = 2;
  args.num_train_epochs = 4;
  args.learning_rate = 1e-2;
  args.logging_steps = 3;
  args.save_steps = 2;
  args.eval_strategy = torchfit::IntervalStrategy::steps;
  args.eval_steps = 5;
  args.metric_for_best_model = "loss";
  args.disable_tqdm = true;
  torch::manual_seed(1);
  torchfit::Trainer trainer(torchfit::test::Mlp(), args, torchfit::test::regression_data(36),
                            torchfit::test::regression_data(8, 4, 5), torchfit::test::mse_loss);
  trainer.remove_callback<torchfit::PrinterCallback>();
  trainer.add_callback<torchfit::EarlyStoppingCallback>(100);
  if (mode == "die-saving") trainer.add_callback<DieWhileSaving>(std::stoll(argv[3]));
  trainer.train(mode == "resume" ? std::optional<std::string>("last") : std::nullopt);
  trainer.save_model(args.output_dir + "/final");
  trainer.state().save_to_json(args.output_dir + "/final/trainer_state.json");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "torchfit_resume_child: " << e.what() << "\n";
  return 1;
}

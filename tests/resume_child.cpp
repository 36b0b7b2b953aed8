// SPDX-License-Identifier: MIT
// Trains the test MLP in its own process so a test can SIGKILL it at any moment and resume from what it left.
// Usage: torchfit_resume_child OUTPUT_DIR [resume | die-saving STEP | fail-saving STEP | warn-saving STEP]
// Writes OUTPUT_DIR/final/model.safetensors and OUTPUT_DIR/final/trainer_state.json when training completes.
// `die-saving STEP` SIGKILLs the process in the middle of writing checkpoint STEP: after the model and optimizer
// files, before trainer_state.json and the rename.
// `fail-saving STEP` fills the disk for the save of checkpoint STEP (a 4 KiB file size limit: the model file fits,
// optimizer.pt does not), after copying the checkpoints saved so far to OUTPUT_DIR.before; `warn-saving STEP`
// does the same under SaveErrorPolicy::warn and lifts the limit after that save, so training goes on.
#include <sys/resource.h>

#include <csignal>
#include <filesystem>
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

// Saves run right after on_step_end: the limit set there hits the save of that step. Writes past the limit fail
// with EFBIG, SIGXFSZ being ignored, as on a full disk.
struct DiskFullWhileSaving : torchfit::TrainerCallback {
  DiskFullWhileSaving(int64_t step, bool lift_after) : step_to_fail(step), lift(lift_after) {}
  void on_step_end(const Args& args, torchfit::TrainerState& state, torchfit::TrainerControl&,
                   const torchfit::CallbackContext&) override {
    if (state.global_step != step_to_fail) return;
    namespace fs = std::filesystem;
    const fs::path before = args.output_dir + ".before";
    fs::create_directories(before);
    for (const auto& dir : torchfit::checkpoint::list(args.output_dir))
      fs::copy(dir, before / dir.filename(), fs::copy_options::recursive);
    set_file_size_limit(4096);
  }
  void on_step_begin(const Args&, torchfit::TrainerState& state, torchfit::TrainerControl&,
                     const torchfit::CallbackContext&) override {
    if (lift && state.global_step == step_to_fail) set_file_size_limit(RLIM_INFINITY);
  }
  static void set_file_size_limit(rlim_t bytes) {
    rlimit limit{};
    getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  int64_t step_to_fail;
  bool lift;
};
}  // namespace

int main(int argc, char** argv) try {
  const std::string mode = argc > 2 ? argv[2] : "";
  const bool at_step = mode == "die-saving" || mode == "fail-saving" || mode == "warn-saving";
  if (argc < 2 || (at_step && argc < 4)) {
    std::cerr << "usage: torchfit_resume_child OUTPUT_DIR [resume | die-saving STEP | fail-saving STEP | "
                 "warn-saving STEP]\n";
    return 2;
  }
  std::signal(SIGXFSZ, SIG_IGN);
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
  if (mode == "fail-saving" || mode == "warn-saving")
    trainer.add_callback<DiskFullWhileSaving>(std::stoll(argv[3]), mode == "warn-saving");
  if (mode == "warn-saving") trainer.set_save_error_policy(torchfit::checkpoint::SaveErrorPolicy::warn);
  trainer.train(mode == "resume" ? std::optional<std::string>("last") : std::nullopt);
  trainer.save_model(args.output_dir + "/final");
  trainer.state().save_to_json(args.output_dir + "/final/trainer_state.json");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "torchfit_resume_child: " << e.what() << "\n";
  return 1;
}

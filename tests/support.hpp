// SPDX-License-Identifier: MIT
// Helpers shared by the tests.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>

#include "torchfit/log.hpp"

namespace torchfit::test {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

inline std::filesystem::path data_path(const std::string& name) {
  return std::filesystem::path(TORCHFIT_TEST_DATA_DIR) / name;
}

/// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("torchfit-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// Captures torchfit's log messages (warnings, info) for the lifetime of the object.
class CaptureLog {
 public:
  explicit CaptureLog(log::Level level = log::Level::warning)
      : previous_stream_(log::set_stream(&out_)), previous_level_(log::level()) {
    log::set_level(level);
  }
  ~CaptureLog() {
    log::set_stream(previous_stream_);
    log::set_level(previous_level_);
  }
  CaptureLog(const CaptureLog&) = delete;
  CaptureLog& operator=(const CaptureLog&) = delete;
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::ostream* previous_stream_;
  log::Level previous_level_;
};

}  // namespace torchfit::test

#include <torch/torch.h>

#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"

namespace torchfit::test {

/// A small regression problem: y = x·w + noise, `n` samples of `features` inputs, fixed by `seed`.
inline std::pair<torch::Tensor, torch::Tensor> regression_data(int64_t n, int64_t features = 4,
                                                               uint64_t seed = 7) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto x = torch::randn({n, features}, gen);
  auto w = torch::arange(1, features + 1, torch::kFloat).unsqueeze(1) / features;
  auto y = x.matmul(w) + 0.1 * torch::randn({n, 1}, gen);
  return {x, y};
}

/// A two-layer MLP with dropout, so RNG state matters for exact resume.
struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(int64_t in = 4, int64_t hidden = 16, int64_t out = 1, double dropout = 0.1)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        drop(register_module("drop", torch::nn::Dropout(dropout))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(drop(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::Dropout drop;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Mlp);

inline torch::Tensor mse_loss(Mlp& model, const torch::data::Example<>& batch) {
  return torch::mse_loss(model->forward(batch.data), batch.target);
}

/// Records every event as "name" or "name(gs=..)" for the events where HF's worked traces show the step.
struct TraceCallback : TrainerCallback {
  std::vector<std::string> events;
  void add(const std::string& e) { events.push_back(e); }
  void on_init_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_init_end");
  }
  void on_train_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_train_begin");
  }
  void on_train_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_train_end");
  }
  void on_epoch_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_epoch_begin");
  }
  void on_epoch_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_epoch_end");
  }
  void on_step_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_step_begin");
  }
  void on_pre_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_pre_optimizer_step");
  }
  void on_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_optimizer_step");
  }
  void on_substep_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_substep_end");
  }
  void on_step_end(const Args&, TrainerState& s, TrainerControl&, const CallbackContext&) override {
    add("on_step_end(gs=" + std::to_string(s.global_step) + ")");
  }
  void on_evaluate(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_evaluate");
  }
  void on_predict(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_predict");
  }
  void on_save(const Args&, TrainerState& s, TrainerControl&, const CallbackContext&) override {
    add("on_save(gs=" + std::to_string(s.global_step) + ")");
  }
  void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
    const auto& logs = *ctx.logs;
    const bool eval = std::any_of(logs.items().begin(), logs.items().end(),
                                  [](const auto& item) { return item.key().rfind("eval_", 0) == 0; });
    add(logs.contains("loss") ? "on_log(loss)" : eval ? "on_log(eval)" : "on_log(summary)");
  }
  void on_prediction_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    add("on_prediction_step");
  }
};

}  // namespace torchfit::test

namespace torchfit::test {

/// Sets (or, with nullopt, unsets) an environment variable for the lifetime of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace torchfit::test

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "torchfit/callback_handler.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit::test {

/// A training run without a Trainer, for trackers: log() appends to log_history first, as Trainer::log does.
struct TrackerRun {
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  CallbackHandler handler;

  explicit TrackerRun(const std::filesystem::path& output_dir, int64_t resumed_step = 0) {
    args.output_dir = output_dir.string();
    args.run_name = "unit-run";
    state.global_step = resumed_step;
  }
  void train_begin() { handler.on_train_begin(args, state, control); }
  void log(int64_t step, const Logs& logs) {
    state.global_step = step;
    Logs entry = logs;
    entry["step"] = step;
    state.log_history.push_back(entry);
    handler.on_log(args, state, control, logs);
  }
  void train_end() { handler.on_train_end(args, state, control); }
};

/// Counts the events it sees, to show that callbacks after a failed tracker still run.
struct Recorder : TrainerCallback {
  int logs_seen = 0;
  bool ended = false;
  void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override { ++logs_seen; }
  void on_train_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    ended = true;
  }
};

/// Training logs for each step, an evaluation every second step, then the end-of-training summary with a string.
inline void simulate(TrackerRun& run, int64_t from_step, int64_t to_step) {
  run.train_begin();
  for (int64_t step = from_step + 1; step <= to_step; ++step) {
    run.log(step, {{"loss", 1.0 / double(step)}, {"learning_rate", 5e-05}, {"epoch", 0.25 * double(step)}});
    if (step % 2 == 0)
      run.log(step, {{"eval_loss", 0.5}, {"eval_acc@1", 0.75}, {"epoch", 0.25 * double(step)}});
  }
  run.log(to_step, {{"train_runtime", 1.5}, {"train_loss", 0.3}, {"note", "done"}, {"total_flos", 0}});
  run.train_end();
}

/// Two steps logged through a tracker that cannot work: training goes on and one warning, starting with
/// `warning_start`, says why.
inline void check_disabled_with_one_warning(TrackerRun& run, const std::string& warning_start) {
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  simulate(run, 0, 2);
  CHECK(recorder->logs_seen == 4);
  CHECK(recorder->ended);
  const std::string text = log.text();
  INFO(text);
  CHECK(text.rfind(warning_start, 0) == 0);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
}

/// A tracker, constructed from `options`, whose set-up is refused: training goes on, and one warning says the
/// tracker is disabled because of `cause`.
template <typename Tracker, typename Options>
void check_refused(const std::filesystem::path& dir, const Options& options, const std::string& cause) {
  TrackerRun run(dir);
  const auto tracker = run.handler.add_callback<Tracker>(options);
  check_disabled_with_one_warning(run, "[torchfit] warning: " + tracker->name() +
                                           " failed and is disabled for the rest of this run: " + cause);
}

/// Waits until `condition()` holds, however slow the machine (up to a minute); returns whether it held.
template <typename Condition>
bool eventually(Condition condition) {
  for (int i = 0; i < 3000; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

/// A tracker whose background call fails with `failure` (the start of its message) after `before(run)`:
/// flush() rethrows it, the next event disables the tracker with one warning naming it, and destroying the
/// tracker ends nothing and warns no more.
template <typename Tracker, typename Options, typename Before>
void check_background_failure(const std::filesystem::path& dir, const Options& options,
                              const std::string& failure, Before before) {
  CaptureLog log;
  {
    TrackerRun run(dir);
    const auto tracker = run.handler.add_callback<Tracker>(options);
    run.train_begin();
    before(run);
    CHECK_THROWS_WITH(tracker->flush(), Catch::StartsWith(failure));
    check_disabled_with_one_warning(run, "[torchfit] warning: " + tracker->name() +
                                             " failed and is disabled for the rest of this run: " + failure);
  }
  CHECK(log.text().empty());
}

}  // namespace torchfit::test

#include "torchfit/trainer.hpp"

namespace torchfit::test {

/// Trains the test MLP for 6 steps of 4 samples, logging every 2, through a Trainer that reports to `tracker`;
/// `during(trainer)` runs after train(), before the trainer (and its trackers, which end their runs then) is
/// destroyed. Returns the log history.
template <typename During>
std::vector<json> train_reporting_to(const std::string& tracker, const std::filesystem::path& dir,
                                     During during) {
  TrainingArguments args;
  args.output_dir = (dir / "out").string();
  args.max_steps = 6;
  args.logging_steps = 2;
  args.per_device_train_batch_size = 4;
  args.report_to = {tracker};
  args.save_strategy = SaveStrategy::no;
  Trainer trainer(Mlp(), args, regression_data(16), mse_loss);
  trainer.template remove_callback<ProgressCallback>();
  trainer.train();
  during(trainer);
  return trainer.state().log_history;
}

/// The (step, loss) of each training log in `log_history`.
inline std::vector<json> losses_of(const std::vector<json>& log_history) {
  std::vector<json> out;
  for (const auto& entry : log_history)
    if (entry.contains("loss")) out.push_back({entry["step"], entry["loss"]});
  return out;
}

}  // namespace torchfit::test

// SPDX-License-Identifier: MIT
// The base every experiment tracker derives from (it owns the rules trackers share), and the HF conventions
// trackers apply to what they log.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "torchfit/callback_handler.hpp"
#include "torchfit/report_to.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Base of every experiment tracker, in the shape of spdlog's base_sink: the base owns the rules, a tracker
/// fills in hooks. The rules are HF's:
/// - a tracker acts only on the world process zero (CodeCarbon: the local process zero);
/// - it opens its run lazily, at on_train_begin or, when logging starts without training (a lone evaluate()),
/// at
///   the first on_log;
/// - an exception thrown by any of its events is reported once as a warning naming the tracker and the cause,
/// and
///   the tracker is disabled while training goes on.
///
/// The hooks: open_run() opens the run, log_entry() records one log entry of the open run, training_started()
/// does what the tracker does at each start of training besides opening. A tracker that acts on other events
/// (the end of training, predict, save) overrides them behind `if (!is_open(state)) return;`, or
/// `opened(...)` where HF opens lazily there too, so that the trainer visits it only for the events it acts
/// on.
class TrackerCallback : public TrainerCallback {
 public:
  bool isolate_failures() const final { return true; }

  void on_train_begin(const Args& args, TrainerState& state, TrainerControl&,
                      const CallbackContext& ctx) final {
    if (opened(args, state, ctx, OpenedAt::train_begin)) training_started(args, state, ctx);
  }

  void on_log(const Args& args, TrainerState& state, TrainerControl& control,
              const CallbackContext& ctx) final {
    if (opened(args, state, ctx, OpenedAt::log)) log_entry(state, control, *ctx.logs);
  }

 protected:
  /// The process that tracks: the world process zero (HF's trackers), or each machine's local process zero.
  enum class Process { world_zero, local_zero };
  /// The event that opens a run.
  enum class OpenedAt { train_begin, log, predict };

  explicit TrackerCallback(Process process = Process::world_zero) : process_(process) {}

  /// Opens the run, at the first event of this process that needs it.
  virtual void open_run(const Args& args, const TrainerState& state, const CallbackContext& ctx,
                        OpenedAt at) = 0;
  /// Records one log entry (on_log) of the open run.
  virtual void log_entry(const TrainerState& state, TrainerControl& control, const Logs& logs) = 0;
  /// What the tracker does at each on_train_begin, once the run is open.
  virtual void training_started(const Args&, const TrainerState&, const CallbackContext&) {}

  /// Whether this process tracks and the run is open.
  bool is_open(const TrainerState& state) const { return tracks(state) && run_open_; }

  /// Opens the run (open_run()) if this process tracks and it is not open yet; returns whether it is open.
  bool opened(const Args& args, const TrainerState& state, const CallbackContext& ctx, OpenedAt at) {
    if (!tracks(state)) return false;
    if (!run_open_) {
      run_open_ =
          true;  // first: a failing open_run() disables the tracker rather than being retried per event
      open_run(args, state, ctx, at);
    }
    return true;
  }

  /// The run is over (TensorBoard closed its file): the next event opens a new one.
  void run_closed() { run_open_ = false; }

 private:
  bool tracks(const TrainerState& state) const {
    return process_ == Process::world_zero ? state.is_world_process_zero : state.is_local_process_zero;
  }

  Process process_;
  bool run_open_ = false;
};

namespace integrations {

/// The number of parameters of the model in `ctx` (HF's `model/num_parameters`); nothing without a model.
inline std::optional<std::int64_t> model_num_parameters(const CallbackContext& ctx) {
  if (!ctx.model) return std::nullopt;
  std::int64_t count = 0;
  for (const auto& p : ctx.model->parameters()) count += p.numel();
  return count;
}

/// HF's rewrite_logs: `eval_x` -> `eval/x`, `test_x` -> `test/x`, anything else -> `train/<key>`.
inline std::string rewrite_log_key(std::string_view key) {
  if (key.substr(0, 5) == "eval_") return "eval/" + std::string(key.substr(5));
  if (key.substr(0, 5) == "test_") return "test/" + std::string(key.substr(5));
  return "train/" + std::string(key);
}

/// The end-of-training summary keys HF treats as single values rather than series.
inline bool is_single_value_scalar(std::string_view key) {
  return key == "train_runtime" || key == "train_samples_per_second" || key == "train_steps_per_second" ||
         key == "train_loss" || key == "total_flos";
}

}  // namespace integrations
}  // namespace torchfit

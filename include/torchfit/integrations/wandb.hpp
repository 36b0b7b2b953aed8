// SPDX-License-Identifier: MIT
// Weights & Biases tracker: HF's WandbCallback, talking to a W&B server (wandb.ai or self-hosted) over its
// HTTP API as wandb's own client does. Link torchfit::wandb (libcurl).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/detail/wandb_api.hpp"
#include "torchfit/integrations/detail/wandb_file_stream.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how WandbCallback talks to W&B. Unset members come from wandb's environment variables.
struct WandbOptions {
  /// The server. Unset: WANDB_BASE_URL, else https://api.wandb.ai.
  std::optional<std::string> base_url;
  /// Unset: WANDB_API_KEY, else the password stored for the server's host in ~/.netrc (or $NETRC) by
  /// `wandb login`.
  std::optional<std::string> api_key;
  /// Unset: WANDB_PROJECT, else "huggingface" (HF's default).
  std::optional<std::string> project;
  /// Unset: WANDB_ENTITY, else the API key's default entity (chosen by the server).
  std::optional<std::string> entity;
  /// History is sent at most this often, in seconds (logs in between go together); the end of training
  /// sends what is left. Unset: WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL, else 15 (wandb's default).
  std::optional<double> transmit_interval_s;
  /// After this many seconds without a request, an empty one tells the server the run is alive (wandb: 30).
  double heartbeat_interval_s = 30;
  /// How a failed request is retried: wandb-core's file_stream policy (2 s doubling up to 60 s, 180 s per
  /// attempt), for as long as the run lasts.
  RetryPolicy retry{2, 60, 180};
  /// How long on_train_end and the end of the run wait for unsent rows, in seconds. Unset:
  /// TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to Weights & Biases like HF's WandbCallback:
/// - on_train_begin (or the first on_log): creates the run `WANDB_RUN_ID` (else 8 random characters) in
///   `WANDB_PROJECT` (default "huggingface") of `WANDB_ENTITY` (default: the key's entity), named
///   `WANDB_NAME` or `args.run_name`, with `WANDB_RUN_GROUP`, `WANDB_TAGS` (comma-separated), `WANDB_NOTES`,
///   `WANDB_JOB_TYPE`, the host and the program; its config is `args.to_json()` and `model/num_parameters`,
///   and `train/global_step` is the step metric of every other metric (HF's define_metric calls).
/// - on_log: the end-of-training single values (`train_runtime`, `train_loss`, ...) go to the run summary;
///   the rest, keys rewritten (`loss` -> `train/loss`, `eval_loss` -> `eval/loss`) and `train/global_step`
///   added, is one history row, with wandb's `_step` (one per row), `_runtime` and `_timestamp`.
/// - on_predict: the metrics, rewritten, as a history row.
/// - on_train_end: sends what is pending and waits for it.
/// The run is finished (exit code 0) by finish() or when the callback is destroyed, as wandb finishes at
/// process exit; destroyed while an exception unwinds (training failed), it finishes with exit code 1.
/// `WANDB_RESUME` (`allow`, `must`, `never`, `auto`) with `WANDB_RUN_ID` continues that run where it stopped:
/// history, `_step`, runtime, summary and the config it had. Stopping the run from the W&B page stops
/// training at the next log (a stop reason in the state).
///
/// Every request after the run's creation (history, summary, config changes, heartbeats, the end) goes from
/// a background thread in order, so a slow server or an outage never holds up a training step: failed
/// requests are retried (`retry`) for as long as the run lasts, the rows waiting in memory, beyond a few MiB
/// in a file. The end of training waits for them at most `flush_timeout_s`, saying how many are left; rows
/// still unsent then, or after a request the server refuses, are kept in
/// `<output_dir>/.torchfit/unsent/wandb-<run>.jsonl` and the tracker is disabled with one warning saying so.
/// History lines over wandb-core's 10 MiB limit are dropped with a warning, as wandb-core drops them.
/// `WANDB_MODE=disabled` (or HF's `WANDB_DISABLED`) turns the tracker off; `offline` is refused: there is no
/// offline `.wandb` writer (log offline with tensorboard or csv).
class WandbCallback : public TrackerCallback {
 public:
  explicit WandbCallback(WandbOptions options = {}) : options_(std::move(options)) {}

  /// Ends the run if it is still open (exit code 1 when destroyed by a failure) and waits for what is unsent,
  /// as finish() does; a failure is a warning.
  ~WandbCallback() override {
    if (run_open_)
      detail::end_in_destructor(stream_->outbox(),
                                [this] { end_run(std::uncaught_exceptions() > 0 ? 1 : 0); });
  }
  WandbCallback(const WandbCallback&) = delete;
  WandbCallback& operator=(const WandbCallback&) = delete;

  void on_predict(const Args& args, TrainerState& state, TrainerControl&,
                  const CallbackContext& ctx) override {
    if (!opened(args, state, ctx, OpenedAt::predict) || !run_open_ || ctx.metrics == nullptr) return;
    stream_->outbox().rethrow_if_failed();
    json row = json::object();
    for (auto it = ctx.metrics->begin(); it != ctx.metrics->end(); ++it)
      row[integrations::rewrite_log_key(it.key())] = it.value();
    log_row(std::move(row), state.global_step);
    queue_summary(false);
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state)) flush();
  }

  /// Sends everything logged so far and waits until the server has it (at most `flush_timeout_s`); throws the
  /// failure of a background request, or the timeout with the number of unsent rows and where they are kept.
  void flush() {
    if (!run_open_) return;
    queue_summary(true);
    stream_->outbox().flush();
  }

  /// Marks the run finished with `exit_code` after what is pending, and waits as flush() does. Later events
  /// are ignored.
  void finish(int exit_code = 0) {
    if (!run_open_) return;
    end_run(exit_code);
    stream_->outbox().flush();
  }

  /// The run as the server named it (empty before setup).
  const std::string& run_id() const { return run_.run_id; }
  const std::string& entity() const { return run_.entity; }
  const std::string& project() const { return run_.project; }
  /// The next history row's `_step`.
  std::int64_t step() const { return next_step_; }
  /// Where the run is shown: `https://wandb.ai/<entity>/<project>/runs/<id>` for wandb.ai, the same path on
  /// a self-hosted server (empty before setup).
  std::string run_url() const {
    if (!api_) return {};
    std::string app = api_->base_url();
    if (const auto at = app.find("://api."); at != std::string::npos) app.erase(at + 3, 4);
    return fmt::format("{}/{}/{}/runs/{}", app, run_.entity, run_.project, run_.run_id);
  }

 private:
  using Clock = std::chrono::steady_clock;

  void log_entry(const TrainerState& state, TrainerControl& control, const Logs& logs) override {
    if (!run_open_) return;
    stream_->outbox().rethrow_if_failed();
    json row = json::object();
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      if (integrations::is_single_value_scalar(it.key())) {
        summary_[it.key()] = it.value();
        summary_changed_ = true;
      } else {
        row[integrations::rewrite_log_key(it.key())] = it.value();
      }
    }
    if (!row.empty()) log_row(std::move(row), state.global_step);
    queue_summary(false);
    if (stream_->stopped() && !control.should_training_stop)
      control.stop_training("the W&B run was stopped from its page (W&B's Stop button)");
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext& ctx, OpenedAt) override {
    if (!detail::wandb_enabled()) return;
    const std::string base_url =
        options_.base_url.value_or(detail::env_string("WANDB_BASE_URL").value_or("https://api.wandb.ai"));
    api_ = std::make_unique<detail::WandbApi>(base_url, detail::wandb_api_key(options_.api_key, base_url),
                                              options_.retry.request_timeout_s);
    const detail::RetryingCalls wait(options_.retry, options_.flush_timeout_s);
    const std::string project =
        options_.project.value_or(detail::env_string("WANDB_PROJECT").value_or("huggingface"));
    const std::string entity = options_.entity.value_or(detail::env_string("WANDB_ENTITY").value_or(""));
    const auto requested_id = detail::env_string("WANDB_RUN_ID");
    const std::string run_id = requested_id.value_or(detail::random_hex(8));

    // What HF's config.update sends: the arguments and model/num_parameters.
    json config = args.to_json();
    if (const auto count = integrations::model_num_parameters(ctx)) config["model/num_parameters"] = *count;
    json stored_config = json::object();
    std::int64_t history_offset = 0;
    if (const auto resumed = detail::wandb_resume(project, run_id, requested_id.has_value(), [&] {
          return wait([&] { return api_->resume_status(project, entity, run_id); });
        })) {
      history_offset = resumed->history_line_count;
      next_step_ = resumed->next_step;
      runtime_before_s_ = resumed->runtime_s;
      summary_ = resumed->summary;
      summary_.erase("_wandb");
      stored_config = resumed->config;
      for (auto& name : detail::wandb_defined_metrics(stored_config)) metric_keys_.insert(std::move(name));
    }
    stored_config.erase("_wandb");
    stored_config.update(detail::wandb_wrap_config(config));
    stored_config_ = std::move(stored_config);

    json vars = detail::wandb_new_run_variables(run_id, project, entity, args.run_name);
    vars["config"] = detail::wandb_config_text(stored_config_, metric_keys_);
    run_ = wait([&] { return api_->upsert_run(vars); });
    started_ = summary_queued_ = Clock::now();
    run_open_ = true;
    log::info("W&B run {} ({}): {}", run_.run_id, run_.display_name, run_url());

    auto settings = detail::outbox_settings("wandb", args.output_dir, run_.run_id, options_.retry,
                                            options_.flush_timeout_s);
    settings.transmit_interval_s = options_.transmit_interval_s.value_or(
        detail::env_number("WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL").value_or(15));
    transmit_interval_ = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(settings.transmit_interval_s));
    settings.memory_limit_bytes = 3 * detail::wandb_max_request_bytes;  // room for a full request
    // A run that existed without a resume request appends to its history (wandb: the server's line count).
    stream_.emplace(*api_, run_, std::max(history_offset, run_.history_line_count), std::move(settings),
                    options_.heartbeat_interval_s);
  }

  // Queues a history row (rewritten values, train/global_step, wandb's own columns) and the summary it
  // updates, after the config update that defines its new keys (HF's define_metric("*", step_metric=...)).
  void log_row(json row, std::int64_t global_step) {
    row["train/global_step"] = global_step;
    const double runtime = runtime_before_s_ + std::chrono::duration<double>(Clock::now() - started_).count();
    const std::int64_t step = next_step_++;
    row["_step"] = step;
    row["_runtime"] = runtime;
    row["_timestamp"] = static_cast<double>(detail::unix_time_ms()) / 1000.0;
    bool new_keys = false;
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key().front() != '_' && it.key() != "train/global_step")
        new_keys = metric_keys_.insert(it.key()).second || new_keys;
      summary_[it.key()] = it.value();
    }
    summary_["_wandb"] = {{"runtime", static_cast<std::int64_t>(runtime)}};
    if (new_keys) stream_->upsert(detail::wandb_config_update(run_, stored_config_, metric_keys_));
    summary_changed_ = true;
    stream_->history(detail::python_json_dumps(row, -1, false), step);
  }

  // Queues the summary if it changed, at most once per transmit interval unless `now` (it is sent whole).
  void queue_summary(bool now) {
    if (!summary_changed_ || (!now && Clock::now() - summary_queued_ < transmit_interval_)) return;
    stream_->summary(detail::python_json_dumps(summary_, -1, false));
    summary_changed_ = false;
    summary_queued_ = Clock::now();
  }

  // Queues the summary and the end of the run; their requests are waited for by finish() or the stream's
  // destruction.
  void end_run(int exit_code) {
    run_open_ = false;
    queue_summary(true);
    stream_->end(exit_code);
  }

  WandbOptions options_;
  std::unique_ptr<detail::WandbApi> api_;
  detail::WandbRunRef run_;
  bool run_open_ = false;  // created, not finished
  json stored_config_;     // the run's config as stored: a resumed run's, updated with this run's, wrapped
  std::set<std::string> metric_keys_;
  json summary_ = json::object();
  std::int64_t next_step_ = 0;
  double runtime_before_s_ = 0;  // a resumed run's runtime
  bool summary_changed_ = false;
  Clock::time_point summary_queued_;
  Clock::duration transmit_interval_{};
  Clock::time_point started_;
  std::optional<detail::WandbFileStream> stream_;  // last: its thread sends until it is destroyed
};

namespace integrations {
inline const bool wandb_registered = register_integration<WandbCallback>("wandb");
}  // namespace integrations

}  // namespace torchfit

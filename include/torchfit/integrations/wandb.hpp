// SPDX-License-Identifier: MIT
// Weights & Biases tracker: HF's WandbCallback, talking to a W&B server (wandb.ai or self-hosted) over its
// HTTP API as wandb's own client does. Link torchfit::wandb (libcurl).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/strings.hpp"
#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/background_queue.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/detail/wandb_api.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

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
  /// How a failed request is retried.
  RetryPolicy retry{1, 60, 30, 8, 60};
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
/// a background thread in order, so a slow or retried request never holds up a training step. A request
/// that fails for good drops the ones behind it and disables the tracker at its next event with one warning.
/// `WANDB_MODE=disabled` (or HF's `WANDB_DISABLED`) turns the tracker off; `offline` is refused: there is no
/// offline `.wandb` writer (log offline with tensorboard or csv).
class WandbCallback : public TrackerCallback {
 public:
  explicit WandbCallback(WandbOptions options = {}) : options_(std::move(options)) {}

  /// Finishes the run if it is still open (exit code 1 when destroyed by a failure); never throws.
  ~WandbCallback() override {
    if (!run_open_ || queue_.failed()) return;
    try {
      finish(std::uncaught_exceptions() > 0 ? 1 : 0);
    } catch (const std::exception& e) {
      log::warning("WandbCallback could not finish the W&B run {}: {}", run_.run_id, e.what());
    }
  }
  WandbCallback(const WandbCallback&) = delete;
  WandbCallback& operator=(const WandbCallback&) = delete;

  void on_predict(const Args& args, TrainerState& state, TrainerControl&,
                  const CallbackContext& ctx) override {
    if (!opened(args, state, ctx, OpenedAt::predict) || !run_open_ || ctx.metrics == nullptr) return;
    queue_.rethrow_if_failed();
    json row = json::object();
    for (auto it = ctx.metrics->begin(); it != ctx.metrics->end(); ++it)
      row[integrations::rewrite_log_key(it.key())] = it.value();
    log_row(std::move(row), state.global_step);
    send_if_due();
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state) && run_open_) flush();
  }

  /// Sends everything logged so far and waits until the server has it; rethrows the first failure of a
  /// background request.
  void flush() {
    if (!run_open_) return;
    send(false, 0);
    queue_.drain();
  }

  /// Sends what is pending, marks the run finished with `exit_code` and waits for it. Later events are
  /// ignored.
  void finish(int exit_code = 0) {
    if (!run_open_) return;
    run_open_ = false;
    queue_.stop_keep_alive();  // no heartbeats for a finished run
    send(true, exit_code);
    queue_.drain();
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
    queue_.rethrow_if_failed();
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
    send_if_due();
    if (stop_requested_ && !control.should_training_stop)
      control.stop_training("the W&B run was stopped from its page (W&B's Stop button)");
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext& ctx, OpenedAt) override {
    const std::string mode = detail::lower(detail::env_string("WANDB_MODE").value_or("online"));
    if (mode == "disabled" || detail::env_true("WANDB_DISABLED")) return;
    if (mode == "offline" || mode == "dryrun")
      throw ArgumentError(fmt::format(
          "WANDB_MODE={}: offline W&B runs are not supported (torchfit talks to the W&B server directly); "
          "log offline with --report_to tensorboard or csv, or unset WANDB_MODE",
          mode));
    if (mode != "online" && mode != "run" && mode != "shared")
      throw ArgumentError(fmt::format("WANDB_MODE must be online, offline or disabled (got \"{}\")", mode));
    for (const char* feature : {"WANDB_LOG_MODEL", "WANDB_WATCH"}) {
      const auto value = detail::lower(detail::env_string(feature).value_or("false"));
      if (value != "false" && value != "0" && value != "no" && value != "off")
        log::warning(
            "WandbCallback: {}={} is not supported (no model artifacts or gradient histograms); "
            "ignoring it",
            feature, value);
    }

    const std::string base_url =
        options_.base_url.value_or(detail::env_string("WANDB_BASE_URL").value_or("https://api.wandb.ai"));
    api_ = std::make_unique<detail::WandbApi>(base_url, api_key(base_url), options_.retry);
    transmit_interval_ = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options_.transmit_interval_s.value_or(
            detail::env_number("WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL").value_or(15))));

    const std::string project =
        options_.project.value_or(detail::env_string("WANDB_PROJECT").value_or("huggingface"));
    const std::string entity = options_.entity.value_or(detail::env_string("WANDB_ENTITY").value_or(""));
    const auto requested_id = detail::env_string("WANDB_RUN_ID");
    const std::string run_id = requested_id.value_or(detail::random_hex(8));

    // What HF's config.update sends: the arguments and model/num_parameters.
    json config = args.to_json();
    if (const auto count = integrations::model_num_parameters(ctx)) config["model/num_parameters"] = *count;
    json stored_config = json::object();
    if (const auto resumed = resume_status(project, entity, run_id, requested_id.has_value())) {
      history_offset_ = resumed->history_line_count;
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

    json vars = detail::wandb_upsert_variables();
    vars["name"] = run_id;
    vars["project"] = project;
    if (!entity.empty()) vars["entity"] = entity;
    if (const auto name = detail::env_string("WANDB_NAME"))
      vars["displayName"] = *name;
    else if (args.run_name)
      vars["displayName"] = *args.run_name;
    if (const auto group = detail::env_string("WANDB_RUN_GROUP")) vars["groupName"] = *group;
    if (const auto notes = detail::env_string("WANDB_NOTES")) vars["notes"] = *notes;
    if (const auto job_type = detail::env_string("WANDB_JOB_TYPE")) vars["jobType"] = *job_type;
    if (const auto tags = detail::env_string("WANDB_TAGS")) vars["tags"] = detail::wandb_split_tags(*tags);
    vars["host"] = detail::host_name();
    vars["program"] = detail::program_path();
    vars["config"] = config_text();
    run_ = api_->upsert_run(vars);
    // A run that existed without a resume request appends to its history (wandb: the server's line count).
    history_offset_ = std::max(history_offset_, run_.history_line_count);
    started_ = Clock::now();
    last_sent_ = started_;
    run_open_ = true;
    log::info("W&B run {} ({}): {}", run_.run_id, run_.display_name, run_url());
    queue_.set_keep_alive(
        std::chrono::duration<double>(options_.heartbeat_interval_s),
        [api = api_.get(), run = run_] { api->file_stream(run, "{}"); }, detail::KeepAlive::when_idle);
  }

  std::string api_key(const std::string& base_url) const {
    if (options_.api_key) return *options_.api_key;
    if (const auto key = detail::env_string("WANDB_API_KEY")) return *key;
    const auto netrc = detail::env_string("NETRC").value_or(detail::expand_user("~/.netrc"));
    const std::string host = detail::url_authority(base_url);
    if (const auto key = detail::netrc_password(netrc, host)) return *key;
    throw ArgumentError(fmt::format(
        "no W&B API key for {}: set WANDB_API_KEY, or log in with `wandb login` (which stores it in {})",
        base_url, netrc));
  }

  // What WANDB_RESUME asks to continue from; nothing for a new run.
  std::optional<detail::WandbResumeStatus> resume_status(const std::string& project,
                                                         const std::string& entity, const std::string& run_id,
                                                         bool id_given) const {
    const auto requested = detail::env_string("WANDB_RESUME");
    if (!requested) return std::nullopt;
    std::string resume = detail::lower(*requested);
    if (resume == "true" || resume == "1") resume = "auto";
    if (resume == "false" || resume == "0") return std::nullopt;
    if (resume != "allow" && resume != "must" && resume != "never" && resume != "auto")
      throw ArgumentError(
          fmt::format("WANDB_RESUME must be allow, must, never or auto (got \"{}\")", resume));
    if (!id_given) {
      if (resume == "must")
        throw ArgumentError("WANDB_RESUME=must needs WANDB_RUN_ID: the id of the run to resume");
      return std::nullopt;
    }
    auto status = api_->resume_status(project, entity, run_id);
    if (resume == "must" && !status)
      throw ArgumentError(
          fmt::format("WANDB_RESUME=must, but project \"{}\" has no run \"{}\" to resume (WANDB_RUN_ID)",
                      project, run_id));
    if (resume == "never" && status)
      throw ArgumentError(fmt::format(
          "WANDB_RESUME=never, but project \"{}\" already has a run \"{}\" (WANDB_RUN_ID): choose another id",
          project, run_id));
    return status;
  }

  std::string config_text() const {
    json config = stored_config_;
    std::vector<std::string> keys(metric_keys_.begin(), metric_keys_.end());
    config["_wandb"] = {{"value", {{"t", json::object()}, {"m", detail::wandb_metric_definitions(keys)}}}};
    return detail::python_json_dumps(config, -1, false);
  }

  // Appends a history row: rewritten values, train/global_step, and wandb's own columns.
  void log_row(json row, std::int64_t global_step) {
    row["train/global_step"] = global_step;
    const double runtime = runtime_before_s_ + std::chrono::duration<double>(Clock::now() - started_).count();
    row["_step"] = next_step_++;
    row["_runtime"] = runtime;
    row["_timestamp"] = static_cast<double>(detail::unix_time_ms()) / 1000.0;
    bool new_keys = false;
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key().front() != '_' && it.key() != "train/global_step")
        new_keys = metric_keys_.insert(it.key()).second || new_keys;
      summary_[it.key()] = it.value();
    }
    summary_["_wandb"] = {{"runtime", static_cast<std::int64_t>(runtime)}};
    summary_changed_ = true;
    pending_rows_.push_back(detail::python_json_dumps(row, -1, false));
    // HF's define_metric("*", step_metric=...) expanded here: each new key gets its definition.
    if (new_keys) {
      json vars = detail::wandb_upsert_variables();
      vars["name"] = run_.run_id;
      vars["project"] = run_.project;
      vars["entity"] = run_.entity;
      vars["config"] = config_text();
      queue_.submit([api = api_.get(), vars = std::move(vars)] { api->upsert_run(vars); });
    }
  }

  void send_if_due() {
    if (Clock::now() - last_sent_ >= transmit_interval_) send(false, 0);
  }

  // Queues one file_stream request with the pending rows and the summary (and the end of the run).
  void send(bool complete, int exit_code) {
    json body = json::object();
    if (!pending_rows_.empty()) {
      body["files"]["wandb-history.jsonl"] = {{"offset", history_offset_}, {"content", pending_rows_}};
      history_offset_ += static_cast<std::int64_t>(pending_rows_.size());
      pending_rows_.clear();
    }
    if (summary_changed_) {
      body["files"]["wandb-summary.json"] = {
          {"offset", 0}, {"content", json::array({detail::python_json_dumps(summary_, -1, false)})}};
      summary_changed_ = false;
    }
    if (complete) {
      body["complete"] = true;
      body["exitcode"] = exit_code;
    }
    last_sent_ = Clock::now();
    if (body.empty()) return;
    queue_.submit([stopped = &stop_requested_, api = api_.get(), run = run_,
                   text = detail::python_json_dumps(body, -1, false)] {
      const json answer = api->file_stream(run, text);
      if (const auto it = answer.find("stopped"); it != answer.end() && *it == true) *stopped = true;
    });
  }

  WandbOptions options_;
  std::unique_ptr<detail::WandbApi> api_;
  detail::WandbRunRef run_;
  bool run_open_ = false;
  json stored_config_;  // the run's config as stored: a resumed run's, updated with this run's, wrapped
  std::set<std::string> metric_keys_;
  json summary_ = json::object();
  bool summary_changed_ = false;
  std::vector<std::string> pending_rows_;
  std::int64_t history_offset_ = 0;  // the line index of the first pending row
  std::int64_t next_step_ = 0;
  double runtime_before_s_ = 0;  // a resumed run's runtime
  Clock::time_point started_;
  Clock::time_point last_sent_;
  Clock::duration transmit_interval_{};
  std::atomic<bool> stop_requested_{false};  // set by the background thread
  detail::BackgroundQueue queue_;            // last: destroyed (drained) before what its jobs use
};

namespace integrations {
inline const bool wandb_registered = register_integration<WandbCallback>("wandb");
}  // namespace integrations

}  // namespace torchfit

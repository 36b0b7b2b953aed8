// SPDX-License-Identifier: MIT
// Comet tracker: HF's CometCallback, logging an experiment to Comet (comet.com or a self-hosted server)
// through Comet's public REST API. Link torchfit::comet (libcurl).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/background_queue.hpp"
#include "torchfit/integrations/detail/comet_api.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Where and how CometCallback talks to Comet. Unset members come from Comet's environment variables, then
/// from its configuration file (`$COMET_CONFIG`, else `~/.comet.config`, section `[comet]`).
struct CometOptions {
  /// The server, as Comet's clients name it (`https://www.comet.com/clientlib/`; only scheme and host count).
  /// Unset: COMET_URL_OVERRIDE, else `url_override` in the file, else https://www.comet.com.
  std::optional<std::string> url;
  /// Unset: COMET_API_KEY, else `api_key` in the file.
  std::optional<std::string> api_key;
  /// Unset: COMET_WORKSPACE, else `workspace` in the file, else the key's only workspace.
  std::optional<std::string> workspace;
  /// Unset: COMET_PROJECT_NAME, else `project_name` in the file, else "huggingface".
  std::optional<std::string> project;
  /// How a failed request is retried.
  RetryPolicy retry{2, 60, 10, 3, 60};
};

/// Logs the run to Comet like HF's CometCallback:
/// - on_train_begin (or the first on_log): creates an experiment named `args.run_name` in the workspace and
///   project above (or continues `COMET_EXPERIMENT_KEY`), logs every training argument as the parameter
///   `args/<name>`, the model's structure as its graph, and the other `Created from` = `torchfit`.
/// - on_log: every number (booleans as 1/0, NaN and infinities as text) as a metric at `state.global_step`,
///   keys rewritten as HF does (`loss` -> `train/loss`, `eval_loss` -> `eval/loss`), with the epoch; other
///   values are dropped with a warning, once per key.
/// - on_predict: the metrics, rewritten, the same way.
/// - on_train_end: waits until every call has reached the server.
/// The experiment ends (its end time is recorded and its heartbeat stops) at finish() or when the callback is
/// destroyed, as Comet's client ends it at process exit.
///
/// Every call after the experiment's creation goes from a background thread, in order, so a slow or retried
/// request never holds up a training step; the heartbeat Comet asks for (`write/experiment/set-status`) goes
/// at the interval the server gives. A call that fails for good drops the calls behind it and disables the
/// tracker at its next event with one warning. `COMET_MODE=disabled` turns the tracker off; `offline` is
/// refused (no offline archive writer).
class CometCallback : public TrackerCallback {
 public:
  explicit CometCallback(CometOptions options = {}) : options_(std::move(options)) {}

  /// Ends the experiment if it is still open; never throws.
  ~CometCallback() override {
    if (!open_ || queue_.failed()) return;
    try {
      finish();
    } catch (const std::exception& e) {
      log::warning("CometCallback could not end the Comet experiment {}: {}", experiment_key_, e.what());
    }
  }
  CometCallback(const CometCallback&) = delete;
  CometCallback& operator=(const CometCallback&) = delete;

  void on_predict(const Args& args, TrainerState& state, TrainerControl&,
                  const CallbackContext& ctx) override {
    if (opened(args, state, ctx, OpenedAt::predict) && open_ && ctx.metrics != nullptr)
      log_metrics(*ctx.metrics, state);
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state) && open_) flush();
  }

  /// Waits until every call made so far has reached Comet; rethrows the first failure of a background call.
  void flush() { queue_.drain(); }

  /// Records the end time, stops the heartbeat and waits for the pending calls. Later events are ignored.
  void finish() {
    if (!open_) return;
    open_ = false;
    queue_.stop_keep_alive();
    call("set-start-end-time", {{"endTimeMillis", detail::unix_time_ms()}});
    queue_.drain();
  }

  /// The experiment's key and page (empty before setup).
  const std::string& experiment_key() const { return experiment_key_; }
  const std::string& link() const { return link_; }

 private:
  // A setting: the option, else the environment variable, else the configuration file's key.
  std::optional<std::string> setting(const std::optional<std::string>& option, const char* variable,
                                     const char* file_key) const {
    if (option) return option;
    if (auto value = detail::env_string(variable)) return value;
    const std::string file =
        detail::env_string("COMET_CONFIG").value_or(detail::expand_user("~/.comet.config"));
    return detail::ini_value(file, "comet", file_key);
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    if (open_) log_metrics(logs, state);
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext& ctx, OpenedAt) override {
    const std::string mode = detail::lower(detail::env_string("COMET_MODE").value_or("online"));
    if (mode == "disabled") return;
    if (mode == "offline")
      throw ArgumentError(
          "COMET_MODE=offline: offline Comet experiments are not supported (torchfit talks to the Comet "
          "server directly); log offline with --report_to tensorboard or csv, or unset COMET_MODE");
    if (mode != "online" && mode != "get" && mode != "get_or_create" && mode != "create")
      throw ArgumentError(fmt::format(
          "COMET_MODE must be online, offline, disabled, get, get_or_create or create (got \"{}\")", mode));
    if (detail::env_true("COMET_LOG_ASSETS"))
      log::warning("CometCallback: COMET_LOG_ASSETS is not supported (the output folder is not uploaded)");

    const auto key = setting(options_.api_key, "COMET_API_KEY", "api_key");
    if (!key)
      throw ArgumentError(
          "no Comet API key: set COMET_API_KEY, or api_key in the [comet] section of ~/.comet.config");
    const std::string root = detail::url_root(
        setting(options_.url, "COMET_URL_OVERRIDE", "url_override").value_or("https://www.comet.com"));
    api_ = std::make_unique<detail::CometApi>(root, *key, options_.retry);

    const auto existing = detail::env_string("COMET_EXPERIMENT_KEY");
    if (existing && mode != "create") {
      experiment_key_ = *existing;
    } else {
      if (mode == "get")
        throw ArgumentError(
            "COMET_MODE=get needs COMET_EXPERIMENT_KEY: the key of the experiment to continue");
      const std::string project =
          setting(options_.project, "COMET_PROJECT_NAME", "project_name").value_or("huggingface");
      std::tie(experiment_key_, link_) = api_->create_experiment(workspace(), project, args.run_name);
      log::info("Comet experiment {}: {}", experiment_key_, link_);
    }
    // Comet names the heartbeat interval in its answer to the first one.
    const double beat_s = std::max(1e-3, api_->keep_alive(experiment_key_).value_or(10.0));
    queue_.set_keep_alive(
        std::chrono::duration<double>(beat_s),
        [api = api_.get(), key = experiment_key_] { api->keep_alive(key); }, detail::KeepAlive::periodic);
    open_ = true;

    call("set-start-end-time", {{"startTimeMillis", detail::unix_time_ms()}});
    call("log-other", {{"key", "Created from"}, {"value", "torchfit"}});
    if (ctx.model) {
      std::ostringstream graph;
      graph << *ctx.model;
      call("graph", {{"graph", graph.str()}});
    }
    const json params = args.to_json();
    for (auto it = params.begin(); it != params.end(); ++it)
      call("parameter",
           {{"parameterName", "args/" + it.key()}, {"parameterValue", detail::python_str(it.value())}});
  }

  // The workspace setting, else the key's only workspace.
  std::string workspace() const {
    if (auto name = setting(options_.workspace, "COMET_WORKSPACE", "workspace")) return *name;
    const auto names = api_->workspaces();
    if (names.size() == 1) return names[0];
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ArgumentError(
        fmt::format("COMET_WORKSPACE is not set and the API key has {} workspaces{}{}: set it",
                    names.empty() ? "no" : std::to_string(names.size()), names.empty() ? "" : ": ", list));
  }

  void log_metrics(const Logs& logs, const TrainerState& state) {
    queue_.rethrow_if_failed();
    const auto now = detail::unix_time_ms();
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      const json& v = it.value();
      if (!v.is_number() && !v.is_boolean()) {
        if (warned_keys_.insert(it.key()).second)
          log::warning("CometCallback: dropping \"{}\" = {}: Comet metrics are numbers", it.key(),
                       detail::python_repr(v));
        continue;
      }
      call("metric", {{"metricName", integrations::rewrite_log_key(it.key())},
                      {"metricValue", metric_value(v)},
                      {"step", state.global_step},
                      {"epoch", static_cast<std::int64_t>(state.epoch.value_or(0.0))},
                      {"timestamp", now}});
    }
  }

  // A number as Comet takes it: booleans as 1/0, NaN and infinities as the text Comet's Java client sends for
  // them (JSON has no such numbers).
  static json metric_value(const json& v) {
    if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
    if (v.is_number_float() && !std::isfinite(v.get<double>()))
      return detail::python_json_float(v.get<double>());
    return v;
  }

  // Queues a write to the experiment (the queue sends the heartbeats between writes when they are due).
  void call(const char* endpoint, json body) {
    queue_.submit([api = api_.get(), key = experiment_key_, endpoint = std::string(endpoint),
                   body = std::move(body)] { api->write(endpoint, key, body); });
  }

  CometOptions options_;
  std::unique_ptr<detail::CometApi> api_;
  std::string experiment_key_;
  std::string link_;
  bool open_ = false;
  std::set<std::string> warned_keys_;
  detail::BackgroundQueue queue_;  // last: destroyed (drained) before what its jobs use
};

namespace integrations {
inline const bool comet_registered = register_integration<CometCallback>("comet_ml");
}  // namespace integrations

}  // namespace torchfit

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

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/comet_api.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how CometCallback talks to Comet. Unset members come from Comet's environment variables, then
/// from its configuration file (`$COMET_CONFIG`, else `~/.comet.config`, section `[comet]`).
struct CometOptions {
  /// The server, as Comet's clients name it (`https://www.comet.com/clientlib/`: the batch endpoints are
  /// under it, the REST API under its scheme and host). Unset: COMET_URL_OVERRIDE, else `url_override` in the
  /// file, else https://www.comet.com.
  std::optional<std::string> url;
  /// Unset: COMET_API_KEY, else `api_key` in the file.
  std::optional<std::string> api_key;
  /// Unset: COMET_WORKSPACE, else `workspace` in the file, else the key's only workspace.
  std::optional<std::string> workspace;
  /// Unset: COMET_PROJECT_NAME, else `project_name` in the file, else "huggingface".
  std::optional<std::string> project;
  /// The model's configuration (a JSON object: sizes, layer counts, ...), logged as the parameters
  /// `config/<name>` as HF logs `model.config` (nested objects flattened with `/`). libtorch modules carry no
  /// configuration, so there is none unless it is given here.
  std::optional<json> model_config;
  /// How a failed request is retried: Comet's client's back-off (2 s doubling), up to 120 s, 10 s per
  /// attempt, for as long as the run lasts.
  RetryPolicy retry{2, 120, 10};
  /// How long on_train_end and the end of the experiment wait for unsent calls, in seconds. Unset:
  /// TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to Comet like HF's CometCallback:
/// - on_train_begin (or the first on_log): creates an experiment named `args.run_name` in the workspace and
///   project above (or continues `COMET_EXPERIMENT_KEY`), logs every training argument as the parameter
///   `args/<name>` and the model configuration given in the options as `config/<name>`, in one batch request
///   (source `manual`, as HF logs them), the model's structure as its graph, and the other `Created from` =
///   `torchfit`.
/// - on_log: every number (booleans as 1/0, NaN and infinities as text) as a metric at `state.global_step`,
///   keys rewritten as HF does (`loss` -> `train/loss`, `eval_loss` -> `eval/loss`), with the epoch, the
///   whole entry in one batch request as Comet's client sends metrics; other values are dropped with a
///   warning, once per key.
/// - on_predict: the metrics, rewritten, the same way.
/// - on_train_end: waits until every call has reached the server.
/// The experiment ends (its end time is recorded and its heartbeat stops) at finish() or when the callback is
/// destroyed, as Comet's client ends it at process exit.
///
/// Every call after the experiment's creation goes from a background thread, in order, so a slow server or an
/// outage never holds up a training step: failed calls are retried (`retry`) for as long as the run lasts,
/// the calls waiting in memory, beyond a few MiB in a file; the heartbeat Comet asks for
/// (`write/experiment/set-status`) goes at the interval the server gives. The end of training waits for the
/// calls at most `flush_timeout_s`, saying how many are left; calls still unsent then, or after a call the
/// server refuses, are kept in `<output_dir>/.torchfit/unsent/comet_ml-<experiment key>.jsonl` and the
/// tracker is disabled with one warning saying so. `COMET_MODE=disabled` turns the tracker off; `offline` is
/// refused (no offline archive writer).
class CometCallback : public TrackerCallback {
 public:
  explicit CometCallback(CometOptions options = {}) : options_(std::move(options)) {}

  /// Ends the experiment if it is still open, and waits for the calls as finish() does; a failure is a
  /// warning.
  ~CometCallback() override {
    if (open_) detail::end_in_destructor(*outbox_, [this] { end_experiment(); });
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

  /// Waits until every call made so far has reached Comet (at most `flush_timeout_s`); throws the failure of
  /// a background call, or the timeout with the number of unsent calls and where they are kept.
  void flush() {
    if (open_) outbox_->flush();
  }

  /// Records the end time and stops the heartbeat after the pending calls, and waits as flush() does. Later
  /// events are ignored.
  void finish() {
    if (!open_) return;
    end_experiment();
    outbox_->flush();
  }

  /// The experiment's key and page (empty before setup).
  const std::string& experiment_key() const { return experiment_key_; }
  const std::string& link() const { return link_; }

 private:
  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    if (open_) log_metrics(logs, state);
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext& ctx, OpenedAt) override {
    const std::string mode = detail::comet_mode();
    if (mode == "disabled") return;
    const auto key = detail::comet_setting(options_.api_key, "COMET_API_KEY", "api_key");
    if (!key)
      throw ArgumentError(
          "no Comet API key: set COMET_API_KEY, or api_key in the [comet] section of ~/.comet.config");
    const std::string url = detail::comet_setting(options_.url, "COMET_URL_OVERRIDE", "url_override")
                                .value_or("https://www.comet.com/clientlib/");
    api_ = std::make_unique<detail::CometApi>(url, *key, options_.retry.request_timeout_s);
    const detail::RetryingCalls wait(options_.retry, options_.flush_timeout_s);

    const auto existing = detail::env_string("COMET_EXPERIMENT_KEY");
    if (existing && mode != "create") {
      experiment_key_ = *existing;
    } else {
      if (mode == "get")
        throw ArgumentError(
            "COMET_MODE=get needs COMET_EXPERIMENT_KEY: the key of the experiment to continue");
      const std::string project =
          detail::comet_setting(options_.project, "COMET_PROJECT_NAME", "project_name")
              .value_or("huggingface");
      const std::string workspace = wait([&] { return this->workspace(); });
      std::tie(experiment_key_, link_) =
          wait([&] { return api_->create_experiment(workspace, project, args.run_name); });
      log::info("Comet experiment {}: {}", experiment_key_, link_);
    }
    // Comet names the heartbeat interval in its answer to the first one.
    const double beat_s =
        std::max(1e-3, wait([&] { return api_->keep_alive(experiment_key_); }).value_or(10.0));
    outbox_.emplace(detail::outbox_settings("comet_ml", args.output_dir, experiment_key_, options_.retry,
                                            options_.flush_timeout_s),
                    detail::call_sender([this](const std::string& call, const json& body) {
                      api_->write(call, experiment_key_, body);
                    }),
                    api_->http());
    outbox_->set_keep_alive(
        std::chrono::duration<double>(beat_s), [this] { api_->keep_alive(experiment_key_); },
        detail::KeepAlive::periodic);
    open_ = true;

    call("set-start-end-time", {{"startTimeMillis", detail::unix_time_ms()}});
    call("log-other", {{"key", "Created from"}, {"value", "torchfit"}});
    if (ctx.model) {
      std::ostringstream graph;
      graph << *ctx.model;
      call("graph", {{"graph", graph.str()}});
    }
    json params = json::object();
    const json arguments = args.to_json();
    for (auto it = arguments.begin(); it != arguments.end(); ++it) params["args/" + it.key()] = it.value();
    if (options_.model_config) {
      if (!options_.model_config->is_object())
        throw ArgumentError(fmt::format("CometOptions::model_config must be a JSON object (got {})",
                                        options_.model_config->dump().substr(0, 100)));
      detail::flatten_json(*options_.model_config, "config", "/", params);
    }
    const auto now = detail::unix_time_ms();
    json values = json::array();
    for (auto it = params.begin(); it != params.end(); ++it)
      values.push_back({{"parameterName", it.key()},
                        {"parameterValue", detail::python_str(it.value())},
                        {"step", nullptr},
                        {"source", "manual"},
                        {"context", nullptr},
                        {"timestamp", now}});
    call_batches("parameter batch", values);
  }

  // The workspace setting, else the key's only workspace.
  std::string workspace() const {
    if (auto name = detail::comet_setting(options_.workspace, "COMET_WORKSPACE", "workspace")) return *name;
    const auto names = api_->workspaces();
    if (names.size() == 1) return names[0];
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ArgumentError(
        fmt::format("COMET_WORKSPACE is not set and the API key has {} workspaces{}{}: set it",
                    names.empty() ? "no" : std::to_string(names.size()), names.empty() ? "" : ": ", list));
  }

  void log_metrics(const Logs& logs, const TrainerState& state) {
    outbox_->rethrow_if_failed();
    const auto now = detail::unix_time_ms();
    json values = json::array();
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      const json& v = it.value();
      if (!v.is_number() && !v.is_boolean()) {
        if (warned_keys_.insert(it.key()).second)
          log::warning("CometCallback: dropping \"{}\" = {}: Comet metrics are numbers", it.key(),
                       detail::python_repr(v));
        continue;
      }
      values.push_back({{"metricName", integrations::rewrite_log_key(it.key())},
                        {"metricValue", metric_value(v)},
                        {"step", state.global_step},
                        {"epoch", static_cast<std::int64_t>(state.epoch.value_or(0.0))},
                        {"context", nullptr},
                        {"timestamp", now}});
    }
    call_batches("metric batch", values);
  }

  // A number as Comet takes it: booleans as 1/0, NaN and infinities as the text Comet's Java client sends for
  // them (JSON has no such numbers).
  static json metric_value(const json& v) {
    if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
    if (v.is_number_float() && !std::isfinite(v.get<double>()))
      return detail::python_json_float(v.get<double>());
    return v;
  }

  // Queues a write to the experiment (the outbox sends the heartbeats between writes when they are due).
  void call(const char* endpoint, const json& body) { outbox_->push(detail::call_row(endpoint, body)); }

  // Queues `values` as batch requests of at most comet_max_batch_values each.
  void call_batches(const char* endpoint, const json& values) {
    for (std::size_t i = 0; i < values.size(); i += detail::comet_max_batch_values) {
      const auto first = values.begin() + static_cast<std::ptrdiff_t>(i);
      const auto count = std::min(detail::comet_max_batch_values, values.size() - i);
      call(endpoint, {{"values", json(first, first + static_cast<std::ptrdiff_t>(count))}});
    }
  }

  // Queues the end time after the pending calls, with no heartbeat after it.
  void end_experiment() {
    open_ = false;
    outbox_->stop_keep_alive();
    call("set-start-end-time", {{"endTimeMillis", detail::unix_time_ms()}});
  }

  CometOptions options_;
  std::unique_ptr<detail::CometApi> api_;
  std::string experiment_key_;
  std::string link_;
  bool open_ = false;
  std::set<std::string> warned_keys_;
  std::optional<detail::Outbox> outbox_;  // last: its thread sends until it is destroyed
};

namespace integrations {
inline const bool comet_registered = register_integration<CometCallback>("comet_ml");
}  // namespace integrations

}  // namespace torchfit

// SPDX-License-Identifier: MIT
// ClearML tracker: HF's ClearMLCallback, logging a training task to a ClearML server (app.clear.ml or a
// self-hosted one) through its API, as ClearML's own client does. Link torchfit::clearml (libcurl).
#pragma once

#include <chrono>
#include <cmath>
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
#include "torchfit/integrations/detail/clearml_api.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Where and how ClearMLCallback talks to ClearML. Unset members come from ClearML's environment variables,
/// then from its configuration file (`$CLEARML_CONFIG_FILE`, else `~/clearml.conf`).
struct ClearMLOptions {
  /// The API server. Unset: CLEARML_API_HOST, else `api.api_server`, else https://api.clear.ml.
  std::optional<std::string> api_host;
  /// The web app, for the task's link. Unset: CLEARML_WEB_HOST, else `api.web_server`, else derived from the
  /// API server as ClearML does (`api.` -> `app.`, port 8008 -> 8080).
  std::optional<std::string> web_host;
  /// Unset: CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY, else `api.credentials.access_key` /
  /// `secret_key`.
  std::optional<std::string> access_key;
  std::optional<std::string> secret_key;
  /// Unset: CLEARML_PROJECT, else "HuggingFace Transformers" (HF's defaults).
  std::optional<std::string> project;
  /// Unset: CLEARML_TASK, else "Trainer".
  std::optional<std::string> task_name;
  /// Seconds between two `tasks.ping` keep-alives (ClearML's client: 30).
  double ping_interval_s = 30;
  /// How a failed request is retried.
  RetryPolicy retry{1, 60, 30, 8, 60};
};

/// Logs the run as a ClearML task like HF's ClearMLCallback:
/// - on_train_begin (or the first on_log): logs in, finds or creates the project `CLEARML_PROJECT` (default
///   "HuggingFace Transformers"), creates the training task `CLEARML_TASK` (default "Trainer") and starts it
///   (Running in the web app); the training arguments become the hyperparameter section `Transformers`, with
///   HF's `_ignore_hparams_ui_overrides_`.
/// - on_log: each number (booleans as 1/0) is a scalar at iteration `state.global_step`: `eval_x` is series
///   `x` of plot `eval`, `test_x` of `test`, anything else of `train`; the end-of-training values
///   (`train_runtime`, ..., `total_flos`) and `epoch` go to the single-values table (HF's
///   report_single_value). Other values, and NaN or infinities (which ClearML cannot store), are dropped with
///   a warning, once per key.
/// - on_train_end: waits until every call has reached the server.
/// The task is completed at finish() or when the callback is destroyed; destroyed while an exception
/// unwinds (training failed), it is marked failed.
///
/// Every call after the task's creation goes from a background thread, in order, so a slow or retried
/// request never holds up a training step; `tasks.ping` keeps the task alive every `ping_interval_s`. A call
/// that fails for good drops the calls behind it and disables the tracker at its next event with one warning.
/// `CLEARML_OFFLINE_MODE` is refused (no offline session writer).
class ClearMLCallback : public TrackerCallback {
 public:
  explicit ClearMLCallback(ClearMLOptions options = {}) : options_(std::move(options)) {}

  /// Ends the task if it is still open (failed when destroyed by a failure); never throws.
  ~ClearMLCallback() override {
    if (!open_ || queue_.failed()) return;
    try {
      if (std::uncaught_exceptions() > 0)
        end("tasks.failed", {{"status_reason", "training failed: the program ended with an exception"}});
      else
        finish();
    } catch (const std::exception& e) {
      log::warning("ClearMLCallback could not end the ClearML task {}: {}", task_id_, e.what());
    }
  }
  ClearMLCallback(const ClearMLCallback&) = delete;
  ClearMLCallback& operator=(const ClearMLCallback&) = delete;

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state) && open_) flush();
  }

  /// Waits until every call made so far has reached ClearML; rethrows the first failure of a background call.
  void flush() { queue_.drain(); }

  /// Marks the task completed, stops the keep-alive and waits for the pending calls. Later events are
  /// ignored.
  void finish() { end("tasks.completed", {{"status_reason", "completed"}, {"publish", false}}); }

  /// The task and its project (empty before setup), and the task's page in the web app.
  const std::string& task_id() const { return task_id_; }
  const std::string& project_id() const { return project_id_; }
  std::string link() const {
    if (task_id_.empty()) return {};
    // The web app names tasks "tasks" from API 2.31 on, "experiments" before.
    const std::string& v = api_->server_api_version();
    const auto dot = v.find('.');
    const bool tasks_route =
        dot != std::string::npos &&
        std::make_pair(std::atoi(v.c_str()), std::atoi(v.c_str() + dot + 1)) >= std::make_pair(2, 31);
    return fmt::format("{}/projects/{}/{}/{}/output/log", web_host_, project_id_,
                       tasks_route ? "tasks" : "experiments", task_id_);
  }

 private:
  static constexpr std::int64_t single_value_iteration = -2147483648LL;  // ClearML's single-values table

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    if (!open_) return;
    queue_.rethrow_if_failed();
    const auto now = detail::unix_time_ms();
    std::vector<json> events;
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      const std::string& key = it.key();
      const json& v = it.value();
      const bool finite_number = v.is_boolean() || (v.is_number() && std::isfinite(v.get<double>()));
      if (!finite_number) {
        if (warned_keys_.insert(key).second)
          log::warning("ClearMLCallback: dropping \"{}\" = {}: ClearML scalars are finite numbers", key,
                       detail::python_repr(v));
        continue;
      }
      json event = {{"task", task_id_}, {"type", "training_stats_scalar"}, {"timestamp", now}};
      if (integrations::is_single_value_scalar(key) || key == "epoch") {
        event["iter"] = single_value_iteration;
        event["metric"] = "Summary";
        event["variant"] = key;
      } else {  // HF's split: `eval_loss` is series loss of plot eval, as rewrite_log_key names it eval/loss
        const std::string name = integrations::rewrite_log_key(key);
        const auto slash = name.find('/');
        event["iter"] = state.global_step;
        event["metric"] = name.substr(0, slash);
        event["variant"] = name.substr(slash + 1);
      }
      event["value"] = v.is_boolean() ? json(v.get<bool>() ? 1 : 0) : v;
      event["model_event"] = false;
      events.push_back(std::move(event));
    }
    if (!events.empty())
      queue_.submit([api = api_.get(), events = std::move(events)] { api->add_events(events); });
  }

  // A setting: the option, else the environment variable, else the configuration file's key.
  std::optional<std::string> setting(const std::optional<std::string>& option, const char* variable,
                                     const char* file_key) const {
    if (option) return option;
    if (auto value = detail::env_string(variable)) return value;
    const std::string file =
        detail::env_string("CLEARML_CONFIG_FILE").value_or(detail::expand_user("~/clearml.conf"));
    return detail::hocon_value(file, file_key);
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext&, OpenedAt) override {
    if (detail::env_true("CLEARML_OFFLINE_MODE"))
      throw ArgumentError(
          "CLEARML_OFFLINE_MODE: offline ClearML sessions are not supported (torchfit talks to the ClearML "
          "server directly); log offline with --report_to tensorboard or csv, or unset CLEARML_OFFLINE_MODE");
    if (detail::env_true("CLEARML_LOG_MODEL"))
      log::warning("ClearMLCallback: CLEARML_LOG_MODEL is not supported (checkpoints are not uploaded)");
    const auto access_key =
        setting(options_.access_key, "CLEARML_API_ACCESS_KEY", "api.credentials.access_key");
    const auto secret_key =
        setting(options_.secret_key, "CLEARML_API_SECRET_KEY", "api.credentials.secret_key");
    if (!access_key || !secret_key)
      throw ArgumentError(
          "no ClearML credentials: set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, or "
          "api.credentials in ~/clearml.conf (`clearml-init` writes it)");
    const std::string host =
        setting(options_.api_host, "CLEARML_API_HOST", "api.api_server").value_or("https://api.clear.ml");
    web_host_ = setting(options_.web_host, "CLEARML_WEB_HOST", "api.web_server")
                    .value_or(detail::clearml_web_host(host));
    while (!web_host_.empty() && web_host_.back() == '/') web_host_.pop_back();
    api_ = std::make_unique<detail::ClearMLApi>(host, *access_key, *secret_key, options_.retry);

    const std::string project =
        options_.project.value_or(detail::env_string("CLEARML_PROJECT").value_or("HuggingFace Transformers"));
    const json found = api_->call(
        "projects.get_all",
        {{"name", detail::clearml_name_pattern(project)}, {"only_fields", {"id"}}, {"search_hidden", true}});
    const json projects = found.value("projects", json::array());
    project_id_ = !projects.empty() && projects[0].contains("id")
                      ? projects[0]["id"].get<std::string>()
                      : api_->call("projects.create", {{"name", project}, {"description", ""}})
                            .value("id", std::string());
    const std::string name =
        options_.task_name.value_or(detail::env_string("CLEARML_TASK").value_or("Trainer"));
    task_id_ = api_->call("tasks.create",
                          {{"name", name},
                           {"type", "training"},
                           {"project", project_id_},
                           {"system_tags", {"development"}},
                           {"comment", fmt::format("Created by torchfit on {}", detail::host_name())}})
                   .value("id", std::string());
    if (project_id_.empty() || task_id_.empty())
      throw Error(fmt::format("ClearML at {}: no project or task id in the answers", host));
    api_->call("tasks.started", {{"task", task_id_}, {"force", false}});
    log::info("ClearML task {}: {}", task_id_, link());

    queue_.set_keep_alive(
        std::chrono::duration<double>(options_.ping_interval_s),
        [api = api_.get(), body = json{{"task", task_id_}}] { api->call("tasks.ping", body); },
        detail::KeepAlive::periodic);
    open_ = true;

    json section = json::object();
    detail::clearml_add_hyperparams(section, "Transformers", args.to_json());
    section["_ignore_hparams_ui_overrides_"] = {
        {"section", "Transformers"},
        {"name", "_ignore_hparams_ui_overrides_"},
        {"value", "True"},
        {"type", "bool"},
        {"description",
         "If True, ignore Transformers hyperparameters overrides done in the UI/backend when running "
         "remotely. "
         "Otherwise, the overrides will be applied when running remotely"}};
    queue_.submit(
        [api = api_.get(),
         body = json{{"task", task_id_}, {"force", true}, {"hyperparams", {{"Transformers", section}}}}] {
          api->call("tasks.edit", body);
        });
  }

  // Ends the task with `endpoint` (tasks.completed or tasks.failed) after the pending calls.
  void end(const char* endpoint, json body) {
    if (!open_) return;
    open_ = false;
    queue_.stop_keep_alive();
    body["task"] = task_id_;
    body["force"] = false;
    queue_.submit([api = api_.get(), endpoint = std::string(endpoint), body = std::move(body)] {
      api->call(endpoint, body);
    });
    queue_.drain();
  }

  ClearMLOptions options_;
  std::unique_ptr<detail::ClearMLApi> api_;
  std::string web_host_;
  std::string project_id_;
  std::string task_id_;
  bool open_ = false;
  std::set<std::string> warned_keys_;
  detail::BackgroundQueue queue_;  // last: destroyed (drained) before what its jobs use
};

namespace integrations {
inline const bool clearml_registered = register_integration<ClearMLCallback>("clearml");
}  // namespace integrations

}  // namespace torchfit

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

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/clearml_api.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

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
  /// How a failed request is retried: ClearML's client's back-off (1 s doubling up to 120 s), 30 s per
  /// attempt, for as long as the run lasts (ClearML's client waits out a server in maintenance).
  RetryPolicy retry{1, 120, 30};
  /// How long on_train_end and the end of the task wait for unsent calls, in seconds. Unset:
  /// TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
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
/// Every call after the task's creation goes from a background thread, in order, so a slow server or an
/// outage never holds up a training step: failed calls are retried (`retry`) for as long as the run lasts,
/// the calls waiting in memory, beyond a few MiB in a file; `tasks.ping` keeps the task alive every
/// `ping_interval_s`. The end of training waits for the calls at most `flush_timeout_s`, saying how many are
/// left; calls still unsent then, or after a call the server refuses, are kept in
/// `<output_dir>/.torchfit/unsent/clearml-<task>.jsonl` and the tracker is disabled with one warning saying
/// so. `CLEARML_OFFLINE_MODE` is refused (no offline session writer).
class ClearMLCallback : public TrackerCallback {
 public:
  explicit ClearMLCallback(ClearMLOptions options = {}) : options_(std::move(options)) {}

  /// Ends the task if it is still open (failed when destroyed by a failure), and waits for the calls as
  /// finish() does; a failure is a warning.
  ~ClearMLCallback() override {
    if (!open_) return;
    detail::end_in_destructor(*outbox_, [this] {
      if (std::uncaught_exceptions() > 0)
        end("tasks.failed", {{"status_reason", "training failed: the program ended with an exception"}});
      else
        end("tasks.completed", {{"status_reason", "completed"}, {"publish", false}});
    });
  }
  ClearMLCallback(const ClearMLCallback&) = delete;
  ClearMLCallback& operator=(const ClearMLCallback&) = delete;

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (is_open(state) && open_) flush();
  }

  /// Waits until every call made so far has reached ClearML (at most `flush_timeout_s`); throws the failure
  /// of a background call, or the timeout with the number of unsent calls and where they are kept.
  void flush() {
    if (open_) outbox_->flush();
  }

  /// Marks the task completed and stops the keep-alive after the pending calls, and waits as flush() does.
  /// Later events are ignored.
  void finish() {
    if (!open_) return;
    end("tasks.completed", {{"status_reason", "completed"}, {"publish", false}});
    outbox_->flush();
  }

  /// The task and its project (empty before setup), and the task's page in the web app.
  const std::string& task_id() const { return task_id_; }
  const std::string& project_id() const { return project_id_; }
  std::string link() const {
    if (task_id_.empty()) return {};
    // The web app names tasks "tasks" from API 2.31 on, "experiments" before.
    const std::string v = api_->server_api_version();
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
    outbox_->rethrow_if_failed();
    const auto now = detail::unix_time_ms();
    json events = json::array();
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
    if (!events.empty()) outbox_->push(detail::call_row("events.add_batch", events));
  }

  void open_run(const Args& args, const TrainerState&, const CallbackContext&, OpenedAt) override {
    if (detail::env_true("CLEARML_OFFLINE_MODE"))
      throw ArgumentError(
          "CLEARML_OFFLINE_MODE: offline ClearML sessions are not supported (torchfit talks to the ClearML "
          "server directly); log offline with --report_to tensorboard or csv, or unset CLEARML_OFFLINE_MODE");
    if (detail::env_true("CLEARML_LOG_MODEL"))
      log::warning("ClearMLCallback: CLEARML_LOG_MODEL is not supported (checkpoints are not uploaded)");
    const auto access_key =
        detail::clearml_setting(options_.access_key, "CLEARML_API_ACCESS_KEY", "api.credentials.access_key");
    const auto secret_key =
        detail::clearml_setting(options_.secret_key, "CLEARML_API_SECRET_KEY", "api.credentials.secret_key");
    if (!access_key || !secret_key)
      throw ArgumentError(
          "no ClearML credentials: set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, or "
          "api.credentials in ~/clearml.conf (`clearml-init` writes it)");
    const std::string host = detail::clearml_setting(options_.api_host, "CLEARML_API_HOST", "api.api_server")
                                 .value_or("https://api.clear.ml");
    web_host_ = detail::clearml_setting(options_.web_host, "CLEARML_WEB_HOST", "api.web_server")
                    .value_or(detail::clearml_web_host(host));
    while (!web_host_.empty() && web_host_.back() == '/') web_host_.pop_back();
    api_ = std::make_unique<detail::ClearMLApi>(host, *access_key, *secret_key,
                                                options_.retry.request_timeout_s);
    const detail::RetryingCalls wait(options_.retry, options_.flush_timeout_s);
    const auto call = [&](const char* endpoint, const json& body) {
      return wait([&] { return api_->call(endpoint, body); });
    };

    wait([&] { api_->log_in(); });
    const std::string project =
        options_.project.value_or(detail::env_string("CLEARML_PROJECT").value_or("HuggingFace Transformers"));
    const json found = call(
        "projects.get_all",
        {{"name", detail::clearml_name_pattern(project)}, {"only_fields", {"id"}}, {"search_hidden", true}});
    const json projects = found.value("projects", json::array());
    project_id_ =
        !projects.empty() && projects[0].contains("id")
            ? projects[0]["id"].get<std::string>()
            : call("projects.create", {{"name", project}, {"description", ""}}).value("id", std::string());
    const std::string name =
        options_.task_name.value_or(detail::env_string("CLEARML_TASK").value_or("Trainer"));
    task_id_ =
        call("tasks.create", {{"name", name},
                              {"type", "training"},
                              {"project", project_id_},
                              {"system_tags", {"development"}},
                              {"comment", fmt::format("Created by torchfit on {}", detail::host_name())}})
            .value("id", std::string());
    if (project_id_.empty() || task_id_.empty())
      throw Error(fmt::format("ClearML at {}: no project or task id in the answers", host));
    call("tasks.started", {{"task", task_id_}, {"force", false}});
    log::info("ClearML task {}: {}", task_id_, link());

    outbox_.emplace(detail::outbox_settings("clearml", args.output_dir, task_id_, options_.retry,
                                            options_.flush_timeout_s),
                    detail::call_sender([this](const std::string& endpoint, const json& body) {
                      if (endpoint == "events.add_batch")
                        api_->add_events(body);
                      else
                        api_->call(endpoint, body);
                    }),
                    api_->http());
    outbox_->set_keep_alive(
        std::chrono::duration<double>(options_.ping_interval_s),
        [this] {
          api_->call("tasks.ping", {{"task", task_id_}});
        },
        detail::KeepAlive::periodic);
    open_ = true;
    outbox_->push(detail::call_row(
        "tasks.edit", {{"task", task_id_},
                       {"force", true},
                       {"hyperparams", {{"Transformers", detail::clearml_hyperparams(args.to_json())}}}}));
  }

  // Queues the end of the task with `endpoint` (tasks.completed or tasks.failed) after the pending calls,
  // with no keep-alive after it.
  void end(const char* endpoint, json body) {
    open_ = false;
    outbox_->stop_keep_alive();
    body["task"] = task_id_;
    body["force"] = false;
    outbox_->push(detail::call_row(endpoint, body));
  }

  ClearMLOptions options_;
  std::unique_ptr<detail::ClearMLApi> api_;
  std::string web_host_;
  std::string project_id_;
  std::string task_id_;
  bool open_ = false;
  std::set<std::string> warned_keys_;
  std::optional<detail::Outbox> outbox_;  // last: its thread sends until it is destroyed
};

namespace integrations {
inline const bool clearml_registered = register_integration<ClearMLCallback>("clearml");
}  // namespace integrations

}  // namespace torchfit

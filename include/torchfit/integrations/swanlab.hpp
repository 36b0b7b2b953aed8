// SPDX-License-Identifier: MIT
// SwanLab tracker: HF's SwanLabCallback, logging an experiment to SwanLab (swanlab.cn or a self-hosted
// server) through the HTTP API the swanlab SDK uses. Link torchfit::swanlab (libcurl).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/swanlab_api.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how SwanLabCallback talks to SwanLab. Unset members come from the SDK's environment variables.
struct SwanLabOptions {
  /// Unset: SWANLAB_API_KEY.
  std::optional<std::string> api_key;
  /// The API server. Unset: SWANLAB_API_HOST, else https://api.swanlab.cn.
  std::optional<std::string> api_host;
  /// The web server, for the experiment's link. Unset: SWANLAB_WEB_HOST, else https://swanlab.cn when the API
  /// server is SwanLab's, else the API server.
  std::optional<std::string> web_host;
  /// Unset: SWANLAB_PROJECT (HF's variable), else SWANLAB_PROJ_NAME, else the output directory's name.
  std::optional<std::string> project;
  /// The user or organisation owning the project. Unset: SWANLAB_WORKSPACE, else the key's user.
  std::optional<std::string> workspace;
  /// How a failed request is retried (no answer, 408, 409, 429, 5xx): 2 s doubling up to 60 s, 20 s per
  /// attempt, for as long as the run lasts.
  RetryPolicy retry{2, 60, 20};
  /// How long on_train_end waits for unsent calls, in seconds. Unset: TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to SwanLab like HF's SwanLabCallback:
/// - on_train_begin (or the first on_log): logs in with the API key, gets (or creates, private) the project,
///   creates an experiment named `args.run_name`, and uploads its config: `FRAMEWORK` = `torchfit`, every
///   training argument, and `model_num_parameters`.
/// - on_log: every number (booleans as 1/0; NaN and infinities as SwanLab's "nan") at `state.global_step`:
///   the end-of-training single values as `single_value/<key>`, the others rewritten as HF does (`loss` ->
///   `train/loss`, `eval_loss` -> `eval/loss`) with `train/global_step`; other values are dropped with a
///   warning, once per key. A key seen for the first time is declared as a FLOAT column first.
/// - on_train_end: the experiment's state becomes FINISHED, and the tracker waits for its calls.
///
/// Every call after the experiment's creation goes from a background thread (detail::Outbox), in order, so a
/// slow server or an outage never holds up training and loses no row: failed calls are retried (`retry`) for
/// as long as the run lasts, waiting in memory, beyond a few MiB in a file; the SDK's heartbeat goes every 10
/// minutes. Calls still unsent after `flush_timeout_s` at the end are kept in
/// `<output_dir>/.torchfit/unsent/swanlab-<experiment>.jsonl` and the tracker is disabled with one warning
/// saying so. SWANLAB_MODE: `cloud` (default), `disabled` (the tracker does nothing); `local` and `offline` are
/// refused (no local SwanLab log writer).
class SwanLabCallback : public TrackerCallback {
 public:
  explicit SwanLabCallback(SwanLabOptions options = {}) : options_(std::move(options)) {}

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state) || !outbox_) return;
    if (!finished_) {
      finished_ = true;
      outbox_->stop_keep_alive();
      call(fmt::format("project/{}/{}/runs/{}/state", url_owner_, url_project_, experiment_id_), "PUT",
           {{"state", "FINISHED"}, {"finishedAt", detail::swanlab_time()}, {"from", "sdk"}});
    }
    flush();
  }

  /// Waits until every call made so far has reached SwanLab (at most `flush_timeout_s`); throws the failure
  /// of a background call, or the timeout with the number of unsent calls and where they are kept.
  void flush() {
    if (outbox_) outbox_->flush();
  }

  /// The experiment's id (`cuid`) and page (empty before setup).
  const std::string& experiment_id() const { return experiment_id_; }
  const std::string& link() const { return link_; }

 private:
  void open_run(const Args& args, const TrainerState&, const CallbackContext& ctx, OpenedAt) override {
    const std::string mode = detail::env_string("SWANLAB_MODE").value_or("cloud");
    if (mode == "disabled") return;
    if (mode != "cloud")
      throw ArgumentError(fmt::format(
          "SWANLAB_MODE={}: only cloud (a SwanLab server, swanlab.cn or self-hosted) and disabled are "
          "supported; log locally with --report_to tensorboard and `swanlab convert`",
          mode));
    const auto key = options_.api_key ? options_.api_key : detail::env_string("SWANLAB_API_KEY");
    if (!key) throw ArgumentError("no SwanLab API key: set SWANLAB_API_KEY (swanlab.cn: Settings, API Key)");
    const std::string official = "https://api.swanlab.cn";
    std::string host = setting(options_.api_host, "SWANLAB_API_HOST").value_or(official);
    while (!host.empty() && host.back() == '/') host.pop_back();
    const std::string web = setting(options_.web_host, "SWANLAB_WEB_HOST")
                                .value_or(host == official ? std::string("https://swanlab.cn") : host);
    const std::string name =
        setting(options_.project, "SWANLAB_PROJECT")
            .value_or(detail::env_string("SWANLAB_PROJ_NAME")
                          .value_or(std::filesystem::path(args.output_dir).filename().string()));
    api_ = std::make_unique<detail::SwanLabApi>(host, *key, options_.retry.request_timeout_s);
    const detail::RetryingCalls wait(options_.retry, options_.flush_timeout_s);
    const json project = wait(
        [&] { return api_->project(setting(options_.workspace, "SWANLAB_WORKSPACE").value_or(""), name); });
    const std::string owner = project.value("group", json::object()).value("username", "");
    const json experiment = wait([&] {
      return api_->create_experiment(owner, project.value("name", name), args.run_name.value_or(""),
                                     "#528d59");
    });
    experiment_id_ = experiment.value("cuid", "");
    if (experiment_id_.empty() || !project.contains("cuid"))
      throw Error(fmt::format("SwanLab at {}: no project or experiment id in the answers: {} {}", host,
                              project.dump().substr(0, 200), experiment.dump().substr(0, 200)));
    project_id_ = project["cuid"].get<std::string>();
    url_owner_ = detail::url_encode(owner);
    url_project_ = detail::url_encode(project.value("name", name));
    link_ = fmt::format("{}/@{}/{}/runs/{}", web, owner, project.value("name", name), experiment_id_);
    log::info("SwanLab experiment {}: {}", experiment_id_, link_);
    wait([&] { return api_->call("POST", "house/experiments/" + experiment_id_ + "/heartbeat", heartbeat); });
    outbox_.emplace(detail::outbox_settings("swanlab", args.output_dir, experiment_id_, options_.retry,
                                            options_.flush_timeout_s),
                    detail::call_sender([this](const std::string& row, const json& body) {
                      api_->call(body["method"].get<std::string>(), row, body["body"]);
                    }),
                    api_->http());
    outbox_->set_keep_alive(
        std::chrono::minutes(10),
        [this] { api_->call("POST", "house/experiments/" + experiment_id_ + "/heartbeat", heartbeat); },
        detail::KeepAlive::periodic);

    // The config as the SDK uploads it: {key: {value, desc, sort}}, sort = insertion order.
    json config = {{"FRAMEWORK", "torchfit"}};
    config.update(args.to_json());
    if (const auto count = integrations::model_num_parameters(ctx)) config["model_num_parameters"] = *count;
    json profile = json::object();
    int sort = 0;
    for (auto it = config.begin(); it != config.end(); ++it)
      profile[it.key()] = {{"value", it.value()}, {"desc", ""}, {"sort", sort++}};
    call(fmt::format("project/{}/{}/runs/{}/profile", url_owner_, url_project_, experiment_id_), "PUT",
         {{"config", profile}});
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    if (!outbox_) return;
    outbox_->rethrow_if_failed();
    const std::string now = detail::swanlab_time();
    json scalars = json::array();
    json columns = json::array();
    const auto add = [&](const std::string& key, double value) {
      if (columns_.insert(key).second) columns.push_back({{"key", key}, {"type", "FLOAT"}});
      scalars.push_back({{"key", key},
                         {"index", state.global_step},
                         {"data", detail::swanlab_scalar(value)},
                         {"create_time", now}});
    };
    for (auto it = logs.begin(); it != logs.end(); ++it) {
      const json& v = it.value();
      if (!v.is_number() && !v.is_boolean()) {
        if (warned_keys_.insert(it.key()).second)
          log::warning("SwanLabCallback: dropping \"{}\" = {}: SwanLab metrics are numbers", it.key(),
                       detail::python_repr(v));
        continue;
      }
      add(integrations::is_single_value_scalar(it.key()) ? "single_value/" + it.key()
                                                         : integrations::rewrite_log_key(it.key()),
          v.is_boolean() ? double(v.get<bool>()) : v.get<double>());
    }
    add("train/global_step", double(state.global_step));
    if (!columns.empty())
      call(fmt::format("projects/{}/{}/series", url_owner_, url_project_), "POST", {{"series", columns}});
    call("house/metrics", "POST",
         {{"type", "scalar"},
          {"projectId", project_id_},
          {"experimentId", experiment_id_},
          {"metrics", scalars}});
  }

  static std::optional<std::string> setting(const std::optional<std::string>& option, const char* variable) {
    return option ? option : detail::env_string(variable);
  }

  // Queues a call: `method` to `endpoint` (below /api/) with `body`.
  void call(const std::string& endpoint, const char* method, json body) {
    outbox_->push(detail::call_row(endpoint, {{"method", method}, {"body", std::move(body)}}));
  }

  inline static const json heartbeat = {{"flagId", "123456"}};

  SwanLabOptions options_;
  std::unique_ptr<detail::SwanLabApi> api_;
  std::string project_id_;
  std::string experiment_id_;
  std::string url_owner_;
  std::string url_project_;
  std::string link_;
  bool finished_ = false;
  std::set<std::string> columns_;
  std::set<std::string> warned_keys_;
  std::optional<detail::Outbox> outbox_;  // last: its thread sends until it is destroyed
};

namespace integrations {
inline const bool swanlab_registered = register_integration<SwanLabCallback>("swanlab");
}  // namespace integrations

}  // namespace torchfit

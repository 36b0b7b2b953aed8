// SPDX-License-Identifier: MIT
// MLflow tracker: HF's MLflowCallback, writing to an `mlruns` file store or to a tracking server's REST API.
// Link torchfit::mlflow (libcurl).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/mlflow_store.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how MLflowCallback talks to MLflow. Unset members come from MLflow's environment variables.
struct MLflowOptions {
  /// `http(s)://host:port` (REST), `file:///path` or a plain path (file store).
  /// Unset: MLFLOW_TRACKING_URI, else `./mlruns`.
  std::optional<std::string> tracking_uri;
  /// REST: how a failed call is retried: MLflow's client's back-off (2 s doubling up to 120 s), 120 s per
  /// attempt, for as long as the run lasts. MLFLOW_HTTP_REQUEST_MAX_RETRIES,
  /// MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (the first back-off) and MLFLOW_HTTP_REQUEST_TIMEOUT (one attempt),
  /// when set, replace the matching fields, as they configure MLflow's own client.
  RetryPolicy retry{2, 120, 120};
  /// REST: how long on_train_end waits for unsent calls (and the calls that open the run are retried), in
  /// seconds. Unset: TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to MLflow like HF's MLflowCallback:
/// - on_train_begin (or the first on_log): opens the experiment `MLFLOW_EXPERIMENT_NAME` (created when
///   missing; unset: `MLFLOW_EXPERIMENT_ID`, else Default `0`), starts a run named `args.run_name` with the
///   tags `mlflow.runName`, `mlflow.user`, `mlflow.source.name`, `mlflow.source.type` and those of
///   `MLFLOW_TAGS` (a JSON object), and logs `args.to_json()` as parameters, 100 per request: flattened with
///   `.` when `MLFLOW_FLATTEN_PARAMS` is true, only the first `MLFLOW_MAX_LOG_PARAMS` when that is set. A
///   value longer than MLflow's 6000 characters is cut to 6000 (one warning names them all); HF drops it.
/// - on_log: every number (booleans as 1/0) as a metric at `state.global_step`, keys as logged (`loss`,
///   `eval_loss`; not rewritten) with characters MLflow rejects replaced by `_`; other values are dropped
///   with HF's warning, once per key. At most 1000 metrics per request.
/// - on_save: with `HF_MLFLOW_LOG_ARTIFACTS` true, the checkpoint directory is copied into the run's
///   artifacts under `checkpoint-<step>`.
/// - on_train_end: the run ends with status FINISHED.
/// `MLFLOW_RUN_ID` continues that run instead of starting one (its parameters are not logged again, since
/// MLflow parameters cannot change); when training resumes from a checkpoint, the file store also drops the
/// run's metric points after the checkpoint step. With `MLFLOW_NESTED_RUN` true as well, a new run is started
/// as a child of `MLFLOW_RUN_ID` (tag `mlflow.parentRunId`).
///
/// The back end follows the tracking URI: `http(s)://` is a tracking server (REST API, libcurl;
/// authentication from MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN), anything else a local
/// file store, written in place.
///
/// A tracking server is called from a background thread, so that a slow server or an outage never holds up a
/// training step: parameters, metrics and the end of the run go there in the order they were logged, failed
/// calls retried (`retry`, on no answer, 408, 409, 429 and 5xx) for as long as the run lasts, the calls
/// waiting in memory, beyond a few MiB in a file. The training thread keeps the calls that yield the run id
/// (experiment and run creation, resuming) and on_save's artifact upload, which first waits for the pending
/// calls: the next save's checkpoint rotation could delete a directory that is still being uploaded.
/// on_train_end waits for the calls at most `flush_timeout_s`, saying how many are left; calls still unsent
/// then, or after a call the server refuses, are kept in `<output_dir>/.torchfit/unsent/mlflow-<run>.jsonl`
/// and the tracker is disabled with one warning saying so.
class MLflowCallback : public TrackerCallback {
 public:
  explicit MLflowCallback(MLflowOptions options = {}) : options_(std::move(options)) {}

  void on_save(const Args&, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!is_open(state) || !log_artifacts_ || ctx.checkpoint_dir == nullptr) return;
    log::info("Logging checkpoint artifacts in {}. This may take time.",
              ctx.checkpoint_dir->filename().string());
    // In place, as HF does, after the pending calls: a later save's rotation could delete the directory
    // under a background upload.
    flush();
    store_->log_artifacts(run_id_, *ctx.checkpoint_dir, ctx.checkpoint_dir->filename().string());
  }

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state) || !run_open_) return;
    run_open_ = false;
    store_->end_run(run_id_, detail::MlflowRunStatus::finished, detail::unix_time_ms());
    flush();
  }

  /// Waits until every call made so far has reached the store (a tracking server: at most `flush_timeout_s`);
  /// throws the failure of a background call, or the timeout with the number of unsent calls and where they
  /// are kept.
  void flush() {
    if (store_) store_->flush();
  }

  /// The run logged to (empty before setup).
  const std::string& run_id() const { return run_id_; }
  /// The experiment of the run (empty before setup).
  const std::string& experiment_id() const { return experiment_id_; }

 protected:
  /// The store the run goes to, made when the run opens: `tracking_uri`, else MLflow's environment (see
  /// detail::mlflow_store). A tracker built on this one (DagsHub) names its own server and credentials.
  virtual std::unique_ptr<detail::MlflowStore> make_store(const Args& args) {
    return detail::mlflow_store(options_.tracking_uri, options_.retry, args.output_dir,
                                options_.flush_timeout_s);
  }

 private:
  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    // A background failure surfaces here, before this event warns about anything of its own.
    store_->rethrow_if_failed();
    const auto metrics = detail::mlflow_metrics(
        logs, state.global_step, [&](const std::string& key, const json& v, const std::string& problem) {
          if (!warned_keys_.insert(key).second) return;
          if (problem.empty())
            log::warning(
                "Trainer is attempting to log a value of \"{}\" of type {} for key \"{}\" as a metric. "
                "MLflow's log_metric() only accepts float and int types so we dropped this attribute.",
                detail::python_str(v), detail::python_type_repr(v), key);
          else
            log::warning("MLflowCallback: dropping metric \"{}\": MLflow rejects the name because {}",
                         detail::mlflow_sanitize_metric_key(key), problem);
        });
    detail::mlflow_log_metrics(*store_, run_id_, metrics);
  }

  void open_run(const Args& args, const TrainerState& state, const CallbackContext&, OpenedAt) override {
    store_ = make_store(args);
    log_artifacts_ = detail::env_true("HF_MLFLOW_LOG_ARTIFACTS");
    const auto experiment_name = detail::env_string("MLFLOW_EXPERIMENT_NAME");
    experiment_id_ = experiment_name ? store_->experiment_id(*experiment_name)
                                     : detail::env_string("MLFLOW_EXPERIMENT_ID").value_or("0");
    const auto existing_run = detail::env_string("MLFLOW_RUN_ID");
    const bool nested = detail::env_true("MLFLOW_NESTED_RUN");
    if (existing_run && !nested) {
      run_id_ = *existing_run;
      store_->resume_run(
          run_id_, state.global_step > 0 ? std::optional<std::int64_t>(state.global_step) : std::nullopt);
      run_open_ = true;
      return;
    }
    std::vector<detail::MlflowKeyValue> tags{{"mlflow.user", detail::user_name()},
                                             {"mlflow.source.name", detail::program_path()},
                                             {"mlflow.source.type", "LOCAL"}};
    if (args.run_name) tags.push_back({"mlflow.runName", *args.run_name});
    if (existing_run) tags.push_back({"mlflow.parentRunId", *existing_run});
    if (const auto text = detail::env_string("MLFLOW_TAGS")) {
      const json user_tags = json::parse(*text, nullptr, false);
      if (!user_tags.is_object())
        throw ArgumentError(fmt::format("MLFLOW_TAGS must be a JSON object (got \"{}\")", *text));
      for (auto it = user_tags.begin(); it != user_tags.end(); ++it)
        tags.push_back({it.key(), detail::python_str(it.value())});
    }
    for (auto& t : tags)
      if (t.value.size() > detail::mlflow_max_tag_value_length)
        t.value.resize(detail::mlflow_max_tag_value_length);
    run_id_ = store_->create_run(experiment_id_, args.run_name.value_or(""), detail::unix_time_ms(), tags);
    run_open_ = true;
    log_params(args);
  }

  void log_params(const Args& args) {
    json params = args.to_json();
    if (detail::env_true("MLFLOW_FLATTEN_PARAMS")) {
      json flat = json::object();
      detail::mlflow_flatten(params, "", flat);
      params = std::move(flat);
    }
    std::vector<detail::MlflowKeyValue> items;
    std::vector<std::string> truncated;
    for (auto it = params.begin(); it != params.end(); ++it) {
      std::string value = detail::python_str(it.value());
      if (value.size() > detail::mlflow_max_param_value_length) {
        value.resize(detail::mlflow_max_param_value_length);
        truncated.push_back(it.key());
      }
      items.push_back({it.key(), std::move(value)});
    }
    if (!truncated.empty()) {
      std::string names;
      for (const auto& n : truncated) names += (names.empty() ? "" : ", ") + n;
      log::warning("MLflowCallback: parameter values longer than MLflow's {} characters were cut to {}: {}",
                   detail::mlflow_max_param_value_length, detail::mlflow_max_param_value_length, names);
    }
    if (const auto max = detail::env_string("MLFLOW_MAX_LOG_PARAMS")) {
      const auto keep = static_cast<std::size_t>(detail::env_number("MLFLOW_MAX_LOG_PARAMS").value_or(0));
      if (keep < items.size()) {
        log::warning("MLflowCallback: logging only the first {} of {} parameters (MLFLOW_MAX_LOG_PARAMS={})",
                     keep, items.size(), *max);
        items.resize(keep);
      }
    }
    detail::mlflow_in_batches(
        items, detail::mlflow_max_params_tags_per_batch,
        [&](const std::vector<detail::MlflowKeyValue>& batch) { store_->log_batch(run_id_, {}, batch, {}); });
  }

  MLflowOptions options_;
  std::unique_ptr<detail::MlflowStore> store_;
  bool run_open_ = false;
  bool log_artifacts_ = false;
  std::string experiment_id_;
  std::string run_id_;
  std::set<std::string> warned_keys_;
};

namespace integrations {
inline const bool mlflow_registered = register_integration<MLflowCallback>("mlflow");
}  // namespace integrations

}  // namespace torchfit

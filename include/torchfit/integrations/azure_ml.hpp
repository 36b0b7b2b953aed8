// SPDX-License-Identifier: MIT
// Azure Machine Learning tracker: HF's AzureMLCallback, logging to a workspace through its MLflow REST API with
// a Microsoft Entra ID token. Link torchfit::azure_ml (libcurl).
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/azure_ml_auth.hpp"
#include "torchfit/integrations/detail/mlflow_store.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how AzureMLCallback talks to the workspace. Unset members come from the environment.
struct AzureMLOptions {
  /// The workspace's MLflow tracking URI (`azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/...`,
  /// as `az ml workspace show --query mlflow_tracking_uri -o tsv` prints it). Unset: MLFLOW_TRACKING_URI.
  std::optional<std::string> tracking_uri;
  /// Where a service principal's token is asked for. Unset: AZURE_AUTHORITY_HOST, else
  /// https://login.microsoftonline.com.
  std::optional<std::string> authority_host;
  /// The scope of the token (Azure Resource Manager, which the workspace's MLflow API accepts).
  std::string token_scope = "https://management.azure.com/.default";
  /// How a failed call is retried, as MLflowOptions::retry (MLFLOW_HTTP_REQUEST_* replace its fields).
  RetryPolicy retry{2, 120, 120};
  /// How long on_train_end waits for unsent calls, in seconds. Unset: TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to an Azure Machine Learning workspace like HF's AzureMLCallback: every number of every log
/// entry (booleans as 1/0) as a metric named by its key as logged (`loss`, `eval_loss`), at
/// `state.global_step`; other values are left out, as HF does. Nothing else is logged (no parameters).
///
/// The run: inside an Azure Machine Learning job (MLFLOW_RUN_ID set, as the job sets it with
/// MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN) the job's run, which the job ends; elsewhere a run named
/// `args.run_name` in the experiment MLFLOW_EXPERIMENT_NAME (created when missing; unset: `Default`), which
/// ends FINISHED at on_train_end. The token: see detail::AzureCredential (MLFLOW_TRACKING_TOKEN, else a
/// service principal from AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or
/// AZURE_FEDERATED_TOKEN_FILE); none is an error naming those variables.
///
/// The calls go through MLflow's REST client (detail::MlflowRestStore): from a background thread, in order,
/// retried through an outage for as long as the run lasts; on_train_end waits for them at most
/// `flush_timeout_s`, and calls still unsent then are kept in
/// `<output_dir>/.torchfit/unsent/mlflow-<run>.jsonl`, the tracker disabled with one warning saying so.
class AzureMLCallback : public TrackerCallback {
 public:
  explicit AzureMLCallback(AzureMLOptions options = {}) : options_(std::move(options)) {}

  void on_train_end(const Args&, TrainerState& state, TrainerControl&, const CallbackContext&) override {
    if (!is_open(state) || !store_) return;
    if (owns_run_) store_->end_run(run_id_, detail::MlflowRunStatus::finished, detail::unix_time_ms());
    owns_run_ = false;
    flush();
  }

  /// Waits until every call made so far has reached the workspace (at most `flush_timeout_s`); throws the
  /// failure of a background call, or the timeout with the number of unsent calls and where they are kept.
  void flush() {
    if (store_) store_->flush();
  }

  /// The run logged to, and the MLflow REST base of the workspace (empty before setup).
  const std::string& run_id() const { return run_id_; }
  const std::string& rest_base() const { return rest_base_; }

 private:
  void open_run(const Args& args, const TrainerState&, const CallbackContext&, OpenedAt) override {
    const auto uri =
        options_.tracking_uri ? options_.tracking_uri : detail::env_string("MLFLOW_TRACKING_URI");
    if (!uri)
      throw ArgumentError(
          "no Azure Machine Learning workspace: set MLFLOW_TRACKING_URI to the workspace's MLflow tracking "
          "URI "
          "(`az ml workspace show --query mlflow_tracking_uri -o tsv`)");
    rest_base_ = detail::azureml_rest_base(*uri);
    const RetryPolicy retry = detail::mlflow_rest_retry(options_.retry);
    std::shared_ptr<detail::AzureCredential> credential = detail::AzureCredential::from_environment(
        options_.authority_host, options_.token_scope, retry.request_timeout_s);
    detail::HttpOptions http = detail::mlflow_tls_options();
    http.dynamic_header = [credential] { return credential->header(); };
    store_ = std::make_unique<detail::MlflowRestStore>(rest_base_, retry, std::move(http), args.output_dir,
                                                       options_.flush_timeout_s);
    if (const auto job_run = detail::env_string("MLFLOW_RUN_ID")) {
      run_id_ = *job_run;
      store_->resume_run(run_id_, std::nullopt);
      return;
    }
    const std::string experiment =
        store_->experiment_id(detail::env_string("MLFLOW_EXPERIMENT_NAME").value_or("Default"));
    std::vector<detail::MlflowKeyValue> tags{{"mlflow.user", detail::user_name()},
                                             {"mlflow.source.name", detail::program_path()},
                                             {"mlflow.source.type", "LOCAL"}};
    if (args.run_name) tags.push_back({"mlflow.runName", *args.run_name});
    run_id_ = store_->create_run(experiment, args.run_name.value_or(""), detail::unix_time_ms(), tags);
    owns_run_ = true;
  }

  void log_entry(const TrainerState& state, TrainerControl&, const Logs& logs) override {
    store_->rethrow_if_failed();
    const auto metrics = detail::mlflow_metrics(
        logs, state.global_step, [&](const std::string& key, const json&, const std::string& problem) {
          if (!problem.empty() && warned_keys_.insert(key).second)
            log::warning("AzureMLCallback: dropping metric \"{}\": MLflow rejects the name because {}",
                         detail::mlflow_sanitize_metric_key(key), problem);
        });
    detail::mlflow_log_metrics(*store_, run_id_, metrics);
  }

  AzureMLOptions options_;
  std::unique_ptr<detail::MlflowStore> store_;
  std::string rest_base_;
  std::string run_id_;
  bool owns_run_ = false;
  std::set<std::string> warned_keys_;
};

namespace integrations {
inline const bool azure_ml_registered = register_integration<AzureMLCallback>("azure_ml");
}  // namespace integrations

}  // namespace torchfit

// SPDX-License-Identifier: MIT
// DagsHub tracker: HF's DagsHubCallback, MLflowCallback logging to a DagsHub repository's MLflow server, and
// with HF_DAGSHUB_LOG_ARTIFACTS the output directory uploaded to the repository at the end of training. Link
// torchfit::dagshub (libcurl).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/dagshub_api.hpp"
#include "torchfit/integrations/detail/mlflow_store.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/integrations/integration.hpp"
#include "torchfit/integrations/mlflow.hpp"
#include "torchfit/log.hpp"

namespace torchfit {

/// Where and how DagsHubCallback talks to DagsHub. Unset members come from the environment.
struct DagsHubOptions {
  /// The repository's MLflow URI, `https://dagshub.com/<owner>/<repo>.mlflow`. Unset: MLFLOW_TRACKING_URI, else
  /// `<host>/<DAGSHUB_REPO_OWNER>/<DAGSHUB_REPO_NAME>.mlflow`.
  std::optional<std::string> tracking_uri;
  /// DagsHub's address, for the upload. Unset: DAGSHUB_CLIENT_HOST, else https://dagshub.com.
  std::optional<std::string> host;
  /// The branch the output directory is uploaded to. Unset: BRANCH (HF's variable), else DAGSHUB_REPO_BRANCH,
  /// else `main`.
  std::optional<std::string> branch;
  /// How a failed MLflow call or upload request is retried, as MLflowOptions::retry.
  RetryPolicy retry{2, 120, 120};
  /// How long one upload request may take, in seconds (DagsHub's client sets no limit).
  double upload_timeout_s = 3600;
  /// How long on_train_end waits for unsent MLflow calls, in seconds. Unset: TORCHFIT_TRACKER_FLUSH_TIMEOUT,
  /// else 60.
  std::optional<double> flush_timeout_s;
};

/// Logs the run to a DagsHub repository like HF's DagsHubCallback: everything MLflowCallback logs (parameters,
/// metrics, the run's end; see MLflowCallback), to the repository's MLflow server, authenticated with
/// MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (what `dagshub.init()` sets), else the token
/// DAGSHUB_USER_TOKEN. With HF_DAGSHUB_LOG_ARTIFACTS true, on_train_end then uploads every file of
/// `args.output_dir` to the repository's `artifacts/` directory on the branch, DVC-versioned, as DagsHub's
/// client's `Repo.directory("artifacts").add_dir(output_dir)` does (retried through an outage for at most
/// `flush_timeout_s` a request). No repository (neither a tracking URI nor DAGSHUB_REPO_OWNER and
/// DAGSHUB_REPO_NAME) or no credential is an error naming the variables.
class DagsHubCallback : public MLflowCallback {
 public:
  explicit DagsHubCallback(DagsHubOptions options = {})
      : MLflowCallback(mlflow_options(options)), options_(std::move(options)) {}

  void on_train_end(const Args& args, TrainerState& state, TrainerControl& control,
                    const CallbackContext& ctx) override {
    if (!is_open(state)) return;
    MLflowCallback::on_train_end(args, state, control, ctx);
    if (!repo_) return;
    log::info("DagsHub: uploading {} to {}/{}", args.output_dir, owner_, name_);
    const detail::RetryingCalls retrying(options_.retry, options_.flush_timeout_s);
    repo_->upload_dir(args.output_dir, "artifacts", "Commit data points in folder " + args.output_dir,
                      [&](auto&& commit) { retrying(commit); });
  }

  /// The repository's owner and name (empty before setup).
  const std::string& owner() const { return owner_; }
  const std::string& repository() const { return name_; }

 private:
  static MLflowOptions mlflow_options(const DagsHubOptions& options) {
    MLflowOptions o;
    o.retry = options.retry;
    o.flush_timeout_s = options.flush_timeout_s;
    return o;
  }

  std::unique_ptr<detail::MlflowStore> make_store(const Args& args) override {
    const std::string host =
        options_.host.value_or(detail::env_string("DAGSHUB_CLIENT_HOST").value_or("https://dagshub.com"));
    std::optional<std::string> uri = options_.tracking_uri;
    if (!uri) uri = detail::env_string("MLFLOW_TRACKING_URI");
    const auto owner = detail::env_string("DAGSHUB_REPO_OWNER");
    const auto name = detail::env_string("DAGSHUB_REPO_NAME");
    if (!uri && owner && name) uri = fmt::format("{}/{}/{}.mlflow", host, *owner, *name);
    if (!uri)
      throw ArgumentError(
          "no DagsHub repository: set MLFLOW_TRACKING_URI to https://dagshub.com/<owner>/<repo>.mlflow (what "
          "dagshub.init() sets), or DAGSHUB_REPO_OWNER and DAGSHUB_REPO_NAME");
    std::tie(owner_, name_) = detail::dagshub_repository(*uri);
    detail::HttpOptions http = detail::mlflow_tls_options();
    auto header = detail::mlflow_auth_header("DAGSHUB_USER_TOKEN");
    if (!header)
      throw ArgumentError(
          "no DagsHub credential: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (your DagsHub "
          "user name and a token, what dagshub.init() sets), or DAGSHUB_USER_TOKEN");
    http.headers.push_back(std::move(*header));
    if (detail::env_true("HF_DAGSHUB_LOG_ARTIFACTS")) {
      const std::string branch = options_.branch.value_or(
          detail::env_string("BRANCH").value_or(detail::env_string("DAGSHUB_REPO_BRANCH").value_or("main")));
      repo_ =
          std::make_unique<detail::DagsHubRepo>(host, owner_, name_, branch, http, options_.upload_timeout_s);
    }
    return std::make_unique<detail::MlflowRestStore>(*uri, detail::mlflow_rest_retry(options_.retry),
                                                     std::move(http), args.output_dir,
                                                     options_.flush_timeout_s);
  }

  DagsHubOptions options_;
  std::unique_ptr<detail::DagsHubRepo> repo_;
  std::string owner_;
  std::string name_;
};

namespace integrations {
inline const bool dagshub_registered = register_integration<DagsHubCallback>("dagshub");
}  // namespace integrations

}  // namespace torchfit

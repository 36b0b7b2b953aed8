// SPDX-License-Identifier: MIT
// What the Azure Machine Learning tracker needs besides MLflow's REST client: the REST base of a workspace's
// MLflow tracking URI, and a Microsoft Entra ID access token from the environment (a given token, or the
// client-credentials flow of a service principal), renewed before it expires.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "torchfit/detail/strings.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// The MLflow REST base of a workspace's tracking URI. `az ml workspace show --query mlflow_tracking_uri` gives
/// `azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/<sub>/resourceGroups/<rg>/providers/
/// Microsoft.MachineLearningServices/workspaces/<ws>`; the REST calls go to `https://<host>/mlflow/v1.0` and
/// the workspace's scope, as azureml-mlflow builds it (azureml/mlflow/_internal/utils.py: host_url is
/// "https://" + the URI's host, the subscription, resource group and workspace are matched by
/// `.*/subscriptions/(.+)/resourceGroups/(.+)/providers/Microsoft.MachineLearningServices/workspaces/([^/]+)`;
/// its tracking store: url_base = host_url + "/mlflow/v1.0" + the workspace scope). An `http(s)://` URI of
/// the same path is taken as it is. Anything else is an ArgumentError.
inline std::string azureml_rest_base(const std::string& tracking_uri) {
  static const std::regex workspace(
      R"(^(azureml|https?)://([^/?#]+)/mlflow/v1\.0/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/)"
      R"(Microsoft\.MachineLearningServices/workspaces/([^/?#]+)/?(\?.*)?$)",
      std::regex::icase);
  std::smatch m;
  if (!std::regex_match(tracking_uri, m, workspace))
    throw ArgumentError(fmt::format(
        "\"{}\" is not the MLflow tracking URI of an Azure Machine Learning workspace (azureml://<region>."
        "api.azureml.ms/mlflow/v1.0/subscriptions/<subscription>/resourceGroups/<group>/providers/"
        "Microsoft.MachineLearningServices/workspaces/<workspace>, as `az ml workspace show --query "
        "mlflow_tracking_uri -o tsv` prints it)",
        tracking_uri));
  const std::string scheme = lower(m[1].str()) == "http" ? "http" : "https";
  return fmt::format(
      "{}://{}/mlflow/v1.0/subscriptions/{}/resourceGroups/{}/providers/"
      "Microsoft.MachineLearningServices/workspaces/{}",
      scheme, m[2].str(), m[3].str(), m[4].str(), m[5].str());
}

/// A Microsoft Entra ID access token for the workspace, from the environment, as azureml-mlflow and
/// azure-identity's EnvironmentCredential read it:
/// - MLFLOW_TRACKING_TOKEN: a token (what an Azure Machine Learning job sets, with MLFLOW_RUN_ID), used as it is;
/// - else AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_FEDERATED_TOKEN_FILE, a workload
///   identity's assertion): the client-credentials flow at `<authority>/<tenant>/oauth2/v2.0/token`, the
///   authority being AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com. The token is asked for
///   again five minutes before it expires (or halfway through a shorter life), as azure-identity does.
/// header() may be called from several threads. A token request that may pass (no answer, 5xx) throws
/// TransientError; a refused one throws torchfit::Error with Entra ID's description.
class AzureCredential {
 public:
  /// The credential the environment names; an ArgumentError naming the variables when there is none.
  /// `authority` and `scope` override AZURE_AUTHORITY_HOST and the token's scope.
  static std::unique_ptr<AzureCredential> from_environment(const std::optional<std::string>& authority,
                                                           const std::string& scope,
                                                           double request_timeout_s) {
    auto credential = std::unique_ptr<AzureCredential>(new AzureCredential(request_timeout_s));
    if (const auto token = env_string("MLFLOW_TRACKING_TOKEN")) {
      credential->token_ = *token;  // renew_at_ stays at the end of time: the token is never asked for
      return credential;
    }
    const auto tenant = env_string("AZURE_TENANT_ID");
    const auto client = env_string("AZURE_CLIENT_ID");
    const auto secret = env_string("AZURE_CLIENT_SECRET");
    const auto assertion_file = env_string("AZURE_FEDERATED_TOKEN_FILE");
    if (!tenant || !client || (!secret && !assertion_file))
      throw ArgumentError(
          "no Azure credential: set MLFLOW_TRACKING_TOKEN (an access token), or AZURE_TENANT_ID, "
          "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service principal), or AZURE_TENANT_ID, "
          "AZURE_CLIENT_ID "
          "and AZURE_FEDERATED_TOKEN_FILE (a workload identity)");
    std::string host =
        authority.value_or(env_string("AZURE_AUTHORITY_HOST").value_or("https://login.microsoftonline.com"));
    while (!host.empty() && host.back() == '/') host.pop_back();
    if (host.find("://") == std::string::npos) host = "https://" + host;
    credential->token_url_ = fmt::format("{}/{}/oauth2/v2.0/token", host, url_encode(*tenant));
    credential->form_ = fmt::format("grant_type=client_credentials&client_id={}&scope={}",
                                    url_encode(*client), url_encode(scope));
    credential->secret_ = secret;
    credential->assertion_file_ = assertion_file;
    return credential;
  }

  /// The Authorization header of the current token, asked for first when it is missing or about to expire.
  std::string header() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (token_.empty() || Clock::now() >= renew_at_) request_token();
    return "Authorization: Bearer " + token_;
  }

 private:
  using Clock = std::chrono::steady_clock;

  explicit AzureCredential(double request_timeout_s) : http_(request_timeout_s, HttpOptions{}) {}

  void request_token() {
    std::string form = form_;
    if (secret_) {
      form += "&client_secret=" + url_encode(*secret_);
    } else {
      const auto assertion = read_file_if_exists(*assertion_file_);
      if (!assertion)
        throw Error(fmt::format("AZURE_FEDERATED_TOKEN_FILE: cannot read {}", *assertion_file_));
      form +=
          "&client_assertion_type=" + url_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") +
          "&client_assertion=" + url_encode(assertion->substr(0, assertion->find_last_not_of(" \t\r\n") + 1));
    }
    const auto start = Clock::now();
    const HttpResponse response = http_.send("POST", token_url_, form, "application/x-www-form-urlencoded");
    const json answer = json::parse(response.body, nullptr, false);
    if (response.status != 200 || !answer.is_object() || !answer.contains("access_token") ||
        !answer["access_token"].is_string()) {
      std::string detail = response.body.substr(0, 300);
      if (answer.is_object() && answer.contains("error_description") &&
          answer["error_description"].is_string())
        detail = answer["error_description"].get<std::string>();
      throw Error(
          fmt::format("Azure token request to {} answered HTTP {}: {}", token_url_, response.status, detail));
    }
    token_ = answer["access_token"].get<std::string>();
    const json& life = answer.contains("expires_in") ? answer["expires_in"] : json(3600);
    const double seconds = life.is_string() ? std::stod(life.get<std::string>()) : life.get<double>();
    const double renew_after = seconds > 600 ? seconds - 300 : seconds / 2;
    renew_at_ =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(renew_after));
  }

  HttpClient http_;
  std::mutex mutex_;
  std::string token_url_;
  std::string form_;
  std::optional<std::string> secret_;
  std::optional<std::string> assertion_file_;
  std::string token_;
  Clock::time_point renew_at_ = Clock::time_point::max();
};

}  // namespace torchfit::detail

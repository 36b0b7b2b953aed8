// SPDX-License-Identifier: MIT
// The Azure Machine Learning tracker against mocks, on 127.0.0.1, of Microsoft Entra ID's token endpoint and
// of a workspace's MLflow REST API: the tracking URI's translation, the service principal's token (and its
// renewal), a job's token and run, the run and its metrics, missing and refused credentials, and an outage.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/integrations/azure_ml.hpp"
#include "torchfit/integrations/mlflow.hpp"

using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::check_refused;
using torchfit::test::FakeMlflow;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::ScopedEnv;
using torchfit::test::simulate;
using torchfit::test::TempDir;
using Run = torchfit::test::TrackerRun;

namespace {

const std::string workspace_path =
    "/mlflow/v1.0/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.MachineLearningServices/"
    "workspaces/ws-1";

// Clears every variable the tracker reads, so the machine's environment cannot leak into a test.
struct CleanAzureEnv {
  ScopedEnv vars[12] = {{"MLFLOW_TRACKING_URI", std::nullopt},
                        {"MLFLOW_TRACKING_TOKEN", std::nullopt},
                        {"MLFLOW_RUN_ID", std::nullopt},
                        {"MLFLOW_EXPERIMENT_NAME", std::nullopt},
                        {"MLFLOW_HTTP_REQUEST_MAX_RETRIES", std::nullopt},
                        {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", std::nullopt},
                        {"MLFLOW_HTTP_REQUEST_TIMEOUT", std::nullopt},
                        {"AZURE_TENANT_ID", std::nullopt},
                        {"AZURE_CLIENT_ID", std::nullopt},
                        {"AZURE_CLIENT_SECRET", std::nullopt},
                        {"AZURE_FEDERATED_TOKEN_FILE", std::nullopt},
                        {"AZURE_AUTHORITY_HOST", std::nullopt}};
};

// Microsoft Entra ID's token endpoint (`/<tenant>/oauth2/v2.0/token`) for the client-credentials flow: it
// knows one service principal (tenant-1, client-1, secret "s3cret" or the assertion "assertion-jwt"), issues
// tokens tok1, tok2, ... that live `life_s` seconds, and keeps the forms it was sent.
class FakeEntra {
 public:
  double life_s = 3599;

  bool owns(const HttpRequest& r) const { return r.target.find("/oauth2/v2.0/token") != std::string::npos; }

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto form = parse_form(r.body);
    forms_.push_back(form);
    const auto field = [&](const std::string& k) { return form.count(k) ? form.at(k) : std::string(); };
    if (r.method != "POST" || r.target != "/tenant-1/oauth2/v2.0/token" ||
        field("grant_type") != "client_credentials" || field("client_id") != "client-1")
      return {400, R"({"error":"invalid_request","error_description":"AADSTS900144: bad request"})"};
    const bool secret = field("client_secret") == "s3cret";
    const bool assertion =
        field("client_assertion") == "assertion-jwt" &&
        field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    if (!secret && !assertion)
      return {
          401,
          R"({"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."})"};
    const std::string token = "tok" + std::to_string(++issued_);
    valid_.insert(token);
    return {200, json{{"token_type", "Bearer"}, {"expires_in", life_s}, {"access_token", token}}.dump()};
  }

  /// Whether `headers` carry a token this endpoint issued, or the token an Azure Machine Learning job gets.
  bool accepts(const std::string& headers) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string prefix = "\r\nAuthorization: Bearer ";
    const auto at = headers.find(prefix);
    if (at == std::string::npos) return false;
    const auto start = at + prefix.size();
    const std::string token = headers.substr(start, headers.find("\r\n", start) - start);
    last_token_ = token;
    return token == "job-token" || valid_.count(token) > 0;
  }

  std::vector<std::map<std::string, std::string>> forms() {
    std::lock_guard<std::mutex> lock(mutex_);
    return forms_;
  }
  std::string last_token() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_token_;
  }

 private:
  static std::map<std::string, std::string> parse_form(const std::string& body) {
    std::map<std::string, std::string> out;
    std::size_t start = 0;
    while (start <= body.size()) {
      const auto end = std::min(body.find('&', start), body.size());
      const std::string pair = body.substr(start, end - start);
      const auto eq = pair.find('=');
      out[pair.substr(0, eq)] = test::url_decode(eq == std::string::npos ? "" : pair.substr(eq + 1));
      start = end + 1;
    }
    return out;
  }

  std::mutex mutex_;
  int issued_ = 0;
  std::set<std::string> valid_;
  std::vector<std::map<std::string, std::string>> forms_;
  std::string last_token_;
};

// Entra ID and the workspace on one server, a service principal in the environment, for one test.
struct AzureServer {
  CleanAzureEnv env;
  FakeEntra entra;
  FakeMlflow mlflow{workspace_path};
  MockServer server{
      [this](const HttpRequest& r) { return entra.owns(r) ? entra.handle(r) : mlflow.handle(r); }};
  ScopedEnv tenant{"AZURE_TENANT_ID", "tenant-1"}, client{"AZURE_CLIENT_ID", "client-1"},
      secret{"AZURE_CLIENT_SECRET", "s3cret"};
  AzureServer() {
    mlflow.authorized = [this](const std::string& headers) { return entra.accepts(headers); };
  }

  AzureMLOptions options(double total_timeout_s = 10) const {
    AzureMLOptions o;
    o.tracking_uri = server.uri() + workspace_path;
    o.authority_host = server.uri();
    o.retry = RetryPolicy{0.01, 60, 5, 3, total_timeout_s};
    return o;
  }
  std::vector<HttpRequest> mlflow_requests() const {
    std::vector<HttpRequest> out;
    for (const auto& r : server.requests())
      if (mlflow.owns(r)) out.push_back(r);
    return out;
  }
};

// The (key, step, value) of every number of `run`'s log entries, as HF's AzureMLCallback logs them (keys with
// the characters MLflow rejects replaced, as HF's MLflow callback does).
std::vector<json> numbers_logged(const Run& run) {
  std::vector<json> out;
  for (const auto& entry : run.state.log_history)
    for (auto it = entry.begin(); it != entry.end(); ++it)
      if (it.key() != "step" && (it.value().is_number() || it.value().is_boolean()))
        out.push_back({torchfit::detail::mlflow_sanitize_metric_key(it.key()), entry["step"],
                       it.value().is_boolean() ? json(double(it.value().get<bool>()))
                                               : json(it.value().get<double>())});
  return out;
}

std::vector<json> points(const FakeMlflow::Run& run) {
  std::vector<json> out;
  for (const auto& m : run.metrics) out.push_back({m["key"], m["step"], m["value"]});
  return out;
}

}  // namespace

TEST_CASE("Azure ML: the workspace's tracking URI becomes the MLflow REST base azureml-mlflow calls",
          "[azure_ml]") {
  CHECK(
      torchfit::detail::azureml_rest_base(
          "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/"
          "191c-4f52/resourceGroups/my-rg/providers/Microsoft.MachineLearningServices/"
          "workspaces/my-ws") ==
      "https://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/191c-4f52/resourceGroups/my-rg/providers/"
      "Microsoft.MachineLearningServices/workspaces/my-ws");
  // A query (older URIs carried auth options) and a trailing slash are left out; https URIs are taken as such.
  CHECK(torchfit::detail::azureml_rest_base(
            "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/"
            "g/providers/Microsoft.MachineLearningServices/workspaces/w/?auth=x") ==
        "https://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/"
        "Microsoft.MachineLearningServices/workspaces/w");
  CHECK(torchfit::detail::azureml_rest_base("http://127.0.0.1:8080" + workspace_path) ==
        "http://127.0.0.1:8080" + workspace_path);
  CHECK_THROWS_WITH(
      torchfit::detail::azureml_rest_base("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s"),
      "\"azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s\" is not the MLflow tracking URI of an "
      "Azure Machine Learning workspace (azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/"
      "<subscription>/resourceGroups/<group>/providers/Microsoft.MachineLearningServices/workspaces/"
      "<workspace>, as `az ml workspace show --query mlflow_tracking_uri -o tsv` prints it)");
}

TEST_CASE_METHOD(AzureServer,
                 "Azure ML: a service principal's token, a run in the experiment, every number at its step, "
                 "FINISHED at the end",
                 "[azure_ml]") {
  ScopedEnv experiment("MLFLOW_EXPERIMENT_NAME", "digits");
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<AzureMLCallback>(options());
  CaptureLog log;
  simulate(run, 0, 4);
  CHECK(log.text().empty());  // HF leaves out the string silently

  // One token request: the client-credentials flow at the authority, for Azure Resource Manager's scope.
  const auto forms = entra.forms();
  REQUIRE(forms.size() == 1);
  CHECK(forms[0] == std::map<std::string, std::string>{{"grant_type", "client_credentials"},
                                                       {"client_id", "client-1"},
                                                       {"client_secret", "s3cret"},
                                                       {"scope", "https://management.azure.com/.default"}});
  CHECK(entra.last_token() == "tok1");
  CHECK(callback->rest_base() == server.uri() + workspace_path);

  const auto experiments = mlflow.experiments();
  REQUIRE(experiments.size() == 2);
  const auto runs = mlflow.runs();
  REQUIRE(runs.size() == 1);
  const auto& [id, logged] = *runs.begin();
  CHECK(callback->run_id() == id);
  CHECK(experiments.at(logged.experiment_id) == "digits");
  CHECK(logged.tags.at("mlflow.runName") == "unit-run");
  CHECK(logged.tags.at("mlflow.source.type") == "LOCAL");
  CHECK(logged.params.empty());  // HF's AzureMLCallback logs no parameters
  CHECK(points(logged) == numbers_logged(run));
  CHECK(logged.status == "FINISHED");
  CHECK(logged.end_time);
}

TEST_CASE_METHOD(AzureServer, "Azure ML: the token is asked for again before it expires", "[azure_ml]") {
  entra.life_s = 0.4;  // renewed after half its life
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<AzureMLCallback>(options());
  run.train_begin();
  run.log(1, {{"loss", 1.0}});
  callback->flush();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  run.log(2, {{"loss", 0.5}});
  run.train_end();
  CHECK(entra.forms().size() >= 2);
  CHECK(entra.last_token() != "tok1");
  CHECK(points(mlflow.runs().begin()->second) == std::vector<json>{{"loss", 1, 1.0}, {"loss", 2, 0.5}});
}

TEST_CASE_METHOD(AzureServer,
                 "Azure ML: in a job, MLFLOW_TRACKING_TOKEN and MLFLOW_RUN_ID: the job's run, not ended",
                 "[azure_ml]") {
  mlflow.add_run("job-run");
  ScopedEnv token("MLFLOW_TRACKING_TOKEN", "job-token"), job("MLFLOW_RUN_ID", "job-run"),
      uri("MLFLOW_TRACKING_URI", server.uri() + workspace_path);
  TempDir tmp;
  Run run(tmp.path());
  AzureMLOptions o = options();
  o.tracking_uri.reset();
  auto callback = run.handler.add_callback<AzureMLCallback>(o);
  CaptureLog quiet;
  simulate(run, 0, 2);
  CHECK(entra.forms().empty());
  CHECK(entra.last_token() == "job-token");
  const auto runs = mlflow.runs();
  REQUIRE(runs.size() == 1);
  CHECK(points(runs.at("job-run")) == numbers_logged(run));
  CHECK(runs.at("job-run").status == "RUNNING");
  CHECK_FALSE(runs.at("job-run").end_time);
}

TEST_CASE_METHOD(AzureServer, "Azure ML: a workload identity's assertion from AZURE_FEDERATED_TOKEN_FILE",
                 "[azure_ml]") {
  TempDir tmp;
  test::write_file(tmp / "assertion", "assertion-jwt\n");
  ScopedEnv no_secret("AZURE_CLIENT_SECRET", std::nullopt),
      file("AZURE_FEDERATED_TOKEN_FILE", (tmp / "assertion").string());
  Run run(tmp.path());
  run.handler.add_callback<AzureMLCallback>(options());
  CaptureLog quiet;
  simulate(run, 0, 1);
  REQUIRE(entra.forms().size() == 1);
  CHECK(entra.forms()[0].at("client_assertion") == "assertion-jwt");
  CHECK(entra.forms()[0].count("client_secret") == 0);
  CHECK(mlflow.runs().begin()->second.metrics.size() == 6);
}

TEST_CASE_METHOD(AzureServer,
                 "Azure ML: missing settings or a refused credential disable the tracker with one warning",
                 "[azure_ml]") {
  TempDir tmp;
  SECTION("no credential") {
    ScopedEnv no_secret("AZURE_CLIENT_SECRET", std::nullopt);
    check_refused<AzureMLCallback>(
        tmp.path(), options(),
        "no Azure credential: set MLFLOW_TRACKING_TOKEN (an access token), or AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID "
        "and AZURE_CLIENT_SECRET (a service principal), or AZURE_TENANT_ID, AZURE_CLIENT_ID and "
        "AZURE_FEDERATED_TOKEN_FILE (a workload identity)");
    CHECK(server.requests().empty());
  }
  SECTION("no tracking URI") {
    AzureMLOptions o = options();
    o.tracking_uri.reset();
    check_refused<AzureMLCallback>(tmp.path(), o,
                                   "no Azure Machine Learning workspace: set MLFLOW_TRACKING_URI to the "
                                   "workspace's MLflow tracking URI (`az ml workspace show --query "
                                   "mlflow_tracking_uri -o tsv`)");
  }
  SECTION("a tracking URI that is not a workspace's") {
    AzureMLOptions o = options();
    o.tracking_uri = "https://mlflow.example.com";
    check_refused<AzureMLCallback>(
        tmp.path(), o,
        "\"https://mlflow.example.com\" is not the MLflow tracking URI of an Azure Machine Learning");
  }
  SECTION("a refused secret: Entra ID's description, no call to the workspace") {
    ScopedEnv wrong("AZURE_CLIENT_SECRET", "wrong");
    check_refused<AzureMLCallback>(
        tmp.path(), options(),
        "Azure token request to " + server.uri() +
            "/tenant-1/oauth2/v2.0/token answered HTTP 401: AADSTS7000215: Invalid "
            "client secret provided.");
    CHECK(mlflow_requests().empty());
  }
  SECTION("a token the workspace refuses") {
    ScopedEnv token("MLFLOW_TRACKING_TOKEN", "expired");
    check_refused<AzureMLCallback>(
        tmp.path(), options(),
        "GET " + server.uri() + workspace_path +
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default answered "
            "HTTP 401 UNAUTHENTICATED: the credentials were refused");
  }
}

TEST_CASE_METHOD(AzureServer, "Azure ML: an outage of the workspace loses no metric", "[azure_ml][outage]") {
  TempDir tmp;
  Run run(tmp.path());
  AzureMLOptions o = options();
  o.retry = RetryPolicy{0.01, 0.05, 2};  // no limit: retried for as long as the run lasts
  auto callback = run.handler.add_callback<AzureMLCallback>(o);
  run.train_begin();
  CaptureLog log;
  server.fail_for(std::chrono::milliseconds(800), MockServer::Outage::drop,
                  workspace_path + "/api/2.0/mlflow/runs/log-batch");
  simulate(run, 0, 4);  // on_train_end waits out the outage
  CHECK(server.failed_requests() >= 3);
  CHECK(log.text().empty());
  const auto logged = mlflow.runs().begin()->second;
  CHECK(points(logged) == numbers_logged(run));
  CHECK(logged.status == "FINISHED");
}

TEST_CASE("Azure ML: MLflowCallback given a workspace's azureml:// URI points at azure_ml", "[azure_ml]") {
  CleanAzureEnv env;
  TempDir tmp;
  MLflowOptions o;
  o.tracking_uri = "azureml://eastus.api.azureml.ms" + workspace_path;
  check_refused<MLflowCallback>(
      tmp.path(), o,
      "MLFLOW_TRACKING_URI \"" + *o.tracking_uri +
          "\" is an Azure Machine Learning workspace: report to it with --report_to "
          "azure_ml (<torchfit/integrations/azure_ml.hpp>)");
}

TEST_CASE_METHOD(AzureServer, "Azure ML: a Trainer reporting to azure_ml logs every loss at its step",
                 "[azure_ml]") {
  ScopedEnv uri("MLFLOW_TRACKING_URI", server.uri() + workspace_path),
      authority("AZURE_AUTHORITY_HOST", server.uri());
  TempDir tmp;
  const auto log_history = test::train_reporting_to("azure_ml", tmp.path(), [](auto&) {});
  const auto runs = mlflow.runs();
  REQUIRE(runs.size() == 1);
  std::vector<json> losses;
  for (const auto& m : runs.begin()->second.metrics)
    if (m["key"] == "loss") losses.push_back({m["step"], m["value"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
  CHECK(runs.begin()->second.status == "FINISHED");
}

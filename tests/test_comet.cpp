// SPDX-License-Identifier: MIT
// The Comet tracker against a mock of Comet's REST API v2 on 127.0.0.1: the experiment, its parameters,
// others, graph and metrics, heartbeats at the server's interval, start and end times, workspaces, settings
// from the environment and the configuration file, continuing an experiment, and failure isolation.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/integrations/comet.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::check_disabled_with_one_warning;
using torchfit::test::check_refused;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::ScopedEnv;
using torchfit::test::simulate;
using torchfit::test::TempDir;
using Run = torchfit::test::TrackerRun;

namespace {

// Clears every Comet variable the callback reads and sets a key and a workspace, so the machine's environment
// and configuration file cannot leak into a test.
struct CleanCometEnv {
  ScopedEnv vars[9] = {{"COMET_API_KEY", "comet-key"},
                       {"COMET_WORKSPACE", "ws"},
                       {"COMET_URL_OVERRIDE", std::nullopt},
                       {"COMET_PROJECT_NAME", std::nullopt},
                       {"COMET_MODE", std::nullopt},
                       {"COMET_EXPERIMENT_KEY", std::nullopt},
                       {"COMET_LOG_ASSETS", std::nullopt},
                       {"COMET_CONFIG", "/nonexistent/comet.config"},
                       {"HOME", "/nonexistent"}};
};

// Comet's server as far as the tracker uses it, keeping each experiment's state as Comet does: experiments
// exist once created (a write to an unknown key is refused), parameters keep their latest value and source,
// metrics their points in arrival order, others their latest value, the graph, start and end times and
// heartbeats. Every write is also recorded per experiment, in order, with its endpoint ("metric batch" and
// "parameter batch" for the client's batch endpoints).
class FakeComet {
 public:
  struct Write {
    std::string endpoint;
    json body;
  };
  struct Experiment {
    json created;  // the create request
    std::map<std::string, json> parameters;
    std::map<std::string, std::string> parameter_sources;
    std::vector<json> metrics;  // {"metricName", "metricValue", "step", "epoch", "timestamp"}
    std::map<std::string, json> others;
    std::string graph;
    std::optional<std::int64_t> start_ms, end_ms;
    int beats = 0;
    std::vector<Write> writes;
  };
  std::vector<std::string> workspace_names{"ws"};
  int beat_ms = 60000;
  int write_status = 200;
  int write_delay_ms = 0;  // a slow server: each write takes this long

  /// An experiment created earlier (by another run).
  void add_experiment(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    experiments_[key];
  }

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string rest = "/api/rest/v2/";
    const std::string batch = "/clientlib/batch/logger/experiment/";
    if (r.headers.find("\r\nAuthorization: comet-key\r\n") == std::string::npos)
      return {401, R"({"msg":"api key invalid","code":401,"sdk_error_code":90212})"};
    if (r.method == "GET" && r.target == rest + "workspaces")
      return {200, json{{"workspaceNames", workspace_names}}.dump()};
    const std::string status = rest + "write/experiment/set-status?experimentKey=";
    if (r.method == "GET" && r.target.rfind(status, 0) == 0) {
      const auto it = experiments_.find(r.target.substr(status.size()));
      if (it == experiments_.end()) return unknown_experiment();
      ++it->second.beats;
      sequence_.push_back("beat");
      return {200, json{{"isAliveBeatDurationMillis", beat_ms}, {"gpuMonitorIntervalMillis", 60000}}.dump()};
    }
    if (r.method != "POST") return {405, R"({"msg":"method"})"};
    const json body = json::parse(r.body);
    if (r.target == rest + "write/experiment/create") {
      const std::string key = "key" + std::to_string(++created_);
      experiments_[key].created = body;
      return {200, json{{"experimentKey", key},
                        {"workspaceName", body["workspaceName"]},
                        {"projectName", body["projectName"]},
                        {"link", "https://comet.example/" + body["workspaceName"].get<std::string>() + "/" +
                                     body["projectName"].get<std::string>() + "/" + key}}
                       .dump()};
    }
    std::string endpoint;
    if (r.target.rfind(batch, 0) == 0)
      endpoint = r.target.substr(batch.size()) + " batch";
    else if (r.target.rfind(rest + "write/experiment/", 0) == 0)
      endpoint = r.target.substr(rest.size() + 17);
    else
      return {404, R"({"msg":"not found"})"};
    if (write_status != 200) return {write_status, R"({"msg":"unavailable"})"};
    const auto it = experiments_.find(body.value("experimentKey", ""));
    if (it == experiments_.end()) return unknown_experiment();
    std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
    Experiment& e = it->second;
    if (endpoint == "metric batch")
      for (const json& v : body["values"]) e.metrics.push_back(metric_point(v));
    if (endpoint == "metric") e.metrics.push_back(metric_point(body));
    if (endpoint == "parameter batch")
      for (const json& v : body["values"]) {
        e.parameters[v["parameterName"]] = v["parameterValue"];
        e.parameter_sources[v["parameterName"]] = v["source"];
      }
    if (endpoint == "parameter") e.parameters[body["parameterName"]] = body["parameterValue"];
    if (endpoint == "log-other") e.others[body["key"]] = body["value"];
    if (endpoint == "graph") e.graph = body["graph"];
    if (body.contains("startTimeMillis")) e.start_ms = body["startTimeMillis"].get<std::int64_t>();
    if (body.contains("endTimeMillis")) e.end_ms = body["endTimeMillis"].get<std::int64_t>();
    e.writes.push_back({endpoint, body});
    sequence_.push_back(endpoint);
    return {200, R"({"msg":"Saved"})"};
  }

  std::vector<json> creates() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<json> out;
    for (int i = 1; i <= created_; ++i) out.push_back(experiments_["key" + std::to_string(i)].created);
    return out;
  }
  /// The state of experiment `key` (an empty one if it does not exist).
  Experiment experiment(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = experiments_.find(key);
    return it == experiments_.end() ? Experiment{} : it->second;
  }
  std::vector<Write> writes(const std::string& key) { return experiment(key).writes; }
  std::vector<json> writes(const std::string& key, const std::string& endpoint) {
    std::vector<json> out;
    for (const auto& w : writes(key))
      if (w.endpoint == endpoint) out.push_back(w.body);
    return out;
  }
  int beats(const std::string& key) { return experiment(key).beats; }
  /// Heartbeats ("beat") and writes (their endpoints) in the order they arrived.
  std::vector<std::string> sequence() {
    std::lock_guard<std::mutex> lock(mutex_);
    return sequence_;
  }

 private:
  static std::pair<int, std::string> unknown_experiment() {
    return {400, R"({"msg":"Experiment not found","code":400,"sdk_error_code":90403})"};
  }
  static json metric_point(const json& v) {
    return {{"metricName", v["metricName"]},
            {"metricValue", v["metricValue"]},
            {"step", v["step"]},
            {"epoch", v["epoch"]},
            {"timestamp", v["timestamp"]}};
  }

  std::mutex mutex_;
  int created_ = 0;
  std::map<std::string, Experiment> experiments_;
  std::vector<std::string> sequence_;
};

// A clean environment and a Comet server on 127.0.0.1, for one test.
struct CometServer {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server{[this](const HttpRequest& r) { return comet.handle(r); }};
};

CometOptions fast_options(const std::string& uri) {
  CometOptions o;
  o.url = uri + "/clientlib/";
  o.retry = RetryPolicy{0.01, 60, 5, 2, 10};
  return o;
}

}  // namespace

TEST_CASE_METHOD(
    CometServer,
    "Comet: the experiment, args/ parameters, HF's metric names at the global step, start and end times",
    "[comet]") {
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
  CaptureLog log;
  simulate(run, 0, 4);
  callback->finish();
  CHECK(log.text() ==
        "[torchfit] warning: CometCallback: dropping \"note\" = 'done': Comet metrics are numbers\n");

  const auto creates = comet.creates();
  REQUIRE(creates.size() == 1);
  CHECK(creates[0] ==
        json{{"workspaceName", "ws"}, {"projectName", "huggingface"}, {"experimentName", "unit-run"}});
  CHECK(callback->experiment_key() == "key1");
  CHECK(callback->link() == "https://comet.example/ws/huggingface/key1");

  const auto writes = comet.writes("key1");
  REQUIRE(writes.size() > 2);
  CHECK(writes.front().endpoint == "set-start-end-time");
  CHECK(writes.front().body.contains("startTimeMillis"));
  CHECK(writes.back().endpoint == "set-start-end-time");  // the end, after everything else
  CHECK(writes.back().body.contains("endTimeMillis"));
  CHECK(writes.back().body["endTimeMillis"].get<std::int64_t>() >=
        writes.front().body["startTimeMillis"].get<std::int64_t>());
  CHECK(comet.writes("key1", "log-other") ==
        std::vector<json>{{{"key", "Created from"}, {"value", "torchfit"}, {"experimentKey", "key1"}}});

  // Every argument as args/<name>, its value as Python's str(), source manual, all in one batch request.
  const auto experiment = comet.experiment("key1");
  CHECK(comet.writes("key1", "parameter batch").size() == 1);
  CHECK(comet.writes("key1", "parameter").empty());
  CHECK(experiment.parameters.size() == run.args.to_json().size());
  CHECK(experiment.parameters.at("args/learning_rate") == "5e-05");
  CHECK(experiment.parameters.at("args/output_dir") == tmp.path().string());
  CHECK(experiment.parameters.at("args/report_to") == "['none']");
  for (const auto& [name, source] : experiment.parameter_sources) CHECK(source == "manual");
  CHECK(experiment.others.at("Created from") == "torchfit");
  REQUIRE(experiment.start_ms);
  REQUIRE(experiment.end_ms);
  CHECK(*experiment.end_ms >= *experiment.start_ms);

  // Metrics: one batch request per log entry, none one by one.
  CHECK(comet.writes("key1", "metric batch").size() == 7);
  CHECK(comet.writes("key1", "metric").empty());
  // HF's rewritten names, the global step, the epoch's whole part, a timestamp in milliseconds.
  std::vector<std::string> series;
  for (const auto& m : experiment.metrics) {
    CHECK(m["timestamp"].get<std::int64_t>() > 1700000000000);
    series.push_back(fmt::format("{}@{}/{}={}", m["metricName"].get<std::string>(),
                                 m["step"].get<std::int64_t>(), m["epoch"].get<std::int64_t>(),
                                 m["metricValue"].dump()));
  }
  // (TrackerRun leaves state.epoch at 0.)
  CHECK(series == std::vector<std::string>{"train/loss@1/0=1.0",
                                           "train/learning_rate@1/0=5e-05",
                                           "train/epoch@1/0=0.25",
                                           "train/loss@2/0=0.5",
                                           "train/learning_rate@2/0=5e-05",
                                           "train/epoch@2/0=0.5",
                                           "eval/loss@2/0=0.5",
                                           "eval/acc@1@2/0=0.75",
                                           "train/epoch@2/0=0.5",
                                           "train/loss@3/0=0.3333333333333333",
                                           "train/learning_rate@3/0=5e-05",
                                           "train/epoch@3/0=0.75",
                                           "train/loss@4/0=0.25",
                                           "train/learning_rate@4/0=5e-05",
                                           "train/epoch@4/0=1.0",
                                           "eval/loss@4/0=0.5",
                                           "eval/acc@1@4/0=0.75",
                                           "train/epoch@4/0=1.0",
                                           "train/train_runtime@4/0=1.5",
                                           "train/train_loss@4/0=0.3",
                                           "train/total_flos@4/0=0"});
}

TEST_CASE_METHOD(CometServer, "Comet: booleans are sent as 1/0, NaN and infinities as text", "[comet]") {
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
  run.train_begin();
  run.log(1, {{"loss", std::nan("")},
              {"grad_norm", std::numeric_limits<double>::infinity()},
              {"low", -std::numeric_limits<double>::infinity()},
              {"flag", true}});
  callback->finish();
  std::vector<json> values;
  for (const auto& m : comet.experiment("key1").metrics) values.push_back(m["metricValue"]);
  CHECK(values == std::vector<json>{"NaN", "Infinity", "-Infinity", 1});
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: heartbeats at the interval the server names, while idle and while busy, none after the end",
    "[comet]") {
  comet.beat_ms = 20;
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
  run.train_begin();
  // Heartbeats come while nothing else is sent.
  CHECK(test::eventually([&] { return comet.beats("key1") >= 4; }));
  // Busy: twelve metric batches of 10 ms each last longer than the interval, and heartbeats go between them.
  comet.write_delay_ms = 10;
  for (int i = 1; i <= 12; ++i) run.log(i, {{"loss", 1.0 / i}});
  callback->flush();
  const auto sequence = comet.sequence();
  const auto first = std::find(sequence.begin(), sequence.end(), "metric batch");
  const auto last = std::find(sequence.rbegin(), sequence.rend(), "metric batch").base();
  REQUIRE(first < last);
  CHECK(std::count(first, last, "metric batch") == 12);
  CHECK(std::count(first, last, "beat") >= 1);
  callback->finish();
  const int at_end = comet.beats("key1");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(comet.beats("key1") == at_end);
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: settings come from the environment, else ~/.comet.config, the workspace else the key's only one",
    "[comet]") {
  TempDir tmp;
  CaptureLog quiet;  // the dropped-string warning of simulate()'s summary
  ScopedEnv no_workspace("COMET_WORKSPACE", std::nullopt);
  const auto train = [&] {
    Run run(tmp.path());
    auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
    simulate(run, 0, 1);
    return callback->experiment_key();
  };
  SECTION("the configuration file") {
    const fs::path file = tmp.path() / "comet.config";
    test::write_file(file,
                     "# Comet\n[other]\nworkspace = wrong\n\n[comet]\napi_key = comet-key\nworkspace = team\n"
                     "project_name = digits\n");
    ScopedEnv config("COMET_CONFIG", file.string()), no_key("COMET_API_KEY", std::nullopt);
    CHECK(train() == "key1");
    CHECK(comet.creates()[0] ==
          json{{"workspaceName", "team"}, {"projectName", "digits"}, {"experimentName", "unit-run"}});
  }
  SECTION("the environment over the file") {
    const fs::path file = tmp.path() / "comet.config";
    test::write_file(file, "[comet]\nworkspace = team\nproject_name = digits\n");
    ScopedEnv config("COMET_CONFIG", file.string()), project("COMET_PROJECT_NAME", "mine"),
        ws("COMET_WORKSPACE", "me");
    train();
    CHECK(comet.creates()[0]["workspaceName"] == "me");
    CHECK(comet.creates()[0]["projectName"] == "mine");
  }
  SECTION("no workspace set: the key's only one") {
    train();
    CHECK(comet.creates()[0]["workspaceName"] == "ws");
  }
  SECTION("no workspace set, and the key has several") {
    comet.workspace_names = {"a", "b"};
    check_refused<CometCallback>(tmp.path(), fast_options(server.uri()),
                                 "COMET_WORKSPACE is not set and the API key has 2 workspaces: a, b: set it");
    CHECK(comet.creates().empty());
  }
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: COMET_EXPERIMENT_KEY continues that experiment, COMET_MODE picks or refuses a mode by name",
    "[comet]") {
  TempDir tmp;
  CaptureLog quiet;  // the dropped-string warning of simulate()'s summary
  const std::string modes = "COMET_MODE must be online, offline, disabled, get, get_or_create or create";
  SECTION("continued") {
    comet.add_experiment("earlier1");
    ScopedEnv key("COMET_EXPERIMENT_KEY", "earlier1");
    Run run(tmp.path(), 2);
    auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
    simulate(run, 2, 3);
    callback->finish();
    CHECK(comet.creates().empty());
    CHECK(callback->experiment_key() == "earlier1");
    CHECK(comet.experiment("earlier1").metrics.front()["step"] == 3);
  }
  SECTION("continuing a key the server does not know: Comet's answer, nothing created") {
    ScopedEnv key("COMET_EXPERIMENT_KEY", "unknown1");
    check_refused<CometCallback>(tmp.path(), fast_options(server.uri()),
                                 "Comet write/experiment/set-status at " + server.uri() +
                                     "/api/rest/v2/write/experiment/set-status?experimentKey=unknown1: HTTP "
                                     "400: Experiment not found (sdk_error_code 90403)");
    CHECK(comet.creates().empty());
  }
  SECTION("create makes a new experiment even with a key") {
    ScopedEnv key("COMET_EXPERIMENT_KEY", "earlier1"), mode("COMET_MODE", "create");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
    simulate(run, 0, 1);
    CHECK(callback->experiment_key() == "key1");
  }
  SECTION("get without a key") {
    ScopedEnv mode("COMET_MODE", "get");
    check_refused<CometCallback>(
        tmp.path(), fast_options(server.uri()),
        "COMET_MODE=get needs COMET_EXPERIMENT_KEY: the key of the experiment to continue");
  }
  SECTION("disabled") {
    ScopedEnv mode("COMET_MODE", "DISABLED");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
    CaptureLog log;
    simulate(run, 0, 2);
    CHECK(log.text().empty());
    CHECK(callback->experiment_key().empty());
    CHECK(server.requests().empty());
  }
  SECTION("offline") {
    ScopedEnv mode("COMET_MODE", "offline");
    check_refused<CometCallback>(
        tmp.path(), fast_options(server.uri()),
        "COMET_MODE=offline: offline Comet experiments are not supported (torchfit talks to the Comet "
        "server directly); log offline with --report_to tensorboard or csv, or unset COMET_MODE");
  }
  SECTION("unknown") {
    ScopedEnv mode("COMET_MODE", "sideways");
    check_refused<CometCallback>(tmp.path(), fast_options(server.uri()), modes + " (got \"sideways\")");
  }
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: a missing or refused key, or a failing server, disables the tracker with one warning",
    "[comet]") {
  TempDir tmp;
  SECTION("no key") {
    ScopedEnv no_key("COMET_API_KEY", std::nullopt);
    check_refused<CometCallback>(tmp.path(), fast_options(server.uri()),
                                 "no Comet API key: set COMET_API_KEY, or api_key in the [comet] section of "
                                 "~/.comet.config");
    CHECK(server.requests().empty());
  }
  SECTION("a refused key: Comet's message and error code, nothing retried") {
    ScopedEnv key("COMET_API_KEY", "bad-key");
    check_refused<CometCallback>(
        tmp.path(), fast_options(server.uri()),
        "Comet write/experiment/create at " + server.uri() +
            "/api/rest/v2/write/experiment/create: HTTP 401 (check the API key): api key invalid "
            "(sdk_error_code 90212)");
    CHECK(server.requests().size() == 1);
  }
  SECTION("a failing server: reported at the next event, the experiment is not ended") {
    comet.write_status = 503;
    // The start time's write fails on the background thread.
    test::check_background_failure<CometCallback>(
        tmp.path(), fast_options(server.uri()),
        "POST " + server.uri() + "/api/rest/v2/write/experiment/set-start-end-time failed after 3 attempts",
        [](Run&) {});
  }
}

TEST_CASE_METHOD(CometServer,
                 "Comet: a Trainer reporting to comet_ml logs its graph and every loss at its step",
                 "[comet]") {
  ScopedEnv url("COMET_URL_OVERRIDE", server.uri() + "/clientlib/");
  TempDir tmp;
  const auto log_history = test::train_reporting_to("comet_ml", tmp.path(), [](auto&) {});
  const auto graphs = comet.writes("key1", "graph");
  REQUIRE(graphs.size() == 1);
  CHECK(graphs[0]["graph"].get<std::string>().find("torch::nn::Linear(in_features=4, out_features=16") !=
        std::string::npos);
  std::vector<json> losses;
  for (const auto& m : comet.experiment("key1").metrics)
    if (m["metricName"] == "train/loss") losses.push_back({m["step"], m["metricValue"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
  CHECK(comet.writes("key1").back().body.contains("endTimeMillis"));
}

TEST_CASE_METHOD(CometServer,
                 "Comet: a log entry of more than 1000 numbers goes in batches of 1000, in order",
                 "[comet]") {
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
  run.train_begin();
  Logs logs;
  for (int i = 0; i < 1500; ++i) logs[fmt::format("eval_m{:04d}", i)] = i;
  run.log(1, logs);
  callback->finish();
  const auto batches = comet.writes("key1", "metric batch");
  REQUIRE(batches.size() == 2);
  CHECK(batches[0]["values"].size() == 1000);
  CHECK(batches[1]["values"].size() == 500);
  const auto metrics = comet.experiment("key1").metrics;
  REQUIRE(metrics.size() == 1500);
  CHECK(metrics.front()["metricName"] == "eval/m0000");
  CHECK(metrics.back()["metricName"] == "eval/m1499");
  CHECK(batches[0]["values"][0] == json{{"metricName", "eval/m0000"},
                                        {"metricValue", 0},
                                        {"step", 1},
                                        {"epoch", 0},
                                        {"context", nullptr},
                                        {"timestamp", batches[0]["values"][0]["timestamp"]}});
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: the model configuration given in the options is logged as config/ parameters, flattened",
    "[comet]") {
  TempDir tmp;
  CaptureLog quiet;  // the dropped-string warning of simulate()'s summary
  SECTION("an object") {
    Run run(tmp.path());
    CometOptions options = fast_options(server.uri());
    options.model_config = json{{"hidden_size", 16}, {"dropout", 0.1}, {"encoder", {{"layers", 2}}}};
    auto callback = run.handler.add_callback<CometCallback>(options);
    simulate(run, 0, 1);
    callback->finish();
    const auto parameters = comet.experiment("key1").parameters;
    CHECK(parameters.at("config/hidden_size") == "16");
    CHECK(parameters.at("config/dropout") == "0.1");
    CHECK(parameters.at("config/encoder/layers") == "2");
    CHECK(parameters.size() == run.args.to_json().size() + 3);
    CHECK(comet.writes("key1", "parameter batch").size() == 1);
  }
  SECTION("not an object") {
    CometOptions options = fast_options(server.uri());
    options.model_config = json::array({1, 2});
    check_refused<CometCallback>(tmp.path(), options,
                                 "CometOptions::model_config must be a JSON object (got [1,2])");
  }
}

TEST_CASE_METHOD(
    CometServer,
    "Comet: an outage of the batch endpoint loses no metric: the batches arrive in order once it is back",
    "[comet][outage]") {
  TempDir tmp;
  Run run(tmp.path());
  CometOptions options = fast_options(server.uri());
  options.retry = RetryPolicy{0.01, 0.05, 2};  // no limit: retried for as long as the run lasts
  auto callback = run.handler.add_callback<CometCallback>(options);
  CaptureLog log;
  server.fail_for(std::chrono::milliseconds(800), MockServer::Outage::unavailable, "/clientlib/batch/");
  simulate(run, 0, 4);  // on_train_end waits out the outage
  callback->finish();
  CHECK(server.failed_requests() >= 3);
  CHECK(log.text().find("failed") == std::string::npos);
  std::vector<json> points;
  for (const auto& m : comet.experiment("key1").metrics) points.push_back({m["metricName"], m["step"]});
  std::vector<json> expected;
  for (const auto& entry : run.state.log_history)
    for (auto it = entry.begin(); it != entry.end(); ++it)
      if (it.key() != "step" && (it.value().is_number() || it.value().is_boolean()))
        expected.push_back({integrations::rewrite_log_key(it.key()), entry["step"]});
  CHECK(points == expected);
  CHECK(comet.experiment("key1").parameters.size() == run.args.to_json().size());
}

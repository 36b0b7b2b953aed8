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

// Comet's REST API as far as the tracker uses it: experiments created on demand, every write recorded per
// experiment and endpoint, heartbeats answered with `beat_ms`.
class FakeComet {
 public:
  struct Write {
    std::string endpoint;
    json body;
  };
  std::vector<std::string> workspace_names{"ws"};
  int beat_ms = 60000;
  int write_status = 200;
  int write_delay_ms = 0;  // a slow server: each write takes this long

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string prefix = "/api/rest/v2/";
    if (r.headers.find("\r\nAuthorization: comet-key\r\n") == std::string::npos)
      return {401, R"({"msg":"api key invalid","code":401,"sdk_error_code":90212})"};
    if (r.target.rfind(prefix, 0) != 0) return {404, R"({"msg":"not found"})"};
    const std::string endpoint = r.target.substr(prefix.size());
    if (r.method == "GET" && endpoint == "workspaces")
      return {200, json{{"workspaceNames", workspace_names}}.dump()};
    if (r.method == "GET" && endpoint.rfind("write/experiment/set-status?experimentKey=", 0) == 0) {
      ++beats_[endpoint.substr(endpoint.find('=') + 1)];
      sequence_.push_back("beat");
      return {200, json{{"isAliveBeatDurationMillis", beat_ms}, {"gpuMonitorIntervalMillis", 60000}}.dump()};
    }
    if (r.method != "POST") return {405, R"({"msg":"method"})"};
    const json body = json::parse(r.body);
    if (endpoint == "write/experiment/create") {
      creates_.push_back(body);
      const std::string key = "key" + std::to_string(creates_.size());
      return {200, json{{"experimentKey", key},
                        {"workspaceName", body["workspaceName"]},
                        {"projectName", body["projectName"]},
                        {"link", "https://comet.example/" + body["workspaceName"].get<std::string>() + "/" +
                                     body["projectName"].get<std::string>() + "/" + key}}
                       .dump()};
    }
    if (endpoint.rfind("write/experiment/", 0) != 0) return {404, R"({"msg":"not found"})"};
    if (write_status != 200) return {write_status, R"({"msg":"unavailable"})"};
    std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
    writes_[body["experimentKey"]].push_back({endpoint.substr(17), body});
    sequence_.push_back(endpoint.substr(17));
    return {200, R"({"msg":"Saved"})"};
  }

  std::vector<json> creates() {
    std::lock_guard<std::mutex> lock(mutex_);
    return creates_;
  }
  std::vector<Write> writes(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    return writes_[key];
  }
  std::vector<json> writes(const std::string& key, const std::string& endpoint) {
    std::vector<json> out;
    for (const auto& w : writes(key))
      if (w.endpoint == endpoint) out.push_back(w.body);
    return out;
  }
  int beats(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    return beats_[key];
  }
  /// Heartbeats ("beat") and writes (their endpoints) in the order they arrived.
  std::vector<std::string> sequence() {
    std::lock_guard<std::mutex> lock(mutex_);
    return sequence_;
  }

 private:
  std::mutex mutex_;
  std::vector<json> creates_;
  std::map<std::string, std::vector<Write>> writes_;
  std::map<std::string, int> beats_;
  std::vector<std::string> sequence_;
};

CometOptions fast_options(const std::string& uri) {
  CometOptions o;
  o.url = uri + "/clientlib/";
  o.retry = RetryPolicy{0.01, 60, 5, 2, 10};
  return o;
}

}  // namespace

TEST_CASE(
    "Comet: the experiment, args/ parameters, HF's metric names at the global step, start and end times",
    "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
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

  // Every argument as args/<name>, its value as Python's str().
  const auto params = comet.writes("key1", "parameter");
  CHECK(params.size() == run.args.to_json().size());
  std::map<std::string, std::string> by_name;
  for (const auto& p : params) by_name[p["parameterName"]] = p["parameterValue"];
  CHECK(by_name["args/learning_rate"] == "5e-05");
  CHECK(by_name["args/output_dir"] == tmp.path().string());
  CHECK(by_name["args/report_to"] == "['none']");

  // Metrics: HF's rewritten names, the global step, the epoch's whole part, a timestamp in milliseconds.
  std::vector<std::string> series;
  for (const auto& m : comet.writes("key1", "metric")) {
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

TEST_CASE("Comet: booleans are sent as 1/0, NaN and infinities as text", "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
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
  for (const auto& m : comet.writes("key1", "metric")) values.push_back(m["metricValue"]);
  CHECK(values == std::vector<json>{"NaN", "Infinity", "-Infinity", 1});
}

TEST_CASE("Comet: heartbeats at the interval the server names, while idle and while busy, none after the end",
          "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  comet.beat_ms = 20;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
  run.train_begin();
  // Heartbeats come while nothing else is sent.
  CHECK(test::eventually([&] { return comet.beats("key1") >= 4; }));
  // Busy: twelve metric writes of 10 ms each last longer than the interval, and heartbeats go between them.
  comet.write_delay_ms = 10;
  Logs logs;
  for (int i = 0; i < 12; ++i) logs["m" + std::to_string(i)] = i;
  run.log(1, logs);
  callback->flush();
  const auto sequence = comet.sequence();
  const auto first = std::find(sequence.begin(), sequence.end(), "metric");
  const auto last = std::find(sequence.rbegin(), sequence.rend(), "metric").base();
  REQUIRE(first < last);
  CHECK(std::count(first, last, "metric") == 12);
  CHECK(std::count(first, last, "beat") >= 1);
  callback->finish();
  const int at_end = comet.beats("key1");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(comet.beats("key1") == at_end);
}

TEST_CASE(
    "Comet: settings come from the environment, else ~/.comet.config, the workspace else the key's only one",
    "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
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

TEST_CASE("Comet: COMET_EXPERIMENT_KEY continues that experiment, COMET_MODE picks or refuses a mode by name",
          "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
  TempDir tmp;
  CaptureLog quiet;  // the dropped-string warning of simulate()'s summary
  const std::string modes = "COMET_MODE must be online, offline, disabled, get, get_or_create or create";
  SECTION("continued") {
    ScopedEnv key("COMET_EXPERIMENT_KEY", "earlier1");
    Run run(tmp.path(), 2);
    auto callback = run.handler.add_callback<CometCallback>(fast_options(server.uri()));
    simulate(run, 2, 3);
    callback->finish();
    CHECK(comet.creates().empty());
    CHECK(callback->experiment_key() == "earlier1");
    CHECK(comet.writes("earlier1", "metric").front()["step"] == 3);
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

TEST_CASE("Comet: a missing or refused key, or a failing server, disables the tracker with one warning",
          "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
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

TEST_CASE("Comet: a Trainer reporting to comet_ml logs its graph and every loss at its step", "[comet]") {
  CleanCometEnv env;
  FakeComet comet;
  MockServer server([&](const HttpRequest& r) { return comet.handle(r); });
  ScopedEnv url("COMET_URL_OVERRIDE", server.uri() + "/clientlib/");
  TempDir tmp;
  const auto log_history = test::train_reporting_to("comet_ml", tmp.path(), [](auto&) {});
  const auto graphs = comet.writes("key1", "graph");
  REQUIRE(graphs.size() == 1);
  CHECK(graphs[0]["graph"].get<std::string>().find("torch::nn::Linear(in_features=4, out_features=16") !=
        std::string::npos);
  std::vector<json> losses;
  for (const auto& m : comet.writes("key1", "metric"))
    if (m["metricName"] == "train/loss") losses.push_back({m["step"], m["metricValue"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
  CHECK(comet.writes("key1").back().body.contains("endTimeMillis"));
}

// SPDX-License-Identifier: MIT
// The MLflow tracker: the mlruns file store read back with an independent reader, the REST client against a
// mock tracking server on 127.0.0.1 (request bodies, batching limits, retries, timeouts, an outage), resume
// and failure isolation.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/integrations/mlflow.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::read_file;
using torchfit::test::TempDir;

using torchfit::test::ScopedEnv;

using Run = torchfit::test::TrackerRun;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::Recorder;
using torchfit::test::simulate;

namespace {

// Clears every MLflow variable the callback reads, so the machine's environment cannot leak into a test.
struct CleanMlflowEnv {
  ScopedEnv vars[12] = {
      {"MLFLOW_TRACKING_URI", std::nullopt},      {"MLFLOW_EXPERIMENT_NAME", std::nullopt},
      {"MLFLOW_EXPERIMENT_ID", std::nullopt},     {"MLFLOW_RUN_ID", std::nullopt},
      {"MLFLOW_NESTED_RUN", std::nullopt},        {"MLFLOW_TAGS", std::nullopt},
      {"MLFLOW_FLATTEN_PARAMS", std::nullopt},    {"MLFLOW_MAX_LOG_PARAMS", std::nullopt},
      {"HF_MLFLOW_LOG_ARTIFACTS", std::nullopt},  {"MLFLOW_TRACKING_USERNAME", std::nullopt},
      {"MLFLOW_TRACKING_PASSWORD", std::nullopt}, {"MLFLOW_TRACKING_TOKEN", std::nullopt}};
};

// ---- an independent reader of the mlruns layout ----

std::map<std::string, std::string> read_yaml_map(const fs::path& path) {
  std::map<std::string, std::string> out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    REQUIRE(colon != std::string::npos);
    std::string value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    out[line.substr(0, colon)] = value;
  }
  return out;
}

struct Point {
  int64_t timestamp;
  std::string value;
  int64_t step;
};

std::vector<Point> read_metric(const fs::path& path) {
  std::vector<Point> out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    Point p{};
    fields >> p.timestamp >> p.value >> p.step;
    REQUIRE(fields);
    std::string extra;
    REQUIRE_FALSE(fields >> extra);
    out.push_back(p);
  }
  return out;
}

std::vector<int64_t> steps_of(const std::vector<Point>& points) {
  std::vector<int64_t> out;
  for (const auto& p : points) out.push_back(p.step);
  return out;
}

std::vector<fs::path> run_dirs(const fs::path& experiment) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(experiment))
    if (e.is_directory() && e.path().filename() != "tags") out.push_back(e.path());
  return out;
}

// A tracking server that knows no experiment until created.
std::pair<int, std::string> mlflow_server(const HttpRequest& r) {
  const std::string prefix = "/api/2.0/mlflow/";
  if (r.target.rfind(prefix + "experiments/get-by-name", 0) == 0)
    return {404, R"({"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Could not find experiment"})"};
  if (r.target == prefix + "experiments/create") return {200, R"({"experiment_id":"7"})"};
  if (r.target == prefix + "runs/create")
    return {200,
            R"({"run":{"info":{"run_id":"abc123","status":"RUNNING","artifact_uri":"s3://b/7/abc123"}}})"};
  if (r.target == prefix + "runs/log-batch") return {200, "{}"};
  if (r.target == prefix + "runs/update") return {200, R"({"run_info":{}})"};
  return {404, R"({"error_code":"ENDPOINT_NOT_FOUND","message":"no"})"};
}

std::vector<HttpRequest> with_target(const std::vector<HttpRequest>& all, const std::string& endpoint) {
  std::vector<HttpRequest> out;
  for (const auto& r : all)
    if (r.target.rfind("/api/2.0/mlflow/" + endpoint, 0) == 0) out.push_back(r);
  return out;
}

// Short back-off; generous limits unless a test exercises them: a loaded machine must pass healthy calls.
MLflowOptions fast_rest(const std::string& uri, double request_timeout_s = 5, double total_timeout_s = 10) {
  MLflowOptions o;
  o.tracking_uri = uri;
  o.retry = RetryPolicy{0.01, 60, request_timeout_s, 3, total_timeout_s};
  return o;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// File store

TEST_CASE(
    "MLflow file store: Default experiment, run meta.yaml, params, tags and metric lines in MLflow's layout",
    "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  const fs::path root = tmp / "mlruns";
  ScopedEnv uri("MLFLOW_TRACKING_URI", "file://" + root.string());
  ScopedEnv tags("MLFLOW_TAGS", R"({"team": "vision", "attempt": 3})");
  Run run(tmp / "out");
  auto mlflow = run.handler.add_callback<MLflowCallback>();
  CaptureLog log;
  simulate(run, 0, 4);

  // The Default experiment and the trash directory, as MLflow creates a new store.
  CHECK(fs::is_directory(root / ".trash"));
  auto experiment = read_yaml_map(root / "0" / "meta.yaml");
  CHECK(experiment["name"] == "Default");
  CHECK(experiment["experiment_id"] == "'0'");
  CHECK(experiment["lifecycle_stage"] == "active");
  CHECK(experiment["artifact_location"] == "file://" + root.string() + "/0");
  CHECK(std::stoll(experiment["creation_time"]) > 1600000000000);

  const auto runs = run_dirs(root / "0");
  REQUIRE(runs.size() == 1);
  const fs::path dir = runs[0];
  CHECK(dir.filename() == mlflow->run_id());
  CHECK(mlflow->run_id().size() == 32);
  auto meta = read_yaml_map(dir / "meta.yaml");
  CHECK(meta["run_id"] == mlflow->run_id());
  CHECK(meta["run_uuid"] == mlflow->run_id());
  CHECK(meta["run_name"] == "unit-run");
  CHECK(meta["experiment_id"] == "'0'");
  CHECK(meta["status"] == "3");  // FINISHED
  CHECK(meta["source_type"] == "4");
  CHECK(meta["lifecycle_stage"] == "active");
  CHECK(meta["tags"] == "[]");
  CHECK(meta["entry_point_name"] == "''");
  CHECK(meta["artifact_uri"] == "file://" + dir.string() + "/artifacts");
  CHECK(std::stoll(meta["end_time"]) >= std::stoll(meta["start_time"]));

  CHECK(read_file(dir / "tags" / "mlflow.runName") == "unit-run");
  CHECK(read_file(dir / "tags" / "mlflow.source.type") == "LOCAL");
  CHECK(read_file(dir / "tags" / "team") == "vision");
  CHECK(read_file(dir / "tags" / "attempt") == "3");
  CHECK(read_file(dir / "params" / "output_dir") == (tmp / "out").string());
  CHECK(read_file(dir / "params" / "learning_rate") == "5e-05");
  CHECK(read_file(dir / "params" / "run_name") == "unit-run");
  CHECK(read_file(dir / "params" / "report_to") == "['none']");
  CHECK(read_file(dir / "params" / "resume_from_checkpoint") == "None");

  // Raw keys (not rewritten), one line per log at the global step; ints as floats; '@' sanitised.
  const auto loss = read_metric(dir / "metrics" / "loss");
  CHECK(steps_of(loss) == std::vector<int64_t>{1, 2, 3, 4});
  CHECK(loss[0].value == "1.0");
  CHECK(loss[2].value == "0.3333333333333333");
  CHECK(steps_of(read_metric(dir / "metrics" / "eval_loss")) == std::vector<int64_t>{2, 4});
  CHECK(steps_of(read_metric(dir / "metrics" / "eval_acc_1")) == std::vector<int64_t>{2, 4});
  CHECK(read_metric(dir / "metrics" / "total_flos")[0].value == "0.0");
  CHECK(read_metric(dir / "metrics" / "train_runtime")[0].step == 4);
  CHECK_FALSE(fs::exists(dir / "metrics" / "note"));
  CHECK(log.text() ==
        "[torchfit] warning: Trainer is attempting to log a value of \"done\" of type <class 'str'> for key "
        "\"note\" as a metric. MLflow's log_metric() only accepts float and int types so we dropped this "
        "attribute.\n");
}

TEST_CASE("MLflow file store: MLFLOW_EXPERIMENT_NAME creates the experiment once and later runs reuse it",
          "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  ScopedEnv uri("MLFLOW_TRACKING_URI", (tmp / "store").string());
  ScopedEnv name("MLFLOW_EXPERIMENT_NAME", "digits: v2");
  std::string first_experiment;
  CaptureLog log;
  for (int i = 0; i < 2; ++i) {
    Run run(tmp / "out");
    auto mlflow = run.handler.add_callback<MLflowCallback>();
    simulate(run, 0, 2);
    if (i == 0) first_experiment = mlflow->experiment_id();
    CHECK(mlflow->experiment_id() == first_experiment);
  }
  CHECK(first_experiment != "0");
  const auto meta = read_yaml_map(tmp / "store" / first_experiment / "meta.yaml");
  CHECK(meta.at("name") == "'digits: v2'");
  CHECK(meta.at("experiment_id") == "'" + first_experiment + "'");
  CHECK(run_dirs(tmp / "store" / first_experiment).size() == 2);
}

TEST_CASE("MLflow file store: parameters are flattened on request, over-long values cut with one warning",
          "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  ScopedEnv uri("MLFLOW_TRACKING_URI", (tmp / "mlruns").string());
  ScopedEnv flatten("MLFLOW_FLATTEN_PARAMS", "True");
  Run run(tmp / "out");
  run.args.lr_scheduler_kwargs = {{"power", 2.0}, {"inner", {{"x", 1}}}};
  run.args.run_name = std::string(7000, 'r');
  run.args.logging_dir = std::string(6500, 'h');
  auto mlflow = run.handler.add_callback<MLflowCallback>();
  CaptureLog log;
  run.train_begin();
  const fs::path dir = tmp / "mlruns" / "0" / mlflow->run_id();
  CHECK(read_file(dir / "params" / "lr_scheduler_kwargs.power") == "2.0");
  CHECK(read_file(dir / "params" / "lr_scheduler_kwargs.inner.x") == "1");
  CHECK_FALSE(fs::exists(dir / "params" / "lr_scheduler_kwargs"));
  CHECK(read_file(dir / "params" / "run_name") == std::string(6000, 'r'));
  CHECK(read_file(dir / "params" / "logging_dir") == std::string(6000, 'h'));
  CHECK(read_file(dir / "tags" / "mlflow.runName") == std::string(7000, 'r'));  // tags allow 8000
  CHECK(
      log.text() ==
      "[torchfit] warning: MLflowCallback: parameter values longer than MLflow's 6000 characters were cut to "
      "6000: logging_dir, run_name\n");
}

TEST_CASE("MLflow file store: resuming MLFLOW_RUN_ID from a checkpoint drops the points after it, none lost",
          "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  ScopedEnv uri("MLFLOW_TRACKING_URI", (tmp / "mlruns").string());
  std::string run_id;
  {
    Run first(tmp / "out");
    auto mlflow = first.handler.add_callback<MLflowCallback>();
    first.train_begin();
    for (int64_t step = 1; step <= 5; ++step) first.log(step, {{"loss", double(step)}});
    run_id = mlflow->run_id();  // interrupted after step 5: no on_train_end
  }
  const fs::path dir = tmp / "mlruns" / "0" / run_id;
  CHECK(read_yaml_map(dir / "meta.yaml")["status"] == "1");  // still RUNNING

  ScopedEnv resume("MLFLOW_RUN_ID", run_id);
  Run second(tmp / "out", /*resumed_step=*/3);
  auto mlflow = second.handler.add_callback<MLflowCallback>();
  second.train_begin();
  CHECK(steps_of(read_metric(dir / "metrics" / "loss")) == std::vector<int64_t>{1, 2, 3});
  for (int64_t step = 4; step <= 6; ++step) second.log(step, {{"loss", double(step) + 0.5}});
  second.train_end();
  CHECK(mlflow->run_id() == run_id);
  const auto loss = read_metric(dir / "metrics" / "loss");
  CHECK(steps_of(loss) == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
  CHECK(loss[3].value == "4.5");
  CHECK(read_yaml_map(dir / "meta.yaml")["status"] == "3");
  CHECK(run_dirs(tmp / "mlruns" / "0").size() == 1);
}

TEST_CASE("MLflow file store: HF_MLFLOW_LOG_ARTIFACTS copies each checkpoint into the run's artifacts",
          "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  ScopedEnv uri("MLFLOW_TRACKING_URI", (tmp / "mlruns").string());
  ScopedEnv artifacts("HF_MLFLOW_LOG_ARTIFACTS", "1");
  Run run(tmp / "out");
  auto mlflow = run.handler.add_callback<MLflowCallback>();
  run.train_begin();
  const fs::path checkpoint = tmp / "out" / "checkpoint-2";
  fs::create_directories(checkpoint / "sub");
  torchfit::test::write_file(checkpoint / "sub" / "model.pt", "weights");
  run.state.global_step = 2;
  run.handler.on_save(run.args, run.state, run.control, checkpoint);
  CHECK(read_file(tmp / "mlruns" / "0" / mlflow->run_id() / "artifacts" / "checkpoint-2" / "sub" /
                  "model.pt") == "weights");
}

TEST_CASE("MLflow file store: an unusable store is reported once, the tracker disabled, training goes on",
          "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  torchfit::test::write_file(tmp / "blocker", "a file where a directory should be");
  ScopedEnv uri("MLFLOW_TRACKING_URI", (tmp / "blocker" / "mlruns").string());
  Run run(tmp / "out");
  run.handler.add_callback<MLflowCallback>();
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  simulate(run, 0, 4);
  CHECK(recorder->logs_seen == 7);
  CHECK(recorder->ended);
  const std::string text = log.text();
  CHECK(
      text.rfind("[torchfit] warning: MLflowCallback failed and is disabled for the rest of this run: cannot "
                 "create the MLflow directory ",
                 0) == 0);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  CHECK(run.handler.callback_list() == "Recorder");
}

TEST_CASE("MLflow: a tracking URI of an unsupported scheme is refused with the accepted forms", "[mlflow]") {
  CleanMlflowEnv env;
  TempDir tmp;
  ScopedEnv uri("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db");
  Run run(tmp / "out");
  run.handler.add_callback<MLflowCallback>();
  CaptureLog log;
  run.train_begin();
  CHECK(log.text() ==
        "[torchfit] warning: MLflowCallback failed and is disabled for the rest of this run: "
        "MLFLOW_TRACKING_URI "
        "\"sqlite:///mlflow.db\" is not supported: use an http(s):// tracking server, a file: URI or a "
        "directory "
        "path\n");
}

TEST_CASE("MLflow: metric names are sanitised as HF v5 does and validated as MLflow does", "[mlflow]") {
  CHECK(torchfit::detail::mlflow_sanitize_metric_key("eval_acc@1 (top)") == "eval_acc_1 _top_");
  CHECK(torchfit::detail::mlflow_sanitize_metric_key("eval/loss: x-1.5") == "eval/loss: x-1.5");
  CHECK(torchfit::detail::mlflow_key_problem("train/loss").empty());
  CHECK(torchfit::detail::mlflow_key_problem("/abs") == "it is not a relative path");
  CHECK(torchfit::detail::mlflow_key_problem("a//b") == "it is not a relative path");
  CHECK(torchfit::detail::mlflow_key_problem("a/../b") == "it holds a '.' or '..' path component");
  CHECK(torchfit::detail::mlflow_key_problem(std::string(251, 'k')) == "it is longer than 250 characters");
}

// ---------------------------------------------------------------------------------------------------------------
// REST

TEST_CASE("MLflow REST: experiment, run, parameters in batches of 100, metrics per log, FINISHED at the end",
          "[mlflow]") {
  CleanMlflowEnv env;
  MockServer server(mlflow_server);
  TempDir tmp;
  ScopedEnv name("MLFLOW_EXPERIMENT_NAME", "my exp/1");
  ScopedEnv token("MLFLOW_TRACKING_TOKEN", "secret");
  ScopedEnv flatten("MLFLOW_FLATTEN_PARAMS", "true");
  Run run(tmp / "out");
  for (int i = 0; i < 100; ++i) run.args.lr_scheduler_kwargs["k" + std::to_string(i)] = i;
  auto mlflow = run.handler.add_callback<MLflowCallback>(fast_rest(server.uri()));
  CaptureLog log;
  simulate(run, 0, 2);
  CHECK(mlflow->experiment_id() == "7");
  CHECK(mlflow->run_id() == "abc123");
  const auto all = server.requests();

  REQUIRE(all.size() >= 5);
  for (const auto& r : all)
    CHECK(r.headers.find("\r\nAuthorization: Bearer secret\r\n") != std::string::npos);
  CHECK(all[0].method == "GET");
  CHECK(all[0].target == "/api/2.0/mlflow/experiments/get-by-name?experiment_name=my%20exp%2F1");
  CHECK(all[1].target == "/api/2.0/mlflow/experiments/create");
  CHECK(json::parse(all[1].body) == json{{"name", "my exp/1"}});
  CHECK(all[2].target == "/api/2.0/mlflow/runs/create");
  const json create = json::parse(all[2].body);
  CHECK(create["experiment_id"] == "7");
  CHECK(create["run_name"] == "unit-run");
  CHECK(create["start_time"].is_number_integer());
  std::map<std::string, std::string> tags;
  for (const auto& t : create["tags"]) tags[t["key"]] = t["value"];
  CHECK(tags["mlflow.runName"] == "unit-run");
  CHECK(tags["mlflow.source.type"] == "LOCAL");
  CHECK(tags.count("mlflow.user") == 1);

  // Parameters: every training argument once, at most 100 per request.
  const auto batches = with_target(all, "runs/log-batch");
  std::map<std::string, std::string> params;
  std::vector<json> metric_batches;
  for (const auto& b : batches) {
    const json body = json::parse(b.body);
    CHECK(body["run_id"] == "abc123");
    CHECK(body["params"].size() <= 100);
    for (const auto& p : body["params"]) CHECK(params.emplace(p["key"], p["value"]).second);
    if (!body["metrics"].empty()) metric_batches.push_back(body["metrics"]);
  }
  CHECK(params.size() == run.args.to_json().size() - 1 + 100);  // lr_scheduler_kwargs flattened
  CHECK(params.size() > 100);  // so the split into several requests was exercised
  CHECK(params["lr_scheduler_kwargs.k99"] == "99");
  CHECK(params["learning_rate"] == "5e-05");

  // One request per on_log: 2 train logs, 1 eval log, the summary (its string dropped).
  REQUIRE(metric_batches.size() == 4);
  CHECK(metric_batches[1][0]["key"] == "loss");
  CHECK(metric_batches[1][0]["value"] == 0.5);
  CHECK(metric_batches[1][0]["step"] == 2);
  CHECK(metric_batches[1][0]["timestamp"].is_number_integer());
  CHECK(metric_batches[2].size() == 3);
  CHECK(metric_batches[2][1]["key"] == "eval_acc_1");
  CHECK(metric_batches[3].size() == 3);

  const auto updates = with_target(all, "runs/update");
  REQUIRE(updates.size() == 1);
  const json update = json::parse(updates[0].body);
  CHECK(update["run_id"] == "abc123");
  CHECK(update["status"] == "FINISHED");
  CHECK(update["end_time"].is_number_integer());
  CHECK(log.text().find("failed") == std::string::npos);
}

TEST_CASE(
    "MLflow REST: more than 1000 metrics go in several batches, non-finite values as protobuf JSON strings",
    "[mlflow]") {
  CleanMlflowEnv env;
  MockServer server(mlflow_server);
  TempDir tmp;
  Run run(tmp / "out");
  auto mlflow = run.handler.add_callback<MLflowCallback>(fast_rest(server.uri()));
  run.train_begin();
  Logs logs = json::object();
  for (int i = 0; i < 2500; ++i) logs["m" + std::to_string(i)] = i * 0.5;
  logs["nan"] = std::numeric_limits<double>::quiet_NaN();
  logs["up"] = std::numeric_limits<double>::infinity();
  logs["down"] = -std::numeric_limits<double>::infinity();
  logs["flag"] = true;
  run.log(9, logs);
  mlflow->flush();
  std::vector<json> metric_batches;
  for (const auto& b : with_target(server.requests(), "runs/log-batch")) {
    const json body = json::parse(b.body);
    if (!body["metrics"].empty()) metric_batches.push_back(body["metrics"]);
  }
  REQUIRE(metric_batches.size() == 3);
  CHECK(metric_batches[0].size() == 1000);
  CHECK(metric_batches[1].size() == 1000);
  CHECK(metric_batches[2].size() == 504);
  CHECK(metric_batches[1][0]["key"] == "m1000");
  const json& last = metric_batches[2];
  CHECK(last[500] ==
        json{{"key", "nan"}, {"value", "NaN"}, {"timestamp", last[500]["timestamp"]}, {"step", 9}});
  CHECK(last[501]["value"] == "Infinity");
  CHECK(last[502]["value"] == "-Infinity");
  CHECK(last[503]["value"] == 1.0);
}

TEST_CASE("MLflow REST: 5xx answers are retried with back-off and the run goes on", "[mlflow]") {
  CleanMlflowEnv env;
  std::atomic<int> failures_left{2};
  MockServer server([&](const HttpRequest& r) -> std::pair<int, std::string> {
    if (r.target == "/api/2.0/mlflow/runs/create" && failures_left-- > 0)
      return {503, R"({"error_code":"TEMPORARILY_UNAVAILABLE","message":"busy"})"};
    return mlflow_server(r);
  });
  TempDir tmp;
  Run run(tmp / "out");
  auto mlflow = run.handler.add_callback<MLflowCallback>(fast_rest(server.uri()));
  CaptureLog log;
  simulate(run, 0, 2);
  CHECK(with_target(server.requests(), "runs/create").size() == 3);
  CHECK(mlflow->run_id() == "abc123");
  CHECK(with_target(server.requests(), "runs/update").size() == 1);
  CHECK(log.text().find("failed") == std::string::npos);
}

TEST_CASE("MLflow REST: a server that keeps failing or never answers disables the tracker with one warning",
          "[mlflow]") {
  CleanMlflowEnv env;
  const bool hang = GENERATE(false, true);
  MockServer server([&](const HttpRequest& r) -> std::pair<int, std::string> {
    if (r.target == "/api/2.0/mlflow/runs/log-batch" && r.body.find("\"metrics\":[{") != std::string::npos)
      return hang ? std::pair<int, std::string>{0, ""} : std::pair<int, std::string>{500, "oops"};
    return mlflow_server(r);
  });
  TempDir tmp;
  Run run(tmp / "out");
  run.handler.add_callback<MLflowCallback>(fast_rest(server.uri(), 0.5, 2));
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  simulate(run, 0, 4);
  CHECK(recorder->logs_seen == 7);
  CHECK(recorder->ended);
  // The failure happens in the background and disables the tracker at a later on_log or on_train_end, with
  // one warning whatever the timing (at most the summary's dropped-string warning comes before it).
  const std::string text = log.text();
  INFO(text);
  const std::string failure =
      "[torchfit] warning: MLflowCallback failed and is disabled for the rest of this run: POST " +
      server.uri() + "/api/2.0/mlflow/runs/log-batch failed after ";
  const auto at = text.find(failure);
  REQUIRE(at != std::string::npos);
  CHECK(text.find("failed and is disabled", at + failure.size()) == std::string::npos);
  CHECK(text.find(hang ? "Timeout was reached" : "HTTP 500: oops", at) != std::string::npos);
  CHECK(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n') <= 1);
  // Retried within the limits, then given up: no further calls after the failure.
  const auto metric_posts = with_target(server.requests(), "runs/log-batch");
  CHECK(with_target(server.requests(), "runs/update").empty());
  CHECK(metric_posts.size() >= 2);
}

TEST_CASE("MLflow REST: an error the server does not retry names the call, the code and the message",
          "[mlflow]") {
  CleanMlflowEnv env;
  MockServer server([](const HttpRequest& r) -> std::pair<int, std::string> {
    if (r.target == "/api/2.0/mlflow/runs/create")
      return {400, R"({"error_code":"INVALID_PARAMETER_VALUE","message":"bad experiment"})"};
    return mlflow_server(r);
  });
  TempDir tmp;
  Run run(tmp / "out");
  run.handler.add_callback<MLflowCallback>(fast_rest(server.uri()));
  CaptureLog log;
  simulate(run, 0, 2);
  CHECK(log.text() ==
        "[torchfit] warning: MLflowCallback failed and is disabled for the rest of this run: POST " +
            server.uri() +
            "/api/2.0/mlflow/runs/create answered HTTP 400 INVALID_PARAMETER_VALUE: bad experiment\n");
  CHECK(with_target(server.requests(), "runs/create").size() == 1);
}

TEST_CASE("MLflow REST: MLFLOW_RUN_ID continues that run, basic authentication from the environment",
          "[mlflow]") {
  CleanMlflowEnv env;
  MockServer server(mlflow_server);
  TempDir tmp;
  ScopedEnv run_id("MLFLOW_RUN_ID", "existing");
  ScopedEnv user("MLFLOW_TRACKING_USERNAME", "user");
  ScopedEnv password("MLFLOW_TRACKING_PASSWORD", "pass");
  Run run(tmp / "out", 10);
  auto mlflow = run.handler.add_callback<MLflowCallback>(fast_rest(server.uri()));
  CaptureLog log;
  simulate(run, 10, 11);
  CHECK(log.text().find("failed") == std::string::npos);
  const auto all = server.requests();
  CHECK(with_target(all, "runs/create").empty());
  const auto updates = with_target(all, "runs/update");
  REQUIRE(updates.size() == 2);
  CHECK(json::parse(updates[0].body) == json{{"run_id", "existing"}, {"status", "RUNNING"}});
  CHECK(json::parse(updates[1].body)["status"] == "FINISHED");
  for (const auto& b : with_target(all, "runs/log-batch")) CHECK(json::parse(b.body)["params"].empty());
  CHECK(mlflow->run_id() == "existing");
  for (const auto& r : all)
    CHECK(r.headers.find("\r\nAuthorization: Basic dXNlcjpwYXNz\r\n") != std::string::npos);
  CHECK(torchfit::detail::base64("ab") == "YWI=");
}

TEST_CASE(
    "MLflow REST: on_log only queues its call, and the calls reach a slow server in order by on_train_end",
    "[mlflow]") {
  CleanMlflowEnv env;
  // A slow server: it holds every metric request until the test opens the gate (or 20 s pass).
  std::atomic<bool> gate_open{false};
  std::atomic<int> metric_answers{0};
  MockServer server([&](const HttpRequest& r) {
    if (r.target == "/api/2.0/mlflow/runs/log-batch" && r.body.find("\"metrics\":[{") != std::string::npos) {
      for (int waited = 0; !gate_open && waited < 20000; ++waited)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++metric_answers;
    }
    return mlflow_server(r);
  });
  TempDir tmp;
  Run run(tmp / "out");
  auto mlflow = run.handler.add_callback<MLflowCallback>(fast_rest(server.uri(), 30, 60));
  CaptureLog log;
  run.train_begin();
  for (int64_t step = 1; step <= 3; ++step) run.log(step, {{"loss", 1.0 / double(step)}});
  // The on_log calls returned before the server answered any metric request; it has received one at most.
  CHECK(metric_answers == 0);
  std::size_t metric_posts = 0;
  for (const auto& b : with_target(server.requests(), "runs/log-batch"))
    metric_posts += !json::parse(b.body)["metrics"].empty();
  CHECK(metric_posts <= 1);
  gate_open = true;
  run.train_end();
  CHECK(metric_answers == 3);
  // Every call after the run's creation, in arrival order: p(arameters), m(etrics), u(pdate of the status).
  std::string order;
  std::vector<int64_t> steps;
  for (const auto& r : server.requests()) {
    if (r.target == "/api/2.0/mlflow/runs/update") {
      CHECK(json::parse(r.body)["status"] == "FINISHED");
      order += 'u';
    } else if (r.target == "/api/2.0/mlflow/runs/log-batch") {
      const json body = json::parse(r.body);
      for (const auto& m : body["metrics"]) steps.push_back(m["step"].get<int64_t>());
      order += body["metrics"].empty() ? 'p' : 'm';
    }
  }
  const auto params_end = order.find_first_not_of('p');
  CHECK(params_end > 0);
  CHECK(order.substr(std::min(params_end, order.size())) == "mmmu");
  CHECK(steps == std::vector<int64_t>{1, 2, 3});
  CHECK(log.text().empty());
}

TEST_CASE(
    "MLflow REST: an outage loses no call: calls are retried until the server is back and arrive in order",
    "[mlflow][outage]") {
  CleanMlflowEnv env;
  MockServer server(mlflow_server);
  TempDir tmp;
  Run run(tmp / "out");
  MLflowOptions options = fast_rest(server.uri());
  options.retry = RetryPolicy{0.01, 0.05, 2};  // no limit: retried for as long as the run lasts
  auto mlflow = run.handler.add_callback<MLflowCallback>(options);
  CaptureLog log;
  server.fail_for(std::chrono::milliseconds(800), MockServer::Outage::drop, "/api/2.0/mlflow/runs/log-batch");
  simulate(run, 0, 4);  // parameters, metrics and the end queue up; on_train_end waits out the outage
  CHECK(server.failed_requests() >= 3);
  CHECK(log.text().find("failed") == std::string::npos);
  std::string order;
  std::vector<int64_t> steps;
  for (const auto& r : server.requests()) {
    if (r.target == "/api/2.0/mlflow/runs/update") order += 'u';
    if (r.target != "/api/2.0/mlflow/runs/log-batch") continue;
    const json body = json::parse(r.body);
    order += body["metrics"].empty() ? 'p' : 'm';
    if (!body["metrics"].empty()) steps.push_back(body["metrics"][0]["step"].get<int64_t>());
  }
  const auto params_end = order.find_first_not_of('p');
  CHECK(params_end > 0);
  CHECK(order.substr(std::min(params_end, order.size())) == "mmmmmmmu");
  CHECK(steps == std::vector<int64_t>{1, 2, 2, 3, 4, 4, 4});
  CHECK(mlflow->run_id() == "abc123");
}

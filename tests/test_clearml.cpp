// SPDX-License-Identifier: MIT
// The ClearML tracker against a mock ClearML API server on 127.0.0.1 (ClearML's envelope, its token login and
// json-lines event batches): the project, the task and its states, hyperparameters, scalars and single
// values, keep-alives, settings from the environment and clearml.conf, token renewal, and failure isolation.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/integrations/clearml.hpp"

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

// Clears every ClearML variable the callback reads and sets credentials, so the machine's environment and
// configuration file cannot leak into a test.
struct CleanClearMLEnv {
  ScopedEnv vars[9] = {{"CLEARML_API_ACCESS_KEY", "ak"},
                       {"CLEARML_API_SECRET_KEY", "sk"},
                       {"CLEARML_API_HOST", std::nullopt},
                       {"CLEARML_WEB_HOST", std::nullopt},
                       {"CLEARML_PROJECT", std::nullopt},
                       {"CLEARML_TASK", std::nullopt},
                       {"CLEARML_OFFLINE_MODE", std::nullopt},
                       {"CLEARML_LOG_MODEL", std::nullopt},
                       {"CLEARML_CONFIG_FILE", "/nonexistent/clearml.conf"}};
};

// A base64url JWT whose payload is `payload` (unsigned: the client does not check signatures).
std::string make_jwt(const json& payload) {
  std::string body = torchfit::detail::base64(payload.dump());
  for (char& c : body) c = c == '+' ? '-' : c == '/' ? '_' : c;
  body.erase(body.find_last_not_of('=') + 1);
  return "eyJhbGciOiJIUzI1NiJ9." + body + ".signature";
}

// ClearML's API server as far as the tracker uses it: every answer in ClearML's envelope, the HTTP status
// equal to its result code; tokens from auth.login; projects, tasks and their events kept.
class FakeClearML {
 public:
  struct Task {
    std::string name, project, type, status = "created", status_reason;
    json hyperparams = json::object();
    std::vector<json> events;
    int pings = 0;
  };
  std::map<std::string, std::string> projects;  // name -> id
  int events_status = 200;
  bool revoke_token = false;  // the next call with the current token is refused as expired

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string endpoint = r.target.substr(1);
    if (endpoint == "auth.login") {
      if (r.headers.find("\r\nAuthorization: Basic " + torchfit::detail::base64("ak:sk") + "\r\n") ==
          std::string::npos)
        return error(401, 22, "Invalid user credentials");
      ++logins;
      token_ = make_jwt({{"api_version", "2.34"}, {"login", logins}});
      return ok({{"token", token_}});
    }
    if (r.headers.find("\r\nAuthorization: Bearer " + token_ + "\r\n") == std::string::npos || revoke_token) {
      revoke_token = false;
      token_ = "revoked";
      return error(401, 30, "Invalid token");
    }
    worker_headers += r.headers.find("\r\nX-ClearML-Worker: ") != std::string::npos;
    if (endpoint == "events.add_batch") {
      if (r.headers.find("\r\nContent-Type: application/json-lines\r\n") == std::string::npos)
        return error(400, 12, "not json-lines");
      if (events_status != 200) return error(events_status, 0, "unavailable");
      std::istringstream lines(r.body);
      int added = 0;
      for (std::string line; std::getline(lines, line); ++added) {
        const json event = json::parse(line);
        tasks_.at(event["task"].get<std::string>()).events.push_back(event);
      }
      return ok({{"added", added}, {"errors", 0}, {"errors_info", json::object()}});
    }
    const json body = json::parse(r.body);
    if (endpoint == "projects.get_all") {
      // The name is an exact-match pattern: ^name$ with everything but letters, digits and _ escaped.
      std::string pattern = body["name"];
      std::string name;
      for (std::size_t i = 1; i + 1 < pattern.size(); ++i)
        name += pattern[i] == '\\' ? pattern[++i] : pattern[i];
      json found = json::array();
      if (projects.count(name)) found.push_back({{"id", projects[name]}});
      return ok({{"projects", found}});
    }
    if (endpoint == "projects.create") {
      projects[body["name"]] = "p" + std::to_string(projects.size() + 1);
      return ok({{"id", projects[body["name"]]}});
    }
    if (endpoint == "tasks.create") {
      const std::string id = "t" + std::to_string(tasks_.size() + 1);
      Task task;
      task.name = body["name"];
      task.project = body["project"];
      task.type = body["type"];
      tasks_[id] = task;
      return ok({{"id", id}});
    }
    Task& task = tasks_.at(body["task"].get<std::string>());
    if (endpoint == "tasks.started") task.status = "in_progress";
    if (endpoint == "tasks.ping") ++task.pings;
    if (endpoint == "tasks.edit") task.hyperparams = body["hyperparams"];
    if (endpoint == "tasks.completed" || endpoint == "tasks.failed") {
      if (task.status != "in_progress") return error(400, 110, "invalid task status");
      task.status = endpoint == "tasks.completed" ? "completed" : "failed";
      task.status_reason = body["status_reason"];
    }
    return ok({{"updated", 1}});
  }

  Task task(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return tasks_.at(id);
  }
  int logins = 0;
  int worker_headers = 0;

 private:
  static std::pair<int, std::string> ok(const json& data) {
    return {200, json{{"meta", {{"result_code", 200}, {"result_subcode", 0}, {"result_msg", "OK"}}},
                      {"data", data}}
                     .dump()};
  }
  static std::pair<int, std::string> error(int code, int subcode, const std::string& message) {
    return {code,
            json{{"meta", {{"result_code", code}, {"result_subcode", subcode}, {"result_msg", message}}},
                 {"data", json::object()}}
                .dump()};
  }

  std::mutex mutex_;
  std::string token_;
  std::map<std::string, Task> tasks_;
};

ClearMLOptions fast_options(const std::string& uri) {
  ClearMLOptions o;
  o.api_host = uri;
  o.retry = RetryPolicy{0.01, 60, 5, 2, 10};
  return o;
}

}  // namespace

TEST_CASE("ClearML: the project and a started task, HF's hyperparameters, scalars, single values, completion",
          "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<ClearMLCallback>(fast_options(server.uri()));
  CaptureLog log;
  run.train_begin();
  CHECK(clearml.task("t1").status == "in_progress");
  for (std::int64_t step = 1; step <= 4; ++step) {
    run.log(step, {{"loss", 1.0 / double(step)}, {"learning_rate", 5e-05}, {"epoch", 0.25 * double(step)}});
    if (step % 2 == 0)
      run.log(step, {{"eval_loss", 0.5}, {"eval_acc@1", 0.75}, {"epoch", 0.25 * double(step)}});
  }
  run.log(4, {{"train_runtime", 1.5},
              {"train_loss", 0.3},
              {"note", "done"},
              {"total_flos", 0},
              {"flag", true},
              {"nan", std::nan("")}});
  run.train_end();
  CHECK(clearml.task("t1").status == "in_progress");  // on_train_end waits; the task ends with the callback
  callback->finish();
  CHECK(
      log.text() ==
      "[torchfit] warning: ClearMLCallback: dropping \"note\" = 'done': ClearML scalars are finite numbers\n"
      "[torchfit] warning: ClearMLCallback: dropping \"nan\" = nan: ClearML scalars are finite numbers\n");

  CHECK(clearml.projects == std::map<std::string, std::string>{{"HuggingFace Transformers", "p1"}});
  CHECK(callback->project_id() == "p1");
  CHECK(callback->task_id() == "t1");
  CHECK(callback->link() == server.uri() + "/projects/p1/tasks/t1/output/log");  // API 2.34: "tasks"
  const auto task = clearml.task("t1");
  CHECK(task.name == "Trainer");
  CHECK(task.type == "training");
  CHECK(task.project == "p1");
  CHECK(task.status == "completed");
  CHECK(task.status_reason == "completed");
  CHECK(clearml.logins == 1);
  CHECK(clearml.worker_headers > 0);

  // Hyperparameters: section Transformers, values as Python's str(), ClearML's type names.
  const json& section = task.hyperparams["Transformers"];
  CHECK(section["learning_rate"] == json{{"section", "Transformers"},
                                         {"name", "learning_rate"},
                                         {"value", "5e-05"},
                                         {"type", "float"},
                                         {"description", ""}});
  CHECK(section["run_name"]["value"] == "unit-run");
  CHECK(section["report_to"]["value"] == "[\"none\"]");
  CHECK(section["report_to"]["type"] == "list/str");
  CHECK(section["max_steps"]["type"] == "int");
  CHECK(section["disable_tqdm"]["value"] == "False");
  CHECK(section["_ignore_hparams_ui_overrides_"]["value"] == "True");
  CHECK(section.size() == run.args.to_json().size() + 1);

  // Scalars: plot (metric) and series (variant) as HF splits the keys, at the global step; the
  // end-of-training values and the epoch in the single-values table.
  std::vector<std::string> scalars;
  for (const auto& e : task.events) {
    CHECK(e["type"] == "training_stats_scalar");
    CHECK(e["timestamp"].get<std::int64_t>() > 1700000000000);
    scalars.push_back(fmt::format("{}/{}@{}={}", e["metric"].get<std::string>(),
                                  e["variant"].get<std::string>(), e["iter"].get<std::int64_t>(),
                                  e["value"].dump()));
  }
  const std::string single = "@-2147483648=";
  CHECK(scalars == std::vector<std::string>{"train/loss@1=1.0",
                                            "train/learning_rate@1=5e-05",
                                            "Summary/epoch" + single + "0.25",
                                            "train/loss@2=0.5",
                                            "train/learning_rate@2=5e-05",
                                            "Summary/epoch" + single + "0.5",
                                            "eval/loss@2=0.5",
                                            "eval/acc@1@2=0.75",
                                            "Summary/epoch" + single + "0.5",
                                            "train/loss@3=0.3333333333333333",
                                            "train/learning_rate@3=5e-05",
                                            "Summary/epoch" + single + "0.75",
                                            "train/loss@4=0.25",
                                            "train/learning_rate@4=5e-05",
                                            "Summary/epoch" + single + "1.0",
                                            "eval/loss@4=0.5",
                                            "eval/acc@1@4=0.75",
                                            "Summary/epoch" + single + "1.0",
                                            "Summary/train_runtime" + single + "1.5",
                                            "Summary/train_loss" + single + "0.3",
                                            "Summary/total_flos" + single + "0",
                                            "train/flag@4=1"});
}

TEST_CASE(
    "ClearML: an existing project is found by its exact name, settings come from the environment or "
    "clearml.conf",
    "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  TempDir tmp;
  CaptureLog quiet;  // the dropped-string warning of simulate()'s summary
  SECTION("the project exists (its name has characters a pattern must escape)") {
    clearml.projects = {{"digits (v2.1)", "p7"}, {"digits", "p8"}};
    ScopedEnv project("CLEARML_PROJECT", "digits (v2.1)"), task("CLEARML_TASK", "mlp run");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<ClearMLCallback>(fast_options(server.uri()));
    simulate(run, 0, 1);
    CHECK(callback->project_id() == "p7");
    CHECK(clearml.projects.size() == 2);
    CHECK(clearml.task("t1").name == "mlp run");
    CHECK(torchfit::detail::clearml_name_pattern("digits (v2.1)") == "^digits\\ \\(v2\\.1\\)$");
  }
  SECTION("clearml.conf: the API server, the web app and the credentials") {
    const fs::path file = tmp.path() / "clearml.conf";
    // As clearml-init writes it (bare URLs, quoted keys, `=`), and an inline block with commas.
    test::write_file(file,
                     "# ClearML SDK configuration file\napi {\n  // the web app\n"
                     "  web_server: https://app.example/\n  api_server: " +
                         server.uri() +
                         "  # the API server\n  credentials {\n    \"access_key\" = \"ak\"\n"
                         "    \"secret_key\" = \"sk\"\n  }\n}\nsdk { api_server: wrong, files: \"x\" }\n");
    ScopedEnv config("CLEARML_CONFIG_FILE", file.string()), no_key("CLEARML_API_ACCESS_KEY", std::nullopt),
        no_secret("CLEARML_API_SECRET_KEY", std::nullopt);
    CHECK(torchfit::detail::hocon_value(file.string(), "sdk.api_server") == "wrong");
    CHECK(torchfit::detail::hocon_value(file.string(), "sdk.files") == "x");
    CHECK(torchfit::detail::hocon_value(file.string(), "api.api_server") == server.uri());
    CHECK(torchfit::detail::hocon_value(file.string(), "api.web_server") == "https://app.example/");
    CHECK(torchfit::detail::hocon_value(file.string(), "api.credentials.secret_key") == "sk");
    CHECK(!torchfit::detail::hocon_value(file.string(), "api.files_server"));
    Run run(tmp.path());
    ClearMLOptions options = fast_options(server.uri());
    options.api_host.reset();
    auto callback = run.handler.add_callback<ClearMLCallback>(options);
    simulate(run, 0, 1);
    CHECK(callback->link() == "https://app.example/projects/p1/tasks/t1/output/log");
    CHECK(clearml.logins == 1);
  }
  SECTION("the web app derived from the API server, as ClearML does") {
    CHECK(torchfit::detail::clearml_web_host("https://api.clear.ml") == "https://app.clear.ml");
    CHECK(torchfit::detail::clearml_web_host("http://10.0.0.5:8008") == "http://10.0.0.5:8080");
  }
}

TEST_CASE(
    "ClearML: an expired token is renewed once, a destruction while an exception unwinds fails the task",
    "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  TempDir tmp;
  SECTION("renewed") {
    Run run(tmp.path());
    auto callback = run.handler.add_callback<ClearMLCallback>(fast_options(server.uri()));
    run.train_begin();
    callback->flush();
    clearml.revoke_token = true;
    CaptureLog log;
    run.log(1, {{"loss", 0.5}});
    callback->finish();
    CHECK(log.text().empty());
    CHECK(clearml.logins == 2);
    CHECK(clearml.task("t1").events.size() == 1);
    CHECK(clearml.task("t1").status == "completed");
  }
  SECTION("failed") {
    try {
      Run run(tmp.path());
      auto callback = run.handler.add_callback<ClearMLCallback>(fast_options(server.uri()));
      run.train_begin();
      run.log(1, {{"loss", 0.5}});
      callback.reset();
      throw std::runtime_error("out of memory");
    } catch (const std::runtime_error&) {
    }
    const auto task = clearml.task("t1");
    CHECK(task.status == "failed");
    CHECK(task.status_reason == "training failed: the program ended with an exception");
    CHECK(task.events.size() == 1);
  }
}

TEST_CASE("ClearML: keep-alives while idle and before calls once due, none after the end", "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  ClearMLOptions options = fast_options(server.uri());
  options.ping_interval_s = 0.02;
  auto callback = run.handler.add_callback<ClearMLCallback>(options);
  run.train_begin();
  // Keep-alives come while nothing else is sent.
  CHECK(test::eventually([&] { return clearml.task("t1").pings >= 3; }));
  callback->finish();
  const int at_end = clearml.task("t1").pings;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(clearml.task("t1").pings == at_end);
}

TEST_CASE("ClearML: missing or refused credentials, offline mode or a failing server disable the tracker",
          "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  TempDir tmp;
  SECTION("no credentials") {
    ScopedEnv no_secret("CLEARML_API_SECRET_KEY", std::nullopt);
    check_refused<ClearMLCallback>(
        tmp.path(), fast_options(server.uri()),
        "no ClearML credentials: set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, "
        "or api.credentials in ~/clearml.conf (`clearml-init` writes it)");
    CHECK(server.requests().empty());
  }
  SECTION("refused credentials: ClearML's message and subcode, nothing retried") {
    ScopedEnv secret("CLEARML_API_SECRET_KEY", "wrong");
    check_refused<ClearMLCallback>(tmp.path(), fast_options(server.uri()),
                                   "ClearML auth.login at " + server.uri() +
                                       "/auth.login: HTTP 401 (check the API key): Invalid user credentials "
                                       "(subcode 22)");
    CHECK(server.requests().size() == 1);
  }
  SECTION("offline mode") {
    ScopedEnv offline("CLEARML_OFFLINE_MODE", "1");
    check_refused<ClearMLCallback>(
        tmp.path(), fast_options(server.uri()),
        "CLEARML_OFFLINE_MODE: offline ClearML sessions are not supported (torchfit talks to the ClearML "
        "server "
        "directly); log offline with --report_to tensorboard or csv, or unset CLEARML_OFFLINE_MODE");
  }
  SECTION("a failing server: reported at the next event, the task is not ended") {
    clearml.events_status = 503;
    test::check_background_failure<ClearMLCallback>(
        tmp.path(), fast_options(server.uri()),
        "POST " + server.uri() + "/events.add_batch failed after 3 attempts", [](Run& run) {
          run.log(1, {{"loss", 0.5}});
        });
    CHECK(clearml.task("t1").status == "in_progress");
  }
}

TEST_CASE("ClearML: a Trainer reporting to clearml logs every loss at its step", "[clearml]") {
  CleanClearMLEnv env;
  FakeClearML clearml;
  MockServer server([&](const HttpRequest& r) { return clearml.handle(r); });
  ScopedEnv host("CLEARML_API_HOST", server.uri());
  TempDir tmp;
  const auto log_history = test::train_reporting_to("clearml", tmp.path(), [](auto&) {});
  const auto task = clearml.task("t1");
  std::vector<json> losses;
  for (const auto& e : task.events)
    if (e["metric"] == "train" && e["variant"] == "loss") losses.push_back({e["iter"], e["value"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
  CHECK(task.status == "completed");
}

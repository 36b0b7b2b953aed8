// SPDX-License-Identifier: MIT
// The SwanLab tracker against a mock of SwanLab's API on 127.0.0.1 that keeps users' sessions, projects,
// experiments, columns, config, metrics and states: the login, project and experiment, config, HF's metric
// names with columns declared first, heartbeats, the final state, settings from the environment (self-hosted),
// session renewal, missing and refused keys, modes, an outage that loses no row, and a real Trainer.
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/integrations/swanlab.hpp"

using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::check_refused;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::ScopedEnv;
using torchfit::test::simulate;
using torchfit::test::TempDir;
using Run = torchfit::test::TrackerRun;

namespace {

// Clears every SwanLab variable the tracker reads and sets a key, so the machine's environment cannot leak in.
struct CleanSwanLabEnv {
  ScopedEnv vars[8] = {{"SWANLAB_API_KEY", "sl-key"},       {"SWANLAB_API_HOST", std::nullopt},
                       {"SWANLAB_WEB_HOST", std::nullopt},  {"SWANLAB_PROJECT", std::nullopt},
                       {"SWANLAB_PROJ_NAME", std::nullopt}, {"SWANLAB_WORKSPACE", std::nullopt},
                       {"SWANLAB_MODE", std::nullopt},      {"TORCHFIT_TRACKER_FLUSH_TIMEOUT", std::nullopt}};
};

// SwanLab's API (`/api/...`) as the SDK uses it, keeping state as the server does: the key "sl-key" belongs
// to alice, who is also a member of the organisation "team"; a login opens a session (cookie `sid`) that
// expires after `session_days`; projects belong to a user or organisation, experiments to a project; a
// metric is refused unless its key was declared as a column of the project; every other call needs a session.
class FakeSwanLab {
 public:
  struct Experiment {
    std::string project;  // "<owner>/<name>"
    std::string name;
    json config;
    std::map<std::string, std::vector<json>> metrics;  // key -> [{"index", "data"}] in arrival order
    std::vector<std::string> keys;                     // metric keys in arrival order, repeated
    std::string state = "RUNNING";
    int beats = 0;
  };
  int session_days = 30;

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string& t = r.target;
    if (r.method == "POST" && t == "/api/login/api_key") {
      if (r.headers.find("\r\nauthorization: sl-key\r\n") == std::string::npos)
        return {401, R"({"message":"api key is invalid"})"};
      const std::string sid = "sid" + std::to_string(++logins_);
      sessions_.insert(sid);
      const auto expires = std::chrono::system_clock::now() + std::chrono::hours(24 * session_days);
      return {200, json{{"sid", sid},
                        {"expiredAt", torchfit::detail::swanlab_time(expires)},
                        {"userInfo", {{"username", "alice"}}}}
                       .dump()};
    }
    const auto cookie = r.headers.find("\r\nCookie: sid=");
    if (cookie == std::string::npos ||
        !sessions_.count(r.headers.substr(cookie + 14, r.headers.find("\r\n", cookie + 2) - cookie - 14)))
      return {401, R"({"message":"unauthorized"})"};
    const json body = r.body.empty() ? json::object() : json::parse(r.body);
    const auto parts = split(t);
    if (r.method == "POST" && parts.size() == 3 && parts[1] == "projects") {  // projects/<owner>
      if (parts[2] != "alice" && parts[2] != "team") return {403, R"({"message":"no permission"})"};
      const std::string id = parts[2] + "/" + body["name"].get<std::string>();
      if (projects_.count(id)) return {200, "{}"};
      projects_[id] = "proj" + std::to_string(projects_.size() + 1);
      return {201, "{}"};
    }
    if (r.method == "GET" && parts.size() == 4 && parts[1] == "project") {  // project/<owner>/<name>
      const auto it = projects_.find(parts[2] + "/" + parts[3]);
      if (it == projects_.end()) return {404, R"({"message":"project not found"})"};
      return {200, json{{"cuid", it->second},
                        {"name", parts[3]},
                        {"path", "/" + parts[2] + "/" + parts[3]},
                        {"group", {{"username", parts[2]}}},
                        {"_count", {{"experiments", experiments_.size()}}}}
                       .dump()};
    }
    if (r.method == "POST" && parts.size() == 5 && parts[4] == "experiment") {
      const std::string project = parts[2] + "/" + parts[3];
      if (!projects_.count(project)) return {404, R"({"message":"project not found"})"};
      const std::string id = "exp" + std::to_string(experiments_.size() + 1);
      experiments_[id].project = project;
      experiments_[id].name = body.value("name", "");
      return {201, json{{"cuid", id}, {"name", body.value("name", "")}}.dump()};
    }
    if (r.method == "POST" && parts.size() == 5 && parts[1] == "house" && parts[4] == "heartbeat") {
      const auto it = experiments_.find(parts[3]);
      if (it == experiments_.end()) return {404, R"({"message":"experiment not found"})"};
      ++it->second.beats;
      return {200, "{}"};
    }
    if (r.method == "POST" && parts.size() == 5 && parts[4] == "series") {  // projects/<owner>/<name>/series
      for (const json& c : body["series"]) columns_[parts[2] + "/" + parts[3]].insert(c["key"]);
      return {201, "{}"};
    }
    if (r.method == "POST" && t == "/api/house/metrics") {
      const auto it = experiments_.find(body.value("experimentId", ""));
      if (it == experiments_.end() || projects_[it->second.project] != body.value("projectId", ""))
        return {404, R"({"message":"experiment not found"})"};
      for (const json& m : body["metrics"])
        if (!columns_[it->second.project].count(m["key"]))
          return {400, R"({"message":"column not found: )" + m["key"].get<std::string>() + "\"}"};
      for (const json& m : body["metrics"]) {
        it->second.metrics[m["key"]].push_back({{"index", m["index"]}, {"data", m["data"]}});
        it->second.keys.push_back(m["key"]);
      }
      return {200, "{}"};
    }
    if (r.method == "PUT" && parts.size() == 7 && parts[4] == "runs") {  // project/<o>/<p>/runs/<id>/<what>
      const auto it = experiments_.find(parts[5]);
      if (it == experiments_.end()) return {404, R"({"message":"experiment not found"})"};
      if (parts[6] == "profile" && body.contains("config")) it->second.config = body["config"];
      if (parts[6] == "state") it->second.state = body["state"];
      return {200, "{}"};
    }
    return {404, R"({"message":"not found"})"};
  }

  Experiment experiment(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return experiments_[id];
  }
  std::map<std::string, std::string> projects() {
    std::lock_guard<std::mutex> lock(mutex_);
    return projects_;
  }
  int logins() {
    std::lock_guard<std::mutex> lock(mutex_);
    return logins_;
  }

 private:
  // The parts of a target's path: "/api/a/b" -> {"api", "a", "b"}.
  static std::vector<std::string> split(const std::string& target) {
    std::vector<std::string> parts;
    std::size_t start = 1;
    const std::string path = target.substr(0, target.find('?'));
    while (start <= path.size()) {
      const auto end = std::min(path.find('/', start), path.size());
      parts.push_back(test::url_decode(path.substr(start, end - start)));
      start = end + 1;
    }
    return parts;
  }

  std::mutex mutex_;
  int logins_ = 0;
  std::set<std::string> sessions_;
  std::map<std::string, std::string> projects_;  // "<owner>/<name>" -> id
  std::map<std::string, std::set<std::string>> columns_;
  std::map<std::string, Experiment> experiments_;
};

// A clean environment and a SwanLab server on 127.0.0.1, for one test.
struct SwanLabServer {
  CleanSwanLabEnv env;
  FakeSwanLab swanlab;
  MockServer server{[this](const HttpRequest& r) { return swanlab.handle(r); }};

  SwanLabOptions options() const {
    SwanLabOptions o;
    o.api_host = server.uri();
    o.project = "digits";
    o.retry = RetryPolicy{0.01, 60, 5, 3, 10};
    return o;
  }
};

// The (key, index, data) points SwanLab should hold for `run`'s log entries, as HF's callback logs them.
std::vector<json> expected_points(const Run& run) {
  std::vector<json> out;
  for (const auto& entry : run.state.log_history) {
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      if (it.key() == "step" || !(it.value().is_number() || it.value().is_boolean())) continue;
      const std::string key = integrations::is_single_value_scalar(it.key())
                                  ? "single_value/" + it.key()
                                  : integrations::rewrite_log_key(it.key());
      out.push_back({key, entry["step"], it.value().get<double>()});
    }
    out.push_back({"train/global_step", entry["step"], entry["step"].get<double>()});
  }
  return out;
}

std::vector<json> points(const FakeSwanLab::Experiment& e) {
  std::vector<json> out;
  std::map<std::string, std::size_t> next;
  for (const auto& key : e.keys) {
    const json& p = e.metrics.at(key)[next[key]++];
    out.push_back({key, p["index"], p["data"]});
  }
  return out;
}

}  // namespace

TEST_CASE_METHOD(
    SwanLabServer,
    "SwanLab: login, project, experiment, config, HF's metric names with their columns, FINISHED",
    "[swanlab]") {
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<SwanLabCallback>(options());
  CaptureLog log;
  simulate(run, 0, 4);
  CHECK(log.text() ==
        "[torchfit] warning: SwanLabCallback: dropping \"note\" = 'done': SwanLab metrics are numbers\n");
  CHECK(swanlab.logins() == 1);
  CHECK(swanlab.projects() == std::map<std::string, std::string>{{"alice/digits", "proj1"}});
  CHECK(callback->experiment_id() == "exp1");
  CHECK(callback->link() == server.uri() + "/@alice/digits/runs/exp1");
  const auto e = swanlab.experiment("exp1");
  CHECK(e.name == "unit-run");
  CHECK(e.state == "FINISHED");
  CHECK(e.beats >= 1);
  // The config as the SDK uploads it: {value, desc, sort}, in insertion order, FRAMEWORK first.
  CHECK(e.config["FRAMEWORK"] == json{{"value", "torchfit"}, {"desc", ""}, {"sort", 0}});
  const json arguments = run.args.to_json();
  const auto position = std::distance(arguments.begin(), arguments.find("learning_rate"));
  CHECK(e.config["learning_rate"] == json{{"value", 5e-05}, {"desc", ""}, {"sort", 1 + position}});
  CHECK(e.config.size() == run.args.to_json().size() + 1);
  CHECK(points(e) == expected_points(run));
  CHECK(e.metrics.count("single_value/train_runtime") == 1);
  CHECK(e.metrics.count("train/loss") == 1);
}

TEST_CASE_METHOD(SwanLabServer, "SwanLab: booleans as 1/0, NaN and infinities as \"nan\"", "[swanlab]") {
  TempDir tmp;
  Run run(tmp.path());
  run.handler.add_callback<SwanLabCallback>(options());
  run.train_begin();
  run.log(1,
          {{"loss", std::nan("")}, {"grad_norm", std::numeric_limits<double>::infinity()}, {"flag", true}});
  run.train_end();
  const auto e = swanlab.experiment("exp1");
  CHECK(e.metrics.at("train/loss")[0]["data"] == "nan");
  CHECK(e.metrics.at("train/grad_norm")[0]["data"] == "nan");
  CHECK(e.metrics.at("train/flag")[0]["data"] == 1.0);
}

TEST_CASE_METHOD(
    SwanLabServer,
    "SwanLab: a self-hosted server, the project and workspace from the environment, session renewal",
    "[swanlab]") {
  swanlab.session_days = 1;  // within the SDK's seven days: every request logs in again first
  ScopedEnv host("SWANLAB_API_HOST", server.uri() + "/"), project("SWANLAB_PROJECT", "mnist"),
      workspace("SWANLAB_WORKSPACE", "team");
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<SwanLabCallback>(SwanLabOptions{});
  CaptureLog quiet;
  simulate(run, 0, 2);
  CHECK(swanlab.projects().count("team/mnist") == 1);
  CHECK(callback->link() == server.uri() + "/@team/mnist/runs/exp1");
  CHECK(swanlab.logins() > 3);
  CHECK(points(swanlab.experiment("exp1")) == expected_points(run));
}

TEST_CASE_METHOD(SwanLabServer, "SwanLab: a missing or refused key, or a mode it lacks, disables the tracker",
                 "[swanlab]") {
  TempDir tmp;
  SECTION("no key") {
    ScopedEnv no_key("SWANLAB_API_KEY", std::nullopt);
    check_refused<SwanLabCallback>(tmp.path(), options(),
                                   "no SwanLab API key: set SWANLAB_API_KEY (swanlab.cn: Settings, API Key)");
    CHECK(server.requests().empty());
  }
  SECTION("a refused key: SwanLab's message, nothing retried") {
    ScopedEnv key("SWANLAB_API_KEY", "wrong");
    check_refused<SwanLabCallback>(tmp.path(), options(),
                                   "SwanLab POST " + server.uri() +
                                       "/api/login/api_key answered HTTP 401 (check the API key): api key is "
                                       "invalid");
    CHECK(server.requests().size() == 1);
  }
  SECTION("a workspace the key may not write to") {
    SwanLabOptions o = options();
    o.workspace = "bob";
    check_refused<SwanLabCallback>(
        tmp.path(), o,
        "SwanLab POST " + server.uri() +
            "/api/projects/bob answered HTTP 403 (check the API key): no permission");
  }
  SECTION("local mode") {
    ScopedEnv mode("SWANLAB_MODE", "local");
    check_refused<SwanLabCallback>(
        tmp.path(), options(),
        "SWANLAB_MODE=local: only cloud (a SwanLab server, swanlab.cn or self-hosted) "
        "and disabled are supported; log locally with --report_to tensorboard and "
        "`swanlab convert`");
  }
  SECTION("disabled") {
    ScopedEnv mode("SWANLAB_MODE", "disabled");
    Run run(tmp.path());
    run.handler.add_callback<SwanLabCallback>(options());
    CaptureLog quiet;
    simulate(run, 0, 2);
    CHECK(server.requests().empty());
  }
}

TEST_CASE_METHOD(SwanLabServer, "SwanLab: an outage loses no row: the calls arrive in order once it is back",
                 "[swanlab][outage]") {
  TempDir tmp;
  Run run(tmp.path());
  SwanLabOptions o = options();
  o.retry = RetryPolicy{0.01, 0.05, 2};  // no limit: retried for as long as the run lasts
  run.handler.add_callback<SwanLabCallback>(o);
  run.train_begin();
  CaptureLog log;
  server.fail_for(std::chrono::milliseconds(800), MockServer::Outage::drop, "/api/house/metrics");
  simulate(run, 0, 4);  // on_train_end waits out the outage
  CHECK(server.failed_requests() >= 3);
  CHECK(log.text().find("failed") == std::string::npos);
  const auto e = swanlab.experiment("exp1");
  CHECK(points(e) == expected_points(run));
  CHECK(e.state == "FINISHED");
}

TEST_CASE_METHOD(SwanLabServer, "SwanLab: a Trainer reporting to swanlab logs every loss at its step",
                 "[swanlab]") {
  ScopedEnv host("SWANLAB_API_HOST", server.uri());
  TempDir tmp;
  const auto log_history = test::train_reporting_to("swanlab", tmp.path(), [](auto&) {});
  CHECK(swanlab.projects().count("alice/out") == 1);  // no project set: the output directory's name
  std::vector<json> losses;
  const auto e = swanlab.experiment("exp1");
  for (const auto& p : e.metrics.at("train/loss")) losses.push_back({p["index"], p["data"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
}

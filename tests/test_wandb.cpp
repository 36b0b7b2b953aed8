// SPDX-License-Identifier: MIT
// The W&B tracker against a mock W&B server on 127.0.0.1 that keeps a run as the real one does (GraphQL
// UpsertBucket and RunResumeStatus, file_stream lines placed by offset): requests, history rows, summary,
// config and metric definitions, batching and wandb-core's size limits, resume, heartbeats, the end of the
// run, the Stop button, failure isolation, and outages (retried until the server is back, or the rows kept in
// a file).
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/integrations/wandb.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::check_disabled_with_one_warning;
using torchfit::test::check_refused;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::Recorder;
using torchfit::test::ScopedEnv;
using torchfit::test::simulate;
using torchfit::test::TempDir;
using Run = torchfit::test::TrackerRun;

namespace {

// Clears every W&B variable the callback reads and sets an API key, so the machine's environment cannot leak
// into a test.
struct CleanWandbEnv {
  ScopedEnv vars[16] = {
      {"WANDB_API_KEY", "test-key"},    {"WANDB_BASE_URL", std::nullopt},
      {"WANDB_PROJECT", std::nullopt},  {"WANDB_ENTITY", std::nullopt},
      {"WANDB_MODE", std::nullopt},     {"WANDB_DISABLED", std::nullopt},
      {"WANDB_RUN_ID", std::nullopt},   {"WANDB_RESUME", std::nullopt},
      {"WANDB_NAME", std::nullopt},     {"WANDB_RUN_GROUP", std::nullopt},
      {"WANDB_TAGS", std::nullopt},     {"WANDB_NOTES", std::nullopt},
      {"WANDB_JOB_TYPE", std::nullopt}, {"WANDB_LOG_MODEL", std::nullopt},
      {"WANDB_WATCH", std::nullopt},    {"WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL", std::nullopt}};
};

json parse_line(const std::string& text) {
  return torchfit::detail::python_json_parse(text, "a line sent to W&B");
}

// A W&B server holding runs the way the real one does: UpsertBucket creates or updates a run (the entity
// defaults to the key's, "team"), file_stream writes each content line at offset + i, the summary's last line
// is the summary, and `complete` ends the run.
class FakeWandb {
 public:
  struct StoredRun {
    json config = json::object();  // as sent: {"key": {"value": v}}
    json variables;                // the first UpsertBucket's
    std::vector<std::string> history;
    json summary = json::object();
    std::optional<int> exit_code;
    int heartbeats = 0;
  };

  /// Answers file_stream requests with `answer`, or with `status` when it is not 200.
  int file_stream_status = 200;
  std::string file_stream_answer = "{}";
  int graphql_status = 200;

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (r.method != "POST") return {405, "{}"};
    if (r.target == "/graphql") return graphql(json::parse(r.body));
    const std::string prefix = "/files/";
    const std::string suffix = "/file_stream";
    if (r.target.rfind(prefix, 0) != 0 || r.target.size() < suffix.size() ||
        r.target.compare(r.target.size() - suffix.size(), suffix.size(), suffix) != 0)
      return {404, R"({"error":"not found"})"};
    if (file_stream_status != 200) return {file_stream_status, R"({"error":"unavailable"})"};
    // /files/<entity>/<project>/<run>/file_stream
    const std::string path = r.target.substr(prefix.size(), r.target.size() - prefix.size() - suffix.size());
    const auto first = path.find('/'), second = path.find('/', first + 1);
    const std::string key = path.substr(0, first) + "/" + path.substr(first + 1, second - first - 1) + "/" +
                            path.substr(second + 1);
    const auto it = runs_.find(key);
    if (it == runs_.end()) return {404, R"({"error":"run not found"})"};
    StoredRun& run = it->second;
    const json body = parse_line(r.body);
    if (body.empty()) ++run.heartbeats;
    if (body.contains("files")) {
      for (const auto& [file, chunk] : body["files"].items()) {
        const auto offset = chunk["offset"].get<std::size_t>();
        if (file == "wandb-history.jsonl") {
          if (run.history.size() < offset + chunk["content"].size())
            run.history.resize(offset + chunk["content"].size());
          for (std::size_t i = 0; i < chunk["content"].size(); ++i)
            run.history[offset + i] = chunk["content"][i];
        } else if (file == "wandb-summary.json") {
          run.summary = parse_line(chunk["content"].back().get<std::string>());
        }
      }
    }
    if (body.value("complete", false)) run.exit_code = body["exitcode"].get<int>();
    return {200, file_stream_answer};
  }

  /// Adds a run that an earlier client opened and logged `lines` history lines to.
  void add_run(const std::string& id, const json& config, const std::vector<std::string>& lines,
               const json& summary) {
    std::lock_guard<std::mutex> lock(mutex_);
    StoredRun run;
    run.config = config;
    run.history = lines;
    run.summary = summary;
    runs_["team/huggingface/" + id] = run;
  }

  StoredRun run(const std::string& entity_project_id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = runs_.find(entity_project_id);
    if (it == runs_.end()) throw std::runtime_error("the fake server has no run " + entity_project_id);
    return it->second;
  }
  std::size_t run_count() {
    std::lock_guard<std::mutex> lock(mutex_);
    return runs_.size();
  }
  std::vector<json> upserts() {
    std::lock_guard<std::mutex> lock(mutex_);
    return upserts_;
  }

 private:
  std::pair<int, std::string> graphql(const json& request) {
    if (graphql_status != 200) return {graphql_status, R"({"errors":[{"message":"denied"}]})"};
    const json& vars = request["variables"];
    const std::string entity = vars["entity"].is_string() ? vars["entity"].get<std::string>() : "team";
    const std::string project =
        vars["project"].is_string() ? vars["project"].get<std::string>() : "uncategorized";
    const std::string key = entity + "/" + project + "/" + vars["name"].get<std::string>();
    if (request["operationName"] == "RunResumeStatus") {
      const auto it = runs_.find(key);
      if (it == runs_.end())
        return {200, R"({"data":{"model":{"id":"p","name":"huggingface","bucket":null}}})"};
      const StoredRun& run = it->second;
      json tail = json::array();
      if (!run.history.empty()) tail.push_back(run.history.back());
      json bucket = {{"id", "b"},
                     {"name", vars["name"]},
                     {"historyLineCount", run.history.size()},
                     {"historyTail", tail.dump()},
                     {"summaryMetrics", run.summary.dump()},
                     {"config", run.config.dump()},
                     {"wandbConfig", run.config.contains("_wandb") ? R"({"t":{}})" : "{}"}};
      return {200, json{{"data", {{"model", {{"id", "p"}, {"name", project}, {"bucket", bucket}}}}}}.dump()};
    }
    if (request["operationName"] != "UpsertBucket" ||
        request["query"].get<std::string>().rfind("mutation UpsertBucket(", 0) != 0)
      return {200, R"({"errors":[{"message":"unknown operation"}]})"};
    upserts_.push_back(request);
    StoredRun& run = runs_[key];
    if (run.variables.is_null()) run.variables = vars;
    if (vars["config"].is_string()) run.config = json::parse(vars["config"].get<std::string>());
    const std::string display =
        vars["displayName"].is_string() ? vars["displayName"].get<std::string>() : "generated-name-1";
    return {200, json{{"data",
                       {{"upsertBucket",
                         {{"bucket",
                           {{"id", "b"},
                            {"name", vars["name"]},
                            {"displayName", display},
                            {"historyLineCount", run.history.size()},
                            {"project",
                             {{"id", "p"}, {"name", project}, {"entity", {{"id", "e"}, {"name", entity}}}}}}},
                          {"inserted", true}}}}}}
                     .dump()};
  }

  std::mutex mutex_;
  std::map<std::string, StoredRun> runs_;
  std::vector<json> upserts_;
};

// Options for the fake server: no batching delay unless a test sets one, short back-off, generous limits (a
// loaded machine must pass healthy calls).
WandbOptions fast_options(const std::string& uri, double transmit_interval_s = 0) {
  WandbOptions o;
  o.base_url = uri;
  o.transmit_interval_s = transmit_interval_s;
  o.retry = RetryPolicy{0.01, 60, 5, 2, 10};
  return o;
}

std::vector<json> history_of(const FakeWandb::StoredRun& run) {
  std::vector<json> rows;
  for (const auto& line : run.history) rows.push_back(parse_line(line));
  return rows;
}

}  // namespace

TEST_CASE(
    "W&B: HF's config and metric definitions, one history row per log, the summary, and the end of the run",
    "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
  CaptureLog log;
  simulate(run, 0, 4);
  callback->finish();
  CHECK(log.text().empty());

  const auto requests = server.requests();
  REQUIRE(!requests.empty());
  CHECK(requests[0].target == "/graphql");
  for (const auto& r : requests)  // HTTP Basic with the user "api"
    CHECK(r.headers.find("\r\nAuthorization: Basic " + torchfit::detail::base64("api:test-key") + "\r\n") !=
          std::string::npos);

  // The run: a random 8-character id in HF's default project of the key's entity, named after run_name.
  const std::string id = callback->run_id();
  CHECK(id.size() == 8);
  CHECK(callback->entity() == "team");
  CHECK(callback->project() == "huggingface");
  CHECK(callback->run_url() == server.uri() + "/team/huggingface/runs/" + id);
  const auto stored = wandb.run("team/huggingface/" + id);
  CHECK(stored.variables["displayName"] == "unit-run");
  CHECK(stored.variables["entity"].is_null());
  CHECK(stored.variables["host"] == torchfit::detail::host_name());
  CHECK(stored.variables["state"].is_null());

  // Config: the arguments wrapped as W&B stores them, and HF's define_metric calls expanded per key.
  CHECK(stored.config["learning_rate"] == json{{"value", 5e-05}});
  CHECK(stored.config["output_dir"] == json{{"value", tmp.path().string()}});
  CHECK(stored.config["report_to"] == json{{"value", {"none"}}});
  const json& m = stored.config["_wandb"]["value"]["m"];
  REQUIRE(m.size() >= 1);
  CHECK(m[0] == json::parse(R"({"1":"train/global_step","6":[3],"7":[]})"));
  std::vector<std::string> defined;
  for (std::size_t i = 1; i < m.size(); ++i) {
    CHECK(m[i]["5"] == 1);
    CHECK(m[i]["6"] == json::array({1, 3}));
    defined.push_back(m[i]["1"]);
  }
  CHECK(defined == std::vector<std::string>{"eval/acc@1", "eval/loss", "train/epoch", "train/learning_rate",
                                            "train/loss", "train/note"});
  CHECK(stored.config["_wandb"]["value"]["t"] == json::object());

  // History: rewritten keys, train/global_step, and wandb's _step, _runtime and _timestamp per row.
  const auto rows = history_of(stored);
  REQUIRE(rows.size() == 7);  // 4 training logs, 2 evaluations, the final one
  const std::vector<std::int64_t> global_steps{1, 2, 2, 3, 4, 4, 4};
  const double now = static_cast<double>(torchfit::detail::unix_time_ms()) / 1000;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    INFO(rows[i].dump());
    CHECK(rows[i]["_step"] == static_cast<std::int64_t>(i));
    CHECK(rows[i]["train/global_step"] == global_steps[i]);
    CHECK(rows[i]["_runtime"].get<double>() >= (i == 0 ? 0.0 : rows[i - 1]["_runtime"].get<double>()));
    CHECK(std::abs(rows[i]["_timestamp"].get<double>() - now) < 600);
  }
  CHECK(rows[0]["train/loss"] == 1.0);
  CHECK(rows[0]["train/learning_rate"] == 5e-05);
  CHECK(rows[0]["train/epoch"] == 0.25);
  CHECK(rows[0].size() == 7);
  CHECK(rows[2]["eval/loss"] == 0.5);
  CHECK(rows[2]["eval/acc@1"] == 0.75);
  CHECK(!rows[2].contains("train/loss"));
  // The final log: single values go to the summary only (HF), the string stays in the history.
  CHECK(rows[6]["train/note"] == "done");
  CHECK(!rows[6].contains("train/train_runtime"));
  CHECK(!rows[6].contains("train_runtime"));

  // Summary: the last value of every history key, the single values under their own names, the runtime.
  CHECK(stored.summary["train/loss"] == 0.25);
  CHECK(stored.summary["eval/loss"] == 0.5);
  CHECK(stored.summary["_step"] == 6);
  CHECK(stored.summary["train_runtime"] == 1.5);
  CHECK(stored.summary["train_loss"] == 0.3);
  CHECK(stored.summary["total_flos"] == 0);
  CHECK(stored.summary["_wandb"]["runtime"].is_number_integer());

  // The run ends once, with exit code 0, in the last request.
  CHECK(stored.exit_code == 0);
  const json last = parse_line(requests.back().body);
  CHECK(last["complete"] == true);
  CHECK(last["exitcode"] == 0);
  CHECK(requests.back().target == "/files/team/huggingface/" + id + "/file_stream");
  CHECK(callback->step() == 7);
}

TEST_CASE(
    "W&B: logs within the transmit interval go in one request, on_train_end sends them, destruction ends the "
    "run",
    "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  std::string id;
  std::size_t requests_at_train_end = 0;
  {
    Run run(tmp.path());
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri(), 3600));
    run.train_begin();
    for (std::int64_t step = 1; step <= 5; ++step) run.log(step, {{"loss", 1.0 / double(step)}});
    callback->flush();  // what on_train_end does
    id = callback->run_id();
    const auto requests = server.requests();
    std::vector<json> streams;
    for (const auto& r : requests)
      if (r.target != "/graphql") streams.push_back(parse_line(r.body));
    REQUIRE(streams.size() == 1);  // nothing before the interval was up, then everything at once
    CHECK(streams[0]["files"]["wandb-history.jsonl"]["offset"] == 0);
    CHECK(streams[0]["files"]["wandb-history.jsonl"]["content"].size() == 5);
    CHECK(!streams[0].contains("complete"));
    CHECK(!wandb.run("team/huggingface/" + id).exit_code);
    requests_at_train_end = requests.size();
    run.log(6, {{"loss", 0.1}});  // logged after on_train_end (an evaluate() after train(), say)
  }                               // the callback goes away with its handler: the run is finished
  const auto requests = server.requests();
  REQUIRE(requests.size() == requests_at_train_end + 1);
  const json last = parse_line(requests.back().body);
  CHECK(last["files"]["wandb-history.jsonl"]["offset"] == 5);
  CHECK(last["complete"] == true);
  CHECK(last["exitcode"] == 0);
  const auto stored = wandb.run("team/huggingface/" + id);
  CHECK(stored.exit_code == 0);
  CHECK(stored.history.size() == 6);
}

TEST_CASE("W&B: destroyed while an exception unwinds, the run finishes with exit code 1", "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  std::string id;
  try {
    Run run(tmp.path());
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    run.train_begin();
    run.log(1, {{"loss", 0.5}});
    id = callback->run_id();
    callback.reset();
    throw std::runtime_error("out of memory");
  } catch (const std::runtime_error&) {
  }
  const auto stored = wandb.run("team/huggingface/" + id);
  CHECK(stored.exit_code == 1);
  CHECK(stored.history.size() == 1);
}

TEST_CASE("W&B: project, entity, id, name, group, tags, notes and job type come from wandb's variables",
          "[wandb]") {
  CleanWandbEnv env;
  ScopedEnv project("WANDB_PROJECT", "digits"), entity("WANDB_ENTITY", "me"), id("WANDB_RUN_ID", "run42"),
      name("WANDB_NAME", "first try"), group("WANDB_RUN_GROUP", "sweep-a"),
      tags("WANDB_TAGS", "cpu, small,,mlp "), notes("WANDB_NOTES", "a note"), job("WANDB_JOB_TYPE", "train");
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
  simulate(run, 0, 2);
  callback->finish();
  CHECK(callback->run_id() == "run42");
  CHECK(callback->run_url() == server.uri() + "/me/digits/runs/run42");
  const auto stored = wandb.run("me/digits/run42");
  CHECK(stored.variables["name"] == "run42");
  CHECK(stored.variables["project"] == "digits");
  CHECK(stored.variables["entity"] == "me");
  CHECK(stored.variables["displayName"] == "first try");
  CHECK(stored.variables["groupName"] == "sweep-a");
  CHECK(stored.variables["tags"] == json::array({"cpu", "small", "mlp"}));
  CHECK(stored.variables["notes"] == "a note");
  CHECK(stored.variables["jobType"] == "train");
  CHECK(stored.exit_code == 0);
  // Later config updates (new metric keys) name the run and send nothing else.
  const auto upserts = wandb.upserts();
  REQUIRE(upserts.size() >= 2);
  for (std::size_t i = 1; i < upserts.size(); ++i) {
    const json& vars = upserts[i]["variables"];
    CHECK(vars["name"] == "run42");
    CHECK(vars["displayName"].is_null());
    CHECK(vars["tags"].is_null());
    CHECK(vars["config"].is_string());
  }
  CHECK(torchfit::detail::wandb_split_tags(" , a ,b") == std::vector<std::string>{"a", "b"});
  CHECK(torchfit::detail::wandb_split_tags("").empty());
}

TEST_CASE(
    "W&B: WANDB_RESUME with WANDB_RUN_ID continues the run's history, _step, runtime, summary and config",
    "[wandb]") {
  CleanWandbEnv env;
  ScopedEnv id("WANDB_RUN_ID", "resumed1");
  FakeWandb wandb;
  const json old_config = json::parse(
      R"({"old_key": {"value": 1}, "learning_rate": {"value": 0.1},
          "_wandb": {"value": {"t": {}, "m": [{"1": "train/global_step", "6": [3], "7": []},
                                               {"1": "train/old", "5": 1, "6": [1, 3], "7": []}]}}})");
  wandb.add_run(
      "resumed1", old_config,
      {R"({"train/loss": 0.9, "train/global_step": 1, "_step": 0, "_runtime": 50.0})",
       R"({"train/loss": 0.8, "train/global_step": 2, "_step": 1, "_runtime": 100.5})"},
      json::parse(R"({"train/loss": 0.8, "only_before": 7, "_step": 1, "_wandb": {"runtime": 100}})"));
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;

  SECTION("allow, and the run exists") {
    ScopedEnv resume("WANDB_RESUME", "allow");
    Run run(tmp.path(), 2);
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    CaptureLog log;
    simulate(run, 2, 3);
    callback->finish();
    CHECK(log.text().empty());
    CHECK(wandb.run_count() == 1);
    const auto stored = wandb.run("team/huggingface/resumed1");
    const auto rows = history_of(stored);
    REQUIRE(rows.size() == 4);  // two old lines, the training log of step 3, the final log
    CHECK(rows[1]["_step"] == 1);
    CHECK(rows[2]["_step"] == 2);
    CHECK(rows[2]["train/global_step"] == 3);
    CHECK(rows[2]["_runtime"].get<double>() >= 100.5);
    CHECK(rows[3]["_step"] == 3);
    CHECK(stored.summary["only_before"] == 7);
    CHECK(stored.summary["train/loss"] == 1.0 / 3);
    CHECK(stored.config["old_key"] == json{{"value", 1}});
    CHECK(stored.config["learning_rate"] == json{{"value", 5e-05}});  // this run's arguments win
    std::vector<std::string> defined;
    for (const auto& def : stored.config["_wandb"]["value"]["m"]) defined.push_back(def["1"]);
    CHECK(std::find(defined.begin(), defined.end(), "train/old") != defined.end());
    CHECK(std::find(defined.begin(), defined.end(), "train/loss") != defined.end());
  }
  SECTION("allow, and there is no such run: a new run with that id") {
    ScopedEnv resume("WANDB_RESUME", "allow"), other("WANDB_RUN_ID", "fresh1");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    simulate(run, 0, 1);
    callback->finish();
    const auto rows = history_of(wandb.run("team/huggingface/fresh1"));
    REQUIRE(!rows.empty());
    CHECK(rows[0]["_step"] == 0);
  }
  SECTION("must, and there is no such run") {
    ScopedEnv resume("WANDB_RESUME", "must"), other("WANDB_RUN_ID", "missing1");
    check_refused<WandbCallback>(
        tmp.path(), fast_options(server.uri()),
        "WANDB_RESUME=must, but project \"huggingface\" has no run \"missing1\" to resume "
        "(WANDB_RUN_ID)");
  }
  SECTION("never, and the run exists") {
    ScopedEnv resume("WANDB_RESUME", "never");
    check_refused<WandbCallback>(
        tmp.path(), fast_options(server.uri()),
        "WANDB_RESUME=never, but project \"huggingface\" already has a run \"resumed1\" "
        "(WANDB_RUN_ID): choose another id");
  }
  SECTION("an unknown value") {
    ScopedEnv resume("WANDB_RESUME", "sometimes");
    check_refused<WandbCallback>(tmp.path(), fast_options(server.uri()),
                                 "WANDB_RESUME must be allow, must, never or auto (got \"sometimes\")");
  }
}

TEST_CASE(
    "W&B: the API key comes from WANDB_API_KEY or netrc, and a missing or refused key disables the tracker",
    "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  ScopedEnv no_key("WANDB_API_KEY", std::nullopt);
  const std::string netrc = (tmp.path() / "netrc").string();
  ScopedEnv netrc_path("NETRC", netrc);

  SECTION("netrc, the entry of the server's host and port") {
    test::write_file(netrc, "machine api.wandb.ai login user password wrong-key\nmachine " +
                                torchfit::detail::url_authority(server.uri()) +
                                "\n  login user\n  password netrc-key\n");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    simulate(run, 0, 1);
    callback->finish();
    const auto requests = server.requests();
    REQUIRE(!requests.empty());
    CHECK(requests[0].headers.find("Authorization: Basic " + torchfit::detail::base64("api:netrc-key")) !=
          std::string::npos);
  }
  SECTION("no key anywhere") {
    check_refused<WandbCallback>(
        tmp.path(), fast_options(server.uri()),
        "no W&B API key for " + server.uri() +
            ": set WANDB_API_KEY, or log in with `wandb login` (which stores it in " + netrc + ")");
    CHECK(server.requests().empty());
  }
  SECTION("a key the server refuses: the status is named, nothing is retried") {
    ScopedEnv key("WANDB_API_KEY", "bad-key");
    wandb.graphql_status = 401;
    check_refused<WandbCallback>(
        tmp.path(), fast_options(server.uri()),
        "W&B UpsertBucket at " + server.uri() + "/graphql: HTTP 401 (check the API key): ");
    CHECK(server.requests().size() == 1);
  }
}

TEST_CASE("W&B: WANDB_MODE disabled turns the tracker off, offline and unknown modes are refused by name",
          "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  SECTION("disabled") {
    ScopedEnv mode("WANDB_MODE", "disabled");
    Run run(tmp.path());
    auto recorder = run.handler.add_callback<Recorder>();
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    CaptureLog log;
    simulate(run, 0, 2);
    callback->finish();
    CHECK(log.text().empty());
    CHECK(recorder->logs_seen == 4);
    CHECK(callback->run_id().empty());
  }
  SECTION("HF's WANDB_DISABLED") {
    ScopedEnv disabled("WANDB_DISABLED", "true");
    Run run(tmp.path());
    auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
    CaptureLog log;
    simulate(run, 0, 2);
    CHECK(log.text().empty());
  }
  SECTION("offline") {
    ScopedEnv mode("WANDB_MODE", "offline");
    check_refused<WandbCallback>(
        tmp.path(), fast_options(server.uri()),
        "WANDB_MODE=offline: offline W&B runs are not supported (torchfit talks to the W&B server "
        "directly); log offline with --report_to tensorboard or csv, or unset WANDB_MODE");
  }
  SECTION("unknown") {
    ScopedEnv mode("WANDB_MODE", "sideways");
    check_refused<WandbCallback>(tmp.path(), fast_options(server.uri()),
                                 "WANDB_MODE must be online, offline or disabled (got \"sideways\")");
  }
  CHECK(server.requests().empty());
}

TEST_CASE(
    "W&B: a failing file_stream disables the tracker at its next event with one warning, training goes on",
    "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  wandb.file_stream_status = 503;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  ScopedEnv id("WANDB_RUN_ID", "failing1");
  test::check_background_failure<WandbCallback>(
      tmp.path(), fast_options(server.uri()),
      "POST " + server.uri() + "/files/team/huggingface/failing1/file_stream failed after 3 attempts",
      [](Run& run) {
        run.log(1, {{"loss", 0.5}});
      });
  CHECK(!wandb.run("team/huggingface/failing1").exit_code);  // a failed run is not finished
}

TEST_CASE("W&B: the Stop button on the run's page stops training at the next log", "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  wandb.file_stream_answer = R"({"stopped": true})";
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback = run.handler.add_callback<WandbCallback>(fast_options(server.uri()));
  run.train_begin();
  run.log(1, {{"loss", 0.5}});
  CHECK(!run.control.should_training_stop);
  callback->flush();  // the answer has arrived
  run.log(2, {{"loss", 0.4}});
  CHECK(run.control.should_training_stop);
  CHECK(run.control.stop_reason == "the W&B run was stopped from its page (W&B's Stop button)");
}

TEST_CASE("W&B: an idle run sends heartbeats until it is finished", "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  WandbOptions options = fast_options(server.uri());
  options.heartbeat_interval_s = 0.02;
  auto callback = run.handler.add_callback<WandbCallback>(options);
  run.train_begin();
  const std::string key = "team/huggingface/" + callback->run_id();
  // Heartbeats come while nothing else is sent.
  CHECK(test::eventually([&] { return wandb.run(key).heartbeats >= 3; }));
  callback->finish();
  const int heartbeats = wandb.run(key).heartbeats;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(wandb.run(key).heartbeats == heartbeats);  // none after the end
  for (const auto& r : server.requests())
    if (r.target != "/graphql") CHECK((r.body == "{}" || parse_line(r.body).contains("complete")));
}

TEST_CASE("W&B: run_url, netrc entries and a Trainer reporting to wandb", "[wandb]") {
  CleanWandbEnv env;
  TempDir tmp;
  SECTION("netrc") {
    const auto path = (tmp.path() / "netrc").string();
    test::write_file(path, "machine a.example login x password pa\ndefault login y password pd\n");
    CHECK(torchfit::detail::netrc_password(path, "a.example") == "pa");
    CHECK(torchfit::detail::netrc_password(path, "b.example") == "pd");
    CHECK(!torchfit::detail::netrc_password((tmp.path() / "missing").string(), "a.example"));
    CHECK(torchfit::detail::url_authority("https://api.wandb.ai/") == "api.wandb.ai");
    CHECK(torchfit::detail::url_authority("http://127.0.0.1:8080") == "127.0.0.1:8080");
  }
  SECTION("--report_to wandb: the Trainer's logs, step by step") {
    FakeWandb wandb;
    MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
    ScopedEnv url("WANDB_BASE_URL", server.uri()), interval("WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL", "0");
    std::string key;
    const auto log_history = test::train_reporting_to("wandb", tmp.path(), [&](auto& trainer) {
      std::shared_ptr<WandbCallback> callback;
      for (const auto& c : trainer.callback_handler().callbacks())
        if (auto typed = std::dynamic_pointer_cast<WandbCallback>(c)) callback = typed;
      REQUIRE(callback != nullptr);
      key = "team/huggingface/" + callback->run_id();
      // model/num_parameters: 4*16+16 + 16*1+1
      CHECK(wandb.run(key).config["model/num_parameters"] == json{{"value", 97}});
    });
    const auto stored = wandb.run(key);
    CHECK(stored.exit_code == 0);
    const auto rows = history_of(stored);
    REQUIRE(rows.size() == log_history.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      CHECK(rows[i]["train/global_step"] == log_history[i]["step"]);
      if (log_history[i].contains("loss")) CHECK(rows[i]["train/loss"] == log_history[i]["loss"]);
    }
    CHECK(stored.summary["train_runtime"] == log_history.back()["train_runtime"]);
  }
}

namespace {

// Retries a few milliseconds apart, without limit, each attempt cut off after `request_timeout_s`.
WandbOptions outage_options(const std::string& uri, double request_timeout_s = 2) {
  WandbOptions o = fast_options(uri);
  o.retry = RetryPolicy{0.01, 0.05, request_timeout_s};
  return o;
}

std::vector<std::int64_t> steps_of(const std::vector<json>& rows) {
  std::vector<std::int64_t> steps;
  for (const auto& row : rows) steps.push_back(row["_step"].get<std::int64_t>());
  return steps;
}

std::vector<std::int64_t> range(std::int64_t first, std::int64_t last) {
  std::vector<std::int64_t> values;
  for (std::int64_t v = first; v <= last; ++v) values.push_back(v);
  return values;
}

}  // namespace

TEST_CASE(
    "W&B: an outage loses no row: requests are retried until the server is back, every row arrives in order",
    "[wandb][outage]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  const auto how = GENERATE(MockServer::Outage::unavailable, MockServer::Outage::drop);
  Run run(tmp.path());
  auto callback = run.handler.add_callback<WandbCallback>(outage_options(server.uri()));
  CaptureLog log;
  run.train_begin();
  server.fail_for(std::chrono::milliseconds(800), how, "/files/");
  for (std::int64_t step = 1; step <= 20; ++step) run.log(step, {{"loss", 1.0 / double(step)}});
  CHECK(test::eventually([&] { return server.failed_requests() >= 3; }));
  callback->finish();  // waits: the outage ends well within the flush timeout
  CHECK(log.text().empty());
  const auto stored = wandb.run("team/huggingface/" + callback->run_id());
  const auto rows = history_of(stored);
  CHECK(steps_of(rows) == range(0, 19));
  for (std::size_t i = 0; i < rows.size(); ++i) CHECK(rows[i]["train/global_step"] == std::int64_t(i) + 1);
  CHECK(stored.summary["train/loss"] == 1.0 / 20);
  CHECK(stored.exit_code == 0);
  CHECK_FALSE(fs::exists(tmp.path() / ".torchfit" / "unsent" / ("wandb-" + callback->run_id() + ".jsonl")));
}

TEST_CASE(
    "W&B: an outage past the end of training: one warning says how many rows are unsent and where, the "
    "file holds exactly them",
    "[wandb][outage]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  std::string id;
  CaptureLog log;
  {
    Run run(tmp.path());
    WandbOptions options = outage_options(server.uri());
    options.flush_timeout_s = 0.5;
    auto callback = run.handler.add_callback<WandbCallback>(options);
    auto recorder = run.handler.add_callback<Recorder>();
    run.train_begin();
    id = callback->run_id();
    server.fail_for(std::chrono::hours(1), MockServer::Outage::unavailable);
    for (std::int64_t step = 1; step <= 3; ++step) run.log(step, {{"loss", 1.0 / double(step)}});
    run.train_end();
    CHECK(recorder->ended);  // training went on to its end
    CHECK(run.handler.callback_list() == "Recorder");
  }  // destroyed: nothing more is said or sent
  const fs::path file = tmp.path() / ".torchfit" / "unsent" / ("wandb-" + id + ".jsonl");
  const std::string text = log.text();
  INFO(text);
  // Progress while waiting (every quarter of the timeout here), then the one warning.
  const std::string warning =
      "[torchfit] warning: WandbCallback failed and is disabled for the rest of this run: "
      "wandb: gave up after 0.5 s (last error: POST " +
      server.uri() + "/graphql: HTTP 503: {}); 7 rows unsent, kept in " + file.string() + "\n";
  REQUIRE(text.size() >= warning.size());
  CHECK(text.substr(text.size() - warning.size()) == warning);
  CHECK(text.rfind("[torchfit] warning: waiting for wandb to send 7 rows (0 s left)\n", 0) == 0);
  // The file: the config update that defines train/loss, then the three history rows, each with the summary
  // after it, in order.
  std::vector<json> lines;
  std::istringstream in(test::read_file(file));
  for (std::string line; std::getline(in, line);) lines.push_back(parse_line(line));
  REQUIRE(lines.size() == 7);
  CHECK(lines[0]["upsert"]["name"] == id);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(lines[1 + 2 * i]["history"]["_step"] == std::int64_t(i));
    CHECK(lines[1 + 2 * i]["history"]["train/loss"] == 1.0 / double(i + 1));
    CHECK(lines[2 + 2 * i]["summary"]["_step"] == std::int64_t(i));
  }
  CHECK(wandb.run("team/huggingface/" + id).history.empty());
  CHECK(!wandb.run("team/huggingface/" + id).exit_code);
}

TEST_CASE("W&B: a training step never waits on the network: logging returns at once while the server hangs",
          "[wandb][outage]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback =
      run.handler.add_callback<WandbCallback>(outage_options(server.uri(), /*request_timeout_s=*/2));
  run.train_begin();
  server.fail_for(std::chrono::seconds(3), MockServer::Outage::hang, "/files/");
  run.log(1, {{"loss", 1.0}});
  REQUIRE(test::eventually([&] { return server.failed_requests() >= 1; }));  // a request hangs now
  double slowest_s = 0;
  for (std::int64_t step = 2; step <= 50; ++step) {
    const auto start = std::chrono::steady_clock::now();
    run.log(step, {{"loss", 1.0 / double(step)}});
    slowest_s =
        std::max(slowest_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  INFO("slowest on_log: " << slowest_s << " s");
  CHECK(slowest_s < 1);  // each hung attempt lasts 2 s
  callback->finish();
  CHECK(steps_of(history_of(wandb.run("team/huggingface/" + callback->run_id()))) == range(0, 49));
}

TEST_CASE(
    "W&B: file_stream requests stay within wandb-core's 10 MiB, a history line over its limit is dropped "
    "with a warning",
    "[wandb]") {
  CleanWandbEnv env;
  FakeWandb wandb;
  MockServer server([&](const HttpRequest& r) { return wandb.handle(r); });
  TempDir tmp;
  Run run(tmp.path());
  auto callback =
      run.handler.add_callback<WandbCallback>(fast_options(server.uri(), /*transmit_interval_s=*/3600));
  CaptureLog log;
  run.train_begin();
  const std::size_t mib = std::size_t{1} << 20;
  // Four lines of 2.6 MiB: more than one request holds.
  for (std::int64_t step = 1; step <= 4; ++step) run.log(step, {{"blob", std::string(26 * mib / 10, 'a')}});
  run.log(5, {{"huge", std::string(10 * mib, 'b')}});  // _step 4: over the 10 MiB - 100 KiB line limit
  run.log(6, {{"loss", 0.5}});
  callback->flush();
  const std::string text = log.text();
  INFO(text.substr(0, 500));
  CHECK(text.rfind("[torchfit] warning: W&B: dropping the history row of _step 4: ", 0) == 0);
  CHECK(text.find(" bytes, over wandb-core's limit of 10383360 bytes per line\n") != std::string::npos);
  // The summary holds the huge value too: it is not sent, with one warning for the run.
  CHECK(text.find("[torchfit] warning: W&B: not sending the run's summary: ") != std::string::npos);
  std::size_t size_warnings = 0;  // a slow machine may also print flush()'s progress lines
  for (std::size_t at = text.find("warning: W&B: "); at != std::string::npos;
       at = text.find("warning: W&B: ", at + 1))
    ++size_warnings;
  CHECK(size_warnings == 2);

  std::size_t streams_with_history = 0;
  for (const auto& r : server.requests()) {
    if (r.target == "/graphql") continue;
    // The lines' bytes, and a little JSON around them ('a' needs no escaping).
    CHECK(r.body.size() <= torchfit::detail::wandb_max_request_bytes + 4096);
    streams_with_history += r.body.find("\"wandb-history.jsonl\"") != std::string::npos;
  }
  CHECK(streams_with_history >= 2);
  const auto rows = history_of(wandb.run("team/huggingface/" + callback->run_id()));
  CHECK(steps_of(rows) == std::vector<std::int64_t>{0, 1, 2, 3, 5});
  CHECK(rows.back()["train/loss"] == 0.5);
}

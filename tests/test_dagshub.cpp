// SPDX-License-Identifier: MIT
// The DagsHub tracker against a mock of DagsHub on 127.0.0.1 (a repository's MLflow server and its upload
// API, keeping runs, branches, commits and files): the repository from the tracking URI or DAGSHUB_REPO_*,
// the credentials, the run, the output directory's upload in DagsHub's client's commits (a new branch split
// off the default one), missing settings, refused uploads and an outage.
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "mock_http_server.hpp"
#include "support.hpp"
#include "torchfit/integrations/dagshub.hpp"

namespace fs = std::filesystem;
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

// Clears every variable the tracker reads, so the machine's environment cannot leak into a test.
struct CleanDagsHubEnv {
  ScopedEnv vars[14] = {
      {"MLFLOW_TRACKING_URI", std::nullopt},      {"MLFLOW_TRACKING_USERNAME", std::nullopt},
      {"MLFLOW_TRACKING_PASSWORD", std::nullopt}, {"MLFLOW_TRACKING_TOKEN", std::nullopt},
      {"MLFLOW_EXPERIMENT_NAME", std::nullopt},   {"MLFLOW_RUN_ID", std::nullopt},
      {"DAGSHUB_USER_TOKEN", std::nullopt},       {"DAGSHUB_REPO_OWNER", std::nullopt},
      {"DAGSHUB_REPO_NAME", std::nullopt},        {"DAGSHUB_REPO_BRANCH", std::nullopt},
      {"DAGSHUB_CLIENT_HOST", std::nullopt},      {"BRANCH", std::nullopt},
      {"HF_DAGSHUB_LOG_ARTIFACTS", std::nullopt}, {"HF_MLFLOW_LOG_ARTIFACTS", std::nullopt}};
};

// DagsHub's repository API for one repository, alice/digits (default branch main), as far as the client's
// upload uses it: repository and branch information, and multipart uploads that make a commit on a branch (or
// split a new branch off another); files are kept per branch. Only the token "dh-token" (Bearer, or Basic
// with any user name) is accepted.
class FakeDagsHub {
 public:
  struct Commit {
    std::string branch;
    std::map<std::string, std::string> fields;  // the form fields
    std::vector<std::string> files;             // paths in the repository, in the request's order
  };
  int upload_status = 200;

  static bool authorized(const std::string& headers) {
    return headers.find("\r\nAuthorization: Bearer dh-token\r\n") != std::string::npos ||
           headers.find("\r\nAuthorization: Basic YWxpY2U6ZGgtdG9rZW4=\r\n") != std::string::npos;  // alice
  }

  bool owns(const HttpRequest& r) const { return r.target.rfind("/api/v1/", 0) == 0; }

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!authorized(r.headers)) return {401, R"({"message":"Unauthorized"})"};
    const std::string repo = "/api/v1/repos/alice/digits";
    if (r.target.rfind(repo, 0) != 0) return {404, R"({"message":"Repo not found"})"};
    const std::string rest = r.target.substr(repo.size());
    if (r.method == "GET" && rest.empty())
      return {200, json{{"full_name", "alice/digits"}, {"default_branch", "main"}, {"mirror", false}}.dump()};
    if (r.method == "GET" && rest.rfind("/branches/", 0) == 0) {
      const std::string branch = rest.substr(10);
      if (!files_.count(branch)) return {404, R"({"message":"Branch not found"})"};
      return {200,
              json{{"name", branch}, {"commit", {{"id", "c" + std::to_string(commits_.size())}}}}.dump()};
    }
    if (r.method == "PUT" && rest.rfind("/content/", 0) == 0) {
      if (upload_status != 200) return {upload_status, R"({"error":"path conflict","details":"nope"})"};
      const std::string path = rest.substr(9);
      const std::string on = path.substr(0, path.find('/'));
      const std::string directory = path.substr(path.find('/') + 1);
      Commit commit = parse(r);
      if (!files_.count(on)) return {404, R"({"message":"Branch not found"})"};
      commit.branch = on;
      if (commit.fields["commit_choice"] == "commit-to-new-branch") {
        commit.branch = commit.fields["new_branch_name"];
        files_[commit.branch] = files_[on];
      } else if (commit.fields["commit_choice"] != "direct") {
        return {400, R"({"message":"bad commit_choice"})"};
      }
      for (const auto& [name, bytes] : parts_) files_[commit.branch][directory + "/" + name] = bytes;
      commits_.push_back(commit);
      return {200, "{}"};
    }
    return {404, R"({"message":"not found"})"};
  }

  std::vector<Commit> commits() {
    std::lock_guard<std::mutex> lock(mutex_);
    return commits_;
  }
  /// The files of `branch`: path in the repository -> content.
  std::map<std::string, std::string> files(const std::string& branch) {
    std::lock_guard<std::mutex> lock(mutex_);
    return files_[branch];
  }

 private:
  // The fields and files of a multipart/form-data body (files kept in parts_).
  Commit parse(const HttpRequest& r) {
    Commit commit;
    parts_.clear();
    const std::string key = "boundary=";
    const auto at = r.headers.find(key);
    if (at == std::string::npos) return commit;
    const std::string boundary =
        "--" + r.headers.substr(at + key.size(), r.headers.find("\r\n", at) - at - key.size());
    std::size_t start = r.body.find(boundary);
    while (start != std::string::npos) {
      start += boundary.size();
      if (r.body.compare(start, 2, "--") == 0) break;
      const auto header_end = r.body.find("\r\n\r\n", start);
      const auto next = r.body.find("\r\n" + boundary, header_end);
      const std::string header = r.body.substr(start, header_end - start);
      const std::string content = r.body.substr(header_end + 4, next - header_end - 4);
      const auto name_at = header.find("name=\"") + 6;
      const std::string name = header.substr(name_at, header.find('"', name_at) - name_at);
      const auto file_at = header.find("filename=\"");
      if (file_at == std::string::npos) {
        commit.fields[name] = content;
      } else {
        const std::string file = header.substr(file_at + 10, header.find('"', file_at + 10) - file_at - 10);
        commit.files.push_back(file);
        parts_[file] = content;
      }
      start = next + 2;
    }
    return commit;
  }

  std::mutex mutex_;
  std::map<std::string, std::map<std::string, std::string>> files_{{"main", {{"README.md", "# digits"}}}};
  std::vector<Commit> commits_;
  std::map<std::string, std::string> parts_;
};

// DagsHub (its MLflow server under /alice/digits.mlflow, its API under /api/v1) on one server, the token in
// the environment, for one test.
struct DagsHubServer {
  CleanDagsHubEnv env;
  FakeDagsHub dagshub;
  FakeMlflow mlflow{"/alice/digits.mlflow"};
  MockServer server{
      [this](const HttpRequest& r) { return dagshub.owns(r) ? dagshub.handle(r) : mlflow.handle(r); }};
  ScopedEnv token{"DAGSHUB_USER_TOKEN", "dh-token"};
  DagsHubServer() { mlflow.authorized = &FakeDagsHub::authorized; }

  DagsHubOptions options() const {
    DagsHubOptions o;
    o.tracking_uri = server.uri() + "/alice/digits.mlflow";
    o.host = server.uri();
    o.retry = RetryPolicy{0.01, 60, 5, 3, 10};
    return o;
  }
};

// An output directory as a training leaves it: a checkpoint folder and files at the top.
void write_outputs(const fs::path& dir) {
  fs::create_directories(dir / "checkpoint-2");
  test::write_file(dir / "trainer_state.json", "{\"global_step\": 2}");
  test::write_file(dir / "checkpoint-2" / "model.safetensors", std::string("\x00\x01\x02weights", 10));
  test::write_file(dir / "checkpoint-2" / "trainer_state.json", "{}");
}

}  // namespace

TEST_CASE("DagsHub: the repository of an MLflow URI is its last two path parts, as HF splits it",
          "[dagshub]") {
  CHECK(torchfit::detail::dagshub_repository("https://dagshub.com/alice/digits.mlflow") ==
        std::pair<std::string, std::string>{"alice", "digits"});
  CHECK(torchfit::detail::dagshub_repository("http://127.0.0.1:9/alice/digits.mlflow/") ==
        std::pair<std::string, std::string>{"alice", "digits"});
  CHECK_THROWS_WITH(torchfit::detail::dagshub_repository("https://dagshub.com"),
                    "MLFLOW_TRACKING_URI \"https://dagshub.com\" is not a DagsHub repository's MLflow URI "
                    "(https://dagshub.com/<owner>/<repo>.mlflow)");
}

TEST_CASE_METHOD(DagsHubServer, "DagsHub: MLflow's run, parameters and metrics on the repository's server",
                 "[dagshub]") {
  TempDir tmp;
  Run run(tmp / "out");
  auto callback = run.handler.add_callback<DagsHubCallback>(options());
  CaptureLog quiet;  // MLflow's dropped-string warning
  simulate(run, 0, 2);
  CHECK(callback->owner() == "alice");
  CHECK(callback->repository() == "digits");
  const auto runs = mlflow.runs();
  REQUIRE(runs.size() == 1);
  const auto& logged = runs.begin()->second;
  CHECK(logged.experiment_id == "0");
  CHECK(logged.tags.at("mlflow.runName") == "unit-run");
  CHECK(logged.params.at("learning_rate") == "5e-05");
  CHECK(logged.metrics.front() == json{{"key", "loss"}, {"value", 1.0}, {"step", 1}});
  CHECK(logged.status == "FINISHED");
  CHECK(dagshub.commits().empty());  // no upload without HF_DAGSHUB_LOG_ARTIFACTS
}

TEST_CASE_METHOD(
    DagsHubServer,
    "DagsHub: HF_DAGSHUB_LOG_ARTIFACTS uploads the output directory to artifacts/, folder by folder",
    "[dagshub]") {
  ScopedEnv artifacts("HF_DAGSHUB_LOG_ARTIFACTS", "true");
  TempDir tmp;
  write_outputs(tmp / "out");
  Run run(tmp / "out");
  CaptureLog quiet;
  SECTION("to the default branch") {
    run.handler.add_callback<DagsHubCallback>(options());
    simulate(run, 0, 2);
    const auto commits = dagshub.commits();
    REQUIRE(commits.size() == 2);  // one commit per folder, as DagsHub's client's add_dir makes them
    const std::string message = "Commit data points in folder " + (tmp / "out").string();
    CHECK(commits[0].fields == std::map<std::string, std::string>{{"commit_choice", "direct"},
                                                                  {"commit_summary", message.substr(0, 100)},
                                                                  {"versioning", "dvc"},
                                                                  {"last_commit", ""},
                                                                  {"is_dvc_dir", "true"}});
    CHECK(commits[0].files == std::vector<std::string>{"trainer_state.json"});
    CHECK(commits[1].files ==
          std::vector<std::string>{"checkpoint-2/model.safetensors", "checkpoint-2/trainer_state.json"});
    const auto files = dagshub.files("main");
    CHECK(files.at("artifacts/checkpoint-2/model.safetensors") == std::string("\x00\x01\x02weights", 10));
    CHECK(files.at("artifacts/trainer_state.json") == "{\"global_step\": 2}");
    CHECK(files.at("README.md") == "# digits");
    CHECK(mlflow.runs().begin()->second.status == "FINISHED");  // the run ends before the upload
  }
  SECTION("to a branch that does not exist yet: split off the default branch by the first commit") {
    ScopedEnv branch("BRANCH", "experiments");
    run.handler.add_callback<DagsHubCallback>(options());
    simulate(run, 0, 2);
    const auto commits = dagshub.commits();
    REQUIRE(commits.size() == 2);
    CHECK(commits[0].fields.at("commit_choice") == "commit-to-new-branch");
    CHECK(commits[0].fields.at("new_branch_name") == "experiments");
    CHECK(commits[1].fields.at("commit_choice") == "direct");
    CHECK(commits[1].branch == "experiments");
    CHECK(dagshub.files("experiments").size() == 4);
    CHECK(dagshub.files("main").size() == 1);
  }
}

TEST_CASE_METHOD(DagsHubServer,
                 "DagsHub: DAGSHUB_REPO_OWNER and DAGSHUB_REPO_NAME, and dagshub.init()'s login",
                 "[dagshub]") {
  TempDir tmp;
  CaptureLog quiet;
  ScopedEnv owner("DAGSHUB_REPO_OWNER", "alice"), name("DAGSHUB_REPO_NAME", "digits"),
      host("DAGSHUB_CLIENT_HOST", server.uri()), no_token("DAGSHUB_USER_TOKEN", std::nullopt),
      user("MLFLOW_TRACKING_USERNAME", "alice"), password("MLFLOW_TRACKING_PASSWORD", "dh-token");
  DagsHubOptions o = options();
  o.tracking_uri.reset();
  o.host.reset();
  Run run(tmp / "out");
  run.handler.add_callback<DagsHubCallback>(o);
  simulate(run, 0, 1);
  REQUIRE(mlflow.runs().size() == 1);
  CHECK(mlflow.runs().begin()->second.metrics.size() == 6);
}

TEST_CASE_METHOD(DagsHubServer,
                 "DagsHub: missing settings or a refused upload disable the tracker with one warning",
                 "[dagshub]") {
  TempDir tmp;
  SECTION("no repository") {
    DagsHubOptions o = options();
    o.tracking_uri.reset();
    check_refused<DagsHubCallback>(
        tmp.path(), o,
        "no DagsHub repository: set MLFLOW_TRACKING_URI to https://dagshub.com/<owner>/"
        "<repo>.mlflow (what dagshub.init() sets), or DAGSHUB_REPO_OWNER and "
        "DAGSHUB_REPO_NAME");
  }
  SECTION("no credential") {
    ScopedEnv no_token("DAGSHUB_USER_TOKEN", std::nullopt);
    check_refused<DagsHubCallback>(tmp.path(), options(),
                                   "no DagsHub credential: set MLFLOW_TRACKING_USERNAME and "
                                   "MLFLOW_TRACKING_PASSWORD (your DagsHub user name and a token, what "
                                   "dagshub.init() sets), or DAGSHUB_USER_TOKEN");
    CHECK(server.requests().empty());
  }
  SECTION("a refused upload: DagsHub's error, after the run ended") {
    ScopedEnv artifacts("HF_DAGSHUB_LOG_ARTIFACTS", "1");
    write_outputs(tmp.path());
    dagshub.upload_status = 400;
    Run run(tmp.path());
    run.handler.add_callback<DagsHubCallback>(options());
    CaptureLog log;
    simulate(run, 0, 2);
    CHECK_THAT(log.text(),
               Catch::EndsWith("\n[torchfit] warning: DagsHubCallback failed and is disabled for the "
                               "rest of this run: DagsHub alice/digits: PUT " +
                               server.uri() +
                               "/api/v1/repos/alice/digits/content/main/artifacts answered HTTP 400: "
                               "path conflict: nope\n"));
    CHECK(mlflow.runs().begin()->second.status == "FINISHED");
  }
}

TEST_CASE_METHOD(DagsHubServer, "DagsHub: an outage loses no metric and no file", "[dagshub][outage]") {
  ScopedEnv artifacts("HF_DAGSHUB_LOG_ARTIFACTS", "true");
  TempDir tmp;
  write_outputs(tmp / "out");
  Run run(tmp / "out");
  DagsHubOptions o = options();
  o.retry = RetryPolicy{0.01, 0.05, 2};  // no limit: retried for as long as the run lasts
  run.handler.add_callback<DagsHubCallback>(o);
  run.train_begin();
  CaptureLog log;
  server.fail_for(std::chrono::milliseconds(800), MockServer::Outage::unavailable);
  simulate(run, 0, 2);
  CHECK(server.failed_requests() >= 3);
  CHECK(log.text().find("failed") == std::string::npos);
  std::size_t numbers = 0;
  for (const auto& entry : run.state.log_history)
    for (auto it = entry.begin(); it != entry.end(); ++it)
      numbers += it.key() != "step" && it.value().is_number();
  CHECK(mlflow.runs().begin()->second.metrics.size() == numbers);
  CHECK(dagshub.files("main").size() == 4);
}

TEST_CASE_METHOD(DagsHubServer, "DagsHub: a Trainer reporting to dagshub logs every loss at its step",
                 "[dagshub]") {
  ScopedEnv uri("MLFLOW_TRACKING_URI", server.uri() + "/alice/digits.mlflow");
  TempDir tmp;
  const auto log_history = test::train_reporting_to("dagshub", tmp.path(), [](auto&) {});
  const auto runs = mlflow.runs();
  REQUIRE(runs.size() == 1);
  std::vector<json> losses;
  for (const auto& m : runs.begin()->second.metrics)
    if (m["key"] == "loss") losses.push_back({m["step"], m["value"]});
  CHECK(losses == test::losses_of(log_history));
  CHECK(losses.size() == 3);
}

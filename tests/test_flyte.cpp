// SPDX-License-Identifier: MIT
// The Flyte tracker: refused outside a Flyte task, checkpoints synced to the task's checkpoint prefix and the
// log history written as its deck, to a local prefix and to a mock of an S3-compatible store on 127.0.0.1
// (objects kept per bucket and key, requests signed with AWS Signature Version 4), retried through an outage,
// a refused upload, and a real Trainer whose deck holds its log history.
#include <algorithm>
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
#include "torchfit/detail/strings.hpp"
#include "torchfit/integrations/flyte.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::check_refused;
using torchfit::test::HttpRequest;
using torchfit::test::MockServer;
using torchfit::test::ScopedEnv;
using torchfit::test::TempDir;
using Run = torchfit::test::TrackerRun;

namespace {

// A Flyte task's environment (an execution id), no prefixes or S3 settings from the machine.
struct FlyteTaskEnv {
  ScopedEnv vars[10] = {{"FLYTE_INTERNAL_EXECUTION_ID", "f3a1b2c4d"},
                        {"_F_NM", std::nullopt},
                        {"TORCHFIT_FLYTE_CHECKPOINT_PATH", std::nullopt},
                        {"TORCHFIT_FLYTE_OUTPUT_PREFIX", std::nullopt},
                        {"FLYTE_AWS_ENDPOINT", std::nullopt},
                        {"FLYTE_AWS_ACCESS_KEY_ID", std::nullopt},
                        {"FLYTE_AWS_SECRET_ACCESS_KEY", std::nullopt},
                        {"AWS_ACCESS_KEY_ID", std::nullopt},
                        {"AWS_SECRET_ACCESS_KEY", std::nullopt},
                        {"AWS_SESSION_TOKEN", std::nullopt}};
};

// An S3-compatible store (path-style `PUT /<bucket>/<key>`) that keeps objects and their content types, and
// accepts only requests signed with AWS Signature Version 4 by the access key "minio" for us-east-1.
class FakeS3 {
 public:
  struct Object {
    std::string bytes;
    std::string content_type;
  };
  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string headers = torchfit::detail::lower(r.headers);
    if (r.headers.find("\r\nAuthorization: AWS4-HMAC-SHA256 Credential=minio/") == std::string::npos ||
        r.headers.find("/us-east-1/s3/aws4_request, SignedHeaders=") == std::string::npos ||
        headers.find("\r\nx-amz-date: ") == std::string::npos)
      return {403, "<Error><Code>AccessDenied</Code></Error>"};
    if (r.method != "PUT") return {405, "<Error><Code>MethodNotAllowed</Code></Error>"};
    const auto type = r.headers.find("\r\nContent-Type: ");
    objects_[test::url_decode(r.target.substr(1))] = {
        r.body, type == std::string::npos
                    ? ""
                    : r.headers.substr(type + 16, r.headers.find("\r\n", type + 2) - type - 16)};
    return {200, ""};
  }
  std::map<std::string, Object> objects() {
    std::lock_guard<std::mutex> lock(mutex_);
    return objects_;
  }

 private:
  std::mutex mutex_;
  std::map<std::string, Object> objects_;  // "<bucket>/<key>"
};

// A checkpoint directory as the Trainer writes one.
fs::path write_checkpoint(const fs::path& output_dir, int step) {
  const fs::path dir = output_dir / ("checkpoint-" + std::to_string(step));
  fs::create_directories(dir);
  test::write_file(dir / "model.safetensors", "weights-" + std::to_string(step));
  test::write_file(dir / "trainer_state.json", "{\"global_step\": " + std::to_string(step) + "}");
  return dir;
}

// The cells of the deck's table: one row per log entry, "" for the header's index column.
std::vector<std::vector<std::string>> deck_rows(const std::string& html) {
  std::vector<std::vector<std::string>> rows;
  for (std::size_t at = html.find("<tr"); at != std::string::npos; at = html.find("<tr", at + 1)) {
    std::vector<std::string> row;
    const auto end = html.find("</tr>", at);
    for (std::size_t cell = html.find("<t", at + 3); cell < end; cell = html.find("<t", cell + 1)) {
      const auto open = html.find('>', cell) + 1;
      row.push_back(html.substr(open, html.find("</", open) - open));
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

TEST_CASE("Flyte: refused outside a Flyte task, or without the task's prefixes", "[flyte]") {
  FlyteTaskEnv env;
  TempDir tmp;
  FlyteOptions local;
  local.checkpoint_path = (tmp / "ckpt").string();
  local.output_prefix = (tmp / "outputs").string();
  SECTION("outside a task") {
    ScopedEnv none("FLYTE_INTERNAL_EXECUTION_ID", std::nullopt);
    check_refused<FlyteCallback>(
        tmp.path(), local,
        "flyte needs a Flyte task: FLYTE_INTERNAL_EXECUTION_ID, which Flyte sets in a "
        "task's container, is not set; outside Flyte use another tracker (--report_to "
        "csv, tensorboard, ...)");
  }
  SECTION("no checkpoint prefix, no output prefix") {
    const std::pair<std::optional<std::string> FlyteOptions::*, std::string> missing[] = {
        {&FlyteOptions::checkpoint_path,
         "TORCHFIT_FLYTE_CHECKPOINT_PATH (or FlyteOptions) to the task's {{.checkpointOutputPrefix}}"},
        {&FlyteOptions::output_prefix,
         "TORCHFIT_FLYTE_OUTPUT_PREFIX (or FlyteOptions) to the task's {{.outputPrefix}}"}};
    for (const auto& [member, what] : missing) {
      FlyteOptions o = local;
      (o.*member).reset();
      check_refused<FlyteCallback>(tmp.path(), o,
                                   "flyte: set " + what + " (pass it in the container's arguments)");
    }
  }
  SECTION("a prefix of a store it cannot write to") {
    FlyteOptions o = local;
    o.output_prefix = "gs://bucket/outputs";
    Run run(tmp.path());
    run.handler.add_callback<FlyteCallback>(o);
    CaptureLog log;
    run.train_begin();
    run.train_end();
    CHECK(log.text() ==
          "[torchfit] warning: FlyteCallback failed and is disabled for the rest of this run: Flyte "
          "prefix \"gs://bucket/outputs\": only s3:// (S3 and S3-compatible stores), file:// and "
          "local paths are supported\n");
  }
}

TEST_CASE("Flyte: each checkpoint's files to a local checkpoint prefix, the log history as the deck",
          "[flyte]") {
  FlyteTaskEnv env;
  TempDir tmp;
  ScopedEnv checkpoints("TORCHFIT_FLYTE_CHECKPOINT_PATH", "file://" + (tmp / "ckpt").string()),
      outputs("TORCHFIT_FLYTE_OUTPUT_PREFIX", (tmp / "outputs").string());
  Run run(tmp / "out");
  run.handler.add_callback<FlyteCallback>();
  CaptureLog log;
  run.train_begin();
  run.log(1, {{"loss", 0.5}, {"learning_rate", 5e-05}});
  run.handler.on_save(run.args, run.state, run.control, write_checkpoint(tmp / "out", 1));
  run.log(2, {{"eval_loss", 0.25}, {"note", "a<b"}});
  run.handler.on_save(run.args, run.state, run.control, write_checkpoint(tmp / "out", 2));
  run.train_end();
  CHECK(log.text().empty());
  // Each save replaces the files of the one before, as SyncCheckpoint.save does.
  CHECK(test::read_file(tmp / "ckpt" / "model.safetensors") == "weights-2");
  CHECK(test::read_file(tmp / "ckpt" / "trainer_state.json") == "{\"global_step\": 2}");
  const auto rows = deck_rows(test::read_file(tmp / "outputs" / "deck.html"));
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] == std::vector<std::string>{"", "loss", "learning_rate", "step", "eval_loss", "note"});
  CHECK(rows[1] == std::vector<std::string>{"0", "0.5", "5e-05", "1", "NaN", "NaN"});
  CHECK(rows[2] == std::vector<std::string>{"1", "NaN", "NaN", "2", "0.25", "a&lt;b"});
}

TEST_CASE(
    "Flyte: an S3-compatible store gets signed PUTs of the checkpoint and the deck, retried through an "
    "outage",
    "[flyte]") {
  FlyteTaskEnv env;
  FakeS3 s3;
  MockServer server([&](const HttpRequest& r) { return s3.handle(r); });
  ScopedEnv endpoint("FLYTE_AWS_ENDPOINT", server.uri()), id("FLYTE_AWS_ACCESS_KEY_ID", "minio"),
      secret("FLYTE_AWS_SECRET_ACCESS_KEY", "miniostorage"), region("AWS_REGION", "us-east-1");
  TempDir tmp;
  FlyteOptions o;
  o.checkpoint_path = "s3://my-s3-bucket/metadata/f3a1b2c4d/n0/data/0/_flytecheckpoints";
  o.output_prefix = "s3://my-s3-bucket/metadata/f3a1b2c4d/n0/data/0";
  o.retry = RetryPolicy{0.01, 0.05, 5};
  Run run(tmp / "out");
  run.handler.add_callback<FlyteCallback>(o);
  CaptureLog log;
  run.train_begin();
  run.log(1, {{"loss", 0.5}});
  server.fail_for(std::chrono::milliseconds(500), MockServer::Outage::unavailable);
  run.handler.on_save(run.args, run.state, run.control, write_checkpoint(tmp / "out", 1));
  CHECK(server.failed_requests() >= 1);
  run.train_end();
  CHECK(log.text().empty());
  const auto objects = s3.objects();
  REQUIRE(objects.size() == 3);
  const std::string prefix = "my-s3-bucket/metadata/f3a1b2c4d/n0/data/0/";
  CHECK(objects.at(prefix + "_flytecheckpoints/model.safetensors").bytes == "weights-1");
  CHECK(objects.at(prefix + "_flytecheckpoints/model.safetensors").content_type ==
        "application/octet-stream");
  CHECK(objects.at(prefix + "_flytecheckpoints/trainer_state.json").bytes == "{\"global_step\": 1}");
  CHECK(objects.at(prefix + "deck.html").content_type == "text/html");
  CHECK(deck_rows(objects.at(prefix + "deck.html").bytes)[1] == std::vector<std::string>{"0", "0.5", "1"});
}

TEST_CASE("Flyte: an upload the store refuses disables the tracker with one warning", "[flyte]") {
  FlyteTaskEnv env;
  FakeS3 s3;
  MockServer server([&](const HttpRequest& r) { return s3.handle(r); });
  ScopedEnv endpoint("FLYTE_AWS_ENDPOINT", server.uri()), id("AWS_ACCESS_KEY_ID", "someone-else"),
      secret("AWS_SECRET_ACCESS_KEY", "x");
  TempDir tmp;
  FlyteOptions o;
  o.checkpoint_path = "s3://bucket/ckpt";
  o.output_prefix = "s3://bucket/out";
  Run run(tmp / "out");
  run.handler.add_callback<FlyteCallback>(o);
  CaptureLog log;
  run.train_begin();
  run.handler.on_save(run.args, run.state, run.control, write_checkpoint(tmp / "out", 1));
  CHECK_THAT(log.text(),
             Catch::StartsWith("[torchfit] warning: FlyteCallback failed and is disabled for the rest "
                               "of this run: PUT " +
                               server.uri() + "/bucket/ckpt/"));
  CHECK_THAT(log.text(), Catch::Contains("answered HTTP 403 (check the API key): <Error><Code>AccessDenied"));
  CHECK(s3.objects().empty());
}

TEST_CASE("Flyte: a Trainer reporting to flyte syncs its checkpoints and its deck holds every loss",
          "[flyte]") {
  FlyteTaskEnv env;
  TempDir tmp;
  ScopedEnv checkpoints("TORCHFIT_FLYTE_CHECKPOINT_PATH", (tmp / "ckpt").string()),
      outputs("TORCHFIT_FLYTE_OUTPUT_PREFIX", (tmp / "outputs").string());
  TrainingArguments args;
  args.output_dir = (tmp / "out").string();
  args.max_steps = 6;
  args.logging_steps = 2;
  args.save_steps = 3;
  args.per_device_train_batch_size = 4;
  args.report_to = {"flyte"};
  Trainer trainer(test::Mlp(), args, test::regression_data(16), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  trainer.train();
  CHECK(fs::exists(tmp / "ckpt" / "model.safetensors"));
  CHECK(test::read_file(tmp / "ckpt" / "trainer_state.json") ==
        test::read_file(tmp / "out" / "checkpoint-6" / "trainer_state.json"));
  const auto rows = deck_rows(test::read_file(tmp / "outputs" / "deck.html"));
  const auto& header = rows.at(0);
  const auto loss = std::find(header.begin(), header.end(), "loss") - header.begin();
  const auto step = std::find(header.begin(), header.end(), "step") - header.begin();
  std::vector<json> losses;
  for (std::size_t i = 1; i < rows.size(); ++i)
    if (rows[i][static_cast<std::size_t>(loss)] != "NaN")
      losses.push_back({std::stoll(rows[i][static_cast<std::size_t>(step)]),
                        std::stod(rows[i][static_cast<std::size_t>(loss)])});
  CHECK(losses == test::losses_of(trainer.state().log_history));
  CHECK(losses.size() == 3);
  CHECK(rows.size() == trainer.state().log_history.size() + 1);
}

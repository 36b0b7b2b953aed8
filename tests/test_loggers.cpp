// SPDX-License-Identifier: MIT
// The CSV and JSON-lines trackers: exact file contents, header widening, quoting, resume and failure
// isolation.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/integrations/csv.hpp"
#include "torchfit/integrations/jsonl.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::read_file;
using torchfit::test::TempDir;
using torchfit::test::write_file;

using Run = torchfit::test::TrackerRun;
using torchfit::test::Recorder;

namespace {

// Three training logs, an evaluation (new keys), then a training log again.
void log_typical_run(Run& run) {
  run.train_begin();
  run.log(1, {{"loss", 0.5}, {"grad_norm", 1.25}, {"learning_rate", 5e-05}, {"epoch", 0.25}});
  run.log(2, {{"loss", 0.25}, {"grad_norm", 1.0}, {"learning_rate", 2.5e-05}, {"epoch", 0.5}});
  run.log(2,
          {{"eval_loss", 0.75}, {"eval_runtime", 0.01}, {"eval_samples_per_second", 1000.0}, {"epoch", 0.5}});
  run.log(3, {{"loss", 0.125}, {"grad_norm", 0.5}, {"learning_rate", 0.0}, {"epoch", 0.75}});
}

bool has_temporary_files(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".tmp") return true;
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// CSV

TEST_CASE("CSV: one row per log, a key appearing later widens the header and keeps earlier rows",
          "[loggers]") {
  TempDir tmp;
  Run run(tmp.path());
  auto csv = run.handler.add_callback<CSVCallback>();
  run.train_begin();
  run.log(1, {{"loss", 0.5}, {"grad_norm", 1.25}, {"learning_rate", 5e-05}, {"epoch", 0.25}});
  run.log(2, {{"loss", 0.25}, {"grad_norm", 1.0}, {"learning_rate", 2.5e-05}, {"epoch", 0.5}});
  CHECK(csv->file() == tmp / "logs.csv");
  CHECK(read_file(tmp / "logs.csv") ==
        "step,epoch,loss,grad_norm,learning_rate\n"
        "1,0.25,0.5,1.25,5e-05\n"
        "2,0.5,0.25,1.0,2.5e-05\n");

  run.log(2,
          {{"eval_loss", 0.75}, {"eval_runtime", 0.01}, {"eval_samples_per_second", 1000.0}, {"epoch", 0.5}});
  CHECK(read_file(tmp / "logs.csv") ==
        "step,epoch,loss,grad_norm,learning_rate,eval_loss,eval_runtime,eval_samples_per_second\n"
        "1,0.25,0.5,1.25,5e-05,,,\n"
        "2,0.5,0.25,1.0,2.5e-05,,,\n"
        "2,0.5,,,,0.75,0.01,1000.0\n");
  CHECK_FALSE(has_temporary_files(tmp.path()));

  run.log(3, {{"loss", 0.125}, {"grad_norm", 0.5}, {"learning_rate", 0.0}, {"epoch", 0.75}});
  CHECK(read_file(tmp / "logs.csv") ==
        "step,epoch,loss,grad_norm,learning_rate,eval_loss,eval_runtime,eval_samples_per_second\n"
        "1,0.25,0.5,1.25,5e-05,,,\n"
        "2,0.5,0.25,1.0,2.5e-05,,,\n"
        "2,0.5,,,,0.75,0.01,1000.0\n"
        "3,0.75,0.125,0.5,0.0,,,\n");
}

TEST_CASE(
    "CSV: strings are quoted per RFC 4180, ints, floats, booleans and non-finite values keep their form",
    "[loggers]") {
  TempDir tmp;
  Run run(tmp.path());
  run.state.epoch = 1.5;
  auto csv = run.handler.add_callback<CSVCallback>(CSVOptions{tmp / "sub" / "custom.csv"});
  run.log(7, {{"plain", "ok"},
              {"comma", "a,b"},
              {"quote", "say \"hi\""},
              {"lines", "one\ntwo\r\nthree"},
              {"count", 3},
              {"big", 1e16},
              {"tiny", 1e-07},
              {"flag", true},
              {"bad", std::numeric_limits<double>::quiet_NaN()},
              {"huge", -std::numeric_limits<double>::infinity()},
              {"odd \"key\", too", 1}});
  const std::string expected =
      "step,epoch,plain,comma,quote,lines,count,big,tiny,flag,bad,huge,\"odd \"\"key\"\", too\"\n"
      "7,1.5,ok,\"a,b\",\"say \"\"hi\"\"\",\"one\ntwo\r\nthree\",3,1e+16,1e-07,True,nan,-inf,1\n";
  CHECK(read_file(tmp / "sub" / "custom.csv") == expected);

  // The library's reader gives the fields back unchanged (it is what a resume and a widening rely on).
  const auto records = torchfit::detail::parse_csv(expected);
  REQUIRE(records.size() == 2);
  CHECK(records[0].back() == "odd \"key\", too");
  CHECK(records[1][2] == "ok");
  CHECK(records[1][3] == "a,b");
  CHECK(records[1][4] == "say \"hi\"");
  CHECK(records[1][5] == "one\ntwo\r\nthree");
  CHECK(torchfit::detail::parse_csv("a,b\r\nc,d\r\n") ==
        std::vector<std::vector<std::string>>{{"a", "b"}, {"c", "d"}});
  CHECK(torchfit::detail::parse_csv("a,b\nc,\"d") == std::vector<std::vector<std::string>>{{"a", "b"}});
}

TEST_CASE("CSV: a resumed run drops the rows logged after its checkpoint, and a row cut short, then appends",
          "[loggers]") {
  TempDir tmp;
  {
    Run first(tmp.path());
    first.handler.add_callback<CSVCallback>();
    log_typical_run(first);
  }
  torchfit::detail::append_to_file(tmp / "logs.csv", "4,1.0,0.1");  // a crash in the middle of a row

  Run resumed(tmp.path(), 2);  // checkpoint-2
  resumed.handler.add_callback<CSVCallback>();
  resumed.train_begin();
  CHECK(read_file(tmp / "logs.csv") ==
        "step,epoch,loss,grad_norm,learning_rate,eval_loss,eval_runtime,eval_samples_per_second\n"
        "1,0.25,0.5,1.25,5e-05,,,\n"
        "2,0.5,0.25,1.0,2.5e-05,,,\n"
        "2,0.5,,,,0.75,0.01,1000.0\n");
  resumed.log(3, {{"loss", 0.0625}, {"grad_norm", 0.5}, {"learning_rate", 0.0}, {"epoch", 0.75}});
  resumed.log(3, {{"train_runtime", 1.5}, {"epoch", 0.75}});
  CHECK(
      read_file(tmp / "logs.csv") ==
      "step,epoch,loss,grad_norm,learning_rate,eval_loss,eval_runtime,eval_samples_per_second,train_runtime\n"
      "1,0.25,0.5,1.25,5e-05,,,,\n"
      "2,0.5,0.25,1.0,2.5e-05,,,,\n"
      "2,0.5,,,,0.75,0.01,1000.0,\n"
      "3,0.75,0.0625,0.5,0.0,,,,\n"
      "3,0.75,,,,,,,1.5\n");
  CHECK_FALSE(has_temporary_files(tmp.path()));
}

TEST_CASE("CSV: a fresh run starts the file over, an evaluation before training appends", "[loggers]") {
  TempDir tmp;
  {
    Run first(tmp.path());
    first.handler.add_callback<CSVCallback>();
    log_typical_run(first);
  }
  SECTION("a fresh run") {
    Run fresh(tmp.path());
    fresh.handler.add_callback<CSVCallback>();
    fresh.train_begin();
    CHECK_FALSE(fs::exists(tmp / "logs.csv"));
    fresh.log(1, {{"loss", 2.0}, {"epoch", 0.5}});
    CHECK(read_file(tmp / "logs.csv") == "step,epoch,loss\n1,0.5,2.0\n");
  }
  SECTION("an evaluation in a later process, without training") {
    Run later(tmp.path());
    later.handler.add_callback<CSVCallback>();
    later.log(3, {{"eval_loss", 0.5}, {"epoch", 0.75}});
    CHECK(read_file(tmp / "logs.csv") ==
          "step,epoch,loss,grad_norm,learning_rate,eval_loss,eval_runtime,eval_samples_per_second\n"
          "1,0.25,0.5,1.25,5e-05,,,\n"
          "2,0.5,0.25,1.0,2.5e-05,,,\n"
          "2,0.5,,,,0.75,0.01,1000.0\n"
          "3,0.75,0.125,0.5,0.0,,,\n"
          "3,0.75,,,,0.5,,\n");
  }
}

TEST_CASE("CSV: a file it did not write is left alone, the tracker is disabled with one warning",
          "[loggers]") {
  TempDir tmp;
  write_file(tmp / "logs.csv", "name,score\nalice,3\n");
  Run run(tmp.path(), 5);
  run.handler.add_callback<CSVCallback>();
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  run.train_begin();
  run.log(6, {{"loss", 1.0}});
  run.log(7, {{"loss", 1.0}});
  CHECK(log.text() ==
        "[torchfit] warning: CSVCallback failed and is disabled for the rest of this run: " +
            (tmp / "logs.csv").string() +
            " is not a CSV log written by CSVCallback: its header must start with \"step,epoch\" "
            "(got \"name,score\"); remove it or give CSVCallback another path\n");
  CHECK(read_file(tmp / "logs.csv") == "name,score\nalice,3\n");
  CHECK(recorder->logs_seen == 2);
  CHECK(run.handler.callback_list() == "Recorder");
}

TEST_CASE("CSV: an unwritable file disables the tracker with a warning naming it", "[loggers]") {
  TempDir tmp;
  write_file(tmp / "blocker", "");
  Run run(tmp / "blocker" / "out");
  run.handler.add_callback<CSVCallback>();
  CaptureLog log;
  run.log(1, {{"loss", 1.0}});
  CHECK(log.text() ==
        "[torchfit] warning: CSVCallback failed and is disabled for the rest of this run: cannot "
        "create the directory of " +
            (tmp / "blocker" / "out" / "logs.csv").string() + ": Not a directory\n");
}

// ---------------------------------------------------------------------------------------------------------------
// JSON lines

TEST_CASE("JSONL: one Python-json object per log with step and epoch first", "[loggers]") {
  TempDir tmp;
  Run run(tmp.path());
  auto jsonl = run.handler.add_callback<JSONLinesCallback>();
  log_typical_run(run);
  run.state.epoch = std::nullopt;
  run.log(3, {{"note", "caf\u00e9 \"quoted\"\n"},
              {"bad", std::numeric_limits<double>::quiet_NaN()},
              {"flag", false}});
  run.state.epoch = 0.875;
  run.log(4, {{"count", 12}});
  CHECK(jsonl->file() == tmp / "logs.jsonl");
  CHECK(read_file(tmp / "logs.jsonl") ==
        "{\"step\": 1, \"epoch\": 0.25, \"loss\": 0.5, \"grad_norm\": 1.25, \"learning_rate\": 5e-05}\n"
        "{\"step\": 2, \"epoch\": 0.5, \"loss\": 0.25, \"grad_norm\": 1.0, \"learning_rate\": 2.5e-05}\n"
        "{\"step\": 2, \"epoch\": 0.5, \"eval_loss\": 0.75, \"eval_runtime\": 0.01, "
        "\"eval_samples_per_second\": 1000.0}\n"
        "{\"step\": 3, \"epoch\": 0.75, \"loss\": 0.125, \"grad_norm\": 0.5, \"learning_rate\": 0.0}\n"
        "{\"step\": 3, \"epoch\": null, \"note\": \"caf\\u00e9 \\\"quoted\\\"\\n\", \"bad\": NaN, \"flag\": "
        "false}\n"
        "{\"step\": 4, \"epoch\": 0.875, \"count\": 12}\n");
}

TEST_CASE(
    "JSONL: a resumed run drops the lines logged after its checkpoint, and a line cut short, then appends",
    "[loggers]") {
  TempDir tmp;
  {
    Run first(tmp.path());
    first.handler.add_callback<JSONLinesCallback>();
    log_typical_run(first);
  }
  torchfit::detail::append_to_file(tmp / "logs.jsonl",
                                   "{\"step\": 4, \"epo");  // a crash in the middle of a line
  const std::string kept =
      "{\"step\": 1, \"epoch\": 0.25, \"loss\": 0.5, \"grad_norm\": 1.25, \"learning_rate\": 5e-05}\n"
      "{\"step\": 2, \"epoch\": 0.5, \"loss\": 0.25, \"grad_norm\": 1.0, \"learning_rate\": 2.5e-05}\n"
      "{\"step\": 2, \"epoch\": 0.5, \"eval_loss\": 0.75, \"eval_runtime\": 0.01, "
      "\"eval_samples_per_second\": 1000.0}\n";

  SECTION("resume from step 2") {
    Run resumed(tmp.path(), 2);
    resumed.handler.add_callback<JSONLinesCallback>();
    resumed.train_begin();
    CHECK(read_file(tmp / "logs.jsonl") == kept);
    resumed.log(3, {{"loss", 0.0625}, {"epoch", 0.75}});
    CHECK(read_file(tmp / "logs.jsonl") == kept + "{\"step\": 3, \"epoch\": 0.75, \"loss\": 0.0625}\n");
    CHECK_FALSE(has_temporary_files(tmp.path()));
  }
  SECTION("a fresh run starts over") {
    Run fresh(tmp.path());
    fresh.handler.add_callback<JSONLinesCallback>();
    fresh.train_begin();
    CHECK_FALSE(fs::exists(tmp / "logs.jsonl"));
  }
}

TEST_CASE("JSONL: lines that are not log entries survive a resume", "[loggers]") {
  TempDir tmp;
  write_file(tmp / "logs.jsonl", "not json\n{\"step\": 9}\n[1, 2]\n{\"step\": \"9\"}\n{\"step\": 1}\n");
  Run resumed(tmp.path(), 5);
  resumed.handler.add_callback<JSONLinesCallback>();
  resumed.train_begin();
  CHECK(read_file(tmp / "logs.jsonl") == "not json\n[1, 2]\n{\"step\": \"9\"}\n{\"step\": 1}\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Both

TEST_CASE("the file trackers write only on the world process zero", "[loggers]") {
  TempDir tmp;
  Run run(tmp.path());
  run.state.is_world_process_zero = false;
  run.handler.add_callback<CSVCallback>();
  run.handler.add_callback<JSONLinesCallback>();
  log_typical_run(run);
  CHECK(fs::is_empty(tmp.path()));
}

TEST_CASE("report_to refuses a name it does not know, saying what is available", "[loggers]") {
  std::string available;
  for (const auto& name : integrations::available()) available += (available.empty() ? "" : ", ") + name;
  CallbackHandler handler;
  const auto error_of = [&](const std::string& name) {
    try {
      integrations::add_reporting_callbacks(handler, {"csv", name});
    } catch (const ArgumentError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("tensorbord") ==
        "--report_to: \"tensorbord\" is not a tracker; available: " + available + " (\"all\", \"none\")");
  CHECK(error_of("comet_ml") ==
        "--report_to: \"comet_ml\" is not available; include "
        "<torchfit/integrations/comet.hpp> to make it available (available: " +
            available + ")");
  CHECK(error_of("tensorboard") ==
        "--report_to: \"tensorboard\" is not available; include "
        "<torchfit/integrations/tensorboard.hpp> to make it available (available: " +
            available + ")");
  CHECK(error_of("neptune") ==
        "--report_to: \"neptune\": Neptune's hosted service shut down on 2026-03-05; available: " +
            available);
  CHECK(error_of("kubeflow") ==
        "--report_to: \"kubeflow\" is a Hugging Face integration torchfit does not have; available: " +
            available);
  CHECK(handler.callbacks().empty());  // nothing added when a name is refused
}

TEST_CASE("report_to names csv and jsonl, they listen to on_train_begin and on_log only", "[loggers]") {
  const auto names = integrations::available();
  const auto csv = std::find(names.begin(), names.end(), "csv");
  const auto jsonl = std::find(names.begin(), names.end(), "jsonl");
  REQUIRE(csv != names.end());
  REQUIRE(jsonl != names.end());
  CHECK(csv < jsonl);
  CallbackHandler handler;
  integrations::add_reporting_callbacks(handler, {"jsonl", "csv"});
  CHECK(handler.callback_list() == "JSONLinesCallback\nCSVCallback");
  const EventMask expected = event_bit(Event::train_begin) | event_bit(Event::log);
  CHECK(handler.events_of(0) == expected);
  CHECK(handler.events_of(1) == expected);
}

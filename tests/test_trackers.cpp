// SPDX-License-Identifier: MIT
// The DVCLive, Trackio and CodeCarbon trackers: their files read back with independent readers (TSV, JSON,
// YAML lines, SQLite queries, CSV columns), resume without duplicated or lost points, and failure isolation.
#include <dlfcn.h>
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/integrations/codecarbon.hpp"
#include "torchfit/integrations/dvclive.hpp"
#include "torchfit/integrations/trackio.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace fs = std::filesystem;
using namespace torchfit;
using torchfit::test::CaptureLog;
using torchfit::test::read_file;
using torchfit::test::TempDir;
using torchfit::test::write_file;

using torchfit::test::ScopedEnv;

using Run = torchfit::test::TrackerRun;
using torchfit::test::check_disabled_with_one_warning;
using torchfit::test::Recorder;
using torchfit::test::simulate;

namespace {

// A TSV reader: rows of tab-separated cells (no quoting needed by these tests).
std::vector<std::vector<std::string>> read_tsv(const fs::path& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, '\t');) cells.push_back(cell);
    rows.push_back(cells);
  }
  return rows;
}

std::vector<std::string> column(const std::vector<std::vector<std::string>>& rows, std::size_t index) {
  std::vector<std::string> out;
  for (const auto& r : rows) out.push_back(r.at(index));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// DVCLive

TEST_CASE("DVCLive: TSV per metric under DVCLive's names, nested metrics.json, params.yaml and dvc.yaml",
          "[trackers]") {
  TempDir tmp;
  const fs::path dir = tmp / "dvclive";
  Run run(tmp / "out");
  auto dvclive = run.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{dir});
  CaptureLog log;
  simulate(run, 0, 4);
  CHECK(log.text().empty());
  CHECK(dvclive->step() == 7);

  // One row per on_log call at DVCLive's own step (not the global step).
  CHECK(read_file(dir / "plots" / "metrics" / "loss.tsv") ==
        "step\tloss\n0\t1.0\n1\t0.5\n3\t0.3333333333333333\n4\t0.25\n");
  CHECK(read_file(dir / "plots" / "metrics" / "eval" / "loss.tsv") == "step\tloss\n2\t0.5\n5\t0.5\n");
  CHECK(read_tsv(dir / "plots" / "metrics" / "eval" / "acc@1.tsv") ==
        std::vector<std::vector<std::string>>{{"step", "acc@1"}, {"2", "0.75"}, {"5", "0.75"}});
  CHECK(column(read_tsv(dir / "plots" / "metrics" / "epoch.tsv"), 0) ==
        std::vector<std::string>{"step", "0", "1", "2", "3", "4", "5"});
  CHECK(read_file(dir / "plots" / "metrics" / "train" / "runtime.tsv") == "step\truntime\n6\t1.5\n");
  CHECK(read_file(dir / "plots" / "metrics" / "note.tsv") == "step\tnote\n6\tdone\n");
  CHECK(read_file(dir / "plots" / "metrics" / "total_flos.tsv") == "step\ttotal_flos\n6\t0\n");

  CHECK(read_file(dir / "metrics.json") ==
        "{\n"
        "    \"loss\": 0.25,\n"
        "    \"learning_rate\": 5e-05,\n"
        "    \"epoch\": 1.0,\n"
        "    \"step\": 6,\n"
        "    \"eval\": {\n"
        "        \"loss\": 0.5,\n"
        "        \"acc@1\": 0.75\n"
        "    },\n"
        "    \"train\": {\n"
        "        \"runtime\": 1.5,\n"
        "        \"loss\": 0.3\n"
        "    },\n"
        "    \"note\": \"done\",\n"
        "    \"total_flos\": 0\n"
        "}\n");

  const std::string params = read_file(dir / "params.yaml");
  CHECK(params.find("output_dir: " + (tmp / "out").string() + "\n") != std::string::npos);
  CHECK(params.find("\nlearning_rate: 5.0e-05\n") != std::string::npos);
  CHECK(params.find("\nrun_name: unit-run\n") != std::string::npos);
  CHECK(params.find("\nresume_from_checkpoint:\n") != std::string::npos);
  CHECK(params.find("\nreport_to:\n- none\n") != std::string::npos);
  CHECK(params.find("\nlr_scheduler_kwargs: {}\n") != std::string::npos);
  CHECK(read_file(dir / "dvc.yaml") ==
        "params:\n- params.yaml\nmetrics:\n- metrics.json\nplots:\n- plots/metrics:\n    x: step\n");
}

TEST_CASE("DVCLive: a fresh run clears an earlier run's files, a resumed run continues without duplicates",
          "[trackers]") {
  TempDir tmp;
  const fs::path dir = tmp / "dvclive";
  {
    Run first(tmp / "out");
    first.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{dir});
    first.train_begin();
    for (int64_t step = 1; step <= 5; ++step) first.log(step, {{"loss", double(step)}});
    // interrupted: no on_train_end; the checkpoint at step 3 holds the first three log entries
  }
  CHECK(column(read_tsv(dir / "plots" / "metrics" / "loss.tsv"), 0) ==
        std::vector<std::string>{"step", "0", "1", "2", "3", "4"});

  Run second(tmp / "out", /*resumed_step=*/3);
  for (int64_t step = 1; step <= 3; ++step)
    second.state.log_history.push_back({{"loss", double(step)}, {"step", step}});
  auto dvclive = second.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{dir});
  second.train_begin();
  CHECK(dvclive->step() == 3);
  CHECK(read_file(dir / "plots" / "metrics" / "loss.tsv") == "step\tloss\n0\t1.0\n1\t2.0\n2\t3.0\n");
  CHECK(read_file(dir / "metrics.json") == "{\n    \"loss\": 3.0,\n    \"step\": 2\n}\n");
  for (int64_t step = 4; step <= 6; ++step) second.log(step, {{"loss", double(step) + 0.5}});
  second.train_end();
  CHECK(read_file(dir / "plots" / "metrics" / "loss.tsv") ==
        "step\tloss\n0\t1.0\n1\t2.0\n2\t3.0\n3\t4.5\n4\t5.5\n5\t6.5\n");
  CHECK(read_file(dir / "metrics.json") == "{\n    \"loss\": 6.5,\n    \"step\": 5\n}\n");

  Run fresh(tmp / "out");
  fresh.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{dir});
  fresh.train_begin();
  CHECK_FALSE(fs::exists(dir / "plots" / "metrics" / "loss.tsv"));
  CHECK_FALSE(fs::exists(dir / "metrics.json"));
}

TEST_CASE("DVCLive: non-finite values are logged as Python's text, other types dropped with HF's warning",
          "[trackers]") {
  TempDir tmp;
  Run run(tmp / "out");
  run.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{tmp / "dvclive"});
  CaptureLog log;
  run.train_begin();
  run.log(1, {{"loss", std::numeric_limits<double>::quiet_NaN()},
              {"grad_norm", std::numeric_limits<double>::infinity()},
              {"flag", true},
              {"hist", json::array({1, 2})}});
  run.log(2, {{"hist", json::array({3})}});
  CHECK(read_file(tmp / "dvclive" / "plots" / "metrics" / "loss.tsv") == "step\tloss\n0\tnan\n");
  CHECK(read_file(tmp / "dvclive" / "plots" / "metrics" / "grad_norm.tsv") == "step\tgrad_norm\n0\tinf\n");
  CHECK(read_file(tmp / "dvclive" / "plots" / "metrics" / "flag.tsv") == "step\tflag\n0\tTrue\n");
  CHECK(read_file(tmp / "dvclive" / "metrics.json") ==
        "{\n    \"loss\": \"nan\",\n    \"grad_norm\": \"inf\",\n    \"flag\": true,\n    \"step\": 1\n}\n");
  CHECK(
      log.text() ==
      "[torchfit] warning: Trainer is attempting to log a value of \"[1, 2]\" of type <class 'list'> for key "
      "\"hist\" as a "
      "scalar. This invocation of DVCLive's Live.log_metric() is incorrect so we dropped this attribute.\n");
  CHECK(torchfit::detail::dvclive_metric_name("my_train_eval_x") == "my_train/eval/x");
  CHECK(torchfit::detail::dvclive_metric_name("train_runtime") == "train/runtime");
}

TEST_CASE("DVCLive: an unwritable directory disables the tracker with one warning, training goes on",
          "[trackers]") {
  TempDir tmp;
  write_file(tmp / "blocker", "a file");
  Run run(tmp / "out");
  run.handler.add_callback<DVCLiveCallback>(DVCLiveOptions{tmp / "blocker" / "dvclive"});
  check_disabled_with_one_warning(
      run,
      "[torchfit] warning: DVCLiveCallback failed and is disabled for the rest of "
      "this run: cannot create the DVCLive directory " +
          (tmp / "blocker" / "dvclive").string() + ": ");
}

// ---------------------------------------------------------------------------------------------------------------
// Trackio

namespace {

// Reads a project database with the sqlite3 C API, as Trackio's dashboard queries it.
class SqliteReader {
 public:
  explicit SqliteReader(const fs::path& path) {
    REQUIRE(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  }
  ~SqliteReader() { sqlite3_close(db_); }
  SqliteReader(const SqliteReader&) = delete;
  SqliteReader& operator=(const SqliteReader&) = delete;

  std::vector<std::vector<std::string>> query(const std::string& sql,
                                              const std::vector<std::string>& params = {}) {
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
    for (std::size_t i = 0; i < params.size(); ++i)
      sqlite3_bind_text(stmt, static_cast<int>(i + 1), params[i].c_str(), -1, SQLITE_TRANSIENT);
    std::vector<std::vector<std::string>> rows;
    while (sqlite3_step(stmt) == SQLITE_ROW) {
      std::vector<std::string> row;
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        const auto* text = sqlite3_column_text(stmt, c);
        row.push_back(text ? reinterpret_cast<const char*>(text) : "<null>");
      }
      rows.push_back(row);
    }
    sqlite3_finalize(stmt);
    return rows;
  }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace

TEST_CASE("Trackio: the project database has Trackio's schema, one metrics row per log and the config row",
          "[trackers]") {
  TempDir tmp;
  ScopedEnv dir("TRACKIO_DIR", (tmp / "trackio").string());
  Run run(tmp / "out");
  auto trackio = run.handler.add_callback<TrackioCallback>(TrackioOptions{"my.project!"});
  CaptureLog log;
  simulate(run, 0, 2);
  run.log(3, {{"loss", std::numeric_limits<double>::quiet_NaN()},
              {"grad_norm", -std::numeric_limits<double>::infinity()}});
  CHECK(log.text().empty());
  CHECK(trackio->database_path() == tmp / "trackio" / "myproject.db");

  SqliteReader db(tmp / "trackio" / "myproject.db");
  CHECK(column(db.query("PRAGMA table_info(metrics)"), 1) ==
        std::vector<std::string>{"id", "run_id", "timestamp", "run_name", "step", "metrics", "log_id",
                                 "space_id"});
  CHECK(column(db.query("PRAGMA table_info(configs)"), 1) ==
        std::vector<std::string>{"id", "run_id", "run_name", "config", "created_at"});
  CHECK(column(db.query("PRAGMA journal_mode"), 0) == std::vector<std::string>{"wal"});
  const auto tables =
      column(db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"), 0);
  for (const char* t : {"alerts", "artifact_aliases", "artifact_versions", "artifacts", "pending_uploads",
                        "project_metadata", "run_artifact_links", "system_metrics", "traces"})
    CHECK(std::find(tables.begin(), tables.end(), t) != tables.end());

  // The dashboard's query for a run's logs.
  const auto rows = db.query(
      "SELECT timestamp, step, metrics, run_name FROM metrics WHERE run_id = ? ORDER BY timestamp, id",
      {trackio->run_id()});
  REQUIRE(rows.size() == 5);
  const std::regex iso(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00)");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CHECK(std::regex_match(rows[i][0], iso));
    CHECK(rows[i][1] == std::to_string(i));
    CHECK(rows[i][3] == "unit-run");
  }
  CHECK(json::parse(rows[0][2]) == json{{"train/loss", 1.0},
                                        {"train/learning_rate", 5e-05},
                                        {"train/epoch", 0.25},
                                        {"train/global_step", 1}});
  CHECK(json::parse(rows[2][2]) ==
        json{{"eval/loss", 0.5}, {"eval/acc@1", 0.75}, {"train/epoch", 0.5}, {"train/global_step", 2}});
  // The end-of-training single values are dropped; strings are kept.
  CHECK(json::parse(rows[3][2]) == json{{"train/note", "done"}, {"train/global_step", 2}});
  CHECK(rows[4][2] == R"({"train/loss":"NaN","train/grad_norm":"-Infinity","train/global_step":3})");

  const auto configs = db.query("SELECT run_id, run_name, config, created_at FROM configs");
  REQUIRE(configs.size() == 1);
  CHECK(configs[0][0] == trackio->run_id());
  CHECK(trackio->run_id().size() == 32);
  const json config = json::parse(configs[0][2]);
  CHECK(config["output_dir"] == (tmp / "out").string());
  CHECK(config["learning_rate"] == 5e-05);
  CHECK(config["_Username"].is_null());
  CHECK(config["_Group"].is_null());
  CHECK(config["_Created"] == configs[0][3]);
  CHECK(std::regex_match(configs[0][3], iso));
}

TEST_CASE("Trackio: a resumed run reuses the run and drops the rows logged after the checkpoint",
          "[trackers]") {
  TempDir tmp;
  ScopedEnv dir("TRACKIO_DIR", (tmp / "trackio").string());
  std::string run_id;
  {
    Run first(tmp / "out");
    auto trackio = first.handler.add_callback<TrackioCallback>();
    first.train_begin();
    for (int64_t step = 1; step <= 5; ++step) first.log(step, {{"loss", double(step)}});
    run_id = trackio->run_id();
  }
  Run second(tmp / "out", /*resumed_step=*/3);
  auto trackio = second.handler.add_callback<TrackioCallback>();
  second.train_begin();
  for (int64_t step = 4; step <= 6; ++step) second.log(step, {{"loss", double(step) + 0.5}});
  second.train_end();
  CHECK(trackio->run_id() == run_id);

  SqliteReader db(tmp / "trackio" / "huggingface.db");
  const auto rows =
      db.query("SELECT step, metrics FROM metrics WHERE run_id = ? ORDER BY timestamp, id", {run_id});
  std::vector<std::string> steps;
  std::vector<int64_t> global_steps;
  for (const auto& r : rows) {
    steps.push_back(r[0]);
    global_steps.push_back(json::parse(r[1])["train/global_step"].get<int64_t>());
  }
  CHECK(steps == std::vector<std::string>{"0", "1", "2", "3", "4", "5"});
  CHECK(global_steps == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
  CHECK(json::parse(rows[3][1])["train/loss"] == 4.5);
  CHECK(db.query("SELECT COUNT(*) FROM configs")[0][0] == "1");
}

TEST_CASE("Trackio: the directory follows TRACKIO_DIR, else HF_HOME, an unusable one disables the tracker",
          "[trackers]") {
  TempDir tmp;
  {
    ScopedEnv dir("TRACKIO_DIR", std::nullopt);
    ScopedEnv home("HF_HOME", (tmp / "hf").string());
    CHECK(torchfit::detail::trackio_dir() == tmp / "hf" / "trackio");
  }
  CHECK(torchfit::detail::trackio_canonical_project("a b/c") == "abc");
  CHECK(torchfit::detail::trackio_canonical_project("...") == "default");

  write_file(tmp / "blocker", "a file");
  ScopedEnv dir("TRACKIO_DIR", (tmp / "blocker" / "trackio").string());
  Run run(tmp / "out");
  run.handler.add_callback<TrackioCallback>();
  check_disabled_with_one_warning(
      run,
      "[torchfit] warning: TrackioCallback failed and is disabled for the rest of "
      "this run: cannot create the Trackio directory ");
}

TEST_CASE(
    "Trackio: without TRACKIO_DIR or HF_HOME, the directory follows XDG_CACHE_HOME as huggingface_hub's does",
    "[trackers]") {
  TempDir tmp;
  ScopedEnv no_dir("TRACKIO_DIR", std::nullopt), no_hf_home("HF_HOME", std::nullopt),
      home("HOME", (tmp / "home").string());
  {
    ScopedEnv xdg("XDG_CACHE_HOME", (tmp / "xdg").string());
    CHECK(torchfit::detail::trackio_dir() == tmp / "xdg" / "huggingface" / "trackio");
    Run run(tmp / "out");
    auto trackio = run.handler.add_callback<TrackioCallback>();
    run.train_begin();
    run.log(1, {{"loss", 0.5}});
    CHECK(trackio->database_path() == tmp / "xdg" / "huggingface" / "trackio" / "huggingface.db");
    CHECK(fs::exists(tmp / "xdg" / "huggingface" / "trackio" / "huggingface.db"));
    // HF_HOME, when set, wins over XDG_CACHE_HOME (with ~ expanded).
    ScopedEnv hf_home("HF_HOME", "~/hf");
    CHECK(torchfit::detail::trackio_dir() == tmp / "home" / "hf" / "trackio");
  }
  ScopedEnv no_xdg("XDG_CACHE_HOME", std::nullopt);
  CHECK(torchfit::detail::trackio_dir() == tmp / "home" / ".cache" / "huggingface" / "trackio");
}

// ---------------------------------------------------------------------------------------------------------------
// CodeCarbon

namespace {

// Clears the CodeCarbon variables the callback reads.
struct CleanCodeCarbonEnv {
  ScopedEnv vars[8] = {{"CODECARBON_PROJECT_NAME", std::nullopt},
                       {"CODECARBON_EXPERIMENT_ID", std::nullopt},
                       {"CODECARBON_MEASURE_POWER_SECS", std::nullopt},
                       {"CODECARBON_PUE", std::nullopt},
                       {"CODECARBON_WUE", std::nullopt},
                       {"CODECARBON_FORCE_CPU_POWER", std::nullopt},
                       {"CODECARBON_FORCE_RAM_POWER", std::nullopt},
                       {"CODECARBON_FORCE_CARBON_INTENSITY_G_CO2E_KWH", std::nullopt}};
};

const char* const expected_header =
    "timestamp,project_name,run_id,experiment_id,duration,emissions,emissions_rate,cpu_power,gpu_power,ram_"
    "power,"
    "cpu_energy,gpu_energy,ram_energy,energy_consumed,water_consumed,country_name,country_iso_code,region,"
    "cloud_provider,cloud_region,os,python_version,codecarbon_version,cpu_count,cpu_model,gpu_count,gpu_"
    "model,"
    "longitude,latitude,ram_total_size,tracking_mode,cpu_utilization_percent,gpu_utilization_percent,"
    "ram_utilization_percent,ram_used_gb,on_cloud,pue,wue";

// A fake machine: /proc files and a RAPL package domain, under a temporary directory.
struct FakeMachine {
  fs::path proc, powercap;
  explicit FakeMachine(const fs::path& root) : proc(root / "proc"), powercap(root / "powercap") {
    fs::create_directories(proc);
    fs::create_directories(powercap);
    write_file(proc / "meminfo",
               "MemTotal:       16777216 kB\nMemFree:         1000 kB\nMemAvailable:    4194304 kB\n");
    write_file(proc / "cpuinfo", "processor\t: 0\nmodel name\t: Fake CPU, 4 cores @ 3.0GHz\n");
    set_cpu_times(100, 100, 800);
  }
  void set_cpu_times(int user, int system, int idle) const {
    write_file(proc / "stat", "cpu  " + std::to_string(user) + " 0 " + std::to_string(system) + " " +
                                  std::to_string(idle) + " 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n");
  }
  void add_rapl(const std::string& dir, const std::string& name, uint64_t energy_uj, uint64_t max_uj) const {
    fs::create_directories(powercap / dir);
    write_file(powercap / dir / "name", name + "\n");
    write_file(powercap / dir / "energy_uj", std::to_string(energy_uj) + "\n");
    write_file(powercap / dir / "max_energy_range_uj", std::to_string(max_uj) + "\n");
  }
  CodeCarbonOptions options() const {
    CodeCarbonOptions o;
    o.measure_power_secs = 0;  // no periodic samples: one measurement over the whole run, at its end
    o.measure_gpu = false;
    o.proc_root = proc;
    o.powercap_root = powercap;
    return o;
  }
};

std::vector<std::map<std::string, std::string>> read_emissions(const fs::path& path) {
  const auto records = torchfit::test::read_file(path);
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(records);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::string cell;
    bool quoted = false;
    for (const char c : line) {
      if (c == '"')
        quoted = !quoted;
      else if (c == ',' && !quoted) {
        cells.push_back(cell);
        cell.clear();
      } else
        cell += c;
    }
    cells.push_back(cell);
    rows.push_back(cells);
  }
  std::vector<std::map<std::string, std::string>> out;
  for (std::size_t r = 1; r < rows.size(); ++r) {
    REQUIRE(rows[r].size() == rows[0].size());
    std::map<std::string, std::string> row;
    for (std::size_t c = 0; c < rows[0].size(); ++c) row[rows[0][c]] = rows[r][c];
    out.push_back(row);
  }
  return out;
}

}  // namespace

TEST_CASE(
    "CodeCarbon: one row of CodeCarbon's 38 columns at train end, CPU energy from RAPL across a wrap-around",
    "[trackers]") {
  CleanCodeCarbonEnv env;
  TempDir tmp;
  FakeMachine machine(tmp / "machine");
  machine.add_rapl("intel-rapl:0", "package-0", 1'000'000, 2'000'000);
  machine.add_rapl("intel-rapl:0:0", "core", 5, 2'000'000);  // a sub-domain: not counted twice
  machine.add_rapl("intel-rapl:1", "psys", 7, 2'000'000);    // platform domain: not used by default
  Run run(tmp / "out");
  auto codecarbon = run.handler.add_callback<CodeCarbonCallback>(machine.options());
  run.train_begin();
  CHECK(codecarbon->cpu_method() == "RAPL");
  write_file(machine.powercap / "intel-rapl:0" / "energy_uj", "500000\n");  // wrapped: 1.5 J since start
  machine.set_cpu_times(200, 200, 1000);
  run.train_end();

  const std::string text = read_file(tmp / "out" / "emissions.csv");
  CHECK(text.substr(0, text.find('\n')) == expected_header);
  const auto rows = read_emissions(tmp / "out" / "emissions.csv");
  REQUIRE(rows.size() == 1);
  auto row = rows[0];
  CHECK(std::regex_match(row["timestamp"], std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")));
  CHECK(row["project_name"] == "codecarbon");
  CHECK(row["experiment_id"] == "5b0fa12a-3dd7-45bb-9766-cc326314d9f1");
  CHECK(std::regex_match(
      row["run_id"], std::regex(R"([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})")));
  CHECK(row["cpu_energy"] == torchfit::detail::python_float_repr(1.5 / 3.6e6));
  CHECK(row["gpu_energy"] == "0.0");
  CHECK(row["gpu_power"] == "0.0");
  CHECK(row["gpu_count"] == "0");
  CHECK(row["gpu_model"] == "");
  CHECK(row["ram_power"] == "10.0");  // 16 GB: two DIMMs of 5 W
  CHECK(row["ram_total_size"] == "16.0");
  CHECK(row["ram_used_gb"] == "12.0");
  CHECK(row["ram_utilization_percent"] == "75.0");
  CHECK(row["cpu_utilization_percent"] == "50.0");
  CHECK(row["cpu_model"] == "Fake CPU, 4 cores @ 3.0GHz");
  CHECK(row["tracking_mode"] == "machine");
  CHECK(row["on_cloud"] == "N");
  CHECK(row["pue"] == "1.0");
  CHECK(row["wue"] == "0.0");
  CHECK(row["water_consumed"] == "0.0");
  CHECK(row["country_name"] == "");
  CHECK(row["os"].rfind("Linux-", 0) == 0);
  const double duration = std::stod(row["duration"]);
  const double energy = std::stod(row["energy_consumed"]);
  CHECK(std::stod(row["ram_energy"]) == Approx(10.0 * duration / 3.6e6));
  CHECK(energy == Approx(std::stod(row["cpu_energy"]) + std::stod(row["ram_energy"])));
  CHECK(std::stod(row["emissions"]) == Approx(energy * 0.475));
  CHECK(std::stod(row["emissions_rate"]) == Approx(std::stod(row["emissions"]) / duration));
}

TEST_CASE("CodeCarbon: without RAPL, CPU power follows CodeCarbon's load model at its 85 W default TDP",
          "[trackers]") {
  CleanCodeCarbonEnv env;
  TempDir tmp;
  FakeMachine machine(tmp / "machine");
  Run run(tmp / "out");
  auto options = machine.options();
  options.pue = 1.5;
  options.wue = 2.0;
  options.carbon_intensity_g_per_kwh = 100;
  auto codecarbon = run.handler.add_callback<CodeCarbonCallback>(options);
  run.train_begin();
  CHECK(codecarbon->cpu_method() == "cpu_load");
  machine.set_cpu_times(200, 200, 1000);  // 200 busy of 400 jiffies: 50 % load
  run.train_end();
  auto row = read_emissions(tmp / "out" / "emissions.csv").at(0);
  CHECK(row["cpu_power"] == "18.062500000000004");  // Python: 85 * (0.1 + 0.9 * (50.0 / 100.0) ** 3)
  const double duration = std::stod(row["duration"]);
  CHECK(std::stod(row["cpu_energy"]) == Approx(18.062500000000004 * duration / 3.6e6 * 1.5));
  const double energy = std::stod(row["energy_consumed"]);
  CHECK(std::stod(row["water_consumed"]) == Approx(energy * 2.0));
  CHECK(std::stod(row["emissions"]) == Approx(energy * 0.1));
  CHECK(row["pue"] == "1.5");
}

TEST_CASE("CodeCarbon: rows are appended under the same header, another header is backed up first",
          "[trackers]") {
  CleanCodeCarbonEnv env;
  ScopedEnv project("CODECARBON_PROJECT_NAME", "digits");
  ScopedEnv cpu("CODECARBON_FORCE_CPU_POWER", "40");
  TempDir tmp;
  FakeMachine machine(tmp / "machine");
  fs::create_directories(tmp / "out");
  write_file(tmp / "out" / "emissions.csv", "timestamp,project_name,duration\nx,y,1\n");
  CaptureLog log;
  for (int i = 0; i < 2; ++i) {
    Run run(tmp / "out");
    auto codecarbon = run.handler.add_callback<CodeCarbonCallback>(machine.options());
    run.train_begin();
    CHECK(codecarbon->cpu_method() == "constant");
    run.train_end();
  }
  CHECK(log.text() == "[torchfit] warning: The CSV format has changed, backing up old emission file.\n");
  CHECK(read_file(tmp / "out" / "emissions.csv.bak") == "timestamp,project_name,duration\nx,y,1\n");
  const auto rows = read_emissions(tmp / "out" / "emissions.csv");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("project_name") == "digits");
  CHECK(rows[1].at("cpu_power") == "40.0");
  CHECK(rows[0].at("run_id") != rows[1].at("run_id"));
}

TEST_CASE("CodeCarbon: CodeCarbon's RAM model, RAPL wrap-around and load model", "[trackers]") {
  CHECK(torchfit::detail::codecarbon_ram_power_w(8, false) == 10.0);
  CHECK(torchfit::detail::codecarbon_ram_power_w(32, false) == 20.0);
  CHECK(torchfit::detail::codecarbon_ram_power_w(64, false) == 20.0);
  CHECK(torchfit::detail::codecarbon_ram_power_w(128, false) == 38.0);
  CHECK(torchfit::detail::codecarbon_ram_power_w(256, false) == 38.0);   // 8 x 32 GB
  CHECK(torchfit::detail::codecarbon_ram_power_w(2048, false) == 70.0);  // 16 x 128 GB
  CHECK(torchfit::detail::codecarbon_ram_power_w(8192, false) ==
        Approx(20 + 18 + 32 + 5 * 0.7 * 16));  // capped at 32 DIMMs
  CHECK(torchfit::detail::codecarbon_ram_power_w(4, true) == 3.0);
  CHECK(torchfit::detail::rapl_delta_uj(100, 250, 1000) == 150);
  CHECK(torchfit::detail::rapl_delta_uj(900, 50, 1000) == 150);
  CHECK(torchfit::detail::codecarbon_cpu_load_power_w(85, 0) == Approx(8.5));
  CHECK(torchfit::detail::codecarbon_cpu_load_power_w(85, 1) == Approx(85));
}

TEST_CASE("CodeCarbon: no NVIDIA driver means no GPU part and no error, an unwritable output disables it",
          "[trackers]") {
  CleanCodeCarbonEnv env;
  TempDir tmp;
  FakeMachine machine(tmp / "machine");
  auto options = machine.options();
  options.measure_gpu = true;
  {
    Run run(tmp / "out");
    run.handler.add_callback<CodeCarbonCallback>(options);
    CaptureLog log;
    run.train_begin();
    run.train_end();
    CHECK(log.text().empty());
    const auto row = read_emissions(tmp / "out" / "emissions.csv").at(0);
    void* nvml = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (nvml == nullptr) {
      CHECK(row.at("gpu_count") == "0");
      CHECK(row.at("gpu_energy") == "0.0");
    } else {
      ::dlclose(nvml);
      CHECK(std::stoi(row.at("gpu_count")) >= 0);
    }
  }
  write_file(tmp / "blocker", "a file");
  Run run(tmp / "blocker" / "out");
  run.handler.add_callback<CodeCarbonCallback>(machine.options());
  auto recorder = run.handler.add_callback<Recorder>();
  CaptureLog log;
  run.train_begin();
  run.train_end();
  CHECK(recorder->ended);
  CHECK(log.text().rfind(
            "[torchfit] warning: CodeCarbonCallback failed and is disabled for the rest of this run: "
            "cannot create the directory of ",
            0) == 0);
}

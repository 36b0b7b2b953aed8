// SPDX-License-Identifier: MIT
// The two MLflow back ends: the `mlruns` file store (MLflow's FileStore layout) and the tracking server's
// REST API (over libcurl).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/outbox.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// One metric point, as MLflow stores it.
struct MlflowMetric {
  std::string key;
  double value = 0;
  std::int64_t timestamp = 0;  // ms since the epoch
  std::int64_t step = 0;
};

/// A parameter or tag.
struct MlflowKeyValue {
  std::string key;
  std::string value;
};

/// MLflow's limits (mlflow/utils/validation.py).
inline constexpr std::size_t mlflow_max_metrics_per_batch = 1000;
inline constexpr std::size_t mlflow_max_params_tags_per_batch = 100;
inline constexpr std::size_t mlflow_max_param_value_length = 6000;
inline constexpr std::size_t mlflow_max_tag_value_length = 8000;
inline constexpr std::size_t mlflow_max_key_length = 250;

/// Why MLflow would reject `key` as a metric, parameter or tag name (empty if it is valid): the characters
/// `[/\w.\- :]`, at most 250 of them, and a normalised relative path (no leading `/`, `//`, `.` or `..`
/// part).
inline std::string mlflow_key_problem(const std::string& key) {
  static const std::regex allowed(R"(^[/\w.\- :]*$)");
  if (key.empty()) return "it is empty";
  if (key.size() > mlflow_max_key_length)
    return fmt::format("it is longer than {} characters", mlflow_max_key_length);
  if (!std::regex_match(key, allowed))
    return "it holds characters other than letters, digits, '_', '-', '.', ' ', ':' and '/'";
  if (key.front() == '/' || key.find("//") != std::string::npos) return "it is not a relative path";
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = key.find('/', start);
    const std::string part = key.substr(start, end - start);
    if (part == "." || part == "..") return "it holds a '.' or '..' path component";
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

/// HF's v5 metric-name sanitising: every character outside `[0-9A-Za-z_\-. :/]` becomes `_`.
inline std::string mlflow_sanitize_metric_key(std::string key) {
  for (char& c : key) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    c == '-' || c == '.' || c == ' ' || c == ':' || c == '/';
    if (!ok) c = '_';
  }
  return key;
}

/// HF's flatten_dict: nested objects become `outer.inner` keys (empty nested objects disappear).
inline void mlflow_flatten(const json& object, const std::string& prefix, json& out) {
  flatten_json(object, prefix, ".", out);
}

/// Sends `items` through `send` in slices of at most `limit`, MLflow's limit per request.
template <typename T, typename Send>
void mlflow_in_batches(const std::vector<T>& items, std::size_t limit, Send send) {
  for (std::size_t i = 0; i < items.size(); i += limit) {
    const auto first = items.begin() + static_cast<std::ptrdiff_t>(i);
    send(std::vector<T>(first, first + static_cast<std::ptrdiff_t>(std::min(limit, items.size() - i))));
  }
}

/// Run statuses (MLflow's RunStatus enum: the file store keeps the number, REST the name).
enum class MlflowRunStatus { running = 1, finished = 3, failed = 4, killed = 5 };

inline const char* mlflow_status_name(MlflowRunStatus status) {
  switch (status) {
    case MlflowRunStatus::running:
      return "RUNNING";
    case MlflowRunStatus::finished:
      return "FINISHED";
    case MlflowRunStatus::failed:
      return "FAILED";
    case MlflowRunStatus::killed:
      return "KILLED";
  }
  return "FINISHED";
}

/// What the MLflow callback needs from a back end.
class MlflowStore {
 public:
  virtual ~MlflowStore() = default;
  /// The id of the experiment called `name`, created when missing; "0" (Default) when `name` is empty.
  virtual std::string experiment_id(const std::string& name) = 0;
  /// Starts a run (status RUNNING) and returns its id. An empty `run_name` lets the store choose one.
  virtual std::string create_run(const std::string& experiment_id, const std::string& run_name,
                                 std::int64_t start_time, const std::vector<MlflowKeyValue>& tags) = 0;
  /// Sets an existing run back to RUNNING; where the store can, drops its metric points after `last_step`.
  virtual void resume_run(const std::string& run_id, std::optional<std::int64_t> last_step) = 0;
  /// Logs one batch (within MLflow's per-request limits).
  virtual void log_batch(const std::string& run_id, const std::vector<MlflowMetric>& metrics,
                         const std::vector<MlflowKeyValue>& params,
                         const std::vector<MlflowKeyValue>& tags) = 0;
  /// Ends the run with `status` at `end_time`.
  virtual void end_run(const std::string& run_id, MlflowRunStatus status, std::int64_t end_time) = 0;
  /// Copies the files under `local_dir` into the run's artifacts, under `artifact_path`.
  virtual void log_artifacts(const std::string& run_id, const std::filesystem::path& local_dir,
                             const std::string& artifact_path) = 0;
  /// Waits until the batches and ends logged so far are stored; throws what kept them from it.
  virtual void flush() {}
  /// Throws what keeps the store from storing, if anything does (a store that stores in the background).
  virtual void rethrow_if_failed() {}
};

/// Copies the regular files under `from` into `to` (directories created as needed).
inline void copy_tree(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::create_directories(to, ec);
  if (!ec)
    std::filesystem::copy(
        from, to,
        std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) throw Error(fmt::format("cannot copy {} to {}: {}", from.string(), to.string(), ec.message()));
}

/// MLflow's FileStore layout under a root directory (`./mlruns` by default):
/// `<exp>/meta.yaml`, `<exp>/<run>/meta.yaml`, `<exp>/<run>/{metrics,params,tags}/<key>`,
/// `<exp>/<run>/artifacts/`. Readable by MLflow up to 3.12 directly, by later versions with
/// `MLFLOW_ALLOW_FILE_STORE=true` or after `mlflow migrate-filestore`.
class MlflowFileStore : public MlflowStore {
 public:
  /// Opens `root`; a new root gets `.trash/` and the Default experiment `0`, as MLflow creates them.
  explicit MlflowFileStore(std::filesystem::path root) : root_(std::filesystem::absolute(std::move(root))) {
    if (!std::filesystem::exists(root_ / "0" / "meta.yaml") && !has_experiments()) {
      create_directories(root_ / ".trash");
      write_experiment_meta("0", "Default");
    }
  }

  const std::filesystem::path& root() const { return root_; }

  std::string experiment_id(const std::string& name) override {
    if (name.empty()) return "0";
    for (const auto& entry : directory_entries(root_)) {
      const auto meta = read_meta(entry / "meta.yaml");
      if (meta.count("name") && meta.at("name") == name && meta.count("lifecycle_stage") &&
          meta.at("lifecycle_stage") == "active")
        return entry.filename().string();
    }
    // MLflow gives new experiments large random integer ids.
    std::string id = std::to_string(std::stoull(random_hex(15), nullptr, 16));
    write_experiment_meta(id, name);
    return id;
  }

  std::string create_run(const std::string& experiment_id, const std::string& run_name,
                         std::int64_t start_time, const std::vector<MlflowKeyValue>& tags) override {
    const std::filesystem::path experiment = root_ / experiment_id;
    if (!std::filesystem::exists(experiment / "meta.yaml"))
      throw Error(fmt::format("MLflow experiment {} does not exist under {}", experiment_id, root_.string()));
    const std::string run_id = uuid4_hex();
    const std::string name = run_name.empty() ? "run-" + run_id.substr(0, 8) : run_name;
    const std::filesystem::path run = experiment / run_id;
    for (const char* sub : {"metrics", "params", "tags", "artifacts"}) create_directories(run / sub);
    json meta = json::object();
    meta["artifact_uri"] = file_uri(run / "artifacts");
    meta["deleted_time"] = nullptr;
    meta["end_time"] = nullptr;
    meta["entry_point_name"] = "";
    meta["experiment_id"] = experiment_id;
    meta["lifecycle_stage"] = "active";
    meta["run_id"] = run_id;
    meta["run_name"] = name;
    meta["run_uuid"] = run_id;
    meta["source_name"] = "";
    meta["source_type"] = 4;  // LOCAL
    meta["source_version"] = "";
    meta["start_time"] = start_time;
    meta["status"] = static_cast<int>(MlflowRunStatus::running);
    meta["tags"] = json::array();
    meta["user_id"] = user_name();
    replace_file(run / "meta.yaml", yaml_block(meta));
    runs_[run_id] = run;
    std::vector<MlflowKeyValue> all_tags = tags;
    all_tags.push_back({"mlflow.runName", name});
    log_batch(run_id, {}, {}, all_tags);
    return run_id;
  }

  void resume_run(const std::string& run_id, std::optional<std::int64_t> last_step) override {
    const auto run = run_dir(run_id);
    set_meta_fields(
        run / "meta.yaml",
        {{"status", std::to_string(static_cast<int>(MlflowRunStatus::running))}, {"end_time", "null"}});
    if (!last_step || !std::filesystem::exists(run / "metrics")) return;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(run / "metrics")) {
      if (!entry.is_regular_file()) continue;
      const std::string text = *read_file_if_exists(entry.path());
      std::string kept;
      std::size_t start = 0;
      while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos) break;  // a line cut short by a crash
        const std::string line = text.substr(start, end + 1 - start);
        const std::size_t last_space = line.rfind(' ');
        const std::size_t first_space = line.find(' ');
        // Lines are "<timestamp> <value> <step>"; two-field legacy lines have step 0.
        const std::int64_t step =
            last_space != first_space ? std::stoll(line.substr(last_space + 1)) : std::int64_t{0};
        if (step <= *last_step) kept += line;
        start = end + 1;
      }
      if (kept != text) replace_file(entry.path(), kept);
    }
  }

  void log_batch(const std::string& run_id, const std::vector<MlflowMetric>& metrics,
                 const std::vector<MlflowKeyValue>& params,
                 const std::vector<MlflowKeyValue>& tags) override {
    const auto run = run_dir(run_id);
    for (const auto& m : metrics)
      append_to_file(run / "metrics" / m.key,
                     fmt::format("{} {} {}\n", m.timestamp, python_float_repr(m.value), m.step));
    for (const auto& p : params) {
      const auto path = run / "params" / p.key;
      if (const auto old = read_file_if_exists(path)) {
        if (*old == p.value) continue;  // MLflow: re-logging the same value is allowed
        throw Error(
            fmt::format("MLflow parameter \"{}\" of run {} is already \"{}\"; parameters cannot change "
                        "(new value \"{}\")",
                        p.key, run_id, *old, p.value));
      }
      replace_file(path, p.value);
    }
    for (const auto& t : tags) replace_file(run / "tags" / t.key, t.value);
  }

  void end_run(const std::string& run_id, MlflowRunStatus status, std::int64_t end_time) override {
    set_meta_fields(run_dir(run_id) / "meta.yaml", {{"status", std::to_string(static_cast<int>(status))},
                                                    {"end_time", std::to_string(end_time)}});
  }

  void log_artifacts(const std::string& run_id, const std::filesystem::path& local_dir,
                     const std::string& artifact_path) override {
    copy_tree(local_dir, run_dir(run_id) / "artifacts" / artifact_path);
  }

  /// The directory of run `run_id` (searched in every experiment); throws if there is none.
  std::filesystem::path run_dir(const std::string& run_id) {
    if (auto it = runs_.find(run_id); it != runs_.end()) return it->second;
    for (const auto& experiment : directory_entries(root_))
      if (std::filesystem::exists(experiment / run_id / "meta.yaml"))
        return runs_[run_id] = experiment / run_id;
    throw Error(fmt::format("MLflow run \"{}\" (MLFLOW_RUN_ID) was not found in any experiment under {}",
                            run_id, root_.string()));
  }

 private:
  static void create_directories(const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw Error(fmt::format("cannot create the MLflow directory {}: {}", dir.string(), ec.message()));
  }

  static std::string file_uri(const std::filesystem::path& path) { return "file://" + path.generic_string(); }

  // Experiment directories (those holding a meta.yaml), `.trash` and `models` excluded as MLflow does.
  static std::vector<std::filesystem::path> directory_entries(const std::filesystem::path& root) {
    std::vector<std::filesystem::path> out;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
      const std::string name = entry.path().filename().string();
      if (name == ".trash" || name == "models" || !std::filesystem::exists(entry.path() / "meta.yaml"))
        continue;
      out.push_back(entry.path());
    }
    return out;
  }

  bool has_experiments() const { return !directory_entries(root_).empty(); }

  void write_experiment_meta(const std::string& id, const std::string& name) {
    const auto now = unix_time_ms();
    json meta = json::object();
    meta["artifact_location"] = file_uri(root_ / id);
    meta["creation_time"] = now;
    meta["experiment_id"] = id;
    meta["last_update_time"] = now;
    meta["lifecycle_stage"] = "active";
    meta["name"] = name;
    create_directories(root_ / id);
    replace_file(root_ / id / "meta.yaml", yaml_block(meta));
  }

  // The top-level `key: value` pairs of a flat meta.yaml, quotes removed (enough to find experiments by
  // name).
  static std::map<std::string, std::string> read_meta(const std::filesystem::path& path) {
    std::map<std::string, std::string> out;
    const auto text = read_file_if_exists(path);
    if (!text) return out;
    std::size_t start = 0;
    while (start < text->size()) {
      std::size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      const std::string line = text->substr(start, end - start);
      start = end + 1;
      const std::size_t colon = line.find(": ");
      if (line.empty() || line[0] == ' ' || colon == std::string::npos) continue;
      std::string value = line.substr(colon + 2);
      if (value.size() >= 2 && (value.front() == '\'' || value.front() == '"') &&
          value.back() == value.front()) {
        const char q = value.front();
        value = value.substr(1, value.size() - 2);
        if (q == '\'')
          for (std::size_t i = value.find("''"); i != std::string::npos; i = value.find("''", i + 1))
            value.erase(i, 1);
      }
      out[line.substr(0, colon)] = value;
    }
    return out;
  }

  // Rewrites the given top-level fields of a run's meta.yaml, leaving every other line as it is.
  static void set_meta_fields(const std::filesystem::path& path,
                              const std::vector<std::pair<std::string, std::string>>& fields) {
    const auto text = read_file_if_exists(path);
    if (!text) throw Error(fmt::format("MLflow run metadata {} is missing", path.string()));
    std::string out;
    std::size_t start = 0;
    while (start < text->size()) {
      std::size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      std::string line = text->substr(start, end - start);
      start = end + 1;
      for (const auto& [key, value] : fields)
        if (line.rfind(key + ":", 0) == 0) line = key + ": " + value;
      out += line + "\n";
    }
    replace_file(path, out);
  }

  std::filesystem::path root_;
  std::map<std::string, std::filesystem::path> runs_;
};

/// A tracking server's REST API (`<uri>/api/2.0/mlflow/...`). Batches and the end of the run are queued and
/// sent from an Outbox (created with the run), so a slow server or an outage never holds up training; the
/// calls the caller needs an answer to are retried in place, for at most the flush timeout.
class MlflowRestStore : public MlflowStore {
 public:
  /// `output_dir` is where the rows it could not send are kept (see outbox_settings).
  MlflowRestStore(std::string uri, RetryPolicy policy, HttpOptions options, std::string output_dir,
                  std::optional<double> flush_timeout_s)
      : base_(std::move(uri)),
        policy_(policy),
        http_(policy.request_timeout_s, std::move(options)),
        output_dir_(std::move(output_dir)),
        flush_timeout_(flush_timeout_s) {
    while (!base_.empty() && base_.back() == '/') base_.pop_back();
  }

  std::string experiment_id(const std::string& name) override {
    if (name.empty()) return "0";
    for (int attempt = 0; attempt < 2; ++attempt) {
      const auto found = call_waiting("GET", "experiments/get-by-name?experiment_name=" + url_encode(name),
                                      {}, "RESOURCE_DOES_NOT_EXIST");
      if (!found.is_null()) return id_text(found.at("experiment").at("experiment_id"));
      const auto created =
          call_waiting("POST", "experiments/create", {{"name", name}}, "RESOURCE_ALREADY_EXISTS");
      if (!created.is_null()) return id_text(created.at("experiment_id"));
      // Another client created it between our two calls: look it up again.
    }
    throw Error(
        fmt::format("MLflow experiment \"{}\" could neither be found nor created at {}", name, base_));
  }

  std::string create_run(const std::string& experiment_id, const std::string& run_name,
                         std::int64_t start_time, const std::vector<MlflowKeyValue>& tags) override {
    json body = {{"experiment_id", experiment_id}, {"start_time", start_time}, {"user_id", user_name()}};
    if (!run_name.empty()) body["run_name"] = run_name;
    body["tags"] = key_values(tags);
    const auto answer = call_waiting("POST", "runs/create", body);
    const json& info = answer.at("run").at("info");
    artifact_uri_ = info.value("artifact_uri", "");
    const std::string run_id = info.at("run_id").get<std::string>();
    open_outbox(run_id);
    return run_id;
  }

  void resume_run(const std::string& run_id, std::optional<std::int64_t>) override {
    call_waiting("POST", "runs/update", {{"run_id", run_id}, {"status", "RUNNING"}});
    open_outbox(run_id);
  }

  void log_batch(const std::string& run_id, const std::vector<MlflowMetric>& metrics,
                 const std::vector<MlflowKeyValue>& params,
                 const std::vector<MlflowKeyValue>& tags) override {
    json body = {{"run_id", run_id}, {"metrics", json::array()}};
    for (const auto& m : metrics)
      body["metrics"].push_back(
          {{"key", m.key}, {"value", metric_value(m.value)}, {"timestamp", m.timestamp}, {"step", m.step}});
    body["params"] = key_values(params);
    body["tags"] = key_values(tags);
    outbox_->push(call_row("runs/log-batch", body));
  }

  void end_run(const std::string& run_id, MlflowRunStatus status, std::int64_t end_time) override {
    outbox_->push(call_row(
        "runs/update", {{"run_id", run_id}, {"status", mlflow_status_name(status)}, {"end_time", end_time}}));
  }

  void flush() override {
    if (outbox_) outbox_->flush();
  }

  void rethrow_if_failed() override {
    if (outbox_) outbox_->rethrow_if_failed();
  }

  /// Uploads through the server's artifact proxy (`mlflow-artifacts:` artifact URIs) or copies to a
  /// `file://` artifact location the server shares with this machine; other stores (S3, ...) are not reached.
  void log_artifacts(const std::string& run_id, const std::filesystem::path& local_dir,
                     const std::string& artifact_path) override {
    if (artifact_uri_.empty())
      artifact_uri_ = call_waiting("GET", "runs/get?run_id=" + url_encode(run_id), {})
                          .at("run")
                          .at("info")
                          .value("artifact_uri", "");
    const std::string proxy = "mlflow-artifacts:";
    if (artifact_uri_.rfind("file://", 0) == 0) {
      copy_tree(local_dir, std::filesystem::path(artifact_uri_.substr(7)) / artifact_path);
    } else if (artifact_uri_.rfind(proxy, 0) == 0) {
      std::string path = artifact_uri_.substr(proxy.size());
      if (path.rfind("//", 0) == 0) path = path.substr(path.find('/', 2));  // mlflow-artifacts://host/path
      while (!path.empty() && path.front() == '/') path.erase(0, 1);
      for (const auto& entry : std::filesystem::recursive_directory_iterator(local_dir)) {
        if (!entry.is_regular_file()) continue;
        const auto relative = std::filesystem::relative(entry.path(), local_dir).generic_string();
        const auto bytes = read_file_if_exists(entry.path());
        const auto url = fmt::format("{}/api/2.0/mlflow-artifacts/artifacts/{}/{}/{}", base_, path,
                                     artifact_path, relative);
        RetryingCalls(policy_, flush_timeout_)([&] {
          return check(http_.send("PUT", url, bytes.value_or(""), "application/octet-stream"), "PUT", url,
                       {});
        });
      }
    } else {
      throw Error(
          fmt::format("cannot upload artifacts to \"{}\": only mlflow-artifacts: and file:// artifact "
                      "locations are supported",
                      artifact_uri_));
    }
  }

 private:
  static json key_values(const std::vector<MlflowKeyValue>& items) {
    json out = json::array();
    for (const auto& kv : items) out.push_back({{"key", kv.key}, {"value", kv.value}});
    return out;
  }

  // Non-finite values as protobuf JSON spells them (what the Python client sends).
  static json metric_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    return v;
  }

  // int64 fields may come back as strings or numbers.
  static std::string id_text(const json& id) { return id.is_string() ? id.get<std::string>() : id.dump(); }

  // Sends one API call, once; an error whose code is `tolerated` returns null, a failure that may pass throws
  // TransientError, any other error throws torchfit::Error.
  json call(const std::string& method, const std::string& endpoint, const json& body,
            const std::string& tolerated = {}) {
    const std::string url = base_ + "/api/2.0/mlflow/" + endpoint;
    const auto response = http_.send(method, url, method == "GET" ? std::string() : body.dump());
    return check(response, method, url, tolerated);
  }

  // call(), retried as the policy allows for at most the flush timeout: the caller waits for the answer.
  json call_waiting(const std::string& method, const std::string& endpoint, const json& body,
                    const std::string& tolerated = {}) {
    return RetryingCalls(policy_, flush_timeout_)([&] { return call(method, endpoint, body, tolerated); });
  }

  // The outbox of run `run_id`'s batches and end, each row one call.
  void open_outbox(const std::string& run_id) {
    outbox_.emplace(
        outbox_settings("mlflow", output_dir_, run_id, policy_, flush_timeout_),
        call_sender([this](const std::string& endpoint, const json& body) { call("POST", endpoint, body); }),
        http_);
  }

  static json check(const HttpResponse& response, const std::string& method, const std::string& url,
                    const std::string& tolerated) {
    json answer = json::parse(response.body.empty() ? "{}" : response.body, nullptr, false);
    if (response.status >= 200 && response.status < 300)
      return answer.is_discarded() ? json::object() : answer;
    const std::string code = answer.is_object() ? answer.value("error_code", "") : "";
    if (!tolerated.empty() && code == tolerated) return nullptr;
    const std::string message = answer.is_object() ? answer.value("message", response.body) : response.body;
    throw Error(fmt::format("{} {} answered HTTP {}{}: {}", method, url, response.status,
                            code.empty() ? "" : " " + code, message));
  }

  std::string base_;
  RetryPolicy policy_;
  HttpClient http_;
  std::string output_dir_;
  std::optional<double> flush_timeout_;
  std::string artifact_uri_;
  std::optional<Outbox> outbox_;  // last: its thread sends until it is destroyed
};

/// `retry` with the fields MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (the first
/// back-off) and MLFLOW_HTTP_REQUEST_TIMEOUT (one attempt) replaced when they are set, as they configure
/// MLflow's own client.
inline RetryPolicy mlflow_rest_retry(RetryPolicy retry) {
  if (const auto retries = env_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    retry.max_retries = static_cast<int>(*retries);
  if (const auto backoff = env_number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"))
    retry.initial_backoff_s = *backoff;
  if (const auto timeout = env_number("MLFLOW_HTTP_REQUEST_TIMEOUT")) retry.request_timeout_s = *timeout;
  return retry;
}

/// The TLS settings of MLflow's client: MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH and
/// MLFLOW_TRACKING_CLIENT_CERT_PATH.
inline HttpOptions mlflow_tls_options() {
  HttpOptions http;
  http.insecure_tls = env_true("MLFLOW_TRACKING_INSECURE_TLS");
  http.ca_cert_path = env_string("MLFLOW_TRACKING_SERVER_CERT_PATH").value_or("");
  http.client_cert_path = env_string("MLFLOW_TRACKING_CLIENT_CERT_PATH").value_or("");
  return http;
}

/// The Authorization header of MLflow's client: HTTP Basic from MLFLOW_TRACKING_USERNAME and
/// MLFLOW_TRACKING_PASSWORD, else a Bearer token from `token_variable`; nothing when neither is set.
inline std::optional<std::string> mlflow_auth_header(const char* token_variable) {
  const auto user = env_string("MLFLOW_TRACKING_USERNAME");
  const auto password = env_string("MLFLOW_TRACKING_PASSWORD");
  if (user && password) return "Authorization: Basic " + base64(*user + ":" + *password);
  if (const auto token = env_string(token_variable)) return "Authorization: Bearer " + *token;
  return std::nullopt;
}

/// The metric points of log entry `logs` at `step`, as MLflow takes them: numbers (booleans as 1/0), keys
/// sanitised as HF v5 does. A value left out is passed to `dropped(key, value, problem)`: `problem` is empty
/// for a value that is not a number, else why MLflow rejects the key.
template <typename Dropped>
std::vector<MlflowMetric> mlflow_metrics(const json& logs, std::int64_t step, Dropped dropped) {
  const auto now = unix_time_ms();
  std::vector<MlflowMetric> metrics;
  for (auto it = logs.begin(); it != logs.end(); ++it) {
    const json& v = it.value();
    if (!v.is_number() && !v.is_boolean()) {
      dropped(it.key(), v, std::string());
      continue;
    }
    const std::string key = mlflow_sanitize_metric_key(it.key());
    if (const auto problem = mlflow_key_problem(key); !problem.empty()) {
      dropped(it.key(), v, problem);
      continue;
    }
    metrics.push_back({key, v.is_boolean() ? double(v.get<bool>()) : v.get<double>(), now, step});
  }
  return metrics;
}

/// Logs `metrics` to run `run_id` of `store`, at most MLflow's 1000 a request.
inline void mlflow_log_metrics(MlflowStore& store, const std::string& run_id,
                               const std::vector<MlflowMetric>& metrics) {
  mlflow_in_batches(metrics, mlflow_max_metrics_per_batch,
                    [&](const std::vector<MlflowMetric>& batch) { store.log_batch(run_id, batch, {}, {}); });
}

/// The store MLflowCallback logs to: `tracking_uri` when set, else MLFLOW_TRACKING_URI, else `./mlruns`. An
/// `http(s)://` URI is a tracking server, retried with `retry` (MLFLOW_HTTP_REQUEST_* replace its fields) and
/// authenticated from MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, its unsent calls kept under
/// `output_dir`; a `file:` URI or a path is a file store; other schemes are an ArgumentError.
inline std::unique_ptr<MlflowStore> mlflow_store(const std::optional<std::string>& tracking_uri,
                                                 RetryPolicy retry, const std::string& output_dir,
                                                 const std::optional<double>& flush_timeout_s) {
  std::string uri = tracking_uri.value_or(env_string("MLFLOW_TRACKING_URI").value_or(""));
  if (uri.rfind("http://", 0) == 0 || uri.rfind("https://", 0) == 0) {
    HttpOptions http = mlflow_tls_options();
    if (auto header = mlflow_auth_header("MLFLOW_TRACKING_TOKEN")) http.headers.push_back(std::move(*header));
    return std::make_unique<MlflowRestStore>(uri, mlflow_rest_retry(retry), std::move(http), output_dir,
                                             flush_timeout_s);
  }
  if (uri.rfind("azureml:", 0) == 0)
    throw ArgumentError(fmt::format(
        "MLFLOW_TRACKING_URI \"{}\" is an Azure Machine Learning workspace: report to it with --report_to "
        "azure_ml (<torchfit/integrations/azure_ml.hpp>)",
        uri));
  if (uri.rfind("file://", 0) == 0)
    uri = uri.substr(7);
  else if (uri.rfind("file:", 0) == 0)
    uri = uri.substr(5);
  else if (uri.find("://") != std::string::npos || uri.rfind("sqlite:", 0) == 0 ||
           uri.rfind("databricks", 0) == 0)
    throw ArgumentError(
        fmt::format("MLFLOW_TRACKING_URI \"{}\" is not supported: use an http(s):// tracking "
                    "server, a file: URI or a directory path",
                    uri));
  return std::make_unique<MlflowFileStore>(uri.empty() ? std::string("mlruns") : uri);
}

}  // namespace torchfit::detail

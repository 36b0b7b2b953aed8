// SPDX-License-Identifier: MIT
// The part of Weights & Biases' server API a run needs: GraphQL UpsertBucket and RunResumeStatus, and the
// file_stream endpoint that receives history, summary and the end of the run (what wandb's own client sends),
// and the config and metric definitions HF's WandbCallback gives a run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/detail/strings.hpp"
#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// wandb-core's UpsertBucket mutation: creates the run, or updates the fields sent non-null.
inline constexpr const char* wandb_upsert_bucket_mutation =
    "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, $groupName: "
    "String, "
    "$description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, "
    "$host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, "
    "$sweep: String, $tags: [String!], $summaryMetrics: JSONString) { upsertBucket(input: { id: $id, name: "
    "$name, groupName: $groupName, modelName: $project, entityName: $entity, description: $description, "
    "displayName: $displayName, notes: $notes, config: $config, commit: $commit, host: $host, debug: $debug, "
    "jobProgram: $program, jobRepo: $repo, jobType: $jobType, state: $state, sweep: $sweep, tags: $tags, "
    "summaryMetrics: $summaryMetrics }) { bucket { id name displayName description config sweepName project "
    "{ id name entity { id name } } historyLineCount } inserted } }";

/// wandb-core's RunResumeStatus query: what a resumed run continues from.
inline constexpr const char* wandb_resume_status_query =
    "query RunResumeStatus($project: String, $entity: String, $name: String!) { model(name: $project, "
    "entityName: $entity) { id name entity { id name } bucket(name: $name, missingOk: true) { id name "
    "summaryMetrics displayName logLineCount historyLineCount eventsLineCount historyTail eventsTail config "
    "tags notes wandbConfig(keys: [\"t\"]) } } }";

/// Where a run lives on the server, as its UpsertBucket answer resolved it.
struct WandbRunRef {
  std::string entity;
  std::string project;
  std::string run_id;
  std::string display_name;
  std::int64_t history_line_count = 0;
};

/// What a run that already exists leaves to the run that resumes it.
struct WandbResumeStatus {
  std::int64_t history_line_count = 0;  // the next history line's offset
  std::int64_t next_step = 0;           // the next `_step`
  double runtime_s = 0;                 // `_runtime` reached so far
  json summary = json::object();
  json config = json::object();  // {"key": {"value": v}}, as stored
};

/// The variables of UpsertBucket, every one null (unchanged on the server) unless set.
inline json wandb_upsert_variables() {
  json vars = json::object();
  for (const char* name :
       {"id", "name", "project", "entity", "groupName", "description", "displayName", "notes", "commit",
        "config", "host", "debug", "program", "repo", "jobType", "state", "sweep", "tags", "summaryMetrics"})
    vars[name] = nullptr;
  return vars;
}

/// Parses a JSON value the server sends as a string (JSONString fields): Python's json, so bare NaN is read.
inline json wandb_json_string(const json& field, const char* what) {
  if (field.is_null()) return json();
  if (!field.is_string()) return field;
  const auto& text = field.get_ref<const std::string&>();
  return text.empty() ? json() : python_json_parse(text, fmt::format("the W&B run's {}", what));
}

/// The API key stored for `host` (`host[:port]`) in a netrc file, as `wandb login` writes it; nothing when
/// the file or the entry is missing.
inline std::optional<std::string> netrc_password(const std::string& path, const std::string& host) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::vector<std::string> tokens;
  for (std::string token; in >> token;) tokens.push_back(token);
  bool in_entry = false;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] == "machine" && i + 1 < tokens.size())
      in_entry = tokens[++i] == host;
    else if (tokens[i] == "default")
      in_entry = true;
    else if (in_entry && tokens[i] == "password" && i + 1 < tokens.size())
      return tokens[i + 1];
  }
  return std::nullopt;
}

/// What HF's config.update sends, as W&B stores it: each top-level value wrapped as {"value": v}.
inline json wandb_wrap_config(const json& values) {
  json config = json::object();
  for (auto it = values.begin(); it != values.end(); ++it) config[it.key()] = {{"value", it.value()}};
  return config;
}

/// HF's define_metric calls in wandb's wire form (MetricRecord fields by number, expanded on the client):
/// `train/global_step` defined (options [3]), then every other key stepped by it (step metric 1, options
/// step_sync and defined [1, 3]).
inline json wandb_metric_definitions(const std::vector<std::string>& keys) {
  json m = json::array();
  m.push_back({{"1", "train/global_step"}, {"6", json::array({3})}, {"7", json::array()}});
  for (const auto& key : keys)
    m.push_back({{"1", key}, {"5", 1}, {"6", json::array({1, 3})}, {"7", json::array()}});
  return m;
}

/// A run's config as UpsertBucket takes it: `stored_config` (values wrapped as {"value": v}) with the
/// `_wandb` entry that defines HF's step metric for `metric_keys`, as JSON text.
inline std::string wandb_config_text(const json& stored_config, const std::set<std::string>& metric_keys) {
  json config = stored_config;
  const std::vector<std::string> keys(metric_keys.begin(), metric_keys.end());
  config["_wandb"] = {{"value", {{"t", json::object()}, {"m", wandb_metric_definitions(keys)}}}};
  return python_json_dumps(config, -1, false);
}

/// The UpsertBucket variables of a config update of `run` (its other fields unchanged).
inline json wandb_config_update(const WandbRunRef& run, const json& stored_config,
                                const std::set<std::string>& metric_keys) {
  json vars = wandb_upsert_variables();
  vars["name"] = run.run_id;
  vars["project"] = run.project;
  vars["entity"] = run.entity;
  vars["config"] = wandb_config_text(stored_config, metric_keys);
  return vars;
}

/// The metric names a stored config defines (its `_wandb` value's `m` entries), HF's step metric excluded.
inline std::vector<std::string> wandb_defined_metrics(const json& stored_config) {
  std::vector<std::string> names;
  const auto internal = stored_config.find("_wandb");
  if (internal == stored_config.end() || !internal->is_object()) return names;
  const auto value = internal->find("value");
  if (value == internal->end() || !value->is_object()) return names;
  const auto m = value->find("m");
  if (m == value->end() || !m->is_array()) return names;
  for (const json& def : *m)
    if (const auto name = def.find("1");
        name != def.end() && name->is_string() && *name != "train/global_step")
      names.push_back(name->get<std::string>());
  return names;
}

/// WANDB_TAGS: comma-separated, blanks around each tag dropped, empty tags left out.
inline std::vector<std::string> wandb_split_tags(const std::string& text) {
  std::vector<std::string> tags;
  for (std::size_t start = 0; start <= text.size();) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    if (std::string tag = trim(std::string_view(text).substr(start, end - start)); !tag.empty())
      tags.push_back(std::move(tag));
    start = end + 1;
  }
  return tags;
}

/// Calls a W&B server (`base_url`, e.g. https://api.wandb.ai) with HTTP Basic authentication `api:<key>`, one
/// attempt per call. A failure that may pass throws TransientError; any other throws torchfit::Error naming
/// the call, the URL and what the server said.
class WandbApi {
 public:
  WandbApi(std::string base_url, const std::string& api_key, double request_timeout_s)
      : base_url_(std::move(base_url)), http_(request_timeout_s, auth_options(api_key)) {
    while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
  }

  const std::string& base_url() const { return base_url_; }
  HttpClient& http() { return http_; }

  /// Creates or updates a run (variables from wandb_upsert_variables()); returns where the server put it.
  WandbRunRef upsert_run(const json& variables) const {
    const json data = graphql("UpsertBucket", wandb_upsert_bucket_mutation, variables);
    const json* bucket = find_object(data, {"upsertBucket", "bucket"});
    const json* project = bucket ? find_object(*bucket, {"project"}) : nullptr;
    const json* entity = project ? find_object(*project, {"entity"}) : nullptr;
    const auto run_id = string_member(bucket, "name");
    const auto project_name = string_member(project, "name");
    const auto entity_name = string_member(entity, "name");
    if (!run_id || !project_name || !entity_name)
      throw Error(fmt::format(
          "W&B UpsertBucket at {}: the answer has no bucket with its name, project and entity: {}",
          graphql_url(), data.dump().substr(0, 300)));
    WandbRunRef ref;
    ref.run_id = *run_id;
    ref.project = *project_name;
    ref.entity = *entity_name;
    ref.display_name = string_member(bucket, "displayName").value_or("");
    ref.history_line_count = integer_member(*bucket, "historyLineCount");
    return ref;
  }

  /// The state of run `run_id` in `entity`/`project` (an empty entity: the key's default one); nothing when
  /// the project has no such run. A run counts as existing once a client has opened it (wandb's rule: its
  /// internal config has telemetry `t`), not when it was only declared (a sweep's placeholder).
  std::optional<WandbResumeStatus> resume_status(const std::string& project, const std::string& entity,
                                                 const std::string& run_id) const {
    json vars = {{"project", project}, {"entity", entity.empty() ? json() : json(entity)}, {"name", run_id}};
    const json data = graphql("RunResumeStatus", wandb_resume_status_query, vars);
    const json* bucket = find_object(data, {"model", "bucket"});
    if (bucket == nullptr) return std::nullopt;
    const json wandb_config = wandb_json_string(bucket->value("wandbConfig", json()), "wandbConfig");
    if (!wandb_config.is_object() || !wandb_config.contains("t")) return std::nullopt;
    WandbResumeStatus status;
    status.history_line_count = integer_member(*bucket, "historyLineCount");
    if (json summary = wandb_json_string(bucket->value("summaryMetrics", json()), "summaryMetrics");
        summary.is_object())
      status.summary = std::move(summary);
    if (json config = wandb_json_string(bucket->value("config", json()), "config"); config.is_object())
      status.config = std::move(config);
    // The step and runtime to go on from: the summary's, else the last history line's.
    json last = status.summary;
    const json tail = wandb_json_string(bucket->value("historyTail", json()), "historyTail");
    if (tail.is_array() && !tail.empty() && tail.back().is_string())
      if (json line = wandb_json_string(tail.back(), "historyTail"); line.is_object()) last.update(line);
    if (const auto step = last.find("_step"); step != last.end() && step->is_number())
      status.next_step = step->get<std::int64_t>() + 1;
    if (const auto runtime = last.find("_runtime"); runtime != last.end() && runtime->is_number())
      status.runtime_s = runtime->get<double>();
    if (const json* internal = find_object(status.summary, {"_wandb"}))
      if (const auto runtime = internal->find("runtime"); runtime != internal->end() && runtime->is_number())
        status.runtime_s = std::max(status.runtime_s, runtime->get<double>());
    return status;
  }

  /// Posts one file_stream request (`body` as JSON text) for `run`; returns the server's answer.
  json file_stream(const WandbRunRef& run, const std::string& body) const {
    const std::string url = fmt::format("{}/files/{}/{}/{}/file_stream", base_url_, url_encode(run.entity),
                                        url_encode(run.project), url_encode(run.run_id));
    const HttpResponse response = http_.send("POST", url, body);
    if (response.status != 200) throw http_error("file_stream", url, response);
    const json answer = json::parse(response.body, nullptr, false);
    return answer.is_discarded() ? json::object() : answer;
  }

 private:
  static HttpOptions auth_options(const std::string& api_key) {
    HttpOptions options;
    options.headers.push_back("Authorization: Basic " + base64("api:" + api_key));
    options.headers.push_back("User-Agent: torchfit");
    return options;
  }

  std::string graphql_url() const { return base_url_ + "/graphql"; }

  static Error http_error(const char* call, const std::string& url, const HttpResponse& response) {
    return Error(fmt::format("W&B {} at {}: HTTP {}{}: {}", call, url, response.status,
                             http_auth_hint(response.status), response.body.substr(0, 300)));
  }

  static std::optional<std::string> string_member(const json* object, const char* key) {
    if (object == nullptr) return std::nullopt;
    const auto it = object->find(key);
    if (it == object->end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  }

  static std::int64_t integer_member(const json& object, const char* key) {
    const auto it = object.find(key);
    return it != object.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
  }

  // The object at `path` inside `value`, or null when a step is missing or not an object.
  static const json* find_object(const json& value, std::initializer_list<const char*> path) {
    const json* at = &value;
    for (const char* key : path) {
      if (!at->is_object()) return nullptr;
      const auto it = at->find(key);
      if (it == at->end() || !it->is_object()) return nullptr;
      at = &*it;
    }
    return at;
  }

  // Sends one GraphQL operation; returns its `data`, or throws with the server's error messages.
  json graphql(const char* operation, const char* query, const json& variables) const {
    const json request = {{"operationName", operation}, {"query", query}, {"variables", variables}};
    const HttpResponse response = http_.send("POST", graphql_url(), request.dump());
    if (response.status != 200) throw http_error(operation, graphql_url(), response);
    const json answer = json::parse(response.body, nullptr, false);
    if (answer.is_discarded() || !answer.is_object())
      throw Error(fmt::format("W&B {} at {}: the answer is not JSON: {}", operation, graphql_url(),
                              response.body.substr(0, 300)));
    if (const auto errors = answer.find("errors"); errors != answer.end() && !errors->empty()) {
      std::string messages;
      for (const json& e : *errors) {
        const auto message = string_member(&e, "message");
        messages += (messages.empty() ? "" : "; ") + message.value_or(e.dump());
      }
      throw Error(fmt::format("W&B {} at {}: {}", operation, graphql_url(), messages));
    }
    return answer.value("data", json::object());
  }

  std::string base_url_;
  HttpClient http_;
};

/// The API key for `base_url`: `option` when set, else WANDB_API_KEY, else the password `wandb login` stored
/// for the server's host in ~/.netrc (or $NETRC).
inline std::string wandb_api_key(const std::optional<std::string>& option, const std::string& base_url) {
  if (option) return *option;
  if (const auto key = env_string("WANDB_API_KEY")) return *key;
  const auto netrc = env_string("NETRC").value_or(expand_user("~/.netrc"));
  if (const auto key = netrc_password(netrc, url_authority(base_url))) return *key;
  throw ArgumentError(fmt::format(
      "no W&B API key for {}: set WANDB_API_KEY, or log in with `wandb login` (which stores it in {})",
      base_url, netrc));
}

/// What WANDB_RESUME asks run `run_id` of `entity`/`project` to continue from (`id_given`: the id came from
/// WANDB_RUN_ID); nothing for a new run. `lookup` asks the server (WandbApi::resume_status).
template <typename Lookup>
std::optional<WandbResumeStatus> wandb_resume(const std::string& project, const std::string& run_id,
                                              bool id_given, Lookup lookup) {
  const auto requested = env_string("WANDB_RESUME");
  if (!requested) return std::nullopt;
  std::string resume = lower(*requested);
  if (resume == "true" || resume == "1") resume = "auto";
  if (resume == "false" || resume == "0") return std::nullopt;
  if (resume != "allow" && resume != "must" && resume != "never" && resume != "auto")
    throw ArgumentError(fmt::format("WANDB_RESUME must be allow, must, never or auto (got \"{}\")", resume));
  if (!id_given) {
    if (resume == "must")
      throw ArgumentError("WANDB_RESUME=must needs WANDB_RUN_ID: the id of the run to resume");
    return std::nullopt;
  }
  auto status = lookup();
  if (resume == "must" && !status)
    throw ArgumentError(fmt::format(
        "WANDB_RESUME=must, but project \"{}\" has no run \"{}\" to resume (WANDB_RUN_ID)", project, run_id));
  if (resume == "never" && status)
    throw ArgumentError(
        fmt::format("WANDB_RESUME=never, but project \"{}\" already has a run \"{}\" (WANDB_RUN_ID): choose "
                    "another id",
                    project, run_id));
  return status;
}

/// Whether W&B logging is on: WANDB_MODE online (or unset) rather than disabled (or HF's WANDB_DISABLED); the
/// modes torchfit lacks (offline) and unknown ones are an ArgumentError. Features it lacks are warned about.
inline bool wandb_enabled() {
  const std::string mode = lower(env_string("WANDB_MODE").value_or("online"));
  if (mode == "disabled" || env_true("WANDB_DISABLED")) return false;
  if (mode == "offline" || mode == "dryrun")
    throw ArgumentError(fmt::format(
        "WANDB_MODE={}: offline W&B runs are not supported (torchfit talks to the W&B server directly); "
        "log offline with --report_to tensorboard or csv, or unset WANDB_MODE",
        mode));
  if (mode != "online" && mode != "run" && mode != "shared")
    throw ArgumentError(fmt::format("WANDB_MODE must be online, offline or disabled (got \"{}\")", mode));
  for (const char* feature : {"WANDB_LOG_MODEL", "WANDB_WATCH"}) {
    const auto value = lower(env_string(feature).value_or("false"));
    if (value != "false" && value != "0" && value != "no" && value != "off")
      log::warning(
          "WandbCallback: {}={} is not supported (no model artifacts or gradient histograms); ignoring it",
          feature, value);
  }
  return true;
}

/// The UpsertBucket variables that create run `run_id` in `entity` (empty: the key's) / `project`: its
/// display name (WANDB_NAME, else `run_name`), WANDB_RUN_GROUP, WANDB_NOTES, WANDB_JOB_TYPE, WANDB_TAGS, the
/// host and the program.
inline json wandb_new_run_variables(const std::string& run_id, const std::string& project,
                                    const std::string& entity, const std::optional<std::string>& run_name) {
  json vars = wandb_upsert_variables();
  vars["name"] = run_id;
  vars["project"] = project;
  if (!entity.empty()) vars["entity"] = entity;
  if (const auto name = env_string("WANDB_NAME"))
    vars["displayName"] = *name;
  else if (run_name)
    vars["displayName"] = *run_name;
  if (const auto group = env_string("WANDB_RUN_GROUP")) vars["groupName"] = *group;
  if (const auto notes = env_string("WANDB_NOTES")) vars["notes"] = *notes;
  if (const auto job_type = env_string("WANDB_JOB_TYPE")) vars["jobType"] = *job_type;
  if (const auto tags = env_string("WANDB_TAGS")) vars["tags"] = wandb_split_tags(*tags);
  vars["host"] = host_name();
  vars["program"] = program_path();
  return vars;
}

}  // namespace torchfit::detail

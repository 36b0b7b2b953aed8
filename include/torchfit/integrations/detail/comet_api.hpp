// SPDX-License-Identifier: MIT
// The part of Comet's API an experiment needs: create it (public REST API v2), log others and the model
// graph, keep it alive, record its start and end, and send parameters and metrics in batches (the batch
// endpoints of Comet's Python client).
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/strings.hpp"
#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"

namespace torchfit::detail {

/// The value of `key` in section `[section]` of an INI file (Comet's `~/.comet.config`); nothing when the
/// file, the section or the key is missing.
inline std::optional<std::string> ini_value(const std::string& path, const std::string& section,
                                            const std::string& key) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string current;
  for (std::string line; std::getline(in, line);) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      current = trim(line.substr(1, line.size() - 2));
    } else if (current == section) {
      const auto eq = line.find('=');
      if (eq != std::string::npos && trim(line.substr(0, eq)) == key) return trim(line.substr(eq + 1));
    }
  }
  return std::nullopt;
}

/// The most values one batch request carries (comet_ml's MESSAGE_BATCH_METRIC_MAX_BATCH_SIZE).
inline constexpr std::size_t comet_max_batch_values = 1000;

/// Calls Comet with the API key as the Authorization header, one attempt per call: the REST API under
/// `<root>/api/rest/v2/`, and the batch endpoints under the client URL
/// (`<clientlib>batch/logger/experiment/`, where comet_ml's log_metrics_batch and log_parameters_batch post).
/// A failure that may pass throws TransientError; any other throws torchfit::Error naming the endpoint, the
/// URL and what the server said.
class CometApi {
 public:
  /// `url`: the server as Comet's clients name it (`https://www.comet.com/clientlib/`).
  CometApi(const std::string& url, const std::string& api_key, double request_timeout_s)
      : base_(url_root(url) + "/api/rest/v2/"),
        clientlib_(url.back() == '/' ? url : url + "/"),
        http_(request_timeout_s, auth_options(api_key)) {}

  HttpClient& http() { return http_; }

  /// The workspaces the key can write to.
  std::vector<std::string> workspaces() const {
    const json answer = call("GET", "workspaces", {});
    std::vector<std::string> names;
    if (const auto it = answer.find("workspaceNames"); it != answer.end() && it->is_array())
      for (const json& name : *it)
        if (name.is_string()) names.push_back(name);
    return names;
  }

  /// Creates an experiment; returns its key and the link to its page.
  std::pair<std::string, std::string> create_experiment(const std::string& workspace,
                                                        const std::string& project,
                                                        const std::optional<std::string>& name) const {
    json body = {{"workspaceName", workspace}, {"projectName", project}};
    if (name) body["experimentName"] = *name;
    const json answer = call("POST", "write/experiment/create", body);
    const auto key = answer.find("experimentKey");
    if (key == answer.end() || !key->is_string())
      throw Error(fmt::format("Comet write/experiment/create at {}: the answer has no experimentKey: {}",
                              base_, answer.dump().substr(0, 300)));
    const auto link = answer.find("link");
    return {key->get<std::string>(),
            link != answer.end() && link->is_string() ? link->get<std::string>() : ""};
  }

  /// Posts `body` (with the experiment's key added) to `write/experiment/<endpoint>`, or, for the endpoints
  /// `metric batch` and `parameter batch`, to the batch endpoint of that kind (`body`: `{"values": [...]}`).
  void write(const std::string& endpoint, const std::string& experiment_key, json body) const {
    body["experimentKey"] = experiment_key;
    const auto space = endpoint.find(" batch");
    if (space == std::string::npos) {
      call("POST", "write/experiment/" + endpoint, body);
      return;
    }
    const std::string batch = "batch/logger/experiment/" + endpoint.substr(0, space);
    check(http_.send("POST", clientlib_ + batch, body.dump()), batch, clientlib_ + batch);
  }

  /// Tells Comet the experiment is alive; returns the interval it wants between two such calls, in seconds.
  std::optional<double> keep_alive(const std::string& experiment_key) const {
    const json answer =
        call("GET", "write/experiment/set-status?experimentKey=" + url_encode(experiment_key), {});
    const auto beat = answer.find("isAliveBeatDurationMillis");
    if (beat == answer.end() || !beat->is_number() || beat->get<double>() <= 0) return std::nullopt;
    return beat->get<double>() / 1000.0;
  }

 private:
  static HttpOptions auth_options(const std::string& api_key) {
    HttpOptions options;
    options.headers.push_back("Authorization: " + api_key);
    options.headers.push_back("Accept: application/json");
    return options;
  }

  json call(const std::string& method, const std::string& endpoint, const json& body) const {
    const std::string url = base_ + endpoint;
    return check(http_.send(method, url, method == "GET" ? std::string() : body.dump()),
                 endpoint.substr(0, endpoint.find('?')), url);
  }

  // The answer of a call to `endpoint` at `url` as a JSON object; an error status throws, with Comet's
  // message.
  static json check(const HttpResponse& response, const std::string& endpoint, const std::string& url) {
    const json answer = json::parse(response.body, nullptr, false);
    if (response.status != 200) {
      std::string detail = response.body.substr(0, 300);
      if (answer.is_object() && answer.contains("msg") && answer["msg"].is_string()) {
        detail = answer["msg"].get<std::string>();
        if (answer.contains("sdk_error_code"))
          detail += fmt::format(" (sdk_error_code {})", answer["sdk_error_code"].dump());
      }
      throw Error(fmt::format("Comet {} at {}: HTTP {}{}: {}", endpoint, url, response.status,
                              http_auth_hint(response.status), detail));
    }
    return answer.is_object() ? answer : json::object();
  }

  std::string base_;
  std::string clientlib_;
  HttpClient http_;
};

/// A Comet setting: `option` when set, else environment variable `variable`, else `file_key` in the [comet]
/// section of Comet's configuration file (`$COMET_CONFIG`, else `~/.comet.config`).
inline std::optional<std::string> comet_setting(const std::optional<std::string>& option,
                                                const char* variable, const char* file_key) {
  if (option) return option;
  if (auto value = env_string(variable)) return value;
  return ini_value(env_string("COMET_CONFIG").value_or(expand_user("~/.comet.config")), "comet", file_key);
}

/// COMET_MODE (lower case; "online" when unset). The modes torchfit lacks (offline) and unknown ones are an
/// ArgumentError; features it lacks are warned about.
inline std::string comet_mode() {
  const std::string mode = lower(env_string("COMET_MODE").value_or("online"));
  if (mode == "disabled") return mode;
  if (mode == "offline")
    throw ArgumentError(
        "COMET_MODE=offline: offline Comet experiments are not supported (torchfit talks to the Comet "
        "server directly); log offline with --report_to tensorboard or csv, or unset COMET_MODE");
  if (mode != "online" && mode != "get" && mode != "get_or_create" && mode != "create")
    throw ArgumentError(fmt::format(
        "COMET_MODE must be online, offline, disabled, get, get_or_create or create (got \"{}\")", mode));
  if (env_true("COMET_LOG_ASSETS"))
    log::warning("CometCallback: COMET_LOG_ASSETS is not supported (the output folder is not uploaded)");
  return mode;
}

}  // namespace torchfit::detail

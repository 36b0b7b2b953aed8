// SPDX-License-Identifier: MIT
// The part of ClearML's API server a training task needs: log in, find or create the project, create, start,
// edit, ping and end the task, and add scalar events; a reader for the settings in clearml.conf; and the
// hyperparameter form HF's ClearMLCallback gives the training arguments.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
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
#include "torchfit/version.hpp"

namespace torchfit::detail {

/// The value at the dotted `path` (`api.credentials.access_key`) of a HOCON file such as clearml.conf:
/// nested `name { ... }` blocks and dotted keys, `:` or `=`, quoted or bare values, entries on their own
/// lines or separated by commas, `#` and `//` comments. Nothing when the file or the key is missing.
inline std::optional<std::string> hocon_value(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::vector<std::string> scope;  // the names of the blocks we are in
  const auto joined = [&](const std::string& last) {
    std::string full;
    for (const auto& part : scope) full += part + ".";
    return full + last;
  };
  for (std::string line; std::getline(in, line);) {
    // A comment starts at # or at a // that does not follow a character (`api_server: https://...` is a
    // value, as clearml-init writes it), outside quotes.
    bool quoted = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '"') quoted = !quoted;
      const bool slashes =
          line.compare(i, 2, "//") == 0 && (i == 0 || line[i - 1] == ' ' || line[i - 1] == '\t');
      if (!quoted && (line[i] == '#' || slashes)) {
        line.resize(i);
        break;
      }
    }
    for (std::string rest = trim(line); !rest.empty();) {
      if (rest[0] == '}') {
        if (!scope.empty()) scope.pop_back();
        rest = trim(rest.substr(1));
        continue;
      }
      const auto separator = rest.find_first_of(":={");
      if (separator == std::string::npos) break;
      std::string name = trim(rest.substr(0, separator));
      if (name.size() >= 2 && name.front() == '"' && name.back() == '"')
        name = name.substr(1, name.size() - 2);
      std::string value = trim(rest.substr(separator + (rest[separator] == '{' ? 0 : 1)));
      if (!value.empty() && value[0] == '{') {
        scope.push_back(name);
        rest = trim(value.substr(1));
        continue;
      }
      // A scalar: quoted up to its closing quote, else up to a comma, a closing brace or the line's end.
      std::size_t end = 0;
      std::string scalar;
      if (!value.empty() && value[0] == '"') {
        end = value.find('"', 1);
        scalar = value.substr(1, end == std::string::npos ? std::string::npos : end - 1);
        end = end == std::string::npos ? value.size() : end + 1;
      } else {
        end = std::min(value.find_first_of(",}"), value.size());
        scalar = trim(value.substr(0, end));
      }
      if (joined(name) == key) return scalar;
      rest = trim(value.substr(end));
      if (!rest.empty() && rest[0] == ',') rest = trim(rest.substr(1));
    }
  }
  return std::nullopt;
}

/// ClearML's hyperparameter value text: Python's str() of the value, None as "", lists and dicts as
/// json.dumps.
inline std::string clearml_value_text(const json& value) {
  if (value.is_null()) return "";
  if (value.is_structured()) return python_json_dumps(value, -1, false);
  return python_str(value);
}

/// ClearML's hyperparameter type name (its get_basic_type): the Python type's name (int, float, bool, str,
/// NoneType, dict), for a list `list/<its first item's type>`.
inline std::string clearml_value_type(const json& value) {
  const std::string repr = python_type_repr(value);  // <class 'int'>
  std::string name = repr.substr(8, repr.size() - 10);
  if (value.is_array() && !value.empty()) name += "/" + clearml_value_type(value[0]);
  return name;
}

/// HF's hyperparameter section: each argument (those ending in `_token` left out), nested objects flattened
/// with `/`, as ClearML's `{name: {section, name, value, type, description}}` items.
inline void clearml_add_hyperparams(json& section, const std::string& section_name, const json& values,
                                    const std::string& prefix = "") {
  for (auto it = values.begin(); it != values.end(); ++it) {
    const std::string name = prefix + it.key();
    if (ends_with(name, "_token")) continue;
    if (it.value().is_object() && !it.value().empty()) {
      clearml_add_hyperparams(section, section_name, it.value(), name + "/");
      continue;
    }
    section[name] = {{"section", section_name},
                     {"name", name},
                     {"value", clearml_value_text(it.value())},
                     {"type", clearml_value_type(it.value())},
                     {"description", ""}};
  }
}

/// HF's hyperparameter section `Transformers` of the training arguments `args` (as clearml_add_hyperparams
/// gives them) with HF's `_ignore_hparams_ui_overrides_`.
inline json clearml_hyperparams(const json& args) {
  json section = json::object();
  clearml_add_hyperparams(section, "Transformers", args);
  section["_ignore_hparams_ui_overrides_"] = {
      {"section", "Transformers"},
      {"name", "_ignore_hparams_ui_overrides_"},
      {"value", "True"},
      {"type", "bool"},
      {"description",
       "If True, ignore Transformers hyperparameters overrides done in the UI/backend when running remotely. "
       "Otherwise, the overrides will be applied when running remotely"}};
  return section;
}

/// A ClearML setting: `option` when set, else environment variable `variable`, else the dotted `file_key` of
/// ClearML's configuration file (`$CLEARML_CONFIG_FILE`, else `~/clearml.conf`).
inline std::optional<std::string> clearml_setting(const std::optional<std::string>& option,
                                                  const char* variable, const char* file_key) {
  if (option) return option;
  if (auto value = env_string(variable)) return value;
  return hocon_value(env_string("CLEARML_CONFIG_FILE").value_or(expand_user("~/clearml.conf")), file_key);
}

/// The web app ClearML derives from an API server: `https://api.clear.ml` -> `https://app.clear.ml`,
/// `://api.` -> `://app.`, port 8008 -> 8080.
inline std::string clearml_web_host(std::string api_host) {
  if (const auto at = api_host.find("://api."); at != std::string::npos)
    return api_host.replace(at, 7, "://app.");
  if (const auto at = api_host.rfind(":8008"); at != std::string::npos && at + 5 == api_host.size())
    return api_host.replace(at, 5, ":8080");
  return api_host;
}

/// A project name as the exact-match pattern projects.get_all takes (Python's `"^%s$" % re.escape(name)`).
inline std::string clearml_name_pattern(const std::string& name) {
  std::string out = "^";
  for (const char c : name) {
    const bool word = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      c == '_' || static_cast<unsigned char>(c) >= 0x80;
    if (!word) out += '\\';
    out += c;
  }
  return out + "$";
}

/// The payload of a JSON Web Token as JSON (its signature is not checked); an empty object when unreadable.
inline json jwt_payload(const std::string& token) {
  const auto first = token.find('.');
  const auto second = token.find('.', first == std::string::npos ? first : first + 1);
  if (first == std::string::npos || second == std::string::npos) return json::object();
  std::string bytes;
  std::uint32_t buffer = 0;
  int bits = 0;
  for (const char c : token.substr(first + 1, second - first - 1)) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    if (c >= '0' && c <= '9') v = c - '0' + 52;
    if (c == '-' || c == '+') v = 62;
    if (c == '_' || c == '/') v = 63;
    if (v < 0) continue;  // padding
    buffer = (buffer << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes += static_cast<char>((buffer >> bits) & 0xFF);
    }
  }
  const json payload = json::parse(bytes, nullptr, false);
  return payload.is_object() ? payload : json::object();
}

/// Calls a ClearML API server (`https://api.clear.ml`, or a self-hosted `http://host:8008`), one attempt per
/// call: log_in() with the access key and secret (HTTP Basic), then each call with the session token, logging
/// in again once when the server refuses the token. A failure that may pass throws TransientError; any other
/// throws torchfit::Error naming the call, the URL and the server's result message.
class ClearMLApi {
 public:
  ClearMLApi(std::string host, std::string access_key, std::string secret_key, double request_timeout_s)
      : host_(trimmed_host(std::move(host))),
        access_key_(std::move(access_key)),
        secret_key_(std::move(secret_key)),
        http_(request_timeout_s, client_options()) {}

  const std::string& host() const { return host_; }
  HttpClient& http() { return http_; }
  /// The API version the server reports in its token ("2.34"); empty when it does not say (or before
  /// log_in()).
  std::string server_api_version() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return server_api_version_;
  }

  /// Logs in with the access key and secret: a new session token for the calls.
  void log_in() const {
    const std::string url = host_ + "/auth.login";
    const HttpResponse response =
        http_.send("POST", url, "{}", "application/json",
                   {"Authorization: Basic " + base64(access_key_ + ":" + secret_key_)});
    const json data = checked("auth.login", url, response);
    if (!data.contains("token") || !data["token"].is_string())
      throw Error(fmt::format("ClearML auth.login at {}: the answer has no token", url));
    const std::string token = data["token"].get<std::string>();
    const json payload = jwt_payload(token);
    std::lock_guard<std::mutex> lock(mutex_);
    token_ = token;
    if (payload.contains("api_version") && payload["api_version"].is_string())
      server_api_version_ = payload["api_version"].get<std::string>();
  }

  /// Calls `<service>.<action>` with a JSON body; returns the answer's `data`.
  json call(const std::string& endpoint, const json& body) const {
    return send(endpoint, body.dump(), "application/json");
  }

  /// Sends scalar events (a JSON array of objects), one per line, to events.add_batch; throws when the server
  /// refuses any.
  void add_events(const json& events) const {
    std::string lines;
    for (const auto& e : events) lines += (lines.empty() ? "" : "\n") + e.dump();
    const json data = send("events.add_batch", lines, "application/json-lines");
    if (data.value("errors", 0) != 0)
      throw Error(fmt::format("ClearML events.add_batch at {}: {} of {} events refused: {}", host_,
                              data.value("errors", 0), events.size(),
                              data.value("errors_info", json::object()).dump()));
  }

 private:
  static std::string trimmed_host(std::string host) {
    while (!host.empty() && host.back() == '/') host.pop_back();
    return host;
  }

  static HttpOptions client_options() {
    HttpOptions o;
    o.headers = {"X-ClearML-Worker: " + host_name(),
                 fmt::format("X-ClearML-Client: torchfit-{}.{}.{}", TORCHFIT_VERSION_MAJOR,
                             TORCHFIT_VERSION_MINOR, TORCHFIT_VERSION_PATCH)};
    return o;
  }

  json send(const std::string& endpoint, const std::string& body, const std::string& content_type) const {
    const std::string url = host_ + "/" + endpoint;
    for (int attempt = 0;; ++attempt) {
      std::string token;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        token = token_;
      }
      const HttpResponse response =
          http_.send("POST", url, body, content_type, {"Authorization: Bearer " + token});
      if (response.status == 401 && attempt == 0) {  // the token expired or was revoked: log in again, once
        log_in();
        continue;
      }
      return checked(endpoint, url, response);
    }
  }

  // The answer's `data`, or an error with the server's result code and message.
  static json checked(const std::string& endpoint, const std::string& url, const HttpResponse& response) {
    const json answer = json::parse(response.body, nullptr, false);
    const json* meta = answer.is_object() && answer.contains("meta") && answer["meta"].is_object()
                           ? &answer["meta"]
                           : nullptr;
    if (response.status != 200 || meta == nullptr) {
      std::string detail = response.body.substr(0, 300);
      if (meta && meta->contains("result_msg") && (*meta)["result_msg"].is_string())
        detail = fmt::format("{} (subcode {})", (*meta)["result_msg"].get<std::string>(),
                             meta->value("result_subcode", 0));
      throw Error(fmt::format("ClearML {} at {}: HTTP {}{}: {}", endpoint, url, response.status,
                              http_auth_hint(response.status), detail));
    }
    return answer.contains("data") && answer["data"].is_object() ? answer["data"] : json::object();
  }

  std::string host_;
  std::string access_key_;
  std::string secret_key_;
  HttpClient http_;
  mutable std::mutex mutex_;  // guards the token and what it says, which a call on either thread may renew
  mutable std::string token_;
  mutable std::string server_api_version_;
};

}  // namespace torchfit::detail

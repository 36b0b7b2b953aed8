// SPDX-License-Identifier: MIT
// The part of SwanLab's HTTP API an experiment needs, as the swanlab SDK calls it (swanlab/sdk/internal/
// pkg/client, core_python/api/{project,experiment,upload}.py, transport/sender.py): log in with an API key,
// get or create the project, create the experiment, upload its config, declare metric columns, upload scalars,
// send heartbeats and set its final state.
#pragma once

#include <chrono>
#include <cmath>
#include <ctime>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// A UTC time as protobuf's Timestamp.ToJsonString() and the SDK's isoformat() + "Z" write it:
/// `2026-11-24T05:58:16.123Z` (milliseconds).
inline std::string swanlab_time(
    std::chrono::system_clock::time_point when = std::chrono::system_clock::now()) {
  const auto [stamp, micros] = utc_stamp(when);
  return fmt::format("{}.{:03d}Z", stamp, micros / 1000);
}

/// A scalar as the SDK uploads it: the number, or "nan" for NaN and infinities.
inline json swanlab_scalar(double value) { return std::isfinite(value) ? json(value) : json("nan"); }

/// Calls SwanLab's API under `<api host>/api/`, one attempt per call. The session cookie (`sid`) comes from
/// `POST login/api_key` with the key as the `authorization` header, and is renewed by logging in again when
/// it is within seven days of its expiry, as the SDK's client does. A failure that may pass throws
/// TransientError; any other throws torchfit::Error naming the call and SwanLab's message.
class SwanLabApi {
 public:
  SwanLabApi(std::string api_host, std::string api_key, double request_timeout_s)
      : base_(std::move(api_host) + "/api/"),
        api_key_(std::move(api_key)),
        login_http_(request_timeout_s, HttpOptions{}),
        http_(request_timeout_s, session_options()) {}

  HttpClient& http() { return http_; }

  /// Logs in (the first time, at once); returns the user name.
  std::string login() {
    std::lock_guard<std::mutex> lock(mutex_);
    refresh_locked();
    return username_;
  }

  /// The project `name` of `workspace` (the user's own when empty), created (private) when missing: its
  /// `cuid`, `name`, `path` and `group.username`.
  json project(const std::string& workspace, const std::string& name) {
    const std::string owner = workspace.empty() ? login() : workspace;
    call("POST", "projects/" + url_encode(owner), {{"name", name}, {"visibility", "PRIVATE"}});
    return call("GET", "project/" + url_encode(owner) + "/" + url_encode(name));
  }

  /// Creates an experiment named `name` in `owner`/`project`; returns it (`cuid`, `name`).
  json create_experiment(const std::string& owner, const std::string& project, const std::string& name,
                         const std::string& color) {
    return call("POST", fmt::format("project/{}/{}/experiment", url_encode(owner), url_encode(project)),
                {{"name", name}, {"createdAt", swanlab_time()}, {"colors", {color, color}}});
  }

  /// Sends one call: `method` to `endpoint` (below `/api/`) with `body` (none for GET).
  json call(const std::string& method, const std::string& endpoint, const json& body = nullptr) {
    const std::string url = base_ + endpoint;
    const HttpResponse response = http_.send(method, url, body.is_null() ? std::string() : body.dump());
    return check(response, method + " " + url);
  }

 private:
  static constexpr double renew_before_s = 7 * 24 * 3600;

  HttpOptions session_options() {
    HttpOptions options;
    options.dynamic_header = [this] {
      std::lock_guard<std::mutex> lock(mutex_);
      if (sid_.empty() || std::chrono::system_clock::now() >= renew_at_) refresh_locked();
      return "Cookie: sid=" + sid_;
    };
    return options;
  }

  void refresh_locked() {
    if (!sid_.empty() && std::chrono::system_clock::now() < renew_at_) return;
    const std::string url = base_ + "login/api_key";
    const HttpResponse response =
        login_http_.send("POST", url, std::string(), "application/json", {"authorization: " + api_key_});
    const json answer = check(response, "POST " + url);
    if (!answer.contains("sid") || !answer["sid"].is_string())
      throw Error(fmt::format("SwanLab login at {}: the answer has no session: {}", url,
                              answer.dump().substr(0, 300)));
    sid_ = answer["sid"].get<std::string>();
    username_ = answer.value("userInfo", json::object()).value("username", "");
    renew_at_ = std::chrono::system_clock::time_point::max();
    const std::string expires = answer.value("expiredAt", "");
    std::tm utc{};
    if (strptime(expires.c_str(), "%Y-%m-%dT%H:%M:%S", &utc) != nullptr)
      renew_at_ = std::chrono::system_clock::from_time_t(timegm(&utc)) -
                  std::chrono::seconds(static_cast<long>(renew_before_s));
  }

  // The answer's JSON (an object, `{}` when empty); an error status throws, with SwanLab's message.
  static json check(const HttpResponse& response, const std::string& request) {
    const json answer = json::parse(response.body.empty() ? "{}" : response.body, nullptr, false);
    if (response.status >= 200 && response.status < 300)
      return answer.is_discarded() ? json::object() : answer;
    std::string detail = response.body.substr(0, 300);
    if (answer.is_object() && answer.contains("message") && answer["message"].is_string())
      detail = answer["message"].get<std::string>();
    throw Error(fmt::format("SwanLab {} answered HTTP {}{}: {}", request, response.status,
                            http_auth_hint(response.status), detail));
  }

  std::string base_;
  std::string api_key_;
  std::mutex mutex_;
  std::string sid_;
  std::string username_;
  std::chrono::system_clock::time_point renew_at_{};
  HttpClient login_http_;
  HttpClient http_;  // last: its header function reads the members above
};

}  // namespace torchfit::detail

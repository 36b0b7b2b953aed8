// SPDX-License-Identifier: MIT
// A mock HTTP server on 127.0.0.1 for the tests of trackers that talk to a server (MLflow, W&B, Comet,
// ClearML), able to fail for a while as a real one does in an outage; and a stateful MLflow tracking server to
// answer through it (Azure Machine Learning, DagsHub).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "torchfit/json.hpp"

namespace torchfit::test {

struct HttpRequest {
  std::string method, target, headers, body;
};

// Serves HTTP/1.1 on 127.0.0.1, one connection at a time, answering with `handler` (status 0: never answer,
// until the client gives up). Records every request it hands to the handler. Stops when destroyed.
class MockServer {
 public:
  using Handler = std::function<std::pair<int, std::string>(const HttpRequest&)>;

  /// How the server fails during an outage.
  enum class Outage {
    unavailable,  // answers 503 to every request
    drop,         // closes every connection without an answer
    hang,         // never answers, until the client gives up
  };

  explicit MockServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~MockServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  MockServer(const MockServer&) = delete;
  MockServer& operator=(const MockServer&) = delete;

  std::string uri() const { return "http://127.0.0.1:" + std::to_string(port_); }

  /// From now on and for `duration`, fails as `how` says every request whose target starts with
  /// `target_prefix`; the handler does not see them. Then answers as before.
  void fail_for(std::chrono::milliseconds duration, Outage how, std::string target_prefix = "/") {
    std::lock_guard<std::mutex> lock(mutex_);
    outage_end_ = std::chrono::steady_clock::now() + duration;
    outage_ = how;
    outage_prefix_ = std::move(target_prefix);
  }
  /// Ends an outage now.
  void recover() { fail_for(std::chrono::milliseconds(0), Outage::unavailable); }
  /// The requests failed by an outage.
  int failed_requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return failed_requests_;
  }
  std::vector<HttpRequest> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  static constexpr int max_requests = 100000;

  bool wait_readable(int fd) const {
    for (int waited = 0; waited < 10000 && !stop_; waited += 20) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) return true;
    }
    return false;
  }

  void serve() {
    for (int served = 0; served < max_requests && !stop_;) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int client = ::accept(fd_, nullptr, nullptr);
      if (client < 0) continue;
      handle(client);
      ::close(client);
      ++served;
    }
  }

  void handle(int client) {
    std::string data;
    char buffer[65536];
    std::size_t header_end = std::string::npos;
    std::size_t content_length = 0;
    while (!stop_) {
      if (header_end != std::string::npos && data.size() >= header_end + 4 + content_length) break;
      if (!wait_readable(client)) return;
      const ssize_t n = ::recv(client, buffer, sizeof buffer, 0);
      if (n <= 0) return;
      data.append(buffer, static_cast<std::size_t>(n));
      if (header_end == std::string::npos && (header_end = data.find("\r\n\r\n")) != std::string::npos) {
        const auto pos = data.find("Content-Length: ");
        if (pos != std::string::npos && pos < header_end) content_length = std::stoul(data.substr(pos + 16));
      }
    }
    HttpRequest request;
    const auto first_space = data.find(' ');
    request.method = data.substr(0, first_space);
    request.target = data.substr(first_space + 1, data.find(' ', first_space + 1) - first_space - 1);
    request.headers = data.substr(0, header_end + 2);
    request.body = data.substr(header_end + 4, content_length);
    std::optional<Outage> outage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (std::chrono::steady_clock::now() < outage_end_ && request.target.rfind(outage_prefix_, 0) == 0) {
        outage = outage_;
        ++failed_requests_;
      } else {
        requests_.push_back(request);
      }
    }
    if (outage == Outage::drop) return;
    const auto [status, body] = !outage                         ? handler_(request)
                                : outage == Outage::unavailable ? std::pair<int, std::string>{503, "{}"}
                                                                : std::pair<int, std::string>{0, ""};
    if (status == 0) {  // hang: read until the client closes the connection
      while (wait_readable(client) && ::recv(client, buffer, sizeof buffer, 0) > 0) {
      }
      return;
    }
    const std::string response =
        "HTTP/1.1 " + std::to_string(status) +
        " X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    ::send(client, response.data(), response.size(), MSG_NOSIGNAL);
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<HttpRequest> requests_;
  std::chrono::steady_clock::time_point outage_end_{};
  Outage outage_ = Outage::unavailable;
  std::string outage_prefix_;
  int failed_requests_ = 0;
};

/// A URL query value or form field decoded (`%XX` escapes, `+` for a space).
inline std::string url_decode(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += text[i] == '+' ? ' ' : text[i];
    }
  }
  return out;
}

/// An MLflow tracking server's REST API (`<prefix>/api/2.0/mlflow/...`) that keeps experiments and runs as
/// MLflow does: the experiment `Default` (id "0") exists from the start, names are unique, runs belong to an
/// existing experiment, a parameter cannot change its value, metrics are kept per run in arrival order, and a
/// call about an unknown experiment or run is refused with MLflow's error codes. `authorized(headers)` decides
/// whether a request's credentials are accepted (HTTP 401 otherwise).
class FakeMlflow {
 public:
  struct Run {
    std::string experiment_id;
    std::string name;
    std::string status = "RUNNING";
    std::map<std::string, std::string> tags;
    std::map<std::string, std::string> params;
    std::vector<json> metrics;  // {"key", "value", "step"}, in arrival order
    std::optional<std::int64_t> end_time;
  };

  explicit FakeMlflow(std::string prefix = "") : prefix_(std::move(prefix) + "/api/2.0/mlflow/") {}

  std::function<bool(const std::string& headers)> authorized = [](const std::string&) { return true; };

  /// Whether `r` is addressed to this server's API.
  bool owns(const HttpRequest& r) const { return r.target.rfind(prefix_, 0) == 0; }

  std::pair<int, std::string> handle(const HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!authorized(r.headers))
      return {401, R"({"error_code":"UNAUTHENTICATED","message":"the credentials were refused"})"};
    if (!owns(r)) return error(404, "ENDPOINT_NOT_FOUND", "no such endpoint");
    const std::string endpoint = r.target.substr(prefix_.size());
    const std::string by_name = "experiments/get-by-name?experiment_name=";
    if (r.method == "GET" && endpoint.rfind(by_name, 0) == 0) {
      const std::string name = url_decode(endpoint.substr(by_name.size()));
      for (const auto& [id, n] : experiments_)
        if (n == name) return {200, json{{"experiment", {{"experiment_id", id}, {"name", n}}}}.dump()};
      return error(404, "RESOURCE_DOES_NOT_EXIST", "Could not find experiment with name " + name);
    }
    if (r.method != "POST") return error(404, "ENDPOINT_NOT_FOUND", "no such endpoint");
    const json body = json::parse(r.body);
    if (endpoint == "experiments/create") {
      for (const auto& [id, n] : experiments_)
        if (n == body["name"]) return error(400, "RESOURCE_ALREADY_EXISTS", "Experiment already exists");
      const std::string id = std::to_string(100 + experiments_.size());
      experiments_[id] = body["name"];
      return {200, json{{"experiment_id", id}}.dump()};
    }
    if (endpoint == "runs/create") {
      const std::string experiment = body.value("experiment_id", "");
      if (!experiments_.count(experiment))
        return error(404, "RESOURCE_DOES_NOT_EXIST", "No Experiment with id=" + experiment);
      const std::string id = "run" + std::to_string(runs_.size() + 1);
      Run& run = runs_[id];
      run.experiment_id = experiment;
      run.name = body.value("run_name", "");
      for (const json& t : body.value("tags", json::array())) run.tags[t["key"]] = t["value"];
      return {200, json{{"run", {{"info", {{"run_id", id}, {"status", "RUNNING"}}}}}}.dump()};
    }
    const auto run = runs_.find(body.value("run_id", ""));
    if (run == runs_.end())
      return error(404, "RESOURCE_DOES_NOT_EXIST", "Run '" + body.value("run_id", "") + "' not found");
    if (endpoint == "runs/update") {
      run->second.status = body.value("status", run->second.status);
      if (body.contains("end_time")) run->second.end_time = body["end_time"].get<std::int64_t>();
      return {200, json{{"run_info", {{"run_id", run->first}, {"status", run->second.status}}}}.dump()};
    }
    if (endpoint == "runs/log-batch") {
      for (const json& p : body["params"]) {
        const auto old = run->second.params.find(p["key"]);
        if (old != run->second.params.end() && old->second != p["value"])
          return error(400, "INVALID_PARAMETER_VALUE", "Changing param values is not allowed");
      }
      for (const json& p : body["params"]) run->second.params[p["key"]] = p["value"];
      for (const json& t : body["tags"]) run->second.tags[t["key"]] = t["value"];
      for (const json& m : body["metrics"])
        run->second.metrics.push_back({{"key", m["key"]}, {"value", m["value"]}, {"step", m["step"]}});
      return {200, "{}"};
    }
    return error(404, "ENDPOINT_NOT_FOUND", "no such endpoint");
  }

  /// A run started earlier (by an Azure Machine Learning job, another program).
  void add_run(const std::string& id, const std::string& experiment_id = "0") {
    std::lock_guard<std::mutex> lock(mutex_);
    runs_[id].experiment_id = experiment_id;
  }
  std::map<std::string, Run> runs() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return runs_;
  }
  std::map<std::string, std::string> experiments() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return experiments_;
  }

 private:
  static std::pair<int, std::string> error(int status, const std::string& code, const std::string& message) {
    return {status, json{{"error_code", code}, {"message", message}}.dump()};
  }

  std::string prefix_;
  mutable std::mutex mutex_;
  std::map<std::string, std::string> experiments_{{"0", "Default"}};
  std::map<std::string, Run> runs_;
};

}  // namespace torchfit::test

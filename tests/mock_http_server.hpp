// SPDX-License-Identifier: MIT
// A mock HTTP server on 127.0.0.1 for the tests of trackers that talk to a server (MLflow, W&B, Comet,
// ClearML), able to fail for a while as a real one does in an outage.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

}  // namespace torchfit::test

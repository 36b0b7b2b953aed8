// SPDX-License-Identifier: MIT
// A mock HTTP server on 127.0.0.1 for the tests of trackers that talk to a server (MLflow, W&B).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace torchfit::test {

struct HttpRequest {
  std::string method, target, headers, body;
};

// Serves HTTP/1.1 on 127.0.0.1, one connection at a time, answering with `handler` (status 0: never answer,
// until the client gives up). Records every request. Stops when destroyed.
class MockServer {
 public:
  using Handler = std::function<std::pair<int, std::string>(const HttpRequest&)>;

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
  std::vector<HttpRequest> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  static constexpr int max_requests = 1000;

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
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_.push_back(request);
    }
    const auto [status, body] = handler_(request);
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
};

}  // namespace torchfit::test

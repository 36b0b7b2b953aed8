// SPDX-License-Identifier: MIT
// A small blocking HTTP client over libcurl, with retries and a bound on the total time a request may take.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <curl/curl.h>
#include <fmt/format.h>

#include "torchfit/error.hpp"

namespace torchfit::detail {}  // namespace torchfit::detail

namespace torchfit {

/// How an HTTP tracker retries a request that failed for a reason that may pass (no answer: refused, reset or
/// timed out; or a retryable HTTP status): retry n (n = 0, 1, ...) comes after min(initial_backoff_s * 2^n,
/// max_backoff_s) seconds, and each attempt is cut off after request_timeout_s.
struct RetryPolicy {
  double initial_backoff_s = 1;
  double max_backoff_s = 60;
  double request_timeout_s = 30;
  /// The most retries of one request; unset: no limit.
  std::optional<int> max_retries;
  /// A request still failing this many seconds after its first attempt fails; unset: no limit.
  std::optional<double> total_timeout_s;

  /// The wait before retry `n` (0: the first retry), in seconds.
  double backoff_s(int n) const { return std::min(max_backoff_s, initial_backoff_s * std::pow(2.0, n)); }

  /// Whether a request tried `attempts` times may be tried again `elapsed_s` seconds after its first attempt.
  bool allows_retry(int attempts, double elapsed_s) const {
    return (!max_retries || attempts <= *max_retries) && (!total_timeout_s || elapsed_s < *total_timeout_s);
  }
};

}  // namespace torchfit

namespace torchfit::detail {

/// Transport options: extra headers (authentication) and TLS verification.
struct HttpOptions {
  std::vector<std::string> headers;  // "Name: value"
  bool insecure_tls = false;
  std::string ca_cert_path;
  std::string client_cert_path;
};

/// A completed exchange: the HTTP status and the body.
struct HttpResponse {
  long status = 0;
  std::string body;
};

/// Whether a response with this status is worth trying again (urllib3's list, as the MLflow client uses).
inline bool http_status_is_retryable(long status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

/// What an error message adds for a status that means the server refused the credentials.
inline const char* http_auth_hint(long status) {
  return status == 401 || status == 403 ? " (check the API key)" : "";
}

/// The scheme and `host[:port]` of a URL: `https://www.comet.com/clientlib/` -> `https://www.comet.com`.
inline std::string url_root(const std::string& url) {
  const auto scheme_end = url.find("://");
  return url.substr(0, url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3));
}

/// The `host[:port]` part of a URL (a netrc machine name).
inline std::string url_authority(const std::string& url) {
  const auto scheme_end = url.find("://");
  return url_root(url).substr(scheme_end == std::string::npos ? 0 : scheme_end + 3);
}

/// Percent-encodes `text` for a URL query value.
inline std::string url_encode(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

/// Standard base64 (RFC 4648, with padding), for HTTP Basic authentication.
inline std::string base64(std::string_view bytes) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t v = 0;
    for (std::size_t j = 0; j < 3; ++j)
      v = (v << 8) | (j < n ? static_cast<unsigned char>(bytes[i + j]) : 0u);
    for (std::size_t j = 0; j < 4; ++j) out += j <= n ? digits[(v >> (18 - 6 * j)) & 63] : '=';
  }
  return out;
}

/// Blocking HTTP requests with the retry policy above. Each failure that outlasts the policy throws
/// torchfit::Error naming the method, the URL, the attempts made and the last cause.
class HttpClient {
 public:
  HttpClient(RetryPolicy policy, HttpOptions options) : policy_(policy), options_(std::move(options)) {
    static std::once_flag init;
    std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }

  /// Sends `method` (GET, POST, PUT) to `url`; a non-empty `body` goes with `content_type`. Answers that are
  /// not retried (2xx, most 4xx) are returned as they are, for the caller to interpret.
  HttpResponse request(const std::string& method, const std::string& url, const std::string& body = {},
                       const std::string& content_type = "application/json") const {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto seconds_since_start = [&] {
      return std::chrono::duration<double>(Clock::now() - start).count();
    };
    std::string last_error;
    int attempts = 0;
    for (;;) {
      ++attempts;
      double timeout = policy_.request_timeout_s;
      if (policy_.total_timeout_s)
        timeout = std::min(timeout, *policy_.total_timeout_s - seconds_since_start());
      HttpResponse response;
      const std::string error = perform(method, url, body, content_type, std::max(0.001, timeout), response);
      if (error.empty() && !http_status_is_retryable(response.status)) return response;
      last_error =
          error.empty() ? fmt::format("HTTP {}: {}", response.status, response.body.substr(0, 200)) : error;
      const double backoff = policy_.backoff_s(attempts - 1);
      if (!policy_.allows_retry(attempts, seconds_since_start() + backoff)) break;
      std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
    }
    throw Error(fmt::format("{} {} failed after {} attempt{} in {:.1f} s: {}", method, url, attempts,
                            attempts == 1 ? "" : "s", seconds_since_start(), last_error));
  }

 private:
  struct CurlDeleter {
    void operator()(CURL* c) const { curl_easy_cleanup(c); }
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
  };

  static size_t collect(char* data, size_t size, size_t count, void* out) {
    static_cast<std::string*>(out)->append(data, size * count);
    return size * count;
  }

  // One attempt; returns the transport error text, or "" when an HTTP answer arrived.
  std::string perform(const std::string& method, const std::string& url, const std::string& body,
                      const std::string& content_type, double timeout_s, HttpResponse& response) const {
    std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
    if (!curl) return "curl_easy_init failed";
    curl_slist* list = nullptr;
    for (const auto& h : options_.headers) list = curl_slist_append(list, h.c_str());
    if (!body.empty()) list = curl_slist_append(list, ("Content-Type: " + content_type).c_str());
    list = curl_slist_append(list, "Expect:");  // no 100-continue round trip for larger bodies
    std::unique_ptr<curl_slist, CurlDeleter> headers(list);
    CURL* c = curl.get();
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (method != "GET") {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(std::ceil(timeout_s * 1000)));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &HttpClient::collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body);
    if (options_.insecure_tls) {
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (!options_.ca_cert_path.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_cert_path.c_str());
    if (!options_.client_cert_path.empty())
      curl_easy_setopt(c, CURLOPT_SSLCERT, options_.client_cert_path.c_str());
    const CURLcode code = curl_easy_perform(c);
    if (code != CURLE_OK) return curl_easy_strerror(code);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return {};
  }

  RetryPolicy policy_;
  HttpOptions options_;
};

}  // namespace torchfit::detail

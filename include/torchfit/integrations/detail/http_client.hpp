// SPDX-License-Identifier: MIT
// A small blocking HTTP client over libcurl: one attempt per call, failures that may pass told apart from the
// others, and a way to cut off an exchange the owner no longer waits for.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <curl/curl.h>
#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/retry.hpp"

namespace torchfit::detail {

/// Transport options: extra headers (authentication) and TLS verification.
struct HttpOptions {
  std::vector<std::string> headers;  // "Name: value"
  /// When set, called before each attempt for one more header ("Authorization: Bearer ..." of a token that
  /// expires); it may be called from several threads at once. What it throws ends the attempt: a
  /// TransientError is retried as a failed request is.
  std::function<std::string()> dynamic_header;
  /// When set, requests are signed with AWS Signature Version 4 (libcurl's CURLOPT_AWS_SIGV4, e.g.
  /// "aws:amz:us-east-1:s3"), with `aws_credentials` ("<access key id>:<secret access key>").
  std::string aws_sigv4;
  std::string aws_credentials;
  bool insecure_tls = false;
  std::string ca_cert_path;
  std::string client_cert_path;
};

/// A completed exchange: the HTTP status and the body.
struct HttpResponse {
  long status = 0;
  std::string body;
};

/// Whether an answer with this status may succeed when sent again: 408 (timeout), 409 (conflict), 429 (too
/// many requests) and every 5xx; other 4xx answers mean the request itself is refused.
inline bool http_status_is_transient(long status) {
  return status == 408 || status == 409 || status == 429 || status >= 500;
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

/// Blocking HTTP exchanges over libcurl, one attempt per send(), each cut off after the request timeout.
/// Retrying is the caller's business (with_retries, Outbox), so that a failed row is retried whole.
class HttpClient {
 public:
  HttpClient(double request_timeout_s, HttpOptions options)
      : request_timeout_s_(request_timeout_s), options_(std::move(options)) {
    static std::once_flag init;
    std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  /// Sends `method` (GET, POST, PUT) to `url` once; a non-empty `body` goes with `content_type`, `headers`
  /// ("Name: value") with the client's own. No answer, or an answer whose status is transient, throws
  /// TransientError; any other answer is returned for the caller to interpret.
  HttpResponse send(const std::string& method, const std::string& url, const std::string& body = {},
                    const std::string& content_type = "application/json",
                    const std::vector<std::string>& headers = {}) const {
    HttpResponse response;
    const std::string error = perform(method, url, body, content_type, headers, response);
    if (!error.empty()) throw TransientError(method + " " + url, error);
    if (http_status_is_transient(response.status))
      throw TransientError(method + " " + url,
                           fmt::format("HTTP {}: {}", response.status, response.body.substr(0, 200)));
    return response;
  }

  /// Cuts off the exchange in progress and fails every later one as transient: the owner has stopped waiting
  /// for the server (a hung server must not hold up the end of a run).
  void interrupt() { interrupted_ = true; }

 private:
  struct CurlDeleter {
    void operator()(CURL* c) const { curl_easy_cleanup(c); }
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
  };

  static size_t collect(char* data, size_t size, size_t count, void* out) {
    static_cast<std::string*>(out)->append(data, size * count);
    return size * count;
  }

  static int abort_if_interrupted(void* client, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    return static_cast<const HttpClient*>(client)->interrupted_ ? 1 : 0;
  }

  // One attempt; returns the transport error text, or "" when an HTTP answer arrived.
  std::string perform(const std::string& method, const std::string& url, const std::string& body,
                      const std::string& content_type, const std::vector<std::string>& extra_headers,
                      HttpResponse& response) const {
    if (interrupted_) return "interrupted: the tracker stopped waiting for the server";
    const std::string dynamic = options_.dynamic_header ? options_.dynamic_header() : std::string();
    std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
    if (!curl) return "curl_easy_init failed";
    curl_slist* list = nullptr;
    for (const auto& h : options_.headers) list = curl_slist_append(list, h.c_str());
    for (const auto& h : extra_headers) list = curl_slist_append(list, h.c_str());
    if (!dynamic.empty()) list = curl_slist_append(list, dynamic.c_str());
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
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(std::ceil(request_timeout_s_ * 1000)));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);  // libcurl calls the progress function about once a second
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, &HttpClient::abort_if_interrupted);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, this);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &HttpClient::collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body);
    if (options_.insecure_tls) {
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (!options_.ca_cert_path.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_cert_path.c_str());
    if (!options_.aws_sigv4.empty()) {
      curl_easy_setopt(c, CURLOPT_AWS_SIGV4, options_.aws_sigv4.c_str());
      curl_easy_setopt(c, CURLOPT_USERPWD, options_.aws_credentials.c_str());
    }
    if (!options_.client_cert_path.empty())
      curl_easy_setopt(c, CURLOPT_SSLCERT, options_.client_cert_path.c_str());
    const CURLcode code = curl_easy_perform(c);
    if (code != CURLE_OK) return curl_easy_strerror(code);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
    return {};
  }

  double request_timeout_s_;
  HttpOptions options_;
  std::atomic<bool> interrupted_{false};
};

}  // namespace torchfit::detail

// SPDX-License-Identifier: MIT
// What the Flyte tracker needs from a Flyte task's environment: whether this process runs in one, and the
// upload of files to the task's prefixes (S3 or S3-compatible blob stores, as flytekit's S3 settings name them,
// or a local directory).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/mlflow_store.hpp"
#include "torchfit/integrations/detail/retry.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"

namespace torchfit::detail {

/// The id of the Flyte execution this process belongs to: FLYTE_INTERNAL_EXECUTION_ID (or the short _F_NM),
/// which Flyte sets in every task's container and flytekit's entrypoint reads; nothing outside a Flyte task.
inline std::optional<std::string> flyte_execution_id() {
  if (auto id = env_string("FLYTE_INTERNAL_EXECUTION_ID")) return id;
  return env_string("_F_NM");
}

/// Writes files under a Flyte prefix: `s3://<bucket>/<key>` through the S3 API (path-style requests to
/// FLYTE_AWS_ENDPOINT, else https://s3.<region>.amazonaws.com, the region AWS_REGION or AWS_DEFAULT_REGION,
/// else us-east-1; signed with AWS Signature Version 4 from FLYTE_AWS_ACCESS_KEY_ID and
/// FLYTE_AWS_SECRET_ACCESS_KEY, else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with AWS_SESSION_TOKEN when
/// set), or `file://<path>` and plain paths as a local directory. Other schemes are an ArgumentError. Each
/// upload is retried as `policy` allows, for at most the flush timeout.
class FlyteStorage {
 public:
  FlyteStorage(const RetryPolicy& policy, const std::optional<double>& flush_timeout)
      : retrying_(policy, flush_timeout), http_(policy.request_timeout_s, s3_options()) {}

  /// Writes `bytes` to `<prefix>/<relative>`.
  void put(const std::string& prefix, const std::string& relative, const std::string& bytes,
           const std::string& content_type) {
    if (prefix.rfind("s3://", 0) != 0) {
      const auto path = local_path(prefix) / relative;
      std::error_code ec;
      std::filesystem::create_directories(path.parent_path(), ec);
      replace_file(path, bytes);
      return;
    }
    const std::string location = prefix.substr(5);
    const auto slash = location.find('/');
    const std::string bucket = location.substr(0, slash);
    std::string key = slash == std::string::npos ? std::string() : location.substr(slash + 1);
    while (!key.empty() && key.back() == '/') key.pop_back();
    key += (key.empty() ? "" : "/") + relative;
    std::string path;
    for (std::size_t start = 0; start <= key.size();) {
      const auto end = std::min(key.find('/', start), key.size());
      path += "/" + url_encode(key.substr(start, end - start));
      start = end + 1;
    }
    const std::string url = endpoint() + "/" + url_encode(bucket) + path;
    std::vector<std::string> headers;
    if (const auto token = env_string("AWS_SESSION_TOKEN"))
      headers.push_back("x-amz-security-token: " + *token);
    retrying_([&] {
      const HttpResponse response = http_.send("PUT", url, bytes, content_type, headers);
      if (response.status < 200 || response.status >= 300)
        throw Error(fmt::format("PUT {} answered HTTP {}{}: {}", url, response.status,
                                http_auth_hint(response.status), response.body.substr(0, 300)));
    });
  }

  /// Writes every regular file under `dir` to `<prefix>/<path under dir>`, as flytekit's
  /// SyncCheckpoint.save(dir) uploads a directory.
  void put_directory(const std::filesystem::path& dir, const std::string& prefix) {
    if (prefix.rfind("s3://", 0) != 0) return copy_tree(dir, local_path(prefix));
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
      if (!entry.is_regular_file()) continue;
      const auto bytes = read_file_if_exists(entry.path());
      if (!bytes) throw Error(fmt::format("Flyte: cannot read {}", entry.path().string()));
      put(prefix, std::filesystem::relative(entry.path(), dir).generic_string(), *bytes,
          "application/octet-stream");
    }
  }

 private:
  static std::filesystem::path local_path(const std::string& prefix) {
    if (prefix.rfind("file://", 0) == 0) return prefix.substr(7);
    if (prefix.find("://") != std::string::npos)
      throw ArgumentError(
          fmt::format("Flyte prefix \"{}\": only s3:// (S3 and S3-compatible stores), file:// and local "
                      "paths are supported",
                      prefix));
    return prefix;
  }

  static std::string region() {
    return env_string("AWS_REGION").value_or(env_string("AWS_DEFAULT_REGION").value_or("us-east-1"));
  }

  static std::string endpoint() {
    std::string url =
        env_string("FLYTE_AWS_ENDPOINT").value_or(fmt::format("https://s3.{}.amazonaws.com", region()));
    while (!url.empty() && url.back() == '/') url.pop_back();
    return url;
  }

  static HttpOptions s3_options() {
    HttpOptions options;
    const auto id = env_string("FLYTE_AWS_ACCESS_KEY_ID");
    const auto secret = env_string("FLYTE_AWS_SECRET_ACCESS_KEY");
    const auto aws_id = env_string("AWS_ACCESS_KEY_ID");
    const auto aws_secret = env_string("AWS_SECRET_ACCESS_KEY");
    if (id && secret)
      options.aws_credentials = *id + ":" + *secret;
    else if (aws_id && aws_secret)
      options.aws_credentials = *aws_id + ":" + *aws_secret;
    if (!options.aws_credentials.empty()) options.aws_sigv4 = "aws:amz:" + region() + ":s3";
    return options;
  }

  RetryingCalls retrying_;
  HttpClient http_;
};

}  // namespace torchfit::detail

// SPDX-License-Identifier: MIT
// The part of DagsHub's API the DagsHub tracker needs besides MLflow's: the repository of a DagsHub MLflow URI,
// and the upload of a directory into a branch, in the commits DagsHub's Python client makes
// (dagshub/upload/wrapper.py: Repo.upload_files, DataSet.add_dir).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/http_client.hpp"
#include "torchfit/integrations/detail/log_files.hpp"
#include "torchfit/integrations/detail/retry.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// The owner and name of the repository of a DagsHub MLflow tracking URI (`https://dagshub.com/<owner>/
/// <repo>.mlflow`): its last two path parts, the name up to its first dot, as HF's DagsHubCallback takes them.
inline std::pair<std::string, std::string> dagshub_repository(const std::string& tracking_uri) {
  std::string path = tracking_uri.substr(0, tracking_uri.find_first_of("?#"));
  while (!path.empty() && path.back() == '/') path.pop_back();
  const auto last = path.rfind('/');
  const auto before = last == std::string::npos || last == 0 ? std::string::npos : path.rfind('/', last - 1);
  const auto scheme = path.find("://");
  if (before == std::string::npos || (scheme != std::string::npos && before < scheme + 3))
    throw ArgumentError(fmt::format(
        "MLFLOW_TRACKING_URI \"{}\" is not a DagsHub repository's MLflow URI (https://dagshub.com/<owner>/"
        "<repo>.mlflow)",
        tracking_uri));
  const std::string name = path.substr(last + 1);
  return {path.substr(before + 1, last - before - 1), name.substr(0, name.find('.'))};
}

/// Uploads to a DagsHub repository through `<host>/api/v1/repos/<owner>/<repo>/`, as DagsHub's client does:
/// a directory goes folder by folder, in commits of at most 100 files or 100 MiB (the last file may pass it),
/// each a multipart PUT to `content/<branch>/<directory>`; a branch that does not exist yet is split off the
/// default branch by the first commit. One attempt per request (the caller retries a TransientError); any
/// other failure throws torchfit::Error with DagsHub's message.
class DagsHubRepo {
 public:
  DagsHubRepo(std::string host, std::string owner, std::string name, std::string branch, HttpOptions options,
              double request_timeout_s)
      : owner_(std::move(owner)),
        name_(std::move(name)),
        branch_(std::move(branch)),
        api_(std::move(host) + "/api/v1/repos/" + url_encode(owner_) + "/" + url_encode(name_)),
        http_(request_timeout_s, std::move(options)) {}

  HttpClient& http() { return http_; }

  /// Every regular file under `local_dir` into `directory` of the branch (`<directory>/<path under
  /// local_dir>`), DVC-versioned, the commits named `message`; `retry(call)` makes each request.
  template <typename Retry>
  void upload_dir(const std::filesystem::path& local_dir, const std::string& directory,
                  const std::string& message, Retry retry) {
    std::vector<std::filesystem::path> folders{local_dir};
    for (const auto& entry : std::filesystem::recursive_directory_iterator(local_dir))
      if (entry.is_directory()) folders.push_back(entry.path());
    std::sort(folders.begin() + 1, folders.end());
    for (const auto& folder : folders) {
      std::vector<std::filesystem::path> batch;
      std::uintmax_t bytes = 0;
      for (const auto& file : files_in(folder)) {
        batch.push_back(file);
        bytes += std::filesystem::file_size(file);
        if (batch.size() >= max_files_per_commit || bytes >= max_bytes_per_commit) {
          retry([&] { commit(local_dir, batch, directory, message); });
          batch.clear();
          bytes = 0;
        }
      }
      if (!batch.empty()) retry([&] { commit(local_dir, batch, directory, message); });
    }
  }

 private:
  static constexpr std::size_t max_files_per_commit = 100;
  static constexpr std::uintmax_t max_bytes_per_commit = std::uintmax_t{100} << 20;

  static std::vector<std::filesystem::path> files_in(const std::filesystem::path& folder) {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(folder))
      if (entry.is_regular_file()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    return files;
  }

  // One commit of `files` (paths under `root`) into `directory`.
  void commit(const std::filesystem::path& root, const std::vector<std::filesystem::path>& files,
              const std::string& directory, const std::string& message) {
    std::vector<std::pair<std::string, std::string>> fields{
        {"commit_choice", "direct"},
        {"commit_summary", message.substr(0, 100)},
        {"versioning", "dvc"},
        {"last_commit", ""},
        {"is_dvc_dir", directory.empty() ? "false" : "true"}};
    std::string branch = branch_;
    if (!branch_exists()) {  // split off the default branch by this commit
      fields[0].second = "commit-to-new-branch";
      fields.push_back({"new_branch_name", branch_});
      branch = default_branch();
    }
    const std::string boundary = random_hex(32);
    std::string body;
    for (const auto& [name, value] : fields)
      body += fmt::format("--{}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{}\r\n", boundary, name,
                          value);
    for (const auto& file : files) {
      const auto bytes = read_file_if_exists(file);
      if (!bytes) throw Error(fmt::format("DagsHub upload: cannot read {}", file.string()));
      body += fmt::format(
          "--{}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{}\"\r\nContent-Type: "
          "application/octet-stream\r\n\r\n",
          boundary, std::filesystem::relative(file, root).generic_string());
      body += *bytes + "\r\n";
    }
    body += "--" + boundary + "--\r\n";
    const std::string url = fmt::format("{}/content/{}/{}", api_, url_encode(branch), url_encode(directory));
    const HttpResponse response = http_.send("PUT", url, body, "multipart/form-data; boundary=" + boundary);
    if (response.status < 200 || response.status >= 300) throw error("PUT", url, response);
  }

  bool branch_exists() const {
    const std::string url = api_ + "/branches/" + url_encode(branch_);
    const HttpResponse response = http_.send("GET", url);
    if (response.status == 404) return false;
    if (response.status != 200) throw error("GET", url, response);
    return true;
  }

  std::string default_branch() const {
    const HttpResponse response = http_.send("GET", api_);
    const json answer = json::parse(response.body, nullptr, false);
    if (response.status != 200 || !answer.is_object() || !answer.contains("default_branch"))
      throw error("GET", api_, response);
    return answer["default_branch"].get<std::string>();
  }

  // DagsHub's error: `{"error", "details"}` or `{"message"}` (dagshub/upload/errors.py), else the body.
  Error error(const std::string& method, const std::string& url, const HttpResponse& response) const {
    const json answer = json::parse(response.body, nullptr, false);
    std::string detail = response.body.substr(0, 300);
    if (answer.is_object() && answer.value("error", json()).is_string() &&
        answer.value("details", json()).is_string())
      detail =
          fmt::format("{}: {}", answer["error"].get<std::string>(), answer["details"].get<std::string>());
    else if (answer.is_object() && answer.contains("message") && answer["message"].is_string())
      detail = answer["message"].get<std::string>();
    return Error(fmt::format("DagsHub {}/{}: {} {} answered HTTP {}{}: {}", owner_, name_, method, url,
                             response.status, http_auth_hint(response.status), detail));
  }

  std::string owner_;
  std::string name_;
  std::string branch_;
  std::string api_;
  HttpClient http_;
};

}  // namespace torchfit::detail

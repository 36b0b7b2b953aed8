// SPDX-License-Identifier: MIT
// Helpers shared by the tests.
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "torchfit/log.hpp"

namespace torchfit::test {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

inline std::filesystem::path data_path(const std::string& name) {
  return std::filesystem::path(TORCHFIT_TEST_DATA_DIR) / name;
}

/// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("torchfit-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// Captures torchfit's log messages (warnings, info) for the lifetime of the object.
class CaptureLog {
 public:
  explicit CaptureLog(log::Level level = log::Level::warning)
      : previous_stream_(log::set_stream(&out_)), previous_level_(log::level()) {
    log::set_level(level);
  }
  ~CaptureLog() {
    log::set_stream(previous_stream_);
    log::set_level(previous_level_);
  }
  CaptureLog(const CaptureLog&) = delete;
  CaptureLog& operator=(const CaptureLog&) = delete;
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::ostream* previous_stream_;
  log::Level previous_level_;
};

}  // namespace torchfit::test

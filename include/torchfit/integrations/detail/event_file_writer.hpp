// SPDX-License-Identifier: MIT
// A TensorBoard event file: tensorboard's file name, the file_version header event, TFRecord-framed events.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include "torchfit/detail/system.hpp"
#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/tensorboard_event.hpp"
#include "torchfit/integrations/detail/tfrecord.hpp"

namespace torchfit::detail {

/// Seconds since the Unix epoch, with the fraction (TensorBoard's wall_time).
inline double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

/// One TensorBoard event file, `events.out.tfevents.<unix time %010d>.<host>.<pid>.<n>` (the name
/// tensorboard's EventFileWriter gives, `n` counting the files this process opened). Starts with the
/// file_version event. Records are buffered until flush(); every write error throws torchfit::Error naming
/// the file.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec)
      throw Error(
          fmt::format("cannot create the TensorBoard log directory {}: {}", dir.string(), ec.message()));
    static std::atomic<int> files_opened{0};
    const double now = unix_time_now();
    path_ = dir / fmt::format("events.out.tfevents.{:010d}.{}.{}.{}", static_cast<std::int64_t>(now),
                              host_name(), ::getpid(), files_opened++);
    file_.reset(std::fopen(path_.c_str(), "wb"));
    if (!file_) fail("cannot create");
    write(tensorboard::file_version_event(now));
    flush();
  }

  /// Appends one serialized Event as a TFRecord.
  void write(std::string_view event) {
    const std::string record = tfrecord(event);
    if (std::fwrite(record.data(), 1, record.size(), file_.get()) != record.size()) fail("cannot write");
  }

  /// Hands everything written so far to the operating system (no fsync: a running TensorBoard sees it).
  void flush() {
    if (std::fflush(file_.get()) != 0) fail("cannot write");
  }

  /// Flushes and closes the file.
  void close() {
    flush();
    if (std::fclose(file_.release()) != 0) fail("cannot close");
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw Error(
        fmt::format("{} the TensorBoard event file {}: {}", what, path_.string(), std::strerror(errno)));
  }

  struct Close {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::filesystem::path path_;
  std::unique_ptr<std::FILE, Close> file_;
};

}  // namespace torchfit::detail

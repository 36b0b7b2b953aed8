// SPDX-License-Identifier: MIT
// Files read and written with checked POSIX calls. Every failure (a full disk, a file size limit, an I/O error)
// becomes a CheckpointError naming the file and the system's reason; libtorch's own file writer instead throws
// from a destructor on a full disk, which aborts the process.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"

namespace torchfit::detail {

/// "cannot <action> <path>: <reason of errno>"; reads errno before anything can change it.
[[noreturn]] inline void throw_file_error(const char* action, const std::filesystem::path& path) {
  const int error = errno;
  throw CheckpointError(fmt::format("cannot {} {}: {}", action, path.string(), std::strerror(error)));
}

/// A file written from the start and flushed to stable storage by finish(). Destroyed before finish() (a write
/// failed, or the caller threw), it removes what it wrote, so no truncated file is left that looks whole.
class DurableFile {
 public:
  explicit DurableFile(std::filesystem::path path) : path_(std::move(path)) {
    do fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) throw_file_error("create", path_);
    struct stat info {};
    regular_ = ::fstat(fd_, &info) == 0 && S_ISREG(info.st_mode);
  }
  ~DurableFile() {
    if (fd_ < 0) return;
    ::close(fd_);
    remove_partial();
  }
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;

  void write(const void* data, std::size_t size) {
    const char* next = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t written = ::write(fd_, next, size);
      if (written < 0 && errno == EINTR) continue;
      if (written == 0) errno = EIO;  // no progress and no reason given: never loop on it
      if (written <= 0) throw_file_error("write", path_);
      next += written;
      size -= static_cast<std::size_t>(written);
    }
  }
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  /// Flushes the file to stable storage and closes it.
  void finish() {
    if (::fsync(fd_) != 0) throw_file_error("flush", path_);
    if (::close(std::exchange(fd_, -1)) != 0) {
      const int error = errno;
      remove_partial();
      errno = error;
      throw_file_error("close", path_);
    }
  }

 private:
  // Only a regular file: a device such as /dev/full must never be unlinked.
  void remove_partial() const {
    if (regular_) ::unlink(path_.c_str());
  }

  std::filesystem::path path_;
  int fd_ = -1;
  bool regular_ = false;
};

/// Writes `bytes` as the whole of `path` and flushes it to stable storage.
inline void write_file_durably(const std::filesystem::path& path, std::string_view bytes) {
  DurableFile file(path);
  file.write(bytes);
  file.finish();
}

/// The whole content of `path`.
inline std::string read_whole_file(const std::filesystem::path& path) {
  int fd = -1;
  do fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_file_error("read", path);
  struct Closer {
    int descriptor;
    ~Closer() { ::close(descriptor); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw_file_error("read", path);
  std::string bytes;
  bytes.reserve(static_cast<std::size_t>(info.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_file_error("read", path);
    if (got == 0) return bytes;
    bytes.append(buffer, static_cast<std::size_t>(got));
  }
}

/// Flushes a directory's entries (files created, renamed or removed in it) to stable storage.
inline void sync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_file_error("open the directory", dir);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  errno = error;
  if (rc != 0) throw_file_error("flush the directory", dir);
}

}  // namespace torchfit::detail

// SPDX-License-Identifier: MIT
// libtorch archives (optimizer.pt, rng_state.pt) written with checked calls: OutputArchive::save_to(filename)
// throws from a destructor when the disk is full, which aborts the process.
#pragma once

#include <cstddef>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/detail/durable_file.hpp"
#include "torchfit/error.hpp"

namespace torchfit::checkpoint {

/// The archive's bytes, as torch::save writes them.
inline std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

/// Writes the archive to `file` (archive_bytes' bytes), flushed to disk. The bytes go straight to the file: a copy
/// in memory first cost more than the write itself (an optimizer state of 400 MB took 2 s to serialize in memory).
/// libtorch's writer is never told of a failed write, since it would throw from its destructor; the failure is
/// raised once the archive is done.
inline void save_archive(torch::serialize::OutputArchive& archive, const std::filesystem::path& file) {
  torchfit::detail::DurableFile out(file);
  std::exception_ptr failure;
  archive.save_to([&](const void* data, std::size_t size) -> std::size_t {
    if (!failure) {
      try {
        out.write(data, size);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    return size;
  });
  if (failure) std::rethrow_exception(failure);
  out.finish();
}

/// Parses archive bytes; `source` names them in the error.
inline torch::serialize::InputArchive parse_archive(const std::string& bytes, const std::string& source) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    throw CheckpointError(fmt::format("{} is corrupt or truncated: {}", source, e.what_without_backtrace()));
  }
  return archive;
}

/// Reads and parses the archive in `file`.
inline torch::serialize::InputArchive read_archive(const std::filesystem::path& file) {
  return parse_archive(torchfit::detail::read_whole_file(file), file.string());
}

}  // namespace torchfit::checkpoint

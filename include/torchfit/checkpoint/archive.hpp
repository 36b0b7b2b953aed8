// SPDX-License-Identifier: MIT
// libtorch archives (optimizer.pt, rng_state.pt) serialized in memory and written with checked calls:
// OutputArchive::save_to(filename) throws from a destructor when the disk is full, which aborts the process.
#pragma once

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

/// Writes the archive to `file`, flushed to disk.
inline void save_archive(torch::serialize::OutputArchive& archive, const std::filesystem::path& file) {
  torchfit::detail::write_file_durably(file, archive_bytes(archive));
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

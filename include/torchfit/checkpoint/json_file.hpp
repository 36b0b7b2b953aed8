// SPDX-License-Identifier: MIT
// The JSON files of a checkpoint, in Python's json syntax: NaN and infinities (a plateau scheduler's initial best
// value, a diverged loss) are written as Python writes them and read back, where nlohmann's dump would write null.
#pragma once

#include <filesystem>

#include "torchfit/detail/durable_file.hpp"
#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::checkpoint {

/// Writes `value` as `json.dumps(value, indent=2, sort_keys=True)` and a newline, flushed to disk.
inline void save_json(const json& value, const std::filesystem::path& file) {
  torchfit::detail::write_file_durably(file, torchfit::detail::python_json_dumps(value) + "\n");
}

/// Reads a JSON file; an unreadable or malformed one throws CheckpointError naming the file.
inline json read_json(const std::filesystem::path& file) {
  const std::string text = torchfit::detail::read_whole_file(file);
  try {
    return torchfit::detail::python_json_parse(text, file.string());
  } catch (const FormatError& e) {
    throw CheckpointError(e.what());
  }
}

}  // namespace torchfit::checkpoint

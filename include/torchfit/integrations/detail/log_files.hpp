// SPDX-License-Identifier: MIT
// File handling shared by the trackers that write plain-text files (csv, jsonl, dvclive, mlflow, codecarbon),
// and the CSV log's cells and header.
#pragma once

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/trainer_state.hpp"

namespace torchfit::detail {

/// The file's bytes, or nothing if it does not exist; a file that exists but cannot be read throws.
inline std::optional<std::string> read_file_if_exists(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

/// Creates the directory `path` goes in, if missing.
inline void create_parent_directories(const std::filesystem::path& path) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) throw Error(fmt::format("cannot create the directory of {}: {}", path.string(), ec.message()));
}

/// Writes `bytes` to `path` with C stdio in `mode` ("ab" or "wb") and closes it, so the data reaches the
/// operating system; throws torchfit::Error naming the file on any failure.
inline void write_file_with_mode(const std::filesystem::path& path, std::string_view bytes,
                                 const char* mode) {
  std::FILE* file = std::fopen(path.c_str(), mode);
  if (file == nullptr) throw Error(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
  const int saved_errno = errno;
  if (std::fclose(file) != 0 || !written)
    throw Error(
        fmt::format("cannot write {}: {}", path.string(), std::strerror(written ? errno : saved_errno)));
}

/// Appends `bytes` to `path` (created if missing).
inline void append_to_file(const std::filesystem::path& path, std::string_view bytes) {
  create_parent_directories(path);
  write_file_with_mode(path, bytes, "ab");
}

/// Replaces `path` by a file holding `bytes` in one step: written next to it as `<name>.tmp`, then renamed
/// over it, so a reader or a crash sees either the old or the new file, never a partial one.
inline void replace_file(const std::filesystem::path& path, std::string_view bytes) {
  create_parent_directories(path);
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  write_file_with_mode(tmp, bytes, "wb");
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw Error(fmt::format("cannot replace {}: {}", path.string(), ec.message()));
  }
}

/// The epoch a log entry belongs to: the entry's own "epoch" (what the Trainer logs), else the state's, else
/// null.
inline json log_entry_epoch(const Logs& logs, const TrainerState& state) {
  if (auto it = logs.find("epoch"); it != logs.end()) return *it;
  return state.epoch ? json(*state.epoch) : json(nullptr);
}

/// The file a log tracker writes: `path` when given, else `<output_dir>/<default_name>`.
inline std::filesystem::path log_file_path(const std::filesystem::path& path, const std::string& output_dir,
                                           const char* default_name) {
  return path.empty() ? std::filesystem::path(output_dir) / default_name : path;
}

/// What a log tracker does at on_train_begin with a file an earlier run left at `path`: a fresh run (global
/// step 0) removes it; a resumed run keeps what `keep_through` returns for the resumed step (the entries the
/// interrupted run logged after its checkpoint are dropped) and rewrites the file only if that removed
/// anything. Returns the content the file now has (nothing if it does not exist).
inline std::optional<std::string> restart_or_resume(
    const std::filesystem::path& path, const TrainerState& state,
    const std::function<std::string(const std::string&, std::int64_t)>& keep_through) {
  auto text = read_file_if_exists(path);
  if (!text) return std::nullopt;
  if (state.global_step == 0) {
    std::error_code ec;
    if (!std::filesystem::remove(path, ec) && ec)
      throw Error(fmt::format("cannot remove the log {} of an earlier run: {}", path.string(), ec.message()));
    return std::nullopt;
  }
  std::string kept = keep_through(*text, state.global_step);
  if (kept != *text) replace_file(path, kept);
  return kept;
}

/// One CSV record of RFC 4180 fields: a field holding a comma, a double quote, CR or LF is quoted with its
/// quotes doubled; the record ends with "\n".
inline std::string csv_record(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) out += ',';
    const std::string& field = fields[i];
    if (field.find_first_of(",\"\r\n") == std::string::npos) {
      out += field;
      continue;
    }
    out += '"';
    for (const char c : field) out.append(c == '"' ? 2 : 1, c);
    out += '"';
  }
  out += '\n';
  return out;
}

/// Parses RFC 4180 text (LF or CRLF line ends) into records of unquoted fields. A last record without its
/// line end (a write cut short) is left out.
inline std::vector<std::vector<std::string>> parse_csv(std::string_view text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c != '"')
        field += c;
      else if (i + 1 < text.size() && text[i + 1] == '"')
        field += text[++i];
      else
        quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
    } else if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
      // CRLF: the LF ends the record
    } else if (c == '\n') {
      record.push_back(std::move(field));
      field.clear();
      records.push_back(std::move(record));
      record.clear();
    } else {
      field += c;
    }
  }
  return records;
}

/// A log value as a CSV cell: integers in decimal, floats as Python's repr (`0.1`, `1e-05`, `nan`), booleans
/// as `True`/`False`, strings as they are, null as an empty cell, anything else as its JSON text.
inline std::string csv_cell(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "";
    case json::value_t::boolean:
      return value.get<bool>() ? "True" : "False";
    case json::value_t::number_integer:
      return std::to_string(value.get<std::int64_t>());
    case json::value_t::number_unsigned:
      return std::to_string(value.get<std::uint64_t>());
    case json::value_t::number_float:
      return python_float_repr(value.get<double>());
    case json::value_t::string:
      return value.get<std::string>();
    default:
      return value.dump();
  }
}

/// The header of a CSV log read back from `path`; it must start with `step,epoch` (torchfit never rewrites a
/// file it did not write).
inline std::vector<std::string> csv_log_header(const std::vector<std::vector<std::string>>& records,
                                               const std::filesystem::path& path) {
  if (records.empty()) return {};
  const auto& header = records.front();
  if (header.size() < 2 || header[0] != "step" || header[1] != "epoch") {
    std::string line = csv_record(header);
    line.pop_back();
    throw Error(
        fmt::format("{} is not a CSV log written by CSVCallback: its header must start with \"step,epoch\" "
                    "(got \"{}\"); remove it or give CSVCallback another path",
                    path.string(), line));
  }
  return header;
}

/// The step in the first cell of a row, if it is an integer.
inline std::optional<std::int64_t> csv_row_step(const std::vector<std::string>& row) {
  std::int64_t step = 0;
  if (row.empty()) return std::nullopt;
  const std::string& cell = row.front();
  const auto [end, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), step);
  if (ec != std::errc() || end != cell.data() + cell.size()) return std::nullopt;
  return step;
}

}  // namespace torchfit::detail

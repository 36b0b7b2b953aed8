// SPDX-License-Identifier: MIT
// The safetensors format (what Python's `safetensors.torch.save_file` writes): an 8-byte little-endian header
// length, a JSON header {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}, ...} padded with spaces
// to a multiple of 8 bytes, then the tensors' raw little-endian bytes, contiguous, in header order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/detail/durable_file.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

/// One safetensors dtype: its name in the header, the libtorch type and the size of one element in bytes.
struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};

/// The dtypes libtorch can hold, in the order of the Rust library's `Dtype` enum (increasing alignment), which
/// decides the order of tensors in a file. F8_*, U16, U32 and U64 have no libtorch type here.
inline const std::vector<SafetensorsDtype>& safetensors_dtypes() {
  static const std::vector<SafetensorsDtype> dtypes = {
      {"BOOL", torch::kBool, 1}, {"U8", torch::kByte, 1},   {"I8", torch::kChar, 1},
      {"I16", torch::kShort, 2}, {"F16", torch::kHalf, 2},  {"BF16", torch::kBFloat16, 2},
      {"I32", torch::kInt, 4},   {"F32", torch::kFloat, 4}, {"F64", torch::kDouble, 8},
      {"I64", torch::kLong, 8}};
  return dtypes;
}

namespace safetensors_impl {

inline std::string supported_dtypes() {
  std::string out;
  for (const auto& d : safetensors_dtypes()) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

// Index into safetensors_dtypes(), or npos.
inline std::size_t dtype_index(torch::ScalarType type) {
  const auto& d = safetensors_dtypes();
  for (std::size_t i = 0; i < d.size(); ++i)
    if (d[i].type == type) return i;
  return std::string::npos;
}

[[noreturn]] inline void fail(const std::filesystem::path& path, const std::string& problem) {
  throw CheckpointError(fmt::format("{} is not a valid safetensors file: {}", path.string(), problem));
}

// What the Rust library refuses to parse as a header (it would be a corrupt length field, not a real header).
inline constexpr uint64_t max_header_size = 100'000'000;
// A real header nests three levels ({name: {"shape": [...]}}); deeper input is refused before anything recurses
// over it (printing a value for a message does).
inline constexpr int max_header_depth = 16;

// A header value for a message, cut short: a corrupt header can hold megabytes.
inline std::string brief(const json& value) {
  const std::string text = value.dump();
  return text.size() <= 60 ? text : text.substr(0, 57) + "...";
}

struct Entry {
  std::string name;
  const SafetensorsDtype* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

struct Header {
  std::map<std::string, std::string> metadata;
  std::vector<Entry> entries;  // in header order
  uint64_t data_start = 0;     // file offset of the data section
};

// A JSON value that is a non-negative integer (nlohmann parses those as number_unsigned).
inline uint64_t unsigned_field(const std::filesystem::path& path, const std::string& name, const char* field,
                               const json& value) {
  if (!value.is_number_unsigned())
    fail(path, fmt::format("tensor \"{}\" has {} entry {} where a non-negative integer belongs", name, field,
                           brief(value)));
  return value.get<uint64_t>();
}

inline Entry parse_entry(const std::filesystem::path& path, const std::string& name, const json& info,
                         uint64_t data_size) {
  if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
      !info.contains("data_offsets"))
    fail(path, fmt::format("tensor \"{}\" needs \"dtype\", \"shape\" and \"data_offsets\" (got {})", name,
                           brief(info)));
  const json& dtype = info.at("dtype");
  const auto& dtypes = safetensors_dtypes();
  const auto d = std::find_if(dtypes.begin(), dtypes.end(), [&](const SafetensorsDtype& x) {
    return dtype.is_string() && dtype.get<std::string>() == x.name;
  });
  if (d == dtypes.end())
    fail(path, fmt::format("tensor \"{}\" has unsupported dtype {} (supported: {})", name, brief(dtype),
                           supported_dtypes()));
  const json& shape = info.at("shape");
  const json& offsets = info.at("data_offsets");
  if (!shape.is_array())
    fail(path, fmt::format("tensor \"{}\" has shape {}, not an array", name, brief(shape)));
  if (!offsets.is_array() || offsets.size() != 2)
    fail(path, fmt::format("tensor \"{}\" has data_offsets {}, not [begin, end]", name, brief(offsets)));

  Entry e{name,
          &*d,
          {},
          unsigned_field(path, name, "data_offsets", offsets[0]),
          unsigned_field(path, name, "data_offsets", offsets[1])};
  // Checked arithmetic: a corrupt shape must not wrap around into a plausible byte count.
  uint64_t bytes = d->size;
  for (const json& dim : shape) {
    const uint64_t n = unsigned_field(path, name, "shape", dim);
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (n != 0 && bytes > std::numeric_limits<uint64_t>::max() / n))
      fail(path, fmt::format("tensor \"{}\" has shape {}, too large to address", name, brief(shape)));
    bytes *= n;
    e.shape.push_back(static_cast<int64_t>(n));
  }
  if (e.end < e.begin || e.end - e.begin != bytes)
    fail(path,
         fmt::format("tensor \"{}\" has data_offsets [{}, {}] but its shape {} and dtype {} need {} bytes",
                     name, e.begin, e.end, brief(shape), d->name, bytes));
  if (e.end > data_size)
    fail(path, fmt::format("tensor \"{}\" ends at byte {} of a {}-byte data section (truncated?)", name,
                           e.end, data_size));
  return e;
}

// Reads and validates the header, leaving `in` anywhere; the file is `file_size` bytes long.
inline Header read_header(std::ifstream& in, const std::filesystem::path& path, uint64_t file_size) {
  if (file_size < 8)
    fail(path, fmt::format("it has {} bytes, shorter than its 8-byte header length", file_size));
  unsigned char prefix[8];
  in.read(reinterpret_cast<char*>(prefix), 8);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | prefix[i];
  if (length > file_size - 8)
    fail(path, fmt::format("header length {} runs past the end of the file ({} bytes; truncated?)", length,
                           file_size));
  if (length > max_header_size)
    fail(path, fmt::format("header length {} is over the {}-byte limit", length, max_header_size));
  std::string text(length, '\0');
  in.read(text.data(), static_cast<std::streamsize>(length));
  if (!in) throw CheckpointError(fmt::format("cannot read the header of {}", path.string()));

  // nlohmann keeps one of two equal keys silently; the callback sees every top-level key to catch duplicates.
  std::set<std::string> keys;
  std::string duplicate;
  bool too_deep = false;
  json parsed;
  try {
    parsed = json::parse(text, [&](int depth, json::parse_event_t event, json& value) {
      if (depth == 1 && event == json::parse_event_t::key && !keys.insert(value.get<std::string>()).second &&
          duplicate.empty())
        duplicate = value.get<std::string>();
      if (depth > max_header_depth) too_deep = true;
      return !too_deep;
    });
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number such as 1e999
    fail(path, fmt::format("the header is not valid JSON ({})", e.what()));
  }
  if (too_deep) fail(path, fmt::format("the header nests deeper than {} levels", max_header_depth));
  if (!parsed.is_object()) fail(path, fmt::format("the header is {}, not a JSON object", parsed.type_name()));
  if (!duplicate.empty()) fail(path, fmt::format("the header names \"{}\" twice", duplicate));

  Header h;
  h.data_start = 8 + length;
  for (const auto& item : parsed.items()) {
    if (item.key() != "__metadata__") {
      h.entries.push_back(parse_entry(path, item.key(), item.value(), file_size - h.data_start));
      continue;
    }
    if (!item.value().is_object())
      fail(path, fmt::format("__metadata__ is {}, not an object of strings", brief(item.value())));
    for (const auto& m : item.value().items()) {
      if (!m.value().is_string())
        fail(path, fmt::format("__metadata__ entry \"{}\" is {}, not a string", m.key(), brief(m.value())));
      h.metadata[m.key()] = m.value().get<std::string>();
    }
  }

  // The byte ranges must tile the data section exactly: no gaps, no overlaps, nothing after the last one.
  std::vector<const Entry*> by_offset;
  for (const auto& e : h.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != covered)
      fail(path,
           fmt::format(
               "tensor \"{}\" starts at byte {} where byte {} was expected (overlapping tensors or a gap)",
               e->name, e->begin, covered));
    covered = e->end;
  }
  if (covered != file_size - h.data_start)
    fail(path, fmt::format("the data section has {} bytes but the tensors cover {}", file_size - h.data_start,
                           covered));
  return h;
}

// Opens `path` and learns its size, or says why it cannot.
inline std::ifstream open(const std::filesystem::path& path, uint64_t& file_size) {
  std::error_code ec;
  file_size = std::filesystem::file_size(path, ec);
  if (ec) throw CheckpointError(fmt::format("cannot read {}: {}", path.string(), ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(fmt::format("cannot read {}", path.string()));
  return in;
}

}  // namespace safetensors_impl

/// Writes `tensors` (any device or layout; copied to contiguous CPU one at a time) byte for byte as Python's
/// `safetensors.torch.save_file` writes the same dict: tensors ordered by dtype (largest alignment first), then
/// name. `metadata` goes under "__metadata__" (omitted when empty), keys sorted (Python's order is a hash map's).
/// Names must be unique and not "__metadata__"; dtypes must be in safetensors_dtypes().
inline void save_safetensors(const std::filesystem::path& path,
                             const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  struct Item {
    const std::string* name;
    const torch::Tensor* tensor;
    std::size_t dtype;
  };
  std::vector<Item> items;
  std::set<std::string> names;
  for (const auto& entry : tensors) {
    const std::string& name = entry.first;
    const torch::Tensor& t = entry.second;
    const auto refuse = [&](const std::string& why) {
      throw CheckpointError(fmt::format("cannot save tensor \"{}\" to {}: {}", name, path.string(), why));
    };
    if (name == "__metadata__") refuse("the name is reserved for the file's metadata");
    if (!names.insert(name).second) refuse("another tensor has the same name");
    if (!t.defined()) refuse("the tensor is undefined");
    if (t.layout() != torch::kStrided) refuse("only dense (strided) tensors can be saved");
    const std::size_t dtype = safetensors_impl::dtype_index(t.scalar_type());
    if (dtype == std::string::npos)
      refuse(fmt::format("dtype {} has no safetensors equivalent (supported: {})",
                         c10::toString(t.scalar_type()), safetensors_impl::supported_dtypes()));
    items.push_back({&name, &t, dtype});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.dtype != b.dtype ? a.dtype > b.dtype : *a.name < *b.name;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Item& item : items) {
    const auto& dtype = safetensors_dtypes()[item.dtype];
    const uint64_t bytes = static_cast<uint64_t>(item.tensor->numel()) * dtype.size;
    header[*item.name] = {{"dtype", dtype.name},
                          {"shape", item.tensor->sizes().vec()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  // Compact JSON, as serde_json writes it; the padding aligns the data section for zero-copy readers.
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  DurableFile out(path);
  out.write(prefix, 8);
  out.write(text);
  for (const Item& item : items) {
    const auto cpu = item.tensor->detach().to(torch::kCPU).contiguous();
    out.write(cpu.data_ptr(), cpu.nbytes());
  }
  out.finish();
}

/// Reads every tensor of a safetensors file (as CPU tensors, in header order). A file that is inconsistent in
/// any way (truncated, header not JSON, unknown dtype, shape not matching its byte range, overlapping or
/// out-of-range offsets, bytes after the last tensor, a name given twice) is refused with a CheckpointError
/// naming the file and the problem.
inline std::vector<std::pair<std::string, torch::Tensor>> load_safetensors(
    const std::filesystem::path& path) {
  uint64_t file_size = 0;
  auto in = safetensors_impl::open(path, file_size);
  const auto h = safetensors_impl::read_header(in, path, file_size);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& e : h.entries) {
    torch::Tensor t;
    try {
      t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    } catch (const c10::Error& error) {  // a shape libtorch cannot hold, e.g. an element count past int64
      safetensors_impl::fail(
          path, fmt::format("tensor \"{}\" of shape {} cannot be allocated: {}", e.name,
                            c10::str(c10::IntArrayRef(e.shape)), error.what_without_backtrace()));
    }
    if (e.end > e.begin) {
      in.seekg(static_cast<std::streamoff>(h.data_start + e.begin));
      in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
      if (!in) throw CheckpointError(fmt::format("cannot read tensor \"{}\" from {}", e.name, path.string()));
    }
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

/// The `__metadata__` strings of a safetensors file (empty when it has none); reads and validates the header
/// only.
inline std::map<std::string, std::string> load_safetensors_metadata(const std::filesystem::path& path) {
  uint64_t file_size = 0;
  auto in = safetensors_impl::open(path, file_size);
  return safetensors_impl::read_header(in, path, file_size).metadata;
}

}  // namespace torchfit::detail

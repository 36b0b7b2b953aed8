// SPDX-License-Identifier: MIT
// The safetensors format (what Python's `safetensors.torch.save_file` writes): an 8-byte little-endian header
// length, a JSON header {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}, ...} padded with spaces
// to a multiple of 8 bytes, then the tensors' raw little-endian bytes, contiguous, in header order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

struct SafetensorsDtype {
  const char* name;
  torch::ScalarType type;
  int64_t size;
};

// In the order of the Rust library's Dtype enum, which orders tensors in a file (larger dtypes first).
inline const std::vector<SafetensorsDtype>& safetensors_dtypes() {
  static const std::vector<SafetensorsDtype> dtypes = {
      {"BOOL", torch::kBool, 1},    {"U8", torch::kByte, 1},  {"I8", torch::kChar, 1},
      {"I16", torch::kShort, 2},    {"F16", torch::kHalf, 2}, {"BF16", torch::kBFloat16, 2},
      {"I32", torch::kInt, 4},      {"F32", torch::kFloat, 4}, {"F64", torch::kDouble, 8},
      {"I64", torch::kLong, 8}};
  return dtypes;
}

inline std::size_t safetensors_dtype_rank(torch::ScalarType type) {
  const auto& d = safetensors_dtypes();
  for (std::size_t i = 0; i < d.size(); ++i)
    if (d[i].type == type) return i;
  throw Error(std::string("safetensors: tensors of dtype ") + c10::toString(type) + " cannot be saved");
}

/// Writes `tensors` (any device or layout; copied to contiguous CPU) in the byte layout Python's safetensors
/// library produces for the same tensors.
inline void save_safetensors(const std::filesystem::path& path,
                             const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, torch::Tensor>> sorted;
  for (const auto& [name, t] : tensors) sorted.emplace_back(name, t.detach().to(torch::kCPU).contiguous());
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    const auto ra = safetensors_dtype_rank(a.second.scalar_type()), rb = safetensors_dtype_rank(b.second.scalar_type());
    return ra != rb ? ra > rb : a.first < b.first;
  });
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(t.element_size());
    header[name] = {{"dtype", safetensors_dtypes()[safetensors_dtype_rank(t.scalar_type())].name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t length = text.size();
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(length >> (8 * i));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(prefix), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : sorted)
    out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
  out.flush();
  if (!out) throw CheckpointError("cannot write " + path.string());
}

namespace safetensors_impl {

[[noreturn]] inline void fail(const std::filesystem::path& path, const std::string& problem) {
  throw CheckpointError(path.string() + " is not a valid safetensors file: " + problem);
}

inline std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError("cannot read " + path.string());
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

struct Header {
  json entries;
  uint64_t data_start = 0;
};

inline Header parse_header(const std::filesystem::path& path, const std::string& bytes) {
  if (bytes.size() < 8) fail(path, "shorter than its 8-byte header length");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  if (length > bytes.size() - 8)
    fail(path, "header length " + std::to_string(length) + " runs past the end of the file (" +
                   std::to_string(bytes.size()) + " bytes; truncated?)");
  Header h;
  h.data_start = 8 + length;
  try {
    h.entries = json::parse(bytes.substr(8, length));
  } catch (const json::parse_error& e) {
    fail(path, std::string("the header is not JSON (") + e.what() + ")");
  }
  if (!h.entries.is_object()) fail(path, "the header is not a JSON object");
  return h;
}

}  // namespace safetensors_impl

/// The `__metadata__` strings of a safetensors file.
inline std::map<std::string, std::string> load_safetensors_metadata(const std::filesystem::path& path) {
  const auto h = safetensors_impl::parse_header(path, safetensors_impl::read_all(path));
  std::map<std::string, std::string> out;
  if (h.entries.contains("__metadata__"))
    for (const auto& item : h.entries.at("__metadata__").items())
      if (item.value().is_string()) out[item.key()] = item.value().get<std::string>();
  return out;
}

/// Reads every tensor of a safetensors file, in header order. Anything inconsistent (truncation, unknown dtype,
/// shape not matching the byte range, overlapping or out-of-range offsets, duplicate names) is refused with a
/// CheckpointError naming the file and the problem.
inline std::vector<std::pair<std::string, torch::Tensor>> load_safetensors(const std::filesystem::path& path) {
  using safetensors_impl::fail;
  const std::string bytes = safetensors_impl::read_all(path);
  const auto h = safetensors_impl::parse_header(path, bytes);
  const uint64_t data_size = bytes.size() - h.data_start;

  struct Entry {
    std::string name;
    torch::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  std::set<std::string> names;
  for (const auto& item : h.entries.items()) {
    if (item.key() == "__metadata__") continue;
    const std::string& name = item.key();
    if (!names.insert(name).second) fail(path, "tensor \"" + name + "\" appears twice");
    const json& info = item.value();
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      fail(path, "tensor \"" + name + "\" lacks dtype, shape or data_offsets");
    const auto& dtypes = safetensors_dtypes();
    const std::string dtype = info.at("dtype").is_string() ? info.at("dtype").get<std::string>() : "";
    auto d = std::find_if(dtypes.begin(), dtypes.end(), [&](const SafetensorsDtype& x) { return dtype == x.name; });
    if (d == dtypes.end()) fail(path, "tensor \"" + name + "\" has unsupported dtype \"" + dtype + "\"");
    Entry e{name, d->type, {}, 0, 0};
    uint64_t elements = 1;
    try {
      e.shape = info.at("shape").get<std::vector<int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2) fail(path, "tensor \"" + name + "\" needs two data_offsets");
      e.begin = offsets[0];
      e.end = offsets[1];
    } catch (const json::exception&) {
      fail(path, "tensor \"" + name + "\" has a malformed shape or data_offsets");
    }
    for (int64_t dim : e.shape) {
      if (dim < 0) fail(path, "tensor \"" + name + "\" has a negative dimension");
      elements *= static_cast<uint64_t>(dim);
    }
    if (e.end < e.begin || e.end - e.begin != elements * static_cast<uint64_t>(d->size))
      fail(path, "tensor \"" + name + "\" has data_offsets [" + std::to_string(e.begin) + ", " +
                     std::to_string(e.end) + "] that do not match its shape and dtype");
    if (e.end > data_size)
      fail(path, "tensor \"" + name + "\" ends at byte " + std::to_string(e.end) + " of a " +
                     std::to_string(data_size) + "-byte data section (truncated?)");
    entries.push_back(std::move(e));
  }
  // The byte ranges must tile the data section exactly: no gaps, no overlaps, nothing after the last one.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != expected) fail(path, "tensor \"" + e->name + "\" overlaps another or leaves a gap");
    expected = e->end;
  }
  if (expected != data_size)
    fail(path, "the data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
                   std::to_string(expected));

  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), bytes.data() + h.data_start + e.begin, e.end - e.begin);
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace torchfit::detail

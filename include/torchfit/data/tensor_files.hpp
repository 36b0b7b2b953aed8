// SPDX-License-Identifier: MIT
// Tensors from NumPy's .npy files and safetensors files, memory-mapped rather than read: a file larger than
// memory can back a TensorDictDataset.
#pragma once

#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data/batch.hpp"
#include "torchfit/data/detail/mapped_file.hpp"
#include "torchfit/data/detail/npy_header.hpp"
#include "torchfit/detail/safetensors.hpp"

namespace torchfit {

/// The array of a .npy file (np.save) as a CPU tensor over the memory-mapped file. Plain C-ordered arrays of
/// bool, uint8, int8/16/32/64 or float16/32/64 in little-endian (or single-byte) order; anything else (a
/// Fortran-ordered, big-endian, structured or unsigned 16/32/64-bit array, a bad header, a truncated file) is a
/// FormatError naming the file and the problem. Writing to the tensor changes this process's copy only.
inline torch::Tensor open_npy(const std::filesystem::path& path) {
  auto file = std::make_shared<detail::MappedFile>(path);
  const detail::NpyHeader h = detail::parse_npy_header(file->bytes(), path.string());
  return detail::tensor_over(file, h.data_offset, h.shape, h.dtype);
}

/// Every tensor of a safetensors file, in the file's order, as CPU tensors over the memory-mapped file; the
/// header is checked as load_safetensors checks it (a bad file is an Error naming it and the problem).
inline TensorDict open_safetensors(const std::filesystem::path& path) {
  uint64_t file_size = 0;
  auto in = detail::safetensors_impl::open(path, file_size);
  const auto header = detail::safetensors_impl::read_header(in, path, file_size);
  auto file = std::make_shared<detail::MappedFile>(path);
  if (file->size() != file_size)
    throw Error(fmt::format("{} changed while it was being opened", path.string()));
  TensorDict out;
  for (const auto& e : header.entries)
    out.insert(e.name, detail::tensor_over(file, header.data_start + e.begin, e.shape, e.dtype->type));
  return out;
}

}  // namespace torchfit

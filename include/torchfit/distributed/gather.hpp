// SPDX-License-Identifier: MIT
// Gathering an evaluation's outputs from every rank (HF's gather_for_metrics).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/distributed/world.hpp"
#include "torchfit/error.hpp"

namespace torchfit::distributed {

namespace detail {

inline constexpr int64_t max_gathered_dims = 8;

// [defined, dtype, dim, sizes...] of a rank's tensor, the same length on every rank.
inline torch::Tensor describe(const torch::Tensor& t) {
  torch::Tensor meta = torch::zeros({3 + max_gathered_dims}, torch::kLong);
  if (!t.defined()) return meta;
  if (t.dim() < 1 || t.dim() > max_gathered_dims)
    throw Error(
        fmt::format("cannot gather evaluation outputs of shape {} across ranks: they need 1 to {} "
                    "dimensions, samples first",
                    c10::str(t.sizes()), max_gathered_dims));
  meta[0] = 1;
  meta[1] = static_cast<int64_t>(t.scalar_type());
  meta[2] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) meta[3 + d] = t.size(d);
  return meta;
}

// Every rank's tensor of `shape` (rows first) and `dtype`, moved as bytes: Gloo does not reduce every dtype.
inline std::vector<torch::Tensor> all_gather_as_bytes(Backend& b, const torch::Tensor& t,
                                                      const std::string& what) {
  const auto gathered = b.all_gather(t.contiguous().view({-1}).view(torch::kByte).to(b.device()), what);
  std::vector<torch::Tensor> out;
  for (const auto& g : gathered) out.push_back(g.cpu().view(t.scalar_type()).view(t.sizes()));
  return out;
}

}  // namespace detail

/// One tensor holding the rows of every rank's `local`, on the CPU: row i of a rank's goes to row
/// `plan.positions()[i]` (its sample's position in the dataset), so each evaluated sample comes exactly once, in
/// dataset order, on every rank. Dimension 1 may differ between ranks (sequences): shorter rows are padded with
/// `padding_index`, as HF's pad_across_processes. A rank without samples may pass an undefined `local`; undefined
/// when no rank has any. A process alone gets `local` back.
template <typename Plan>
torch::Tensor gather_for_metrics(const torch::Tensor& local, const Plan& plan, const std::string& what,
                                 int64_t padding_index = -100) {
  Backend* b = backend();
  if (b == nullptr) return local;
  const torch::Tensor positions = plan.positions();
  const auto metas = b->all_gather(detail::describe(local).to(b->device()), what);
  const auto counts = b->all_gather(torch::tensor({positions.numel()}).to(b->device()), what);
  // The first rank with outputs sets dtype and shape; the others must match but for dimensions 0 and 1.
  torch::Tensor reference;
  int64_t rows = 0, width = 0, total = 0;
  for (std::size_t r = 0; r < metas.size(); ++r) {
    const torch::Tensor meta = metas[r].cpu();
    const int64_t count = counts[r].item<int64_t>();
    total += count;
    rows = std::max(rows, count);
    if (meta[0].item<int64_t>() == 0) {
      if (count > 0 && reference.defined())
        throw Error(fmt::format("{}: rank {} has no outputs for its {} samples while other ranks have", what,
                                r, count));
      continue;
    }
    if (!reference.defined()) reference = meta;
    // Entries 0 to 2 and the sizes past dimension 1 (entries 5 on) must match.
    if (!meta.slice(0, 0, 3).equal(reference.slice(0, 0, 3)) ||
        !meta.slice(0, 5).equal(reference.slice(0, 5)))
      throw Error(
          fmt::format("{}: rank {}'s outputs differ in dtype or shape from the others' (only the sample "
                      "and sequence dimensions may differ)",
                      what, r));
    if (meta[2].item<int64_t>() >= 2) width = std::max(width, meta[4].item<int64_t>());
  }
  if (!reference.defined()) return {};

  const auto dtype = static_cast<torch::ScalarType>(reference[1].item<int64_t>());
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < reference[2].item<int64_t>(); ++d)
    shape.push_back(reference[3 + d].item<int64_t>());
  shape[0] = rows;
  if (shape.size() >= 2) shape[1] = width;
  torch::Tensor padded = torch::full(shape, padding_index, torch::TensorOptions().dtype(dtype));
  if (local.defined() && local.size(0) > 0) {
    torch::Tensor slot = padded.narrow(0, 0, local.size(0));
    if (local.dim() >= 2) slot = slot.narrow(1, 0, local.size(1));
    slot.copy_(local);
  }
  torch::Tensor padded_positions = torch::full({rows}, -1, torch::kLong);
  padded_positions.narrow(0, 0, positions.numel()).copy_(positions);

  const auto parts = detail::all_gather_as_bytes(*b, padded, what);
  const auto part_positions = detail::all_gather_as_bytes(*b, padded_positions, what);
  shape[0] = total;
  torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  for (std::size_t r = 0; r < parts.size(); ++r) {
    const int64_t count = counts[r].item<int64_t>();
    out.index_copy_(0, part_positions[r].narrow(0, 0, count), parts[r].narrow(0, 0, count));
  }
  return out;
}

}  // namespace torchfit::distributed

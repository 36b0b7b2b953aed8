// SPDX-License-Identifier: MIT
// The collectives the loop uses, on plain values: each is a no-op for a process alone, and collective otherwise
// (every rank makes the same calls in the same order).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "torchfit/distributed/world.hpp"

namespace torchfit::distributed {

/// `values` summed element-wise over the ranks (in double precision).
inline std::vector<double> sum_over_ranks(std::vector<double> values, const std::string& what) {
  Backend* b = backend();
  if (b == nullptr) return values;
  torch::Tensor t = torch::tensor(values, torch::kDouble).to(b->device());
  b->all_reduce(t, ReduceOp::sum, what);
  t = t.cpu();
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = t[static_cast<int64_t>(i)].item<double>();
  return values;
}

/// The mean of `value` over the ranks (HF's mean of a gathered scalar, as for the logged training loss).
inline double mean_over_ranks(double value, const std::string& what) {
  return sum_over_ranks({value}, what).front() / static_cast<double>(world().size);
}

/// Every rank's `bytes`, in rank order; they may differ in length.
inline std::vector<std::string> all_gather_bytes(const std::string& bytes, const std::string& what) {
  Backend* b = backend();
  if (b == nullptr) return {bytes};
  const auto sizes = b->all_gather(torch::tensor({static_cast<int64_t>(bytes.size())}).to(b->device()), what);
  int64_t longest = 0;
  for (const auto& s : sizes) longest = std::max(longest, s.item<int64_t>());
  torch::Tensor padded = torch::zeros({longest}, torch::kByte);
  std::copy(bytes.begin(), bytes.end(), padded.data_ptr<uint8_t>());
  std::vector<std::string> out;
  const auto gathered = b->all_gather(padded.to(b->device()), what);
  for (std::size_t r = 0; r < gathered.size(); ++r) {
    const torch::Tensor host = gathered[r].cpu();
    const auto* data = reinterpret_cast<const char*>(host.data_ptr<uint8_t>());
    out.emplace_back(data, static_cast<std::size_t>(sizes[r].item<int64_t>()));
  }
  return out;
}

/// Rank 0's `text` on every rank.
inline std::string from_rank_zero(const std::string& text, const std::string& what) {
  return all_gather_bytes(world().is_world_zero() ? text : std::string(), what).front();
}

/// Waits until every rank has reached this call.
inline void barrier(const std::string& what) {
  if (Backend* b = backend()) b->barrier(what);
}

}  // namespace torchfit::distributed

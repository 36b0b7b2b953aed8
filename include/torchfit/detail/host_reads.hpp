// SPDX-License-Identifier: MIT
#pragma once

#include <atomic>
#include <cstdint>

#include <torch/torch.h>

namespace torchfit::detail {

/// Every value the library reads back from the device goes through here, so "no host-device sync outside
/// logging steps" is something a test can count.
inline std::atomic<int64_t>& host_reads() {
  static std::atomic<int64_t> count{0};
  return count;
}
inline double to_host(const torch::Tensor& t) {
  ++host_reads();
  return t.item<double>();
}

}  // namespace torchfit::detail

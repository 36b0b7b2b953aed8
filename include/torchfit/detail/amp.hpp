// SPDX-License-Identifier: MIT
// Mixed precision on CUDA: an autocast scope for the forward pass and a dynamic loss scaler for fp16
// (libtorch's C++ API has no GradScaler; this is the same algorithm built on ATen's AMP kernels).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "torchfit/detail/state_fields.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"

namespace torchfit::detail {

// libtorch 2.4 replaced the CUDA-only autocast setters by device-typed ones and deprecated the old names.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool cuda_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCUDA); }
inline void set_cuda_autocast(bool enabled) { at::autocast::set_autocast_enabled(at::kCUDA, enabled); }
inline at::ScalarType cuda_autocast_dtype() { return at::autocast::get_autocast_dtype(at::kCUDA); }
inline void set_cuda_autocast_dtype(at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(at::kCUDA, dtype);
}
#else
inline bool cuda_autocast_enabled() { return at::autocast::is_enabled(); }
inline void set_cuda_autocast(bool enabled) { at::autocast::set_enabled(enabled); }
inline at::ScalarType cuda_autocast_dtype() { return at::autocast::get_autocast_gpu_dtype(); }
inline void set_cuda_autocast_dtype(at::ScalarType dtype) { at::autocast::set_autocast_gpu_dtype(dtype); }
#endif

/// Enables CUDA autocast with `dtype` for its lifetime (no-op when disabled).
class AutocastScope {
 public:
  AutocastScope(bool enabled, at::ScalarType dtype) : enabled_(enabled) {
    if (!enabled_) return;
    previous_ = cuda_autocast_enabled();
    previous_dtype_ = cuda_autocast_dtype();
    set_cuda_autocast(true);
    set_cuda_autocast_dtype(dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_cuda_autocast(previous_);
    set_cuda_autocast_dtype(previous_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
  at::ScalarType previous_dtype_ = at::kHalf;
};

/// Dynamic loss scaling for fp16 (torch.cuda.amp.GradScaler's defaults: scale 2^16, growth 2 every 2000 clean
/// steps, backoff 0.5).
class GradScaler {
 public:
  explicit GradScaler(const torch::Device& device)
      : scale_(torch::full({1}, 65536.0, torch::TensorOptions().dtype(torch::kFloat).device(device))),
        growth_tracker_(torch::zeros({1}, torch::TensorOptions().dtype(torch::kInt).device(device))),
        found_inf_(torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(device))) {}

  torch::Tensor scale(const torch::Tensor& loss) const { return loss * scale_.to(loss.scalar_type()); }

  /// Divides gradients by the scale in place and records whether any is not finite.
  void unscale(const std::vector<torch::Tensor>& parameters) {
    std::vector<torch::Tensor> grads;
    for (const auto& p : parameters)
      if (p.grad().defined()) grads.push_back(p.grad());
    found_inf_.zero_();
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, scale_.reciprocal());
  }

  /// Steps the optimizer unless the gradients overflowed; returns whether it stepped. Reading the overflow flag
  /// is a host-device sync, as in PyTorch's GradScaler.
  bool step(torch::optim::Optimizer& optimizer) {
    const bool overflow = found_inf_.item<float>() != 0.0f;
    if (!overflow) optimizer.step();
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, 2.0, 0.5, 2000);
    return !overflow;
  }

  json state() const {
    return {{"scale", scale_.item<float>()}, {"growth_tracker", growth_tracker_.item<int>()}};
  }
  /// All or nothing: a malformed state throws CheckpointError naming the member and changes nothing.
  void load_state(const json& s) {
    const char* what = "scaler state";
    const double scale = number_member(s, what, "scale");
    const int64_t growth_tracker = integer_member(s, what, "growth_tracker");
    if (!(std::isfinite(scale) && scale > 0))
      throw CheckpointError(fmt::format("{}: \"scale\" must be a positive finite number (got {})", what,
                                        kind_of(s.at("scale"))));
    if (growth_tracker < 0 || growth_tracker > std::numeric_limits<int32_t>::max())
      throw CheckpointError(
          fmt::format("{}: \"growth_tracker\" must be a count of steps (got {})", what, growth_tracker));
    scale_.fill_(scale);
    growth_tracker_.fill_(growth_tracker);
  }

 private:
  torch::Tensor scale_;
  torch::Tensor growth_tracker_;
  torch::Tensor found_inf_;
};

}  // namespace torchfit::detail

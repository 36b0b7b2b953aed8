// SPDX-License-Identifier: MIT
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "torchfit/checkpoint/progress.hpp"
#include "torchfit/detail/host_reads.hpp"

namespace torchfit {

/// The training loss between two logs (HF's tr_loss and _total_loss_scalar): step losses are summed on the device
/// and read back only when a log needs them. HF's logging_nan_inf_filter (a non-finite step loss adds the running
/// mean instead of poisoning the sum) is applied when the sum is read: only a non-finite sum needs the micro-step
/// losses replayed, so the common case costs one add per micro-step and nothing else.
class LossWindow {
 public:
  /// Starts an empty window and an empty total on `device`.
  void start(torch::Device device, bool nan_inf_filter) {
    *this = LossWindow{};
    sum_ = torch::zeros({}, torch::TensorOptions().device(device));
    nan_inf_filter_ = nan_inf_filter;
  }

  /// Adds a micro-step's loss (already divided by its accumulation group's size) taken before `global_step`.
  void add(const torch::Tensor& loss, int64_t global_step) {
    sum_.add_(loss);
    if (!nan_inf_filter_) return;
    pending_.push_back({loss, global_step});
    if (pending_.size() >= 4096) read_sum();  // bounds what is kept
  }

  /// Closes the window at `global_step`: the mean step loss since the last log (HF's logged `loss`).
  double close(int64_t global_step) {
    const double sum = read_sum();
    const double mean = sum / static_cast<double>(global_step - last_logged_);
    total_ += sum;
    last_logged_ = global_step;
    clear();
    return mean;
  }

  /// The sum of every step loss of the training so far, logged or not (HF's train_loss numerator).
  double total() {
    total_ += read_sum();
    clear();
    return total_;
  }

  /// global_step of the last training log.
  int64_t last_logged() const { return last_logged_; }

  /// What a checkpoint keeps, so that losses logged after a resume equal an uninterrupted run's.
  checkpoint::Progress progress() { return {read_sum(), total_, last_logged_}; }
  void restore(const checkpoint::Progress& progress) {
    sum_.fill_(progress.loss_since_last_log);
    base_ = static_cast<float>(progress.loss_since_last_log);
    pending_.clear();
    total_ = progress.loss_total;
    last_logged_ = progress.last_logged_step;
  }

 private:
  struct Pending {
    torch::Tensor loss;
    int64_t global_step;
  };

  // The filtered sum since the last log, read back once (twice when a replay is needed).
  double read_sum() {
    float sum = static_cast<float>(detail::to_host(sum_));
    if (!std::isfinite(sum) && !pending_.empty()) {
      std::vector<torch::Tensor> losses;
      for (const auto& p : pending_) losses.push_back(p.loss.to(torch::kFloat));
      const torch::Tensor host = torch::stack(losses).cpu();
      ++detail::host_reads();
      sum = base_;
      for (std::size_t i = 0; i < pending_.size(); ++i) {
        const float l = host[static_cast<int64_t>(i)].item<float>();
        const auto steps = static_cast<float>(1 + pending_[i].global_step - last_logged_);
        sum += std::isfinite(l) ? l : sum / steps;
      }
      sum_.fill_(sum);
    }
    base_ = sum;
    pending_.clear();
    return sum;
  }

  void clear() {
    sum_.zero_();
    base_ = 0;
    pending_.clear();
  }

  torch::Tensor sum_;             // plain sum of step losses since the last log, on the device
  float base_ = 0;                // what sum_ held when pending_ was last emptied
  std::vector<Pending> pending_;  // micro-step losses added since, kept for the NaN/Inf filter
  bool nan_inf_filter_ = true;
  double total_ = 0;  // sum of the step losses of every closed window
  int64_t last_logged_ = 0;
};

}  // namespace torchfit

// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <optional>

#include <torch/torch.h>

#include "torchfit/detail/host_reads.hpp"
#include "torchfit/distributed/collectives.hpp"
#include "torchfit/log.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// Counts input tokens for HF's num_input_tokens_seen and the tokens-per-second rates. Element counts are known
/// on the host; non-padding counts are summed on the device and read only with the logs (no sync per step). In a
/// job of several processes num_input_tokens_seen counts every process's tokens (as HF's gather), summed at each
/// flush.
class TokenCounter {
 public:
  /// Starts a train() call whose state has already seen `seen_at_start` tokens.
  void start(const TrainingArguments& args, std::optional<int64_t> pad_token_id, torch::Device device,
             int64_t seen_at_start) {
    *this = TokenCounter{};
    counting_ = args.include_num_input_tokens_seen;
    rate_ = args.include_tokens_per_second;
    pad_token_id_ = pad_token_id;
    seen_at_start_ = seen_at_start;
    if (counting_ != TokenCounting::non_padding) return;
    if (pad_token_id_)
      non_padding_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kLong).device(device));
    else
      log::warning(
          "--include_num_input_tokens_seen non_padding: no padding value was given "
          "(Trainer::set_pad_token_id); counting every input element");
  }

  /// Counts a micro-batch's `inputs` into `seen` (HF's state.num_input_tokens_seen).
  void count(const torch::Tensor& inputs, int64_t& seen) {
    if (counting_ == TokenCounting::no && !rate_) return;
    const int64_t elements = inputs.numel();
    session_tokens_ += elements;
    if (non_padding_.defined())
      non_padding_.add_((inputs != *pad_token_id_).sum());
    else if (counting_ != TokenCounting::no)
      (distributed::world().size > 1 ? unsummed_ : seen) += elements;
  }

  /// Adds what was counted on the device, and the other processes' counts, to `seen` (one read, when a log or
  /// checkpoint needs the count; collective in a job).
  void flush(int64_t& seen) {
    if (counting_ == TokenCounting::no) return;
    if (non_padding_.defined()) {
      unsummed_ += static_cast<int64_t>(detail::to_host(non_padding_));
      non_padding_.zero_();
    }
    seen += static_cast<int64_t>(
        distributed::sum_over_ranks({static_cast<double>(unsummed_)}, "counting input tokens").front());
    unsummed_ = 0;
  }

  /// Input elements trained on in this train() call (train_tokens_per_second).
  int64_t session_tokens() const { return session_tokens_; }
  /// num_input_tokens_seen when this train() call began (a resume starts from the checkpoint's count).
  int64_t seen_at_start() const { return seen_at_start_; }

 private:
  TokenCounting counting_ = TokenCounting::no;
  bool rate_ = false;
  std::optional<int64_t> pad_token_id_;
  torch::Tensor non_padding_;  // counted on the device since the last flush (non_padding mode)
  int64_t unsummed_ = 0;       // counted since the last flush, not yet summed over the processes
  int64_t session_tokens_ = 0;
  int64_t seen_at_start_ = 0;
};

}  // namespace torchfit

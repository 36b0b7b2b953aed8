// SPDX-License-Identifier: MIT
// Which samples of each pass over a sized dataset a rank reads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include <torch/torch.h>

namespace torchfit::distributed {

/// A rank's share of every pass (accelerate's BatchSamplerShard): the pass's order, the same on every rank, is
/// cut into chunks of batch_size and chunk j goes to rank j % count. The k-th batches of all ranks are therefore
/// the samples one process would read in its k-th batch of count × batch_size: 2 ranks with batch B train on what
/// 1 rank with batch 2B trains on.
///
/// `even` (training, accelerate's even_batches): the order continues with its own beginning (positions wrap
/// modulo its length) until every rank has as many full batches; drop_last drops what does not fill a batch on
/// every rank instead. Without it (evaluation) no sample is read twice: the last chunks may leave some ranks a short
/// batch or one batch fewer. A single process is never padded: its last batch may be short, as HF's.
struct Shard {
  int64_t rank = 0;
  int64_t count = 1;
  bool even = true;

  /// Batches this rank reads in a pass over `num_samples` samples (HF's len(dataloader) on this rank).
  int64_t num_batches(int64_t num_samples, int64_t batch_size, bool drop_last) const {
    const int64_t per_step = batch_size * count;
    if (drop_last) return num_samples / per_step;
    if (even || count == 1) return (num_samples + per_step - 1) / per_step;
    const int64_t chunks = (num_samples + batch_size - 1) / batch_size;
    return chunks > rank ? (chunks - rank + count - 1) / count : 0;
  }

  /// Positions [begin, end) in the pass's order of this rank's batch k; positions past the pass's length wrap
  /// modulo it (padding of even shards).
  std::pair<int64_t, int64_t> batch_span(int64_t k, int64_t batch_size, int64_t num_samples) const {
    const int64_t begin = (k * count + rank) * batch_size;
    const int64_t end = begin + batch_size;
    return {begin, wraps() ? end : std::min(end, num_samples)};
  }

  /// The positions in the pass's order of the samples of this rank's first `num_batches` batches, in reading
  /// order (batch_span's, all at once).
  torch::Tensor positions(int64_t num_batches, int64_t batch_size, int64_t num_samples) const {
    const torch::Tensor begins = (torch::arange(num_batches) * count + rank) * batch_size;
    const torch::Tensor all = (begins.unsqueeze(1) + torch::arange(batch_size)).flatten();
    return wraps() ? all.remainder(num_samples) : all.masked_select(all < num_samples);
  }

 private:
  bool wraps() const { return even && count > 1; }
};

}  // namespace torchfit::distributed

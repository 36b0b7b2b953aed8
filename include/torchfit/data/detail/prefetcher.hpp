// SPDX-License-Identifier: MIT
// Data-loading workers: batches built ahead of the training step on background threads, handed out in order.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/data/detail/batches.hpp"
#include "torchfit/distributed/shard.hpp"
#include "torchfit/error.hpp"

namespace torchfit::detail {

/// Hands out the training batches of one epoch in order, from batch `first`: sized data batched by index in an
/// order fixed by `shuffle_seed` (see BatchPlan), this rank's `shard` of it; a stream read from this rank's sample
/// `first * batch_size` (a stream shards itself, by the rank and world size it was built with). With `workers`
/// > 0, that many threads build batches ahead (HF's dataloader_num_workers), at most 2 per worker waiting (HF's
/// default prefetch_factor). Jobs are taken in order, one thread at a time (a stream is read sequentially), and
/// built in parallel; each batch is built by the same code whichever thread builds it, so its bits and the order
/// never depend on the number of workers. With `pin`, each batch is built into page-locked memory (pinned(), on
/// the worker that built it), ready for an asynchronous copy to a CUDA device. A worker's exception reaches the
/// caller of next() for that batch. `data` must outlive this.
template <typename Data>
class BatchPrefetcher {
 public:
  using Batch = typename DataTraits<Data>::Batch;

  BatchPrefetcher(const Data& data, int64_t batch_size, bool drop_last, std::optional<uint64_t> shuffle_seed,
                  int64_t first, int64_t workers, distributed::Shard shard = {}, bool pin = false) {
    const auto build = [pin](Batch batch) { return pin ? pinned(batch) : batch; };
    if constexpr (DataTraits<Data>::sized) {
      auto plan = std::make_shared<BatchPlan<Data>>(data, batch_size, drop_last, shuffle_seed, shard);
      limit_ = plan->num_batches() - first;
      take_ = [plan, build, k = first]() mutable {
        return [plan, build, batch = k++] { return build(plan->batch(batch)); };
      };
    } else {
      check_stream_shard(DataTraits<Data>::stream(data), shard);
      limit_ = std::numeric_limits<int64_t>::max();  // a stream starts a new pass where one ends
      take_ = [batches = std::make_shared<StreamBatches<Data>>(data, batch_size, first), build] {
        return [job = batches->take(), build] { return build(job()); };
      };
    }
    depth_ = 2 * workers;
    for (int64_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }

  ~BatchPrefetcher() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    space_.notify_all();
    for (auto& t : threads_) t.join();
  }
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  Batch next() {
    if (consumed_ >= limit_) throw Error(fmt::format("the data has no batch after its {} batches", limit_));
    if (threads_.empty()) {
      ++consumed_;
      return take_()();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return built_.count(consumed_) > 0; });
    auto node = built_.extract(consumed_++);
    lock.unlock();
    space_.notify_all();
    Built& built = node.mapped();
    if (built.error) std::rethrow_exception(built.error);
    return std::move(*built.batch);
  }

 private:
  struct Built {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };

  void work() {
    while (true) {
      int64_t k = 0;
      Built built;
      std::function<Batch()> job;
      {
        std::lock_guard<std::mutex> taking(take_mutex_);  // jobs are taken one at a time, in order
        {
          std::unique_lock<std::mutex> lock(mutex_);
          space_.wait(lock, [&] { return stop_ || (taken_ < limit_ && taken_ - consumed_ < depth_); });
          if (stop_) return;
          k = taken_++;
        }
        try {
          job = take_();
        } catch (...) {
          built.error = std::current_exception();
        }
      }
      if (job) {
        try {
          built.batch = job();
        } catch (...) {
          built.error = std::current_exception();
        }
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        built_.emplace(k, std::move(built));
      }
      ready_.notify_all();
    }
  }

  int64_t limit_ = 0;                             // batches that can be read
  std::function<std::function<Batch()>()> take_;  // the next batch's job, in order

  std::mutex take_mutex_;
  std::mutex mutex_;  // guards what follows
  int64_t depth_ = 0;
  std::condition_variable space_, ready_;
  int64_t taken_ = 0;
  int64_t consumed_ = 0;
  std::map<int64_t, Built> built_;
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: started once everything above exists
};

}  // namespace torchfit::detail

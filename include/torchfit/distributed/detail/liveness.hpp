// SPDX-License-Identifier: MIT
// Which rank made a collective fail: each rank's background thread publishes a beat count and how many
// collectives the rank has begun; a rank whose beats stopped is gone (exited, killed, stopped), a rank alive but
// behind is stuck before the collective the others wait in.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace torchfit::distributed::detail {

class Liveness {
 public:
  /// Publishes this rank's beats through `store`, a connection of its own (the store's timeout bounds every
  /// call, and the main thread may be waiting on another connection), every `interval`.
  Liveness(c10::intrusive_ptr<c10d::Store> store, int64_t rank, int64_t world_size,
           std::chrono::milliseconds interval)
      : store_(std::move(store)), rank_(rank), world_size_(world_size), interval_(interval) {
    publish();
    thread_ = std::thread([this] { beat(); });
  }
  ~Liveness() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;

  /// Counts a collective this rank begins.
  void begin_collective() { collectives_.fetch_add(1, std::memory_order_relaxed); }

  /// Why the others failed this rank's current collective: "rank 1 stopped responding ..." or "rank 2 is alive
  /// but ..."; empty when every rank looks alive and level with this one. Takes a few beat intervals.
  std::string culprit(std::chrono::milliseconds timeout) {
    std::vector<std::optional<Beat>> before, after;
    try {
      before = read_all();
      std::this_thread::sleep_for(interval_ * 5 / 2);
      after = read_all();
    } catch (const std::exception&) {
      return "the rendezvous store stopped responding: its host (rank 0, or torchrun's agent) is gone";
    }
    const int64_t mine = collectives_.load();
    std::string stopped, behind;
    for (int64_t r = 0; r < world_size_; ++r) {
      if (r == rank_) continue;
      const auto& a = before[static_cast<std::size_t>(r)];
      const auto& b = after[static_cast<std::size_t>(r)];
      if (!a || !b || a->beats == b->beats)
        stopped += fmt::format("{}{}", stopped.empty() ? "" : ", ", r);
      else if (b->collectives < mine)
        behind += fmt::format("{}rank {} (at collective {})", behind.empty() ? "" : ", ", r, b->collectives);
    }
    if (!stopped.empty())
      return fmt::format("rank {} stopped responding (its process exited, was killed or is stopped)",
                         stopped);
    if (!behind.empty())
      return fmt::format(
          "{} is alive but did not reach this collective (this rank's number {}) within "
          "--ddp_timeout {} s: it hangs, or is too slow for that timeout",
          behind, mine, std::chrono::duration_cast<std::chrono::seconds>(timeout).count());
    return {};
  }

 private:
  struct Beat {
    int64_t beats = 0;
    int64_t collectives = 0;
  };

  static std::string key(int64_t rank) { return "torchfit/alive/" + std::to_string(rank); }

  void publish() {
    const std::string value = fmt::format("{} {}", beats_++, collectives_.load(std::memory_order_relaxed));
    store_->set(key(rank_), std::vector<uint8_t>(value.begin(), value.end()));
  }

  // Until stopped, or until the store is gone (rank 0 exited at the end of the job): then nothing is left to tell.
  void beat() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, interval_, [this] { return stopping_; })) {
      try {
        publish();
      } catch (const std::exception&) {
        return;
      }
    }
  }

  std::vector<std::optional<Beat>> read_all() {
    std::vector<std::optional<Beat>> out;
    for (int64_t r = 0; r < world_size_; ++r) {
      if (!store_->check({key(r)})) {
        out.emplace_back();
        continue;
      }
      const std::vector<uint8_t> bytes = store_->get(key(r));
      std::istringstream in(std::string(bytes.begin(), bytes.end()));
      Beat beat;
      in >> beat.beats >> beat.collectives;
      out.emplace_back(beat);
    }
    return out;
  }

  c10::intrusive_ptr<c10d::Store> store_;
  int64_t rank_;
  int64_t world_size_;
  std::chrono::milliseconds interval_;
  std::atomic<int64_t> collectives_{0};
  int64_t beats_ = 0;  // the beat thread's (and the constructor's, before it starts)
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace torchfit::distributed::detail

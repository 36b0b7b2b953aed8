// SPDX-License-Identifier: MIT
// A worker thread that runs a tracker's slow calls (network requests) in order, off the training thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace torchfit::detail {

/// When BackgroundQueue's keep-alive runs.
enum class KeepAlive {
  when_idle,  // after its interval without any job (a server that takes silence for a dead client)
  periodic,   // every interval, between jobs when the queue is busy (a server that expects a heartbeat)
};

/// Runs submitted jobs one at a time, in submission order, on one thread started by the first submit() (an
/// owner that never submits costs no thread). The first job that throws stops the queue: the jobs after it
/// are dropped, since they would build on a call that did not happen, and the exception is rethrown on the
/// owner's thread by rethrow_if_failed(), submit() and drain(), for a tracker's failure isolation to handle.
class BackgroundQueue {
 public:
  using Clock = std::chrono::steady_clock;

  BackgroundQueue() = default;
  /// Waits for the jobs already submitted (the owner's state they use must outlive them), then joins.
  ~BackgroundQueue() {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    work_.notify_one();
    if (worker_.joinable()) worker_.join();
  }
  BackgroundQueue(const BackgroundQueue&) = delete;
  BackgroundQueue& operator=(const BackgroundQueue&) = delete;

  /// Queues `job`, which must hold copies of the data it uses. After a failure, throws it instead.
  void submit(std::function<void()> job) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      rethrow_locked();
      jobs_.push_back(std::move(job));
      if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
    }
    work_.notify_one();
  }

  /// Waits until every job submitted so far has run (or the queue has failed), then rethrows a failure.
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return (jobs_.empty() && !busy_) || failure_; });
    rethrow_locked();
  }

  /// Throws the first failure of a job, if one failed, without waiting for the jobs still queued.
  void rethrow_if_failed() {
    std::unique_lock<std::mutex> lock(mutex_);
    rethrow_locked();
  }

  /// Whether a job has failed (the queue then runs nothing more).
  bool failed() {
    std::unique_lock<std::mutex> lock(mutex_);
    return failure_ != nullptr;
  }

  /// From now on, runs `job`, a keep-alive for the server the jobs talk to, every `interval` (periodic) or
  /// after `interval` without any job (when_idle); it fails like a submitted job. Starts the thread.
  void set_keep_alive(std::chrono::duration<double> interval, std::function<void()> job, KeepAlive when) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      keep_alive_ = std::move(job);
      keep_alive_interval_ = std::chrono::duration_cast<Clock::duration>(interval);
      keep_alive_when_ = when;
      keep_alive_due_ = Clock::now() + keep_alive_interval_;
      ++keep_alive_version_;
      if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
    }
    work_.notify_one();
  }

  /// Stops the keep-alive (a finished run is not kept alive).
  void stop_keep_alive() {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      keep_alive_ = nullptr;
      ++keep_alive_version_;
    }
    work_.notify_one();
  }

 private:
  void rethrow_locked() {
    if (failure_) std::rethrow_exception(failure_);
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      if (keep_alive_ && !failure_) {
        const auto version = keep_alive_version_;
        const bool woken = work_.wait_until(lock, keep_alive_due_, [&] {
          return !jobs_.empty() || stopping_ || keep_alive_version_ != version;
        });
        if (keep_alive_version_ != version) continue;  // replaced or stopped: wait on the new terms
        const bool due = !woken || (keep_alive_when_ == KeepAlive::periodic && !jobs_.empty() &&
                                    Clock::now() >= keep_alive_due_);
        if (due) {
          const auto keep_alive = keep_alive_;  // a copy: set_keep_alive may replace it while it runs
          execute(lock, keep_alive);
          keep_alive_due_ = Clock::now() + keep_alive_interval_;
          continue;
        }
      } else {
        work_.wait(lock, [this] { return !jobs_.empty() || stopping_ || (keep_alive_ && !failure_); });
        if (jobs_.empty() && !stopping_) continue;  // a keep-alive was set
      }
      if (jobs_.empty()) return;  // stopping, and everything submitted has run
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      execute(lock, job);
      if (keep_alive_when_ == KeepAlive::when_idle) keep_alive_due_ = Clock::now() + keep_alive_interval_;
    }
  }

  // Runs `job` without the lock; its failure becomes the queue's and drops the jobs queued behind it.
  void execute(std::unique_lock<std::mutex>& lock, const std::function<void()>& job) {
    busy_ = true;
    lock.unlock();
    std::exception_ptr error;
    try {
      job();
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    busy_ = false;
    if (error && !failure_) {
      failure_ = error;
      jobs_.clear();
    }
    idle_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> jobs_;
  bool busy_ = false;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::function<void()> keep_alive_;
  Clock::duration keep_alive_interval_{};
  KeepAlive keep_alive_when_ = KeepAlive::when_idle;
  Clock::time_point keep_alive_due_{};
  std::uint64_t keep_alive_version_ = 0;  // changes when set_keep_alive or stop_keep_alive changes the terms
  std::thread worker_;
};

}  // namespace torchfit::detail

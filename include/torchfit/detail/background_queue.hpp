// SPDX-License-Identifier: MIT
// A worker thread that runs a tracker's slow calls (network requests) in order, off the training thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace torchfit::detail {

/// Runs submitted jobs one at a time, in submission order, on a thread started by the first submit(). The first
/// job that throws stops the queue: later jobs are dropped, and the exception reaches the owner through
/// rethrow_if_failed(), submit() or drain(), on the owner's thread, where a tracker's failure isolation handles
/// it. The destructor waits for the jobs already submitted.
class BackgroundQueue {
 public:
  BackgroundQueue() = default;
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

  void rethrow_if_failed() {
    std::unique_lock<std::mutex> lock(mutex_);
    rethrow_locked();
  }

 private:
  void rethrow_locked() {
    if (failure_) std::rethrow_exception(failure_);
  }

  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      work_.wait(lock, [this] { return !jobs_.empty() || stopping_; });
      if (jobs_.empty()) return;  // stopping, and everything submitted has run
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
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
  }

  std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> jobs_;
  bool busy_ = false;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::thread worker_;
};

}  // namespace torchfit::detail

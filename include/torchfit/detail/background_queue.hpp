// SPDX-License-Identifier: MIT
// A worker thread that runs a tracker's slow calls (network requests) in order, off the training thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

namespace torchfit::detail {

/// Runs submitted jobs one at a time, in submission order, on one thread started by the first submit() (an
/// owner that never submits costs no thread). The first job that throws stops the queue: the jobs after it
/// are dropped, since they would build on a call that did not happen, and the exception is rethrown on the
/// owner's thread by rethrow_if_failed(), submit() and drain(), for a tracker's failure isolation to handle.
class BackgroundQueue {
 public:
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

  /// From now on, runs `job` whenever the queue has been idle for `interval` (a keep-alive for a server that
  /// takes silence for a dead client); it fails like a submitted job. Starts the thread. An empty `job`
  /// stops the keep-alive.
  void set_idle_job(std::chrono::duration<double> interval, std::function<void()> job) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      idle_interval_ = std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval);
      idle_job_ = std::move(job);
      if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
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
      const auto ready = [this] { return !jobs_.empty() || stopping_; };
      if (idle_job_ && !failure_) {
        if (!work_.wait_for(lock, idle_interval_, ready)) {
          if (idle_job_ && !failure_) {         // not stopped while waiting
            const auto keep_alive = idle_job_;  // a copy: set_idle_job may replace it while it runs
            execute(lock, keep_alive);
          }
          continue;
        }
      } else {
        work_.wait(lock, ready);
      }
      if (jobs_.empty()) return;  // stopping, and everything submitted has run
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      execute(lock, job);
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
  std::function<void()> idle_job_;
  std::chrono::steady_clock::duration idle_interval_{};
  std::thread worker_;
};

}  // namespace torchfit::detail

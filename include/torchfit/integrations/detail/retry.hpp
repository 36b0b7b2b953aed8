// SPDX-License-Identifier: MIT
// How the trackers that talk to a server retry: the policy, the error that says a failure may pass, and the
// retry loop the training thread's calls and the background rows share.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/integrations/detail/tracker_common.hpp"

namespace torchfit {

/// How a tracker retries a request that failed for a reason that may pass (no answer: refused, reset or timed
/// out; HTTP 408, 409, 429 or 5xx): retry n (n = 0, 1, ...) comes min(initial_backoff_s * 2^n, max_backoff_s)
/// seconds after the failure, and each attempt is cut off after request_timeout_s. Without max_retries or
/// total_timeout_s, rows are retried for as long as the run lasts; the calls the training thread waits for
/// (opening the run) give up after the tracker's flush timeout.
struct RetryPolicy {
  RetryPolicy() = default;
  RetryPolicy(double initial_backoff, double max_backoff, double request_timeout,
              std::optional<int> retries = std::nullopt, std::optional<double> total_timeout = std::nullopt)
      : initial_backoff_s(initial_backoff),
        max_backoff_s(max_backoff),
        request_timeout_s(request_timeout),
        max_retries(retries),
        total_timeout_s(total_timeout) {}

  double initial_backoff_s = 2;
  double max_backoff_s = 60;
  double request_timeout_s = 30;
  /// The most retries of one request; unset: no limit.
  std::optional<int> max_retries;
  /// A request still failing this many seconds after its first attempt fails; unset: no limit.
  std::optional<double> total_timeout_s;

  /// The wait before retry `n` (0: the first retry), in seconds.
  double backoff_s(int n) const {
    return std::min(max_backoff_s, initial_backoff_s * std::pow(2.0, std::min(n, 62)));
  }

  /// Whether a request tried `attempts` times may be tried again `elapsed_s` seconds after its first attempt.
  bool allows_retry(int attempts, double elapsed_s) const {
    return (!max_retries || attempts <= *max_retries) && (!total_timeout_s || elapsed_s < *total_timeout_s);
  }
};

}  // namespace torchfit

namespace torchfit::detail {

/// A request that failed for a reason that may pass: worth sending again.
class TransientError : public Error {
 public:
  /// `request` names it ("POST https://..."), `cause` says what went wrong ("HTTP 503: ...", "Timeout was
  /// reached").
  TransientError(std::string request, std::string cause)
      : Error(request + ": " + cause), request_(std::move(request)), cause_(std::move(cause)) {}

  const std::string& request() const { return request_; }
  const std::string& cause() const { return cause_; }

 private:
  std::string request_;
  std::string cause_;
};

/// How long the end of training waits for a tracker's unsent rows, in seconds: the tracker's option when set,
/// else TORCHFIT_TRACKER_FLUSH_TIMEOUT, else 60.
inline double flush_timeout_s(const std::optional<double>& option) {
  return option ? *option : env_number("TORCHFIT_TRACKER_FLUSH_TIMEOUT").value_or(60);
}

/// Calls `attempt` until it returns, retrying a TransientError as `policy` allows and for at most `limit_s`
/// seconds; `wait(seconds)` sleeps between attempts and returns false to stop early, which rethrows the last
/// TransientError. Retries that run out throw torchfit::Error naming the request, the attempts and the cause.
template <typename Attempt, typename Wait>
auto with_retries(const RetryPolicy& policy, double limit_s, Attempt&& attempt, Wait&& wait)
    -> decltype(attempt()) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  for (int attempts = 1;; ++attempts) {
    try {
      return attempt();
    } catch (const TransientError& e) {
      const double wait_s = policy.backoff_s(attempts - 1);
      const double resume_s = std::chrono::duration<double>(Clock::now() - start).count() + wait_s;
      if (!policy.allows_retry(attempts, resume_s) || resume_s >= limit_s)
        throw Error(fmt::format("{} failed after {} attempt{} in {:.1f} s: {}", e.request(), attempts,
                                attempts == 1 ? "" : "s",
                                std::chrono::duration<double>(Clock::now() - start).count(), e.cause()));
      if (!wait(wait_s)) throw;
    }
  }
}

/// with_retries for a call the calling thread waits for: it sleeps between attempts.
template <typename Attempt>
auto with_retries(const RetryPolicy& policy, double limit_s, Attempt&& attempt) -> decltype(attempt()) {
  return with_retries(policy, limit_s, std::forward<Attempt>(attempt), [](double seconds) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    return true;
  });
}

/// The calls the training thread waits for (opening a run): each retried as `policy` allows, for at most the
/// tracker's flush timeout (see flush_timeout_s).
class RetryingCalls {
 public:
  RetryingCalls(const RetryPolicy& policy, const std::optional<double>& flush_timeout)
      : policy_(policy), limit_s_(flush_timeout_s(flush_timeout)) {}

  template <typename Call>
  auto operator()(Call&& call) const -> decltype(call()) {
    return with_retries(policy_, limit_s_, std::forward<Call>(call));
  }

 private:
  RetryPolicy policy_;
  double limit_s_;
};

}  // namespace torchfit::detail

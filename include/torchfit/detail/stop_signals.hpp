// SPDX-License-Identifier: MIT
#pragma once

#include <signal.h>

#include <atomic>
#include <string>

namespace torchfit::detail {

/// While alive (the Trainer keeps one during train()), SIGINT and SIGTERM, what Ctrl-C, `timeout`, SLURM
/// preemption and Kubernetes send, become a request to stop cleanly at the end of the current optimizer step; a
/// second signal ends the process at once, with the signal's default action. The previous handlers come back at
/// destruction.
class StopSignals {
 public:
  StopSignals() {
    received_ = 0;
    struct sigaction action {};
    action.sa_handler = &StopSignals::handle;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // a system call interrupted mid-checkpoint carries on
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  /// The signal received since construction, or 0.
  int received() const { return received_.load(std::memory_order_relaxed); }

  /// "SIGINT" or "SIGTERM".
  static std::string name(int signal) {
    return signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "signal " + std::to_string(signal);
  }

 private:
  // Async-signal-safe: an atomic store, or restoring the default action and raising again.
  static void handle(int signal) {
    if (received_.exchange(signal) == 0) return;
    ::signal(signal, SIG_DFL);
    ::raise(signal);
  }

  static inline std::atomic<int> received_{0};
  struct sigaction previous_int_ {};
  struct sigaction previous_term_ {};
};

}  // namespace torchfit::detail

// SPDX-License-Identifier: MIT
#pragma once

#include <iostream>

#include "torchfit/detail/py_json.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_state.hpp"

namespace torchfit {

/// Prints every log as Python prints a dict (HF's PrinterCallback, used when disable_tqdm is set), without
/// `total_flos`, on the local process zero. HF pops total_flos from the shared logs; logs are const here, so
/// it is only left out of the printed copy.
class PrinterCallback : public TrainerCallback {
 public:
  explicit PrinterCallback(std::ostream& out = std::cout) : out_(out) {}

  void on_log(const Args&, TrainerState& state, TrainerControl&, const CallbackContext& ctx) override {
    if (!state.is_local_process_zero) return;
    Logs shown = *ctx.logs;
    shown.erase("total_flos");
    out_ << detail::python_repr(shown) << '\n' << std::flush;
  }

 private:
  std::ostream& out_;
};

}  // namespace torchfit

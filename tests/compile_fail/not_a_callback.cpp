// SPDX-License-Identifier: MIT
// expect: callbacks must derive from torchfit::TrainerCallback
#include <torchfit/torchfit.hpp>

struct Logger {  // forgot ": torchfit::TrainerCallback"
  void on_log() {}
};

int main() {
  torchfit::CallbackHandler handler;
  handler.add_callback<Logger>();
}

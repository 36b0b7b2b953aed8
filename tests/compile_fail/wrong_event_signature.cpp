// SPDX-License-Identifier: MIT
// expect: but does not override
#include <torchfit/torchfit.hpp>

struct Logger : torchfit::TrainerCallback {
  // The context argument is missing: `override` turns the silent non-override into an error.
  void on_log(const Args&, torchfit::TrainerState&, torchfit::TrainerControl&) override {}
};

int main() {
  torchfit::CallbackHandler handler;
  handler.add_callback<Logger>();
}

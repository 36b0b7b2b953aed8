// SPDX-License-Identifier: MIT
// An unrelated program using an installed / vendored torchfit: a callback with `override`, and a TrainerState
// round trip through trainer_state.json.
#include <torchfit/torchfit.hpp>

#include <iostream>

struct CountSteps : torchfit::TrainerCallback {
  void on_step_end(const Args&, torchfit::TrainerState&, torchfit::TrainerControl&,
                   const torchfit::CallbackContext&) override {
    ++steps;
  }
  int steps = 0;
};

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  torchfit::CallbackHandler handler;
  auto counter = handler.add_callback<CountSteps>();
  torchfit::TrainingArguments args;
  torchfit::TrainerState state;
  torchfit::TrainerControl control;
  handler.on_step_end(args, state, control);

  state.global_step = 3;
  state.epoch = 0.30000000000000004;
  state.log_history.push_back(torchfit::Logs{{"loss", 1e-05}, {"step", 3}});
  state.save_to_json(argv[1]);
  const auto loaded = torchfit::TrainerState::load_from_json(argv[1]);
  const bool ok = counter->steps == 1 && loaded.to_json_string() == state.to_json_string() &&
                  loaded.global_step == 3 && *loaded.epoch == 0.30000000000000004;
  std::cout << (ok ? "consumer: ok\n" : "consumer: FAILED\n");
  return ok ? 0 : 1;
}

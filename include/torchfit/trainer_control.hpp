// SPDX-License-Identifier: MIT
#pragma once

#include <string>

#include "torchfit/json.hpp"

namespace torchfit {

/// The flags callbacks raise to steer the loop (HF's TrainerControl). The handler resets them as HF does:
/// should_training_stop at train begin, should_epoch_stop at epoch begin, should_log / should_evaluate /
/// should_save at step begin, and each of the last three right before its own event (on_log, on_evaluate, on_save).
struct TrainerControl {
  bool should_training_stop = false;
  bool should_epoch_stop = false;
  bool should_save = false;
  bool should_evaluate = false;
  bool should_log = false;
  /// Why training was stopped, when a callback wants the decision kept: a resumed run whose checkpoint recorded a
  /// stop with a reason does not train further (HF forgets early stops on resume, #10290). Empty otherwise.
  std::string stop_reason;

  /// Stops training and records why; the reason is saved in checkpoints and honoured on resume.
  void stop_training(std::string reason) {
    should_training_stop = true;
    stop_reason = std::move(reason);
  }

  /// HF's ExportableState form: {"args": {the five flags}, "attributes": {}} (plus stop_reason when set).
  json state() const {
    json attributes = json::object();
    if (!stop_reason.empty()) attributes["stop_reason"] = stop_reason;
    return json{{"args",
                 {{"should_epoch_stop", should_epoch_stop},
                  {"should_evaluate", should_evaluate},
                  {"should_log", should_log},
                  {"should_save", should_save},
                  {"should_training_stop", should_training_stop}}},
                {"attributes", attributes}};
  }

  /// Rebuilds a control from state(); missing flags default to false (as HF's constructor defaults).
  static TrainerControl from_state(const json& s) {
    TrainerControl c;
    const json& a = s.contains("args") ? s.at("args") : json::object();
    c.should_epoch_stop = a.value("should_epoch_stop", false);
    c.should_evaluate = a.value("should_evaluate", false);
    c.should_log = a.value("should_log", false);
    c.should_save = a.value("should_save", false);
    c.should_training_stop = a.value("should_training_stop", false);
    if (s.contains("attributes")) c.stop_reason = s.at("attributes").value("stop_reason", std::string{});
    return c;
  }

  friend bool operator==(const TrainerControl& a, const TrainerControl& b) {
    return a.should_training_stop == b.should_training_stop && a.should_epoch_stop == b.should_epoch_stop &&
           a.should_save == b.should_save && a.should_evaluate == b.should_evaluate &&
           a.should_log == b.should_log && a.stop_reason == b.stop_reason;
  }
};

}  // namespace torchfit

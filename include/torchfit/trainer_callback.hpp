// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/detail/type_name.hpp"
#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/trainer_control.hpp"

namespace torchfit {

struct TrainingArguments;
struct TrainerState;
class LRScheduler;

/// Size of a data loader, as callbacks see it (HF passes the loader itself; its length is what they use).
struct LoaderInfo {
  int64_t num_batches = 0;
  int64_t num_samples = 0;
  int64_t batch_size = 0;
};

/// The keyword arguments of an event (HF's **kwargs). Members that do not apply to an event are null.
/// New members may be added in later versions without breaking callbacks.
struct CallbackContext {
  /// The model being trained, as a plain module; `model_as<Net>()` gives the typed one.
  std::shared_ptr<torch::nn::Module> model;
  /// Null until train() sets them up (HF: optimizer, lr_scheduler).
  torch::optim::Optimizer* optimizer = nullptr;
  LRScheduler* lr_scheduler = nullptr;
  /// Null until train() starts / until the first evaluation or prediction.
  const LoaderInfo* train_dataloader = nullptr;
  const LoaderInfo* eval_dataloader = nullptr;

  /// on_log: the entry just appended to state.log_history (without "step").
  const Logs* logs = nullptr;
  /// on_evaluate, on_predict: the metrics returned to the caller, and the prefix of their keys ("eval",
  /// "eval_<name>" for a named eval dataset, "test", or the metric_key_prefix given to evaluate/predict).
  const Logs* metrics = nullptr;
  const std::string* metric_key_prefix = nullptr;
  /// Step events (on_step_begin excluded): the detached loss of the last micro-batch, still on the device.
  /// Reading it (`.item()`) forces a host-device sync: do it only when needed.
  const torch::Tensor* loss = nullptr;
  /// on_save: the checkpoint directory just written.
  const std::filesystem::path* checkpoint_dir = nullptr;

  /// The model as its concrete module type, e.g. `ctx.model_as<NetImpl>()`; throws if it is another type.
  template <typename ModuleImpl>
  ModuleImpl& model_as() const {
    auto* typed = dynamic_cast<ModuleImpl*>(model.get());
    if (typed == nullptr)
      throw Error(fmt::format("CallbackContext::model_as: the model is not a {}",
                              detail::short_type_name(typeid(ModuleImpl))));
    return *typed;
  }
};

/// Base of every callback: one no-op virtual per HF event. Override the events you need (with `override`, so a
/// wrong signature is a compile error). To replace the control object as an HF callback does by returning one,
/// assign to `control`; the next callback sees the new value.
///
/// A callback is stateful when state() returns a JSON object {"args": ..., "attributes": ...}: it is saved in
/// each checkpoint under state_key() and handed back to load_state() on resume.
class TrainerCallback {
 public:
  virtual ~TrainerCallback() = default;

  using Args = TrainingArguments;

  virtual void on_init_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_train_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_train_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_epoch_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_epoch_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_step_begin(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_pre_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_optimizer_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_substep_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_step_end(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_evaluate(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_predict(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_save(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}
  virtual void on_prediction_step(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) {}

  /// Class name without namespaces, as HF's callback_list shows it.
  virtual std::string name() const { return detail::short_type_name(typeid(*this)); }

  /// Stateful callbacks return {"args": {...}, "attributes": {...}}; null (the default) means not stateful.
  virtual json state() const { return nullptr; }
  /// Restores what state() returned in a checkpoint.
  virtual void load_state(const json& /*state*/) {}
  /// Key under TrainerState::stateful_callbacks; the class name by default (HF). Several instances sharing a key
  /// are stored as a list in callback order.
  virtual std::string state_key() const { return name(); }

  /// When true, an exception thrown by this callback is reported once and the callback is disabled instead of
  /// stopping training (experiment trackers).
  virtual bool isolate_failures() const { return false; }
};

}  // namespace torchfit

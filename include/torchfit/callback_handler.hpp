// SPDX-License-Identifier: MIT
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_callback.hpp"
#include "torchfit/trainer_control.hpp"

namespace torchfit {

/// The events of TrainerCallback, used to index dispatch lists.
enum class Event : unsigned {
  init_end,
  train_begin,
  train_end,
  epoch_begin,
  epoch_end,
  step_begin,
  pre_optimizer_step,
  optimizer_step,
  substep_end,
  step_end,
  evaluate,
  predict,
  save,
  log,
  prediction_step,
};
inline constexpr std::size_t event_count = 15;
using EventMask = std::uint32_t;
inline constexpr EventMask all_events = (EventMask{1} << event_count) - 1;
constexpr EventMask event_bit(Event e) { return EventMask{1} << static_cast<unsigned>(e); }

/// The events a callback type overrides, found at compile time: `&T::on_x` has type `void (T::*)(...)` when T (or
/// a base between T and TrainerCallback) overrides it, and `void (TrainerCallback::*)(...)` otherwise.
template <typename T>
constexpr EventMask overridden_events() {
  static_assert(std::is_base_of_v<TrainerCallback, T>,
                "callbacks must derive from torchfit::TrainerCallback");
  if constexpr (std::is_same_v<T, TrainerCallback>) {
    return all_events;  // static type unknown: assume every event
  } else {
    EventMask mask = 0;
#define TORCHFIT_DETECT_OVERRIDE(event)                                                            \
  if constexpr (!std::is_same_v<decltype(&T::on_##event), decltype(&TrainerCallback::on_##event)>) \
    mask |= event_bit(Event::event);
    TORCHFIT_DETECT_OVERRIDE(init_end)
    TORCHFIT_DETECT_OVERRIDE(train_begin)
    TORCHFIT_DETECT_OVERRIDE(train_end)
    TORCHFIT_DETECT_OVERRIDE(epoch_begin)
    TORCHFIT_DETECT_OVERRIDE(epoch_end)
    TORCHFIT_DETECT_OVERRIDE(step_begin)
    TORCHFIT_DETECT_OVERRIDE(pre_optimizer_step)
    TORCHFIT_DETECT_OVERRIDE(optimizer_step)
    TORCHFIT_DETECT_OVERRIDE(substep_end)
    TORCHFIT_DETECT_OVERRIDE(step_end)
    TORCHFIT_DETECT_OVERRIDE(evaluate)
    TORCHFIT_DETECT_OVERRIDE(predict)
    TORCHFIT_DETECT_OVERRIDE(save)
    TORCHFIT_DETECT_OVERRIDE(log)
    TORCHFIT_DETECT_OVERRIDE(prediction_step)
#undef TORCHFIT_DETECT_OVERRIDE
    return mask;
  }
}

/// A callback and the events its static type overrides, so that a list of callbacks of different types keeps
/// what add_callback would know: `{std::make_shared<A>(), std::make_shared<B>(3)}`.
class CallbackRef {
 public:
  template <typename T>
  CallbackRef(
      std::shared_ptr<T> callback)  // NOLINT(google-explicit-constructor): reads as the pointer it holds
      : callback_(std::move(callback)), events_(overridden_events<T>()) {}
  const std::shared_ptr<TrainerCallback>& callback() const { return callback_; }
  EventMask events() const { return events_; }

 private:
  std::shared_ptr<TrainerCallback> callback_;
  EventMask events_;
};

/// Callbacks handed to the Trainer's constructor (HF's `Trainer(callbacks=[...])`).
using CallbackList = std::vector<CallbackRef>;

/// Ordered list of callbacks and event dispatch (HF's CallbackHandler). Every callback sees every event it
/// overrides, in list order; hot events visit only the callbacks that override them.
///
/// Callbacks added with `add_callback` go before the "tail" (the progress/printer callback the Trainer keeps
/// last), so the default order is DefaultFlow, integrations, user callbacks, Progress|Printer.
class CallbackHandler {
 public:
  using Args = TrainingArguments;

  /// Shared references every event receives (model, optimizer, scheduler, loaders).
  CallbackContext& context() { return context_; }
  const CallbackContext& context() const { return context_; }

  /// Constructs a T in place from `ctor_args` and adds it.
  template <typename T, typename... CtorArgs>
  std::shared_ptr<T> add_callback(CtorArgs&&... ctor_args) {
    return add_callback(std::make_shared<T>(std::forward<CtorArgs>(ctor_args)...));
  }

  /// Adds an existing callback; its static type decides which events it is visited for.
  template <typename T>
  std::shared_ptr<T> add_callback(std::shared_ptr<T> callback) {
    insert(callback, overridden_events<T>(), tail_begin());
    return callback;
  }

  /// Adds a callback from a CallbackList.
  void add_callback(const CallbackRef& ref) { insert(ref.callback(), ref.events(), tail_begin()); }

  /// Adds a callback that stays after every later add_callback (the Trainer's Progress/Printer).
  template <typename T>
  std::shared_ptr<T> add_tail_callback(std::shared_ptr<T> callback) {
    insert(callback, overridden_events<T>(), entries_.size());
    ++tail_size_;
    return callback;
  }

  /// Removes and returns the first callback that is a T (or derives from it); null if none (HF).
  template <typename T>
  std::shared_ptr<T> pop_callback() {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (auto typed = std::dynamic_pointer_cast<T>(entries_[i].callback)) {
        erase(i);
        return typed;
      }
    return nullptr;
  }

  /// Removes and returns this exact callback; null if it is not registered (HF).
  std::shared_ptr<TrainerCallback> pop_callback(const TrainerCallback& callback) {
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].callback.get() == &callback) {
        auto found = entries_[i].callback;
        erase(i);
        return found;
      }
    return nullptr;
  }

  /// Removes the first callback that is a T; does nothing if there is none (HF).
  template <typename T>
  void remove_callback() {
    pop_callback<T>();
  }

  /// Removes this exact callback; throws if it is not registered (HF raises ValueError).
  void remove_callback(const TrainerCallback& callback) {
    if (!pop_callback(callback))
      throw Error(
          fmt::format("remove_callback: the {} given is not registered with this trainer", callback.name()));
  }

  /// Class names, one per line, in call order (HF's callback_list).
  std::string callback_list() const {
    std::string out;
    for (const auto& e : entries_) {
      if (!out.empty()) out += '\n';
      out += e.callback->name();
    }
    return out;
  }

  /// The callbacks in call order.
  std::vector<std::shared_ptr<TrainerCallback>> callbacks() const {
    std::vector<std::shared_ptr<TrainerCallback>> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.push_back(e.callback);
    return out;
  }

  /// The events the callback at `index` is visited for.
  EventMask events_of(std::size_t index) const { return entries_.at(index).events; }

  // ---- events, with HF's control resets ----

  void on_init_end(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_init_end>(Event::init_end, a, s, c);
  }
  void on_train_begin(const Args& a, TrainerState& s, TrainerControl& c) {
    c.should_training_stop = false;
    c.stop_reason.clear();
    dispatch<&TrainerCallback::on_train_begin>(Event::train_begin, a, s, c);
  }
  void on_train_end(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_train_end>(Event::train_end, a, s, c);
  }
  void on_epoch_begin(const Args& a, TrainerState& s, TrainerControl& c) {
    c.should_epoch_stop = false;
    dispatch<&TrainerCallback::on_epoch_begin>(Event::epoch_begin, a, s, c);
  }
  void on_epoch_end(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_epoch_end>(Event::epoch_end, a, s, c);
  }
  void on_step_begin(const Args& a, TrainerState& s, TrainerControl& c) {
    c.should_log = c.should_evaluate = c.should_save = false;
    dispatch<&TrainerCallback::on_step_begin>(Event::step_begin, a, s, c);
  }
  void on_pre_optimizer_step(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_pre_optimizer_step>(Event::pre_optimizer_step, a, s, c);
  }
  void on_optimizer_step(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_optimizer_step>(Event::optimizer_step, a, s, c);
  }
  void on_substep_end(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_substep_end>(Event::substep_end, a, s, c);
  }
  void on_step_end(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_step_end>(Event::step_end, a, s, c);
  }
  void on_prediction_step(const Args& a, TrainerState& s, TrainerControl& c) {
    dispatch<&TrainerCallback::on_prediction_step>(Event::prediction_step, a, s, c);
  }

  void on_evaluate(const Args& a, TrainerState& s, TrainerControl& c, const Logs& metrics,
                   const std::string& metric_key_prefix = "eval") {
    c.should_evaluate = false;
    Scoped<const Logs*> set(context_.metrics, &metrics);
    Scoped<const std::string*> set_prefix(context_.metric_key_prefix, &metric_key_prefix);
    dispatch<&TrainerCallback::on_evaluate>(Event::evaluate, a, s, c);
  }
  void on_predict(const Args& a, TrainerState& s, TrainerControl& c, const Logs& metrics,
                  const std::string& metric_key_prefix = "test") {
    Scoped<const Logs*> set(context_.metrics, &metrics);
    Scoped<const std::string*> set_prefix(context_.metric_key_prefix, &metric_key_prefix);
    dispatch<&TrainerCallback::on_predict>(Event::predict, a, s, c);
  }
  void on_save(const Args& a, TrainerState& s, TrainerControl& c,
               const std::filesystem::path& checkpoint_dir) {
    c.should_save = false;
    Scoped<const std::filesystem::path*> set(context_.checkpoint_dir, &checkpoint_dir);
    dispatch<&TrainerCallback::on_save>(Event::save, a, s, c);
  }
  void on_log(const Args& a, TrainerState& s, TrainerControl& c, const Logs& logs) {
    c.should_log = false;
    Scoped<const Logs*> set(context_.logs, &logs);
    dispatch<&TrainerCallback::on_log>(Event::log, a, s, c);
  }

  /// Whether any callback is visited for `event` (lets the Trainer skip building arguments nobody reads).
  bool has_listeners(Event event) const { return !by_event_[static_cast<unsigned>(event)].empty(); }

  // ---- stateful callbacks, saved in checkpoints ----

  /// Each stateful callback's state() under its state_key(), and `control`'s under "TrainerControl" (HF's
  /// TrainerState.stateful_callbacks). Several callbacks sharing a key are stored as a list in callback order.
  /// Built anew on every save: never appended to, unlike HF (#33875).
  json states(const TrainerControl& control) const {
    json out = json::object();
    for (const auto& e : entries_) {
      json s = e.callback->state();
      if (s.is_null()) continue;
      const std::string key = e.callback->state_key();
      if (!out.contains(key)) {
        out[key] = std::move(s);
      } else {
        if (!out[key].is_array()) out[key] = json::array({out[key]});
        out[key].push_back(std::move(s));
      }
    }
    out["TrainerControl"] = control.state();
    return out;
  }

  /// Hands what states() stored back to the callbacks: the state under a key to the callback with that key (the
  /// n-th of a list to the n-th such callback), and replaces `control` by the stored TrainerControl. All or
  /// nothing: a state that does not load throws CheckpointError naming its key, with every callback and `control`
  /// as they were. Keys no callback has are ignored with one warning (HF).
  void restore_states(const json& stored, TrainerControl& control) {
    if (!stored.is_object())
      throw CheckpointError(
          fmt::format("stateful_callbacks must be a JSON object (got a JSON {})", stored.type_name()));
    TrainerControl restored_control = control;
    std::vector<std::pair<TrainerCallback*, json>>
        restored;  // each callback given a state, with its state before
    std::vector<std::string> unmatched;
    const std::string* key = nullptr;
    const auto undo = [&] {
      for (auto it = restored.rbegin(); it != restored.rend(); ++it)
        if (!it->second.is_null()) it->first->load_state(it->second);
    };
    try {
      for (const auto& item : stored.items()) {
        key = &item.key();
        if (*key == "TrainerControl") {
          restored_control = TrainerControl::from_state(item.value());
          continue;
        }
        const json& value = item.value();
        std::size_t index = 0;
        for (const auto& e : entries_) {
          if (e.callback->state_key() != *key) continue;
          const json* state = !value.is_array() ? (index == 0 ? &value : nullptr)
                                                : (index < value.size() ? &value[index] : nullptr);
          ++index;
          if (state == nullptr) continue;
          restored.emplace_back(e.callback.get(), e.callback->state());
          e.callback->load_state(*state);
        }
        if (index == 0) unmatched.push_back(*key);
      }
    } catch (const std::exception& e) {
      undo();
      throw CheckpointError(
          fmt::format("stateful_callbacks: the state stored under \"{}\" does not load: {}", *key, e.what()));
    } catch (...) {
      undo();
      throw;
    }
    control = restored_control;
    if (!unmatched.empty()) {
      std::string names;
      for (const auto& n : unmatched) names += (names.empty() ? "" : ", ") + n;
      log::warning("Checkpoint included callbacks not included in current configuration. Ignoring. ({})",
                   names);
    }
  }

 private:
  struct Entry {
    std::shared_ptr<TrainerCallback> callback;
    EventMask events;
    bool isolate_failures;
  };

  // Sets a context member for the duration of one event; nested events (an evaluation inside a step) keep theirs.
  template <typename T>
  struct Scoped {
    Scoped(T& slot, T value) : slot_(slot), saved_(std::exchange(slot, value)) {}
    ~Scoped() { slot_ = saved_; }
    Scoped(const Scoped&) = delete;
    Scoped& operator=(const Scoped&) = delete;
    T& slot_;
    T saved_;
  };

  using Method = void (TrainerCallback::*)(const Args&, TrainerState&, TrainerControl&,
                                           const CallbackContext&);

  template <Method method>
  void dispatch(Event event, const Args& args, TrainerState& state, TrainerControl& control) {
    const auto& listeners = by_event_[static_cast<unsigned>(event)];
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      Entry* entry = listeners[i];
      if (!entry->isolate_failures) {
        (entry->callback.get()->*method)(args, state, control, context_);
        continue;
      }
      try {
        (entry->callback.get()->*method)(args, state, control, context_);
      } catch (const std::exception& e) {
        disable(*entry, e.what());
        --i;  // the listener list shrank under us
      }
    }
  }

  void disable(Entry& entry, const std::string& cause) {
    log::warning("{} failed and is disabled for the rest of this run: {}", entry.callback->name(), cause);
    for (std::size_t i = 0; i < entries_.size(); ++i)
      if (&entries_[i] == &entry) return erase(i);
  }

  std::size_t tail_begin() const { return entries_.size() - tail_size_; }

  void insert(std::shared_ptr<TrainerCallback> callback, EventMask events, std::size_t position) {
    if (!callback) throw Error("add_callback: the callback is null");
    const auto& added = *callback;
    for (const auto& e : entries_)
      if (typeid(*e.callback) == typeid(added))
        log::warning(
            "You are adding a {} to the callbacks of this Trainer, but there is already one. The current "
            "list of "
            "callbacks is:\n{}",
            added.name(), callback_list());
    const bool isolate = callback->isolate_failures();
    entries_.insert(entries_.begin() + static_cast<std::ptrdiff_t>(position),
                    Entry{std::move(callback), events, isolate});
    rebuild();
  }

  void erase(std::size_t index) {
    if (index >= tail_begin()) --tail_size_;
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(index));
    rebuild();
  }

  void rebuild() {
    for (auto& list : by_event_) list.clear();
    for (auto& e : entries_)
      for (unsigned ev = 0; ev < event_count; ++ev)
        if (e.events & (EventMask{1} << ev)) by_event_[ev].push_back(&e);
  }

  std::vector<Entry> entries_;
  std::size_t tail_size_ = 0;
  std::array<std::vector<Entry*>, event_count> by_event_;
  CallbackContext context_;
};

}  // namespace torchfit

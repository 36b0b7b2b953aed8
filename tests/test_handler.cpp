// SPDX-License-Identifier: MIT
#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/callback_handler.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

using namespace torchfit;

namespace {

struct Trace {
  std::vector<std::string> events;
};

// Records (name:event) for every event it overrides.
struct LogOnly : TrainerCallback {
  explicit LogOnly(Trace& t, std::string name = "log") : trace(t), id(std::move(name)) {}
  void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    trace.events.push_back(id + ":log");
  }
  Trace& trace;
  std::string id;
};

struct StepEnd : TrainerCallback {
  explicit StepEnd(Trace& t, std::string name = "step") : trace(t), id(std::move(name)) {}
  void on_step_end(const Args&, TrainerState&, TrainerControl& control, const CallbackContext&) override {
    trace.events.push_back(id + ":step_end:" + (control.should_save ? "save" : "nosave"));
  }
  Trace& trace;
  std::string id;
};

// Raises should_save, then a later callback replaces the control wholesale.
struct RaiseSave : TrainerCallback {
  void on_step_end(const Args&, TrainerState&, TrainerControl& control, const CallbackContext&) override {
    control.should_save = true;
  }
};
struct ReplaceControl : TrainerCallback {
  void on_step_end(const Args&, TrainerState&, TrainerControl& control, const CallbackContext&) override {
    control = TrainerControl{};
    control.should_log = true;
  }
};

struct Derived : StepEnd {
  using StepEnd::StepEnd;
};

struct Throws : TrainerCallback {
  void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
    throw std::runtime_error("disk full");
  }
  bool isolate_failures() const override { return true; }
};

struct Stateful : TrainerCallback {
  json state() const override { return {{"args", json::object()}, {"attributes", {{"n", 1}}}}; }
};

}  // namespace

TEST_CASE("override detection finds exactly the overridden events", "[handler]") {
  STATIC_REQUIRE(overridden_events<LogOnly>() == event_bit(Event::log));
  STATIC_REQUIRE(overridden_events<StepEnd>() == event_bit(Event::step_end));
  STATIC_REQUIRE(overridden_events<Derived>() == event_bit(Event::step_end));  // inherited override counts
  STATIC_REQUIRE(overridden_events<Stateful>() == 0);
  STATIC_REQUIRE(overridden_events<TrainerCallback>() == all_events);
}

TEST_CASE("a callback that overrides only on_log is not visited on on_step_end", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  handler.add_callback<LogOnly>(trace);
  handler.add_callback<StepEnd>(trace);
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  handler.on_step_end(args, state, control);
  CHECK(trace.events == std::vector<std::string>{"step:step_end:nosave"});
  CHECK(!handler.has_listeners(Event::substep_end));
  CHECK(handler.has_listeners(Event::log));
  CHECK(handler.events_of(0) == event_bit(Event::log));
}

TEST_CASE("callbacks are called in list order and see earlier changes to control", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;

  SECTION("in-place mutation is visible to later callbacks") {
    handler.add_callback<StepEnd>(trace, "first");
    handler.add_callback<RaiseSave>();
    handler.add_callback<StepEnd>(trace, "second");
    handler.on_step_end(args, state, control);
    CHECK(trace.events == std::vector<std::string>{"first:step_end:nosave", "second:step_end:save"});
    CHECK(control.should_save);
  }
  SECTION("assigning a new control replaces it for the rest of the dispatch and for the caller") {
    handler.add_callback<RaiseSave>();
    handler.add_callback<ReplaceControl>();
    handler.add_callback<StepEnd>(trace, "after");
    handler.on_step_end(args, state, control);
    CHECK(trace.events == std::vector<std::string>{"after:step_end:nosave"});
    CHECK(!control.should_save);
    CHECK(control.should_log);
  }
}

TEST_CASE("the handler resets control flags as HF does before each event", "[handler]") {
  CallbackHandler handler;
  TrainingArguments args;
  TrainerState state;
  const auto all_up = [] {
    TrainerControl c;
    c.should_training_stop = c.should_epoch_stop = c.should_save = c.should_evaluate = c.should_log = true;
    c.stop_reason = "x";
    return c;
  };
  TrainerControl c = all_up();
  handler.on_train_begin(args, state, c);
  CHECK((!c.should_training_stop && c.stop_reason.empty() && c.should_epoch_stop && c.should_save));
  c = all_up();
  handler.on_epoch_begin(args, state, c);
  CHECK((!c.should_epoch_stop && c.should_training_stop && c.should_log));
  c = all_up();
  handler.on_step_begin(args, state, c);
  CHECK((!c.should_log && !c.should_evaluate && !c.should_save && c.should_epoch_stop &&
         c.should_training_stop));
  c = all_up();
  handler.on_log(args, state, c, Logs::object());
  CHECK((!c.should_log && c.should_evaluate && c.should_save));
  c = all_up();
  handler.on_evaluate(args, state, c, Logs::object());
  CHECK((!c.should_evaluate && c.should_log && c.should_save));
  c = all_up();
  handler.on_save(args, state, c, "ckpt");
  CHECK((!c.should_save && c.should_log && c.should_evaluate));
  c = all_up();
  handler.on_step_end(args, state, c);
  handler.on_substep_end(args, state, c);
  handler.on_epoch_end(args, state, c);
  handler.on_predict(args, state, c, Logs::object());
  CHECK(c == all_up());
}

TEST_CASE("event arguments reach callbacks through the context and are cleared afterwards", "[handler]") {
  struct SeesLogs : TrainerCallback {
    void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext& ctx) override {
      REQUIRE(ctx.logs != nullptr);
      seen = ctx.logs->at("loss").get<double>();
      metrics_was_null = ctx.metrics == nullptr;
    }
    double seen = 0;
    bool metrics_was_null = false;
  };
  CallbackHandler handler;
  auto cb = handler.add_callback<SeesLogs>();
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  handler.on_log(args, state, control, Logs{{"loss", 0.25}});
  CHECK(cb->seen == 0.25);
  CHECK(cb->metrics_was_null);
  CHECK(handler.context().logs == nullptr);
}

TEST_CASE("pop_callback and remove_callback follow HF", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  auto a = handler.add_callback<StepEnd>(trace, "a");
  auto b = handler.add_callback<LogOnly>(trace, "b");
  auto d = handler.add_callback<Derived>(trace, "d");
  CHECK(handler.callback_list() == "StepEnd\nLogOnly\nDerived");

  SECTION("pop by type returns the first instance that is a T, derived types included") {
    auto popped = handler.pop_callback<StepEnd>();
    CHECK(popped == a);
    CHECK(handler.pop_callback<StepEnd>() == d);
    CHECK(handler.pop_callback<StepEnd>() == nullptr);
    CHECK(handler.callback_list() == "LogOnly");
  }
  SECTION("pop by instance returns it, or null when absent") {
    CHECK(handler.pop_callback(*b) == b);
    CHECK(handler.pop_callback(*b) == nullptr);
    CHECK(handler.callback_list() == "StepEnd\nDerived");
  }
  SECTION("remove by type is silent when nothing matches") {
    handler.remove_callback<Throws>();
    handler.remove_callback<LogOnly>();
    CHECK(handler.callback_list() == "StepEnd\nDerived");
  }
  SECTION("remove by instance throws when the instance is absent") {
    handler.remove_callback(*d);
    CHECK(handler.callback_list() == "StepEnd\nLogOnly");
    CHECK_THROWS_WITH(handler.remove_callback(*d),
                      Catch::Contains("Derived") && Catch::Contains("not registered"));
  }
  SECTION("a removed callback no longer receives events") {
    handler.remove_callback(*a);
    handler.remove_callback(*d);
    TrainingArguments args;
    TrainerState state;
    TrainerControl control;
    handler.on_step_end(args, state, control);
    CHECK(trace.events.empty());
  }
}

TEST_CASE("adding a second callback of the same type warns and still adds it", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  handler.add_callback<LogOnly>(trace);
  {
    test::CaptureLog log;
    handler.add_callback<StepEnd>(trace);
    CHECK(log.text().empty());
  }
  test::CaptureLog log;
  handler.add_callback<LogOnly>(trace);
  CHECK_THAT(log.text(),
             Catch::Contains("You are adding a LogOnly to the callbacks of this Trainer, but there is "
                             "already one") &&
                 Catch::Contains("LogOnly\nStepEnd"));
  CHECK(handler.callback_list() == "LogOnly\nStepEnd\nLogOnly");
}

TEST_CASE("tail callbacks stay last when more callbacks are added", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  handler.add_callback<StepEnd>(trace, "flow");
  handler.add_tail_callback(std::make_shared<LogOnly>(trace, "progress"));
  handler.add_callback<Derived>(trace, "user");
  CHECK(handler.callback_list() == "StepEnd\nDerived\nLogOnly");
  handler.pop_callback<LogOnly>();
  handler.add_callback<LogOnly>(trace, "later");
  CHECK(handler.callback_list() == "StepEnd\nDerived\nLogOnly");
}

TEST_CASE("a failing isolated callback is disabled with one warning, others keep running", "[handler]") {
  Trace trace;
  CallbackHandler handler;
  handler.add_callback<Throws>();
  handler.add_callback<LogOnly>(trace);
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  test::CaptureLog log;
  handler.on_log(args, state, control, Logs::object());
  handler.on_log(args, state, control, Logs::object());
  CHECK(trace.events == std::vector<std::string>{"log:log", "log:log"});
  CHECK_THAT(log.text(), Catch::Contains("Throws failed and is disabled") && Catch::Contains("disk full"));
  CHECK(handler.callback_list() == "LogOnly");
}

TEST_CASE("a failing ordinary callback propagates its exception", "[handler]") {
  struct Bad : TrainerCallback {
    void on_log(const Args&, TrainerState&, TrainerControl&, const CallbackContext&) override {
      throw std::runtime_error("bug");
    }
  };
  CallbackHandler handler;
  handler.add_callback<Bad>();
  TrainingArguments args;
  TrainerState state;
  TrainerControl control;
  CHECK_THROWS_WITH(handler.on_log(args, state, control, Logs::object()), "bug");
}

TEST_CASE("TrainerControl round-trips through HF's ExportableState form", "[handler]") {
  TrainerControl c;
  c.should_save = true;
  c.stop_training("early stopping");
  const json s = c.state();
  CHECK(s.dump() ==
        R"({"args":{"should_epoch_stop":false,"should_evaluate":false,"should_log":false,"should_save":true,)"
        R"("should_training_stop":true},"attributes":{"stop_reason":"early stopping"}})");
  CHECK(TrainerControl::from_state(s) == c);
  CHECK(TrainerControl{}.state()["attributes"] == json::object());
}

// SPDX-License-Identifier: MIT
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "support.hpp"
#include "torchfit/torchfit.hpp"

using namespace torchfit;
using torchfit::test::Mlp;
namespace fs = std::filesystem;

namespace {

TrainingArguments resume_args(const fs::path& dir) {
  TrainingArguments args;
  args.output_dir = dir.string();
  args.per_device_train_batch_size = 4;
  args.gradient_accumulation_steps = 2;
  args.num_train_epochs = 3;
  args.learning_rate = 1e-2;
  args.logging_steps = 3;
  args.save_steps = 2;
  args.eval_strategy = IntervalStrategy::steps;
  args.eval_steps = 4;
  args.metric_for_best_model = "loss";
  return args;
}

using MlpTrainer = Trainer<Mlp, std::pair<torch::Tensor, torch::Tensor>>;

MlpTrainer make_trainer(const TrainingArguments& args, uint64_t init_seed = 1) {
  torch::manual_seed(init_seed);
  MlpTrainer trainer(Mlp(), args, test::regression_data(36), test::regression_data(8, 4, 5), test::mse_loss);
  trainer.remove_callback<ProgressCallback>();
  return trainer;
}

struct StopAt : TrainerCallback {
  explicit StopAt(int64_t step) : at(step) {}
  void on_step_end(const Args&, TrainerState& s, TrainerControl& c, const CallbackContext&) override {
    if (s.global_step == at) c.should_training_stop = true;
  }
  int64_t at;
};

// log_history without the wall-clock fields, which differ between any two runs; keys sorted, as in a file.
nlohmann::json comparable_history(const TrainerState& state) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& entry : state.log_history) {
    nlohmann::json e = entry;
    for (const char* k : {"train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
                          "eval_samples_per_second", "eval_steps_per_second"})
      e.erase(k);
    out.push_back(e);
  }
  return out;
}

bool same_weights(torch::nn::Module& a, torch::nn::Module& b) {
  const auto sa = checkpoint::model_state(a), sb = checkpoint::model_state(b);
  if (sa.size() != sb.size()) return false;
  for (std::size_t i = 0; i < sa.size(); ++i)
    if (sa[i].first != sb[i].first || !torch::equal(sa[i].second, sb[i].second)) return false;
  return true;
}

}  // namespace

TEST_CASE("a run stopped mid-epoch by a callback and resumed ends bit-identical to an uninterrupted one",
          "[checkpoint][resume]") {
  test::TempDir full_dir, split_dir;
  auto full = make_trainer(resume_args(full_dir.path()));
  full.add_callback<EarlyStoppingCallback>(100);
  full.train();

  {
    auto first = make_trainer(resume_args(split_dir.path()));
    first.add_callback<EarlyStoppingCallback>(100);
    first.add_callback<StopAt>(7);  // 5 updates per epoch: step 7 is mid-epoch; the last checkpoint is step 6
    first.train();
    REQUIRE(first.state().global_step == 7);
  }
  REQUIRE(checkpoint::last(split_dir.path()) == checkpoint::dir_for(split_dir.path(), 6));
  auto resumed = make_trainer(resume_args(split_dir.path()), /*init_seed=*/99);  // other initial weights
  resumed.add_callback<EarlyStoppingCallback>(100);
  resumed.train("last");

  CHECK(resumed.state().global_step == full.state().global_step);
  CHECK(same_weights(*resumed.model().ptr(), *full.model().ptr()));
  CHECK(comparable_history(resumed.state()).dump() == comparable_history(full.state()).dump());
  CHECK(resumed.state().best_metric == full.state().best_metric);
  REQUIRE(full.state().best_model_checkpoint);
  CHECK(fs::path(*resumed.state().best_model_checkpoint).filename() ==
        fs::path(*full.state().best_model_checkpoint).filename());
}

TEST_CASE("a run killed with SIGKILL at any moment resumes from its newest complete checkpoint to the same end",
          "[checkpoint][resume][kill]") {
  // `mode`: "" trains from scratch, "resume" resumes from the last checkpoint, "die-saving" dies within a save.
  const auto run_child = [](const fs::path& dir, const std::string& mode, std::optional<int64_t> kill_after_checkpoint,
                            const std::string& die_at = "") {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const std::string out = dir.string();
      execl(TORCHFIT_RESUME_CHILD, TORCHFIT_RESUME_CHILD, out.c_str(), mode.empty() ? nullptr : mode.c_str(),
            die_at.empty() ? nullptr : die_at.c_str(), nullptr);
      _exit(127);
    }
    int status = 0;
    if (kill_after_checkpoint) {
      // Kill as soon as the checkpoint appears: the child is typically in the middle of its next steps or save.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
      while (!fs::exists(checkpoint::dir_for(dir, *kill_after_checkpoint)) && std::chrono::steady_clock::now() < deadline &&
             waitpid(pid, &status, WNOHANG) == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      kill(pid, SIGKILL);
    }
    waitpid(pid, &status, 0);
    return status;
  };
  test::TempDir reference_dir;
  REQUIRE(run_child(reference_dir.path(), "", std::nullopt) == 0);
  const auto reference = test::read_file(reference_dir / "final/model.safetensors");
  const auto reference_state = TrainerState::load_from_json(reference_dir / "final/trainer_state.json");

  for (int64_t kill_at : {4, 10}) {
    test::TempDir dir;
    const int status = run_child(dir.path(), "", kill_at);
    REQUIRE(WIFSIGNALED(status));
    CHECK(!fs::exists(dir / "final"));
    REQUIRE(run_child(dir.path(), "resume", std::nullopt) == 0);
    CHECK(test::read_file(dir / "final/model.safetensors") == reference);
    const auto state = TrainerState::load_from_json(dir / "final/trainer_state.json");
    CHECK(comparable_history(state).dump() == comparable_history(reference_state).dump());
  }

  SECTION("killed in the middle of writing checkpoint-6") {
    test::TempDir dir;
    const int status = run_child(dir.path(), "die-saving", std::nullopt, "6");
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);
    // The half-written checkpoint is a hidden temporary with the weights but no trainer_state.json.
    std::vector<fs::path> temporaries;
    for (const auto& entry : fs::directory_iterator(dir.path()))
      if (entry.path().filename().string().rfind(".checkpoint-6.tmp-", 0) == 0) temporaries.push_back(entry.path());
    REQUIRE(temporaries.size() == 1);
    CHECK(fs::exists(temporaries[0] / "model.safetensors"));
    CHECK(fs::exists(temporaries[0] / "optimizer.pt"));
    CHECK(!fs::exists(temporaries[0] / "trainer_state.json"));
    CHECK(!fs::exists(dir / "checkpoint-6"));
    CHECK(checkpoint::last(dir.path()) == checkpoint::dir_for(dir.path(), 4));

    REQUIRE(run_child(dir.path(), "resume", std::nullopt) == 0);
    CHECK(test::read_file(dir / "final/model.safetensors") == reference);
    CHECK(!fs::exists(temporaries[0]));  // cleared by the next save
    CHECK(checkpoint::is_complete(dir / "checkpoint-6"));
  }
}

TEST_CASE("an interrupted save leaves no directory that resume mistakes for a checkpoint", "[checkpoint]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 4;
  auto trainer = make_trainer(args);
  trainer.train();
  REQUIRE(checkpoint::list(dir.path()).size() == 2);  // steps 2 and 4

  // What a crash leaves behind: a temporary directory mid-write, and a checkpoint-N without trainer_state.json.
  fs::create_directories(dir / ".checkpoint-6.tmp-123");
  test::write_file(dir / ".checkpoint-6.tmp-123/model.safetensors", "partial");
  fs::create_directories(dir / "checkpoint-8");
  test::write_file(dir / "checkpoint-8/model.safetensors", "partial");
  CHECK(checkpoint::last(dir.path()) == checkpoint::dir_for(dir.path(), 4));

  SECTION("the next save clears stale temporaries") {
    checkpoint::remove_leftovers(dir.path());
    CHECK(!fs::exists(dir / ".checkpoint-6.tmp-123"));
    CHECK(fs::exists(dir / "checkpoint-8"));  // not ours to delete
  }
  SECTION("an uncommitted writer removes its temporary directory") {
    fs::path tmp;
    {
      checkpoint::AtomicWriter writer(dir.path(), 10);
      tmp = writer.dir();
      test::write_file(tmp / "model.safetensors", "x");
    }
    CHECK(!fs::exists(tmp));
    CHECK(!fs::exists(dir / "checkpoint-10"));
  }
}

TEST_CASE("rotation keeps the newest and the best checkpoint", "[checkpoint][rotation]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 12;
  args.save_steps = 2;
  args.eval_steps = 2;
  args.save_total_limit = 2;
  args.load_best_model_at_end = true;
  args.metric_for_best_model = "loss";
  args.greater_is_better = false;

  auto trainer = make_trainer(args);
  struct Best : TrainerCallback {
    // From step 5 on, the state says step 4 was the best evaluation (whatever the real losses were).
    void on_step_end(const Args&, TrainerState& s, TrainerControl&, const CallbackContext&) override {
      if (s.global_step > 4) {
        s.best_metric = -1.0;
        s.best_global_step = 4;
      }
    }
  };
  trainer.add_callback<Best>();
  trainer.train();
  std::vector<std::string> names;
  for (const auto& p : checkpoint::list(dir.path())) names.push_back(p.filename().string());
  CHECK(names == std::vector<std::string>{"checkpoint-4", "checkpoint-12"});
  CHECK(trainer.state().best_model_checkpoint == checkpoint::dir_for(dir.path(), 4).string());

  SECTION("limit 1 keeps the newest and the best, never deleting the newest at the end (HF #35070)") {
    checkpoint::rotate(dir.path(), 1, trainer.state().best_model_checkpoint);
    CHECK(checkpoint::list(dir.path()).size() == 2);
    checkpoint::rotate(dir.path(), 1, std::nullopt);
    CHECK(checkpoint::list(dir.path()) == std::vector<fs::path>{checkpoint::dir_for(dir.path(), 12)});
  }
}

TEST_CASE("load_best_model_at_end restores the best checkpoint's weights", "[checkpoint][best]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 10;
  args.eval_steps = 2;
  args.save_steps = 2;
  args.load_best_model_at_end = true;
  auto trainer = make_trainer(args);
  trainer.train();
  const auto& s = trainer.state();
  REQUIRE(s.best_model_checkpoint);
  REQUIRE(s.best_global_step);
  CHECK(*s.best_model_checkpoint == checkpoint::dir_for(dir.path(), *s.best_global_step).string());
  // The best eval loss in the history is the recorded best metric, at the recorded step.
  double best = INFINITY;
  int64_t best_step = 0;
  for (const auto& e : s.log_history)
    if (e.contains("eval_loss") && e.at("eval_loss").get<double>() < best) {
      best = e.at("eval_loss").get<double>();
      best_step = e.at("step").get<int64_t>();
    }
  CHECK(*s.best_metric == best);
  CHECK(*s.best_global_step == best_step);
  Mlp reloaded;
  checkpoint::load_model_state(*reloaded.ptr(), fs::path(*s.best_model_checkpoint) / checkpoint::model_file);
  CHECK(same_weights(*reloaded.ptr(), *trainer.model().ptr()));
}

TEST_CASE("save_strategy best saves exactly the improving evaluations and records them", "[checkpoint][best]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 10;
  args.eval_steps = 1;
  args.save_strategy = SaveStrategy::best;
  auto trainer = make_trainer(args);
  trainer.train();
  std::vector<int64_t> improving;
  double best = INFINITY;
  for (const auto& e : trainer.state().log_history)
    if (e.contains("eval_loss") && e.at("eval_loss").get<double>() < best) {
      best = e.at("eval_loss").get<double>();
      improving.push_back(e.at("step").get<int64_t>());
    }
  std::vector<int64_t> saved;
  for (const auto& p : checkpoint::list(dir.path())) saved.push_back(*checkpoint::step_of(p));
  CHECK(saved == improving);
  CHECK(trainer.state().best_model_checkpoint == checkpoint::dir_for(dir.path(), improving.back()).string());
}

TEST_CASE("a stop decision recorded in a checkpoint is honoured on resume", "[checkpoint][resume]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  struct StopWithReason : TrainerCallback {
    void on_step_end(const Args&, TrainerState& s, TrainerControl& c, const CallbackContext&) override {
      if (s.global_step == 4) c.stop_training("diverged");
    }
  };
  {
    auto first = make_trainer(args);
    first.add_callback<StopWithReason>();
    first.train();
    REQUIRE(first.state().global_step == 4);
  }
  auto resumed = make_trainer(args);
  test::CaptureLog log(log::Level::info);
  const auto out = resumed.train("last");
  CHECK(out.global_step == 4);
  CHECK(resumed.control().stop_reason == "diverged");
  CHECK_THAT(log.text(), Catch::Contains("the checkpoint recorded a stop (diverged)"));
}

TEST_CASE("a bad checkpoint is refused whole, naming the file or parameter", "[checkpoint][errors]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 2;
  {
    auto trainer = make_trainer(args);
    trainer.train();
  }
  const fs::path ckpt = checkpoint::dir_for(dir.path(), 2);
  args.max_steps = 4;
  auto trainer = make_trainer(args, /*init_seed=*/7);
  const auto before = checkpoint::model_state(*trainer.model().ptr());
  const auto unchanged = [&] {
    const auto after = checkpoint::model_state(*trainer.model().ptr());
    for (std::size_t i = 0; i < before.size(); ++i)
      if (!torch::equal(before[i].second, after[i].second)) return false;
    return true;
  };

  SECTION("a checkpoint directory that does not exist") {
    CHECK_THROWS_WITH(trainer.train((dir / "checkpoint-99").string()),
                      Catch::Contains("checkpoint-99") && Catch::Contains("does not exist"));
  }
  SECTION("a missing file") {
    fs::remove(ckpt / "optimizer.pt");
    CHECK_THROWS_WITH(trainer.train(ckpt.string()), Catch::Contains("missing optimizer.pt"));
  }
  SECTION("a truncated model file") {
    const auto bytes = test::read_file(ckpt / "model.safetensors");
    test::write_file(ckpt / "model.safetensors", bytes.substr(0, bytes.size() - 10));
    CHECK_THROWS_AS(trainer.train(ckpt.string()), CheckpointError);
    CHECK_THROWS_WITH(trainer.train(ckpt.string()), Catch::Contains("model.safetensors"));
  }
  SECTION("a truncated optimizer file") {
    const auto bytes = test::read_file(ckpt / "optimizer.pt");
    test::write_file(ckpt / "optimizer.pt", bytes.substr(0, bytes.size() / 2));
    CHECK_THROWS_WITH(trainer.train(ckpt.string()), Catch::Contains("optimizer.pt is corrupt or truncated"));
  }
  SECTION("a corrupt trainer_state.json") {
    test::write_file(ckpt / "trainer_state.json", "{\"global_step\": 2,");
    CHECK_THROWS_WITH(trainer.train(ckpt.string()), Catch::Contains("trainer_state.json"));
  }
  SECTION("a checkpoint of a model with other parameter shapes") {
    torch::manual_seed(1);
    TrainingArguments other = args;
    MlpTrainer wide(Mlp(4, 32), other, test::regression_data(36), test::regression_data(8, 4, 5), test::mse_loss);
    wide.remove_callback<ProgressCallback>();
    CHECK_THROWS_WITH(wide.train(ckpt.string()),
                      Catch::Contains("fc1.weight") && Catch::Contains("[16, 4]") && Catch::Contains("[32, 4]"));
  }
  CHECK(unchanged());
}

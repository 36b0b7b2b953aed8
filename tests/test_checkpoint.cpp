// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <sstream>
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
    for (const char* k : {"train_runtime", "train_samples_per_second", "train_steps_per_second",
                          "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})
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

// Runs tests/resume_child.cpp on `dir` and returns its wait status. `mode`: "" trains from scratch, "resume"
// resumes from the last checkpoint, "die-saving" / "fail-saving" / "warn-saving" act at the save of step `at`.
// With `kill_after_checkpoint`, the child is SIGKILLed as soon as that checkpoint appears; its stderr goes to
// `stderr_file` when given.
int run_child(const fs::path& dir, const std::string& mode,
              std::optional<int64_t> kill_after_checkpoint = std::nullopt, const std::string& at = "",
              const std::optional<fs::path>& stderr_file = std::nullopt) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (stderr_file) {
      const int fd = open(stderr_file->c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
    }
    const std::string out = dir.string();
    execl(TORCHFIT_RESUME_CHILD, TORCHFIT_RESUME_CHILD, out.c_str(), mode.empty() ? nullptr : mode.c_str(),
          at.empty() ? nullptr : at.c_str(), nullptr);
    _exit(127);
  }
  int status = 0;
  if (kill_after_checkpoint) {
    // Kill as soon as the checkpoint appears: the child is typically in the middle of its next steps or save.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (!fs::exists(checkpoint::dir_for(dir, *kill_after_checkpoint)) &&
           std::chrono::steady_clock::now() < deadline && waitpid(pid, &status, WNOHANG) == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    kill(pid, SIGKILL);
  }
  waitpid(pid, &status, 0);
  return status;
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

TEST_CASE(
    "a run killed with SIGKILL at any moment resumes from its newest complete checkpoint to the same end",
    "[checkpoint][resume][kill]") {
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
      if (entry.path().filename().string().rfind(".checkpoint-6.tmp-", 0) == 0)
        temporaries.push_back(entry.path());
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

TEST_CASE("save_strategy best saves exactly the improving evaluations and records them",
          "[checkpoint][best]") {
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
    MlpTrainer wide(Mlp(4, 32), other, test::regression_data(36), test::regression_data(8, 4, 5),
                    test::mse_loss);
    wide.remove_callback<ProgressCallback>();
    CHECK_THROWS_WITH(wide.train(ckpt.string()), Catch::Contains("fc1.weight") &&
                                                     Catch::Contains("[16, 4]") &&
                                                     Catch::Contains("[32, 4]"));
  }
  CHECK(unchanged());
}

namespace {

// The bytes of every file of every complete checkpoint under `dir`, by "checkpoint-<step>/<file>".
std::map<std::string, std::string> checkpoint_files(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& ckpt : checkpoint::list(dir))
    for (const auto& file : fs::directory_iterator(ckpt))
      out[ckpt.filename().string() + "/" + file.path().filename().string()] = test::read_file(file.path());
  return out;
}

// Entries of `dir` whose name starts with a dot: saves and deletions in progress.
std::vector<std::string> hidden_entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().front() == '.') out.push_back(entry.path().filename().string());
  return out;
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a save on a full disk is a CheckpointError naming the file and the cause, never an abort",
          "[checkpoint][disk-full]") {
  // resume_child fills the disk for the save of checkpoint-6 with a file size limit: model.safetensors fits,
  // optimizer.pt does not (libtorch's own writer aborted the process there).
  test::TempDir reference_dir;
  REQUIRE(run_child(reference_dir.path(), "") == 0);
  const auto reference = test::read_file(reference_dir / "final/model.safetensors");
  test::TempDir root;
  const fs::path dir = root / "out";
  const std::string failed_save = "cannot save checkpoint " + (dir / "checkpoint-6").string() +
                                  ": cannot write " + dir.string() + "/.checkpoint-6.tmp-";

  SECTION("by default the error stops training; earlier checkpoints stay byte for byte and resume") {
    const int status = run_child(dir, "fail-saving", std::nullopt, "6", root / "stderr.txt");
    REQUIRE(WIFEXITED(status));  // not killed by SIGABRT
    CHECK(WEXITSTATUS(status) == 1);
    const std::string errors = test::read_file(root / "stderr.txt");
    CHECK_THAT(errors, Catch::Contains(failed_save) && Catch::Contains("/optimizer.pt: File too large"));
    CHECK(hidden_entries(dir).empty());
    CHECK(!fs::exists(dir / "checkpoint-6"));
    const auto before = checkpoint_files(root / "out.before");
    CHECK(before.size() == 14);  // checkpoints 2 and 4
    CHECK(checkpoint_files(dir) == before);

    REQUIRE(run_child(dir, "resume") == 0);
    CHECK(test::read_file(dir / "final/model.safetensors") == reference);
  }
  SECTION(
      "under SaveErrorPolicy::warn one warning names the checkpoint and the cause, and training goes on") {
    const int status = run_child(dir, "warn-saving", std::nullopt, "6", root / "stderr.txt");
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    const std::string errors = test::read_file(root / "stderr.txt");
    CHECK(count_of(errors, "cannot save checkpoint") == 1);
    CHECK_THAT(errors, Catch::Contains(failed_save) && Catch::Contains("/optimizer.pt: File too large"));
    CHECK(hidden_entries(dir).empty());
    CHECK(!fs::exists(dir / "checkpoint-6"));
    CHECK(checkpoint::is_complete(dir / "checkpoint-8"));
    const auto now = checkpoint_files(dir);
    for (const auto& [name, bytes] : checkpoint_files(root / "out.before")) CHECK(now.at(name) == bytes);
    CHECK(test::read_file(dir / "final/model.safetensors") == reference);  // a failed save changes no result
  }
}

TEST_CASE("a save that fills a real disk fails with ENOSPC and leaves resumable checkpoints",
          "[checkpoint][disk-full]") {
  test::TempDir root;
  const fs::path disk = root / "disk";
  fs::create_directories(disk);
  // About two checkpoints of the test MLP fit in 100 KiB of tmpfs.
  if (geteuid() != 0 || mount("tmpfs", disk.c_str(), "tmpfs", 0, "size=100k") != 0) {
    WARN("skipped: mounting a small tmpfs needs root; the file size limit test covers the same code");
    return;
  }
  struct Unmount {
    const fs::path& at;
    ~Unmount() { umount2(at.c_str(), MNT_DETACH); }
  } unmount{disk};
  const int status = run_child(disk / "out", "", std::nullopt, "", root / "stderr.txt");
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(test::read_file(root / "stderr.txt"),
             Catch::Contains("cannot save checkpoint " + (disk / "out/checkpoint-").string()) &&
                 Catch::Contains(": No space left on device"));
  CHECK(hidden_entries(disk / "out").empty());
  REQUIRE(!checkpoint::list(disk / "out").empty());

  // The newest complete checkpoint resumes, on a disk with room, to the end of an uninterrupted run.
  test::TempDir reference_dir;
  REQUIRE(run_child(reference_dir.path(), "") == 0);
  fs::copy(disk / "out", root / "copy", fs::copy_options::recursive);
  REQUIRE(run_child(root / "copy", "resume") == 0);
  CHECK(test::read_file(root / "copy/final/model.safetensors") ==
        test::read_file(reference_dir / "final/model.safetensors"));
}

namespace {

// Everything a refused resume must leave as it was.
struct Observed {
  std::vector<torch::Tensor> tensors;  // weights, AdamW states, CPU generator state
  std::vector<double> numbers;         // AdamW steps, learning rates
  json scheduler, callbacks;
};

Observed observe(MlpTrainer& trainer) {
  Observed o;
  for (const auto& [name, t] : checkpoint::model_state(*trainer.model().ptr()))
    o.tensors.push_back(t.clone());
  auto& optimizer = *trainer.optimizer();
  using StateMap = std::decay_t<decltype(optimizer.state())>;
  for (auto& group : optimizer.param_groups()) {
    o.numbers.push_back(group.options().get_lr());
    for (const auto& p : group.params()) {
      const auto found = optimizer.state().find(checkpoint::detail::state_key<StateMap>(p));
      if (found == optimizer.state().end()) continue;
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*found->second);
      o.numbers.push_back(static_cast<double>(s.step()));
      o.tensors.push_back(s.exp_avg().clone());
      o.tensors.push_back(s.exp_avg_sq().clone());
    }
  }
  o.tensors.push_back(at::detail::getDefaultCPUGenerator().get_state());
  o.scheduler = trainer.lr_scheduler()->state();
  o.callbacks = trainer.callback_handler().states(trainer.control());
  return o;
}

bool operator==(const Observed& a, const Observed& b) {
  if (a.tensors.size() != b.tensors.size() || a.numbers != b.numbers || a.scheduler != b.scheduler ||
      a.callbacks != b.callbacks)
    return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i)
    if (!torch::equal(a.tensors[i], b.tensors[i])) return false;
  return true;
}

// An AdamW state saved for `parameters` (copies, so the model is untouched) in `groups` of the given sizes.
void save_optimizer_for(const std::vector<torch::Tensor>& parameters, const std::vector<std::size_t>& groups,
                        const fs::path& file) {
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  std::size_t next = 0;
  for (std::size_t size : groups) {
    std::vector<torch::Tensor> group;
    for (std::size_t i = 0; i < size; ++i) {
      auto p = parameters.at(next++).detach().clone().requires_grad_();
      p.mutable_grad() = torch::ones_like(p);
      group.push_back(p);
    }
    param_groups.emplace_back(std::move(group));
  }
  torch::optim::AdamW optimizer(std::move(param_groups), torch::optim::AdamWOptions(1e-2));
  optimizer.step();
  checkpoint::save_optimizer_state(optimizer, file);
}

json read_json_file(const fs::path& file) { return json::parse(test::read_file(file)); }
void write_json_file(const fs::path& file, const json& value) { test::write_file(file, value.dump()); }

}  // namespace

TEST_CASE("a refused resume names the file and what is wrong, and changes nothing", "[checkpoint][errors]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 4;
  {
    auto first = make_trainer(args);
    first.add_callback<EarlyStoppingCallback>(100);
    first.train();
  }
  const fs::path good = checkpoint::dir_for(dir.path(), 4);

  // What is loaded into: another run, 3 steps in, so its optimizer, scheduler and callbacks hold states of their own.
  test::TempDir other_dir;
  auto other_args = resume_args(other_dir.path());
  other_args.max_steps = 3;
  other_args.save_strategy = SaveStrategy::no;
  auto trainer = make_trainer(other_args, /*init_seed=*/7);
  trainer.add_callback<EarlyStoppingCallback>(100);
  trainer.train();
  const checkpoint::Targets targets{*trainer.model().ptr(),      *trainer.optimizer(),
                                    *trainer.lr_scheduler(),     nullptr,
                                    &trainer.callback_handler(), &trainer.control()};
  torch::manual_seed(123);
  const Observed before = observe(trainer);

  const fs::path ckpt = dir / "copy";
  fs::copy(good, ckpt, fs::copy_options::recursive);
  const auto load = [&] {
    auto loaded = checkpoint::read(ckpt, targets);
    checkpoint::apply(loaded, targets);
  };
  const auto refused = [&](const std::string& file, const std::string& problem) {
    INFO(file + ": " + problem);
    CHECK_THROWS_AS(load(), CheckpointError);
    CHECK_THROWS_WITH(load(), Catch::StartsWith((ckpt / file).string()) && Catch::Contains(problem));
    CHECK(observe(trainer) == before);
  };
  const auto edit_json = [&](const std::string& file, const std::function<void(json&)>& edit) {
    auto value = read_json_file(ckpt / file);
    edit(value);
    write_json_file(ckpt / file, value);
  };
  const auto truncate = [&](const std::string& file) {
    const auto bytes = test::read_file(ckpt / file);
    test::write_file(ckpt / file, bytes.substr(0, bytes.size() / 2));
  };
  std::vector<torch::Tensor> parameters;
  for (const auto& group : trainer.optimizer()->param_groups())
    for (const auto& p : group.params()) parameters.push_back(p);

  SECTION("a file missing") {
    for (const char* file : {"model.safetensors", "optimizer.pt", "scheduler.json", "rng_state.pt",
                             "trainer_progress.json", "trainer_state.json"}) {
      INFO(file);
      fs::rename(ckpt / file, dir / "aside");
      CHECK_THROWS_WITH(
          load(), "checkpoint " + ckpt.string() + " is missing " + file +
                      (std::string(file) == "optimizer.pt" ? " (was it saved with --save_only_model?)" : ""));
      CHECK(observe(trainer) == before);
      fs::rename(dir / "aside", ckpt / file);
    }
  }
  SECTION("model.safetensors truncated") {
    truncate("model.safetensors");
    refused("model.safetensors", " is not a valid safetensors file: ");
  }
  SECTION("optimizer.pt truncated") {
    truncate("optimizer.pt");
    refused("optimizer.pt", " is corrupt or truncated: ");
  }
  SECTION("optimizer.pt whose second group is smaller (libtorch loads the first before refusing)") {
    REQUIRE(parameters.size() == 4);
    save_optimizer_for(parameters, {2, 1}, ckpt / "optimizer.pt");
    refused("optimizer.pt", " does not fit this optimizer: ");
  }
  SECTION("optimizer.pt of a model with other shapes") {
    const auto rng = checkpoint::capture_rng_state();  // building a model draws from the generator
    Mlp wide(4, 32);
    checkpoint::apply_rng_state(rng);
    const auto [decay, no_decay] = decay_parameter_groups(*wide.ptr());
    std::vector<torch::Tensor> wide_parameters = decay;
    wide_parameters.insert(wide_parameters.end(), no_decay.begin(), no_decay.end());
    save_optimizer_for(wide_parameters, {decay.size(), no_decay.size()}, ckpt / "optimizer.pt");
    refused("optimizer.pt",
            ": the state of parameter 0 of group 0 has shape [32, 4] but the parameter has [16, 4]");
  }
  SECTION("scheduler.json without a key") {
    edit_json("scheduler.json", [](auto& j) { j.erase("last_step"); });
    refused("scheduler.json", ": scheduler state has no \"last_step\"");
  }
  SECTION("scheduler.json with the wrong number of learning rates") {
    edit_json("scheduler.json", [](auto& j) { j["base_lrs"].push_back(0.5); });
    refused("scheduler.json",
            ": scheduler state: \"base_lrs\" has 3 learning rates but the optimizer has 2 parameter groups");
  }
  SECTION("scheduler.json with a value of the wrong type") {
    edit_json("scheduler.json", [](auto& j) { j["last_step"] = "4"; });
    refused("scheduler.json", ": scheduler state: \"last_step\" must be an integer (got a JSON string)");
  }
  SECTION("rng_state.pt without its cpu entry") {
    torch::serialize::OutputArchive archive;
    archive.write("cuda_0", torch::zeros({16}, torch::kByte));
    checkpoint::save_archive(archive, ckpt / "rng_state.pt");
    refused("rng_state.pt", " has no \"cpu\" entry (the CPU generator's state)");
  }
  SECTION("rng_state.pt whose cpu entry is not a generator state") {
    checkpoint::save_rng_state({torch::zeros({3}), {}}, ckpt / "rng_state.pt");
    refused("rng_state.pt", ": entry \"cpu\" is not a state of this generator: ");
  }
  SECTION("rng_state.pt truncated") {
    truncate("rng_state.pt");
    refused("rng_state.pt", " is corrupt or truncated: ");
  }
  SECTION("trainer_progress.json without a key") {
    edit_json("trainer_progress.json", [](auto& j) { j.erase("loss_total"); });
    refused("trainer_progress.json", " has no \"loss_total\"");
  }
  SECTION("trainer_progress.json with a value of the wrong type") {
    edit_json("trainer_progress.json", [](auto& j) { j["last_logged_step"] = 2.5; });
    refused("trainer_progress.json", ": \"last_logged_step\" must be an integer (got 2.5)");
  }
  SECTION("trainer_progress.json not JSON") {
    test::write_file(ckpt / "trainer_progress.json", "{\"loss_total\": ");
    refused("trainer_progress.json", ": malformed JSON at line 1 column 16: ");
  }
  SECTION("trainer_state.json not JSON") {
    truncate("trainer_state.json");
    refused("trainer_state.json", ": malformed JSON at line ");
  }
  SECTION("trainer_state.json with a field of the wrong type") {
    edit_json("trainer_state.json", [](auto& j) { j["global_step"] = "four"; });
    refused("trainer_state.json", ": field \"global_step\" must be an integer");
  }
  // Refused by the last step of loading, after the scheduler and the optimizer took their states: both go back.
  SECTION("trainer_state.json with a TrainerControl that does not load") {
    edit_json("trainer_state.json",
              [](auto& j) { j["stateful_callbacks"]["TrainerControl"]["args"]["should_log"] = "yes"; });
    refused("trainer_state.json",
            ": stateful_callbacks: the state stored under \"TrainerControl\" does not load: ");
  }
  SECTION("trainer_state.json with a callback state that does not load") {
    edit_json("trainer_state.json", [](auto& j) {
      j["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] = "x";
    });
    refused("trainer_state.json",
            ": stateful_callbacks: the state stored under \"EarlyStoppingCallback\" does not load: ");
  }
  SECTION("the unchanged checkpoint loads whole") {
    load();
    CHECK(!(observe(trainer) == before));
    CHECK(trainer.lr_scheduler()->last_step() == 4);
    Mlp saved;
    checkpoint::load_model_state(*saved.ptr(), good / "model.safetensors");
    CHECK(same_weights(*saved.ptr(), *trainer.model().ptr()));
  }
}

TEST_CASE("a loss scaler's state is checked and loaded with the checkpoint", "[checkpoint][errors]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 2;
  auto trainer = make_trainer(args);
  trainer.train();
  const fs::path ckpt = checkpoint::dir_for(dir.path(), 2);
  torchfit::detail::GradScaler scaler(
      torch::kCPU);  // the Trainer has one only with fp16 on CUDA; its state is host-side
  const checkpoint::Targets targets{*trainer.model().ptr(), *trainer.optimizer(), *trainer.lr_scheduler(),
                                    &scaler};
  const auto load = [&] {
    auto loaded = checkpoint::read(ckpt, targets);
    checkpoint::apply(loaded, targets);
  };
  const auto scaler_before = scaler.state();

  CHECK_THROWS_WITH(load(), "checkpoint " + ckpt.string() + " is missing scaler.json");
  const auto refused = [&](const std::string& text, const std::string& problem) {
    test::write_file(ckpt / "scaler.json", text);
    CHECK_THROWS_WITH(load(), (ckpt / "scaler.json").string() + ": " + problem);
    CHECK(scaler.state() == scaler_before);
  };
  refused("[1, 2]", "scaler state must be a JSON object (got a JSON array)");
  refused(R"({"scale": "big", "growth_tracker": 0})",
          "scaler state: \"scale\" must be a number (got a JSON string)");
  refused(R"({"scale": 1024.0})", "scaler state has no \"growth_tracker\"");
  refused(R"({"scale": -1.0, "growth_tracker": 0})",
          "scaler state: \"scale\" must be a positive finite number (got -1.0)");
  refused(R"({"scale": 1024.0, "growth_tracker": -3})",
          "scaler state: \"growth_tracker\" must be a count of steps (got -3)");
  test::write_file(ckpt / "scaler.json", R"({"scale": 1024.0, "growth_tracker": 7})");
  load();
  CHECK(scaler.state() == json{{"scale", 1024.0}, {"growth_tracker", 7}});
}

TEST_CASE(
    "interrupted saves and deletions leave only hidden directories, never listed and cleared at train start",
    "[checkpoint][rotation]") {
  test::TempDir dir;
  auto args = resume_args(dir.path());
  args.max_steps = 4;
  make_trainer(args).train();  // checkpoints 2 and 4
  const auto checkpoints =
      std::vector<fs::path>{checkpoint::dir_for(dir.path(), 2), checkpoint::dir_for(dir.path(), 4)};
  REQUIRE(checkpoint::list(dir.path()) == checkpoints);

  // A deletion of a newer checkpoint-8 cut short: renamed out of sight first, so what is left (a trainer_state.json
  // without weights) is hidden; and a save of checkpoint-6 cut short before its rename.
  fs::copy(checkpoints[1], dir / ".checkpoint-8.deleting-123", fs::copy_options::recursive);
  fs::remove(dir / ".checkpoint-8.deleting-123/model.safetensors");
  fs::copy(checkpoints[1], dir / ".checkpoint-6.tmp-456", fs::copy_options::recursive);
  CHECK(checkpoint::list(dir.path()) == checkpoints);
  CHECK(checkpoint::last(dir.path()) == checkpoints[1]);

  SECTION("--resume_from_checkpoint last takes the newest real checkpoint and the leftovers go") {
    args.max_steps = 6;
    auto resumed = make_trainer(args);
    resumed.train("last");
    CHECK(resumed.state().global_step == 6);
    CHECK(hidden_entries(dir.path()).empty());
  }
  SECTION("train start clears them even when nothing is saved") {
    args.save_strategy = SaveStrategy::no;
    make_trainer(args).train();
    CHECK(hidden_entries(dir.path()).empty());
  }
  SECTION("a checkpoint replaced by a save of the same step is moved aside whole, then removed") {
    {
      checkpoint::AtomicWriter writer(dir.path(), 4);
      test::write_file(writer.dir() / "marker", "new");
      writer.commit();
    }
    CHECK(test::read_file(checkpoints[1] / "marker") == "new");
    CHECK(!fs::exists(checkpoints[1] / "model.safetensors"));
    CHECK(hidden_entries(dir.path()).size() == 2);  // only the two leftovers made above
  }
  SECTION("a deletion moves the checkpoint out of sight before removing it") {
    const fs::path aside = checkpoint::detail::move_aside(checkpoints[1]);  // as if interrupted right after
    CHECK(aside.filename().string().rfind(".checkpoint-4.deleting-", 0) == 0);
    CHECK(checkpoint::last(dir.path()) == checkpoints[0]);
    checkpoint::remove_leftovers(dir.path());
    CHECK(hidden_entries(dir.path()).empty());
    checkpoint::remove_checkpoint(checkpoints[0]);
    CHECK(checkpoint::list(dir.path()).empty());
    CHECK(hidden_entries(dir.path()).empty());
  }
}

TEST_CASE("optimizer.pt holds torch::save's bytes, written straight to the file", "[checkpoint][format]") {
  test::TempDir dir;
  auto p = torch::randn({300, 7}).requires_grad_();
  p.mutable_grad() = torch::ones_like(p);
  torch::optim::AdamW optimizer({p}, torch::optim::AdamWOptions(1e-2));
  optimizer.step();
  checkpoint::save_optimizer_state(optimizer, dir / "optimizer.pt");
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream expected;
  archive.save_to(expected);
  CHECK(test::read_file(dir / "optimizer.pt") == expected.str());
}

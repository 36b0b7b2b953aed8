// SPDX-License-Identifier: MIT
// Data-parallel training on c10d: jobs of torchfit_distributed_child processes rendezvousing on 127.0.0.1 (Gloo),
// compared with the same child run alone. Jobs stay small: the machines running these tests have few cores.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using torchfit::test::read_file;
using torchfit::test::TempDir;

namespace {

// A free TCP port of 127.0.0.1: bound to port 0, read back, released for the job's rank 0 to bind.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
  close(fd);
  return ntohs(address.sin_port);
}

struct Rank {
  int status = -1;     // exit status, 128 + signal when killed, -1 when still running at the deadline
  std::string output;  // stdout and stderr
  json result;         // rank<r>.json, when written
};

struct Job {
  std::vector<Rank> ranks;
  double seconds = 0;  // until the last rank ended
};

struct JobOptions {
  int port = 0;  // 0: a free one
  std::chrono::seconds deadline{240};
  bool end_with_rank_zero = false;  // SIGKILL the other ranks once rank 0 has ended (they hang)
  std::map<int, std::map<std::string, std::string>> env;  // per-rank overrides of torchrun's variables
};

// Runs `world_size` children with torchrun's variables (0: one child without them) on `dir`, each with `args`.
Job run_job(int world_size, const fs::path& dir, const std::vector<std::string>& args,
            JobOptions options = {}) {
  const int port = options.port ? options.port : free_port();
  const int processes = std::max(world_size, 1);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < processes; ++rank) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                               "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID"})
        unsetenv(name);
      setenv("OMP_NUM_THREADS", "1", 1);
      if (world_size > 0) {
        std::map<std::string, std::string> env{
            {"RANK", std::to_string(rank)},       {"WORLD_SIZE", std::to_string(world_size)},
            {"LOCAL_RANK", std::to_string(rank)}, {"LOCAL_WORLD_SIZE", std::to_string(world_size)},
            {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", std::to_string(port)}};
        for (const auto& [name, value] : options.env[rank]) env[name] = value;
        for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
      }
      const std::string log = (dir / ("rank" + std::to_string(rank) + ".log")).string();
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
      std::vector<std::string> tokens{TORCHFIT_DISTRIBUTED_CHILD, dir.string()};
      tokens.insert(tokens.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& t : tokens) argv.push_back(t.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  Job job;
  job.ranks.resize(static_cast<std::size_t>(processes));
  const auto start = std::chrono::steady_clock::now();
  std::size_t running = pids.size();
  while (running > 0 && std::chrono::steady_clock::now() - start < options.deadline) {
    for (std::size_t r = 0; r < pids.size(); ++r) {
      int status = 0;
      if (pids[r] == 0 || waitpid(pids[r], &status, WNOHANG) != pids[r]) continue;
      job.ranks[r].status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      pids[r] = 0;
      --running;
      if (r == 0 && options.end_with_rank_zero)
        for (pid_t other : pids)
          if (other != 0) kill(other, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  job.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (std::size_t r = 0; r < pids.size(); ++r) {
    if (pids[r] != 0) {
      kill(pids[r], SIGKILL);
      waitpid(pids[r], nullptr, 0);
    }
    job.ranks[r].output = read_file(dir / ("rank" + std::to_string(r) + ".log"));
    const fs::path result = dir / ("rank" + std::to_string(r) + ".json");
    if (fs::exists(result)) job.ranks[r].result = json::parse(read_file(result));
  }
  return job;
}

void require_success(const Job& job) {
  for (std::size_t r = 0; r < job.ranks.size(); ++r) {
    INFO("rank " << r << " output:\n" << job.ranks[r].output);
    REQUIRE(job.ranks[r].status == 0);
  }
}

double max_difference(const json& a, const json& b) {
  REQUIRE(a.size() == b.size());
  double most = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    most = std::max(most, std::abs(a[i].get<double>() - b[i].get<double>()));
  return most;
}

// The training-loss entries of a log history.
std::vector<json> training_logs(const json& history) {
  std::vector<json> out;
  for (const auto& entry : history)
    if (entry.contains("loss")) out.push_back(entry);
  return out;
}

std::vector<std::string> file_names(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) out.push_back(entry.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

#ifndef TORCHFIT_DISTRIBUTED_CHILD
TEST_CASE("data-parallel tests need torchfit::distributed", "[distributed]") {
  WARN(
      "skipped: Gloo was not found at configure time (Debian: libgloo-dev), so torchfit::distributed and its "
      "test "
      "child were not built");
}
#else

TEST_CASE(
    "2 ranks with batch B train to the weights of 1 rank with batch 2B, and logs and checkpoints are written "
    "once",
    "[distributed]") {
  const std::vector<std::string> common{"--num_train_epochs",
                                        "2",
                                        "--learning_rate",
                                        "1e-2",
                                        "--logging_steps",
                                        "2",
                                        "--save_steps",
                                        "4",
                                        "--report_to",
                                        "jsonl",
                                        "--include_num_input_tokens_seen",
                                        "all"};
  const auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  TempDir alone, two;
  const Job reference = run_job(0, alone.path(), with({"--per_device_train_batch_size", "8"}));
  require_success(reference);
  const Job job = run_job(2, two.path(), with({"--per_device_train_batch_size", "4"}));
  require_success(job);
  const json& single = reference.ranks[0].result;
  const json& rank0 = job.ranks[0].result;
  const json& rank1 = job.ranks[1].result;

  // Same samples per update (32 samples: 4 updates per epoch either way), same updates, every rank alike.
  CHECK(rank0["global_step"] == 8);
  CHECK(single["global_step"] == 8);
  CHECK(rank0["weights"] == rank1["weights"]);
  CHECK(max_difference(rank0["weights"], single["weights"]) < 1e-6);
  // The logged loss is the mean over the ranks: the single process's mean over the doubled batch; the tokens
  // seen are every rank's.
  const auto logs = training_logs(rank0["log_history"]), single_logs = training_logs(single["log_history"]);
  const auto rank1_logs = training_logs(rank1["log_history"]);
  REQUIRE(logs.size() == single_logs.size());
  REQUIRE(logs.size() == rank1_logs.size());
  for (std::size_t i = 0; i < logs.size(); ++i) {
    for (const char* key : {"loss", "grad_norm", "learning_rate", "num_input_tokens_seen", "step", "epoch"})
      CHECK(logs[i][key] == rank1_logs[i][key]);
    CHECK(logs[i]["loss"].get<double>() == Approx(single_logs[i]["loss"].get<double>()).epsilon(1e-5));
    CHECK(logs[i]["grad_norm"].get<double>() ==
          Approx(single_logs[i]["grad_norm"].get<double>()).epsilon(1e-5));
    CHECK(logs[i]["num_input_tokens_seen"] == single_logs[i]["num_input_tokens_seen"]);
  }

  // HF's process flags; rank 0 alone writes checkpoints (with every rank's generator states), logs and models.
  CHECK(rank0["is_world_process_zero"] == true);
  CHECK(rank0["is_local_process_zero"] == true);
  CHECK(rank1["is_world_process_zero"] == false);
  CHECK(rank1["is_local_process_zero"] == false);
  CHECK(file_names(two.path() / "checkpoint-4") ==
        std::vector<std::string>{"model.safetensors", "optimizer.pt", "rng_state_0.pt", "rng_state_1.pt",
                                 "scheduler.json", "trainer_progress.json", "trainer_state.json",
                                 "training_args.json"});
  int lines = 0;
  for (std::size_t at = 0, next;
       (next = read_file(two.path() / "logs.jsonl").find('\n', at)) != std::string::npos; at = next + 1)
    ++lines;
  CHECK(lines == static_cast<int>(rank0["log_history"].size()));
  CHECK(fs::exists(two.path() / "model.safetensors"));
  CHECK(fs::exists(two.path() / "trainer_state.json"));
}

TEST_CASE("gradient accumulation and dataloader_drop_last shard as one process with the doubled batch",
          "[distributed]") {
  // 38 samples: a process alone drops the last 6 of batches of 8, two ranks the same 6 of 2 x 4.
  const std::vector<std::string> common{"--train_samples",
                                        "38",
                                        "--num_train_epochs",
                                        "2",
                                        "--learning_rate",
                                        "1e-2",
                                        "--gradient_accumulation_steps",
                                        "2",
                                        "--dataloader_drop_last",
                                        "--save_strategy",
                                        "no",
                                        "--ddp_find_unused_parameters",
                                        "false"};
  TempDir alone, two;
  std::vector<std::string> single_args = common, job_args = common;
  single_args.insert(single_args.end(), {"--per_device_train_batch_size", "8"});
  job_args.insert(job_args.end(), {"--per_device_train_batch_size", "4"});
  const Job reference = run_job(0, alone.path(), single_args);
  require_success(reference);
  const Job job = run_job(2, two.path(), job_args);
  require_success(job);
  CHECK(job.ranks[0].result["global_step"] == reference.ranks[0].result["global_step"]);
  CHECK(job.ranks[0].result["global_step"] == 4);
  CHECK(max_difference(job.ranks[0].result["weights"], reference.ranks[0].result["weights"]) < 1e-6);
}

TEST_CASE(
    "evaluation gathers every sample once: metrics equal a single process's on a set that does not divide",
    "[distributed]") {
  // 13 samples in batches of 4: rank 0 evaluates batches 0 and 2 (8 samples), rank 1 batches 1 and 3 (5).
  const std::vector<std::string> args{"--eval_only", "--eval_samples", "13", "--per_device_eval_batch_size",
                                      "4"};
  TempDir alone, two;
  const Job reference = run_job(0, alone.path(), args);
  require_success(reference);
  const Job job = run_job(2, two.path(), args);
  require_success(job);
  const json& single = reference.ranks[0].result;
  for (const Rank& rank : job.ranks) {
    const json& r = rank.result;
    CHECK(r["seen"] == single["seen"]);  // predictions and labels in dataset order, each once
    CHECK(r["eval"]["eval_count"] == 13);
    CHECK(r["eval"]["eval_mse"] == single["eval"]["eval_mse"]);
    CHECK(r["eval"]["eval_loss"].get<double>() ==
          Approx(single["eval"]["eval_loss"].get<double>()).epsilon(1e-12));
  }
}

TEST_CASE("a stop decided on one rank stops every rank after the same step", "[distributed]") {
  TempDir two;
  const Job job =
      run_job(2, two.path(), {"--stop_at_step", "3", "--stop_rank", "1", "--save_strategy", "no"});
  require_success(job);
  CHECK(job.ranks[0].result["global_step"] == 3);
  CHECK(job.ranks[1].result["global_step"] == 3);
}

TEST_CASE("a rank killed mid-training makes the others fail at once with an error naming it",
          "[distributed]") {
  TempDir two;
  const Job job = run_job(2, two.path(), {"--die_at_step", "3", "--die_rank", "1", "--ddp_timeout", "60"});
  CHECK(job.ranks[1].status == 128 + SIGKILL);
  INFO(job.ranks[0].output);
  CHECK(job.ranks[0].status == 1);
  CHECK_THAT(job.ranks[0].output, Catch::Contains("rank 1 stopped responding"));
  CHECK(job.seconds < 60);
}

TEST_CASE("a rank that hangs makes the others fail within --ddp_timeout with an error naming it",
          "[distributed]") {
  TempDir two;
  JobOptions options;
  options.end_with_rank_zero = true;
  const Job job =
      run_job(2, two.path(), {"--hang_at_step", "2", "--hang_rank", "1", "--ddp_timeout", "5"}, options);
  INFO(job.ranks[0].output);
  CHECK(job.ranks[0].status == 1);
  CHECK_THAT(job.ranks[0].output, Catch::Contains("rank 1 (at collective"));
  CHECK_THAT(job.ranks[0].output, Catch::Contains("is alive but did not reach this collective"));
  CHECK(job.seconds < 60);
}

TEST_CASE("a job SIGKILLed whole and resumed ends with the weights of an uninterrupted one",
          "[distributed]") {
  // Dropout draws from each rank's generator: its states must come back too.
  const std::vector<std::string> common{
      "--dropout",    "0.2", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
      "--save_steps", "2",   "--logging_steps",    "3"};
  TempDir uninterrupted, interrupted;
  const Job whole = run_job(2, uninterrupted.path(), common);
  require_success(whole);

  std::vector<std::string> die = common;
  die.insert(die.end(), {"--die_at_step", "5", "--die_rank", "-1"});
  const Job killed = run_job(2, interrupted.path(), die);
  CHECK(killed.ranks[0].status == 128 + SIGKILL);
  CHECK(killed.ranks[1].status == 128 + SIGKILL);

  SECTION("resumed by as many processes") {
    std::vector<std::string> resume = common;
    resume.push_back("--resume");
    const Job resumed = run_job(2, interrupted.path(), resume);
    require_success(resumed);
    CHECK(resumed.ranks[0].result["weights"] == whole.ranks[0].result["weights"]);
    CHECK(resumed.ranks[1].result["weights"] == whole.ranks[1].result["weights"]);
    const auto logs = training_logs(resumed.ranks[0].result["log_history"]);
    const auto whole_logs = training_logs(whole.ranks[0].result["log_history"]);
    REQUIRE(logs.size() == whole_logs.size());
    for (std::size_t i = 0; i < logs.size(); ++i)
      CHECK(logs[i]["loss"].get<double>() == Approx(whole_logs[i]["loss"].get<double>()).epsilon(1e-6));
  }
  SECTION("refused by another number of processes") {
    std::vector<std::string> resume = common;
    resume.push_back("--resume");
    const Job alone = run_job(0, interrupted.path(), resume);
    CHECK(alone.ranks[0].status == 1);
    CHECK_THAT(alone.ranks[0].output, Catch::Contains("was saved by 2 process(es) and this run has 1"));
  }
}

TEST_CASE("rendezvous failures name the culprit", "[distributed]") {
  TempDir dir;
  SECTION("a port in use") {
    const int port = free_port();
    const int holder = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    address.sin_port = htons(static_cast<uint16_t>(port));
    REQUIRE(bind(holder, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(listen(holder, 8) == 0);
    JobOptions options;
    options.port = port;
    options.end_with_rank_zero = true;
    const Job job = run_job(2, dir.path(), {"--ddp_timeout", "5"}, options);
    close(holder);
    CHECK(job.ranks[0].status == 1);
    CHECK_THAT(job.ranks[0].output,
               Catch::Contains("rank 0 cannot host the rendezvous store on port " + std::to_string(port)) &&
                   Catch::Contains("the port is in use"));
  }
  SECTION("an unreachable master") {
    JobOptions options;
    options.env[0] = {{"RANK", "1"}, {"WORLD_SIZE", "2"}};  // rank 1 alone: nobody hosts the store
    const Job job = run_job(1, dir.path(), {"--ddp_timeout", "2"}, options);
    CHECK(job.ranks[0].status == 1);
    CHECK_THAT(job.ranks[0].output,
               Catch::Contains("rank 1 cannot reach the rendezvous store at 127.0.0.1:"));
  }
  SECTION("world sizes that differ") {
    JobOptions options;
    options.env[1] = {{"WORLD_SIZE", "3"}};
    const Job job = run_job(2, dir.path(), {"--ddp_timeout", "20"}, options);
    for (const Rank& rank : job.ranks) {
      CHECK(rank.status == 1);
      CHECK_THAT(rank.output, Catch::Contains("WORLD_SIZE=3") && Catch::Contains("WORLD_SIZE=2"));
    }
  }
}

// The digits example, when torchrun can launch it here; empty (with the reason given) when it cannot.
std::string torchrun_digits() {
  const fs::path digits = fs::path(TORCHFIT_BINARY_DIR) / "examples" / "digits";
  if (std::system("command -v torchrun > /dev/null 2>&1") != 0) {
    WARN("skipped: torchrun is not installed (Debian: python3-torch)");
    return "";
  }
  if (!fs::exists(digits)) {
    WARN("skipped: " << digits << " is not built (TORCHFIT_BUILD_EXAMPLES)");
    return "";
  }
  // Debian 13's torch 2.6 lacks libuv, and its torchrun asks for a libuv store whatever USE_LIBUV says.
  if (std::system(
          "python=$(head -n 1 \"$(command -v torchrun)\" | cut -c 3-); $python -c 'import torch.distributed "
          "as d; d.TCPStore(\"127.0.0.1\", 0, 1, True)' 2>&1 | grep -q 'without libuv'") == 0) {
    WARN("skipped: this torchrun cannot host its rendezvous store (its PyTorch was built without libuv)");
    return "";
  }
  return digits.string();
}

// torchrun's command line for digits, its logs under `dir` (--redirects 1 --tee 1: Debian 12's torchrun, torch 1.13
// on Python 3.11, fails with its default of 0).
std::string torchrun_command(const std::string& digits, const fs::path& dir, const std::string& launch,
                             const std::string& name) {
  return "OMP_NUM_THREADS=1 torchrun --redirects 1 --tee 1 --log_dir " + (dir / name).string() + " " +
         launch + " --no_python " + digits + " --output_dir " + (dir / ("out-" + name)).string() +
         " --num_train_epochs 8 --per_device_train_batch_size 16 --expect_accuracy 0.9 --disable_tqdm > " +
         (dir / (name + ".log")).string() + " 2>&1";
}

TEST_CASE("torchrun launches digits on two processes", "[distributed][torchrun]") {
  const std::string digits = torchrun_digits();
  if (digits.empty()) return;
  TempDir dir;
  const int status =
      std::system(torchrun_command(digits, dir.path(),
                                   "--nproc_per_node 2 --master_port " + std::to_string(free_port()), "node")
                      .c_str());
  INFO(read_file(dir.path() / "node.log"));
  CHECK(status == 0);
  CHECK_THAT(read_file(dir.path() / "node.log"), Catch::Contains("eval accuracy"));
  CHECK(fs::exists(dir.path() / "out-node" / "model.safetensors"));
}

TEST_CASE("torchrun's multi-node rendezvous: two nodes of one process each meet at an endpoint",
          "[distributed][torchrun]") {
  const std::string digits = torchrun_digits();
  if (digits.empty()) return;
  TempDir dir;
  // The README's command for several machines, with both "machines" on 127.0.0.1.
  const std::string launch = "--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:" +
                             std::to_string(free_port()) + " --rdzv_id torchfit-test";
  const std::string both = "(" + torchrun_command(digits, dir.path(), launch, "node0") + ") & (" +
                           torchrun_command(digits, dir.path(), launch, "node1") +
                           "); s1=$?; wait $!; s0=$?; " + "exit $((s0 || s1))";
  const int status = std::system(("bash -c '" + both + "'").c_str());
  const std::string node0 = read_file(dir.path() / "node0.log"), node1 = read_file(dir.path() / "node1.log");
  INFO(node0 << "\n----\n" << node1);
  CHECK(status == 0);
  // Each node's local rank 0 prints the logs (HF's is_local_process_zero); the job's rank 0 alone prints the
  // summary and writes the model, to its own --output_dir.
  CHECK_THAT(node0, Catch::Contains("'eval_accuracy'"));
  CHECK_THAT(node1, Catch::Contains("'eval_accuracy'"));
  const bool node0_leads = node0.find("eval accuracy") != std::string::npos;
  CHECK(node0_leads != (node1.find("eval accuracy") != std::string::npos));
  CHECK(fs::exists(dir.path() / "out-node0" / "model.safetensors") == node0_leads);
  CHECK(fs::exists(dir.path() / "out-node1" / "model.safetensors") == !node0_leads);
}

TEST_CASE("NCCL on two GPUs trains as one GPU with the doubled batch", "[distributed][cuda]") {
  if (torch::cuda::device_count() < 2) {
    WARN("skipped: needs two CUDA GPUs");
    return;
  }
  const std::vector<std::string> common{"--num_train_epochs", "2",  "--learning_rate", "1e-2",
                                        "--save_strategy",    "no", "--ddp_backend",   "nccl"};
  TempDir alone, two;
  std::vector<std::string> single_args = common, job_args = common;
  single_args.insert(single_args.end(), {"--per_device_train_batch_size", "8"});
  job_args.insert(job_args.end(), {"--per_device_train_batch_size", "4"});
  const Job reference = run_job(0, alone.path(), single_args);
  require_success(reference);
  const Job job = run_job(2, two.path(), job_args);
  require_success(job);
  CHECK(job.ranks[0].result["weights"] == job.ranks[1].result["weights"]);
  CHECK(max_difference(job.ranks[0].result["weights"], reference.ranks[0].result["weights"]) < 1e-5);
}

#endif

// SPDX-License-Identifier: MIT
// Data-parallel throughput: one process against a two-process Gloo job on 127.0.0.1, each process on one thread
// and with the same batch per process, training the MLP 784-256-256-10 and char_gpt's small GPT with the Trainer;
// and the time of an all-reduce of one step's gradients, against their size. Two processes ideally train twice the
// samples per second of one (the target is 1.8x): the gap is the gradient all-reduce and the per-step agreement
// that is not hidden behind the backward pass, or cores the machine does not have. The machine's own ceiling is
// measured too: two single processes training side by side, with no communication at all.
//
//   ./distributed [--quick] [--reps N] [training arguments, e.g. --ddp_find_unused_parameters true]
//
// It starts its own processes: `distributed --worker WORKLOAD STEPS RESULT.json [training arguments]`, alone or as
// one rank of a job (torchrun's variables), writes what that process measured.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <torchfit/distributed.hpp>
#include <torchfit/torchfit.hpp>

#include "bench_support.hpp"
#include "gpt.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Batch = torch::data::Example<>;
using nlohmann::json;

constexpr int64_t warmup_steps = 5;  // not timed: the first steps allocate, and rebuild the reducer's buckets

using bench::Mlp;

// This process's CPU time so far (user and system, all its threads: Gloo's and the kernel's work for its sockets
// included).
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The wall and CPU time between the end of the warm-up and the end of the last step.
struct StepClock : torchfit::TrainerCallback {
  void on_step_end(const Args&, torchfit::TrainerState& state, torchfit::TrainerControl&,
                   const torchfit::CallbackContext&) override {
    if (state.global_step == warmup_steps) {
      start = Clock::now();
      cpu_start = cpu_seconds();
    }
    if (state.global_step == state.max_steps) {
      seconds = std::chrono::duration<double>(Clock::now() - start).count();
      cpu = cpu_seconds() - cpu_start;
    }
  }
  Clock::time_point start;
  double cpu_start = 0;
  double seconds = 0;
  double cpu = 0;
};

// Trains `model` for warm-up + `steps` updates of `batch_size` samples per process and measures them, then times
// an all-reduce of as many bytes as the model's gradients.
template <typename Model, typename Loss>
json measure(Model model, torchfit::TensorPairDataset data, Loss loss, int64_t batch_size, int64_t steps,
             std::vector<std::string> flags) {
  flags.insert(flags.end(), {"--max_steps", std::to_string(warmup_steps + steps),
                             "--per_device_train_batch_size", std::to_string(batch_size), "--save_strategy",
                             "no", "--logging_steps", "1000000", "--disable_tqdm", "--report_to", "none"});
  std::vector<const char*> argv;
  for (const auto& flag : flags) argv.push_back(flag.c_str());
  const auto args = torchfit::TrainingArguments::from_argv(static_cast<int>(argv.size()), argv.data());
  torchfit::Trainer trainer(model, args, std::move(data), loss);
  trainer.template remove_callback<torchfit::PrinterCallback>();
  const auto clock = trainer.template add_callback<StepClock>();
  trainer.train();
  const int64_t world_size = torchfit::distributed::world().size;
  json out{{"steps_per_second", static_cast<double>(steps) / clock->seconds},
           {"samples_per_second", static_cast<double>(steps * batch_size * world_size) / clock->seconds},
           {"cpu_seconds_per_step", clock->cpu / static_cast<double>(steps)}};
  int64_t bytes = 0;
  for (const auto& p : model->parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  out["gradient_bytes"] = bytes;
  if (torchfit::distributed::Backend* backend = torchfit::distributed::backend()) {
    torch::Tensor gradients = torch::ones({bytes / 4}, torch::kFloat);
    const int repetitions = 20;
    backend->all_reduce(gradients, torchfit::distributed::ReduceOp::sum, "the benchmark's all-reduce");
    const auto start = Clock::now();
    for (int i = 0; i < repetitions; ++i)
      backend->all_reduce(gradients, torchfit::distributed::ReduceOp::sum, "the benchmark's all-reduce");
    out["all_reduce_seconds"] = std::chrono::duration<double>(Clock::now() - start).count() / repetitions;
  }
  return out;
}

int worker(const std::string& workload, int64_t steps, const fs::path& result,
           const std::vector<std::string>& flags) {
  torch::set_num_threads(1);
  const int64_t world_size = torchfit::distributed::world().size;
  const int64_t samples =
      (warmup_steps + steps) * world_size;  // per batch-size unit: one epoch covers the run
  json out;
  if (workload == "mlp") {
    const int64_t batch = 64;
    torch::manual_seed(1);
    torchfit::TensorPairDataset data{torch::randn({samples * batch, 784}),
                                     torch::randint(10, {samples * batch})};
    out = measure(Mlp(), std::move(data), bench::mlp_loss, batch, steps, flags);
  } else {
    const int64_t batch = 8;
    GptConfig config;
    config.context = 64;
    config.d_model = 128;
    config.layers = 2;
    torch::manual_seed(1);
    const torch::Tensor tokens = torch::randint(256, {samples * batch, config.context + 1});
    torchfit::TensorPairDataset data{tokens.slice(1, 0, config.context), tokens.slice(1, 1)};
    out = measure(
        CharGpt(config), std::move(data), [](CharGpt& m, const Batch& b) { return next_token_loss(m, b); },
        batch, steps, flags);
  }
  if (torchfit::distributed::world().is_world_zero()) std::ofstream(result) << out.dump();
  return 0;
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    throw std::runtime_error("cannot find a free port");
  close(fd);
  return ntohs(address.sin_port);
}

// Runs `processes` workers, as one job (torchrun's variables) or, with `job` false, side by side and unaware of
// each other; returns the samples per second of the job, or the sum of the lone processes', and rank 0's result.
std::pair<double, json> run(const char* self, int processes, bool job, const std::string& workload,
                            int64_t steps, const fs::path& dir, const std::vector<std::string>& flags) {
  const std::string name = fmt::format("{}-{}-{}", workload, processes, job ? "job" : "alone");
  const auto result = [&](int rank) { return dir / fmt::format("{}-rank{}.json", name, rank); };
  const auto log = [&](int rank) { return dir / fmt::format("{}-rank{}.log", name, rank); };
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < processes; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) {
      setenv("OMP_NUM_THREADS", "1", 1);
      if (job)
        for (const auto& [variable, value] :
             std::vector<std::pair<const char*, std::string>>{{"RANK", std::to_string(rank)},
                                                              {"WORLD_SIZE", std::to_string(processes)},
                                                              {"LOCAL_RANK", std::to_string(rank)},
                                                              {"LOCAL_WORLD_SIZE", std::to_string(processes)},
                                                              {"MASTER_ADDR", "127.0.0.1"},
                                                              {"MASTER_PORT", std::to_string(port)}})
          setenv(variable, value.c_str(), 1);
      const int fd = open(log(rank).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
      std::vector<std::string> tokens{self, "--worker", workload, std::to_string(steps),
                                      result(rank).string()};
      tokens.insert(tokens.end(), flags.begin(), flags.end());
      std::vector<char*> argv;
      for (auto& t : tokens) argv.push_back(t.data());
      argv.push_back(nullptr);
      execv(self, argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  bool failed = false;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    failed = failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  }
  std::vector<json> results;
  for (int rank = 0; rank < (job ? 1 : processes); ++rank) {
    if (failed || !fs::exists(result(rank)))
      throw std::runtime_error(fmt::format("the {} run failed: see {}", name, log(rank).string()));
    std::ifstream in(result(rank));
    results.push_back(json::parse(in));
  }
  double samples_per_second = 0;
  for (const json& r : results) samples_per_second += r["samples_per_second"].get<double>();
  return {samples_per_second, results.front()};
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc >= 5 && std::string(argv[1]) == "--worker") {
    std::vector<std::string> flags{argv[0]};  // the training arguments, after a program name
    flags.insert(flags.end(), argv + 5, argv + argc);
    return worker(argv[2], std::stoll(argv[3]), argv[4], flags);
  }
  bool quick = false;
  int reps = 1;
  std::vector<std::string> flags;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick")
      quick = true;
    else if (std::string(argv[i]) == "--reps" && i + 1 < argc)
      reps = std::max(1, std::stoi(argv[++i]));
    else
      flags.emplace_back(argv[i]);
  }
  const fs::path dir = fs::temp_directory_path() / fmt::format("torchfit-distributed-bench-{}", getpid());
  fs::create_directories(dir);
  const char* self = argv[0];
  // "CPU limit": with as many cores as ranks, two ranks cannot beat 2 x (CPU time of a lone process's step) /
  // (CPU time of a rank's step), whatever overlaps: the CPU the communication itself costs (Gloo's threads, the
  // kernel's copies through loopback TCP) bounds the speed-up.
  std::cout
      << "| workload | rep | 1 process samples/s | 2 side by side samples/s | 2-rank job samples/s |"
         " ceiling | speed-up | CPU ms/step alone | CPU ms/step in the job | CPU limit | gradient bytes |"
         " all-reduce ms | job step ms |\n"
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const std::string workload : {"mlp", "gpt"}) {
    const int64_t steps = quick ? 10 : (workload == "mlp" ? 300 : 60);
    // One process, two side by side, then the job, in turn: each repetition's ratios are measured under the same
    // machine load.
    std::vector<double> ceilings, speedups, limits;
    for (int rep = 1; rep <= reps; ++rep) {
      const auto [one, alone] = run(self, 1, false, workload, steps, dir, flags);
      const double side_by_side = run(self, 2, false, workload, steps, dir, flags).first;
      const auto [two, job] = run(self, 2, true, workload, steps, dir, flags);
      const double cpu_alone = alone["cpu_seconds_per_step"].get<double>();
      const double cpu_job = job["cpu_seconds_per_step"].get<double>();
      ceilings.push_back(side_by_side / one);
      speedups.push_back(two / one);
      limits.push_back(2 * cpu_alone / cpu_job);
      std::cout << fmt::format(
          "| {} | {} | {:.0f} | {:.0f} | {:.0f} | {:.2f}x | {:.2f}x | {:.2f} | {:.2f} | {:.2f}x | {} |"
          " {:.3f} | {:.3f} |\n",
          workload, rep, one, side_by_side, two, ceilings.back(), speedups.back(), 1e3 * cpu_alone,
          1e3 * cpu_job, limits.back(), job["gradient_bytes"].get<int64_t>(),
          1e3 * job["all_reduce_seconds"].get<double>(), 1e3 / job["steps_per_second"].get<double>());
    }
    const auto [low, high] = std::minmax_element(speedups.begin(), speedups.end());
    std::cout << fmt::format(
        "{}: speed-up median {:.2f}x [{:.2f}, {:.2f}] over {} repetitions; the machine's ceiling (two lone "
        "processes side by side) {:.2f}x; the CPU limit {:.2f}x (medians)\n",
        workload, bench::median(speedups), *low, *high, reps, bench::median(ceilings), bench::median(limits));
  }
  fs::remove_all(dir);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "distributed: " << e.what() << "\n";
  return 1;
}

// SPDX-License-Identifier: MIT
// Where a launcher put this process: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT) or, for tasks started by SLURM's srun, SLURM's (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
// SLURM_LOCALID, with MASTER_ADDR and MASTER_PORT from the batch script).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "torchfit/error.hpp"

namespace torchfit::distributed {

/// This process's place in a job, as its launcher set it (HF's process_index, local_process_index, world_size).
struct Launch {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  std::string master_addr;  ///< where the rendezvous store listens
  int master_port = 0;
  /// torchrun's agent hosts the store and every rank is its client (TORCHELASTIC_USE_AGENT_STORE), under a
  /// prefix per restart (`/worker/attempt_<n>`, as torch.distributed's env:// rendezvous).
  bool agent_store = false;
  std::string store_prefix;
  std::string launcher;  ///< "torchrun" or "SLURM", for messages
};

namespace detail {

inline std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// An integer variable in [min, max]; DistributedError naming the variable otherwise.
inline int64_t env_integer(const char* name, const std::string& text, int64_t min, int64_t max) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || value < min || value > max)
    throw DistributedError(fmt::format("{}={:?} is not an integer from {} to {}", name, text, min, max));
  return value;
}

inline int64_t required_integer(const char* name, const char* launcher, int64_t min, int64_t max) {
  const auto text = env(name);
  if (!text) throw DistributedError(fmt::format("{} set some of its variables but not {}", launcher, name));
  return env_integer(name, *text, min, max);
}

// SLURM_STEP_TASKS_PER_NODE lists the tasks of each node, runs compressed: "2(x3),1" is nodes of 2, 2, 2, 1.
inline std::optional<int64_t> slurm_tasks_on_node(const std::string& list, int64_t node) {
  std::size_t pos = 0;
  while (pos < list.size()) {
    std::size_t used = 0;
    const long long tasks = std::stoll(list.substr(pos), &used);
    pos += used;
    long long repeat = 1;
    if (list.compare(pos, 2, "(x") == 0) {
      repeat = std::stoll(list.substr(pos + 2), &used);
      pos += 2 + used + 1;  // the closing parenthesis
    }
    if (node < repeat) return tasks;
    node -= repeat;
    if (pos < list.size() && list[pos] == ',') ++pos;
  }
  return std::nullopt;
}

inline void read_master(Launch& launch) {
  const auto addr = env("MASTER_ADDR");
  const auto port = env("MASTER_PORT");
  if (!addr || addr->empty() || !port)
    throw DistributedError(fmt::format(
        "{} started this process as rank {} of {}, but MASTER_ADDR and MASTER_PORT (where rank 0 hosts the "
        "rendezvous) are not both set{}",
        launch.launcher, launch.rank, launch.world_size,
        launch.launcher == "SLURM" ? "; in the batch script: export MASTER_ADDR=$(scontrol show hostnames "
                                     "\"$SLURM_JOB_NODELIST\" | head -n 1) MASTER_PORT=29500"
                                   : ""));
  launch.master_addr = *addr;
  launch.master_port = static_cast<int>(env_integer("MASTER_PORT", *port, 1, 65535));
}

inline Launch torchrun_launch() {
  Launch launch;
  launch.launcher = "torchrun";
  launch.world_size = required_integer("WORLD_SIZE", "the launcher", 1, 1 << 20);
  launch.rank = required_integer("RANK", "the launcher", 0, launch.world_size - 1);
  launch.local_world_size = env("LOCAL_WORLD_SIZE")
                                ? required_integer("LOCAL_WORLD_SIZE", "the launcher", 1, launch.world_size)
                                : 1;
  launch.local_rank =
      env("LOCAL_RANK") ? required_integer("LOCAL_RANK", "the launcher", 0, launch.local_world_size - 1) : 0;
  launch.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  if (launch.agent_store)
    launch.store_prefix = "/worker/attempt_" + env("TORCHELASTIC_RESTART_COUNT").value_or("0");
  return launch;
}

inline Launch slurm_launch() {
  Launch launch;
  launch.launcher = "SLURM";
  launch.world_size = required_integer("SLURM_STEP_NUM_TASKS", "SLURM", 1, 1 << 20);
  launch.rank = required_integer("SLURM_PROCID", "SLURM", 0, launch.world_size - 1);
  launch.local_rank =
      env("SLURM_LOCALID") ? required_integer("SLURM_LOCALID", "SLURM", 0, launch.world_size - 1) : 0;
  const auto per_node = env("SLURM_STEP_TASKS_PER_NODE");
  const int64_t node = env("SLURM_NODEID") ? required_integer("SLURM_NODEID", "SLURM", 0, 1 << 20) : 0;
  try {
    launch.local_world_size = per_node ? slurm_tasks_on_node(*per_node, node).value_or(1) : 1;
  } catch (const std::exception&) {
    throw DistributedError(
        fmt::format("SLURM_STEP_TASKS_PER_NODE={:?} is not a list such as \"2(x3),1\"", *per_node));
  }
  return launch;
}

}  // namespace detail

/// The launch described by the environment: torchrun's variables (RANK and WORLD_SIZE), else those of a task
/// srun started (SLURM_PROCID with SLURM_STEP_NUM_TASKS: a batch script's own process, which srun did not start,
/// is not a task); nullopt for a process started on its own. A job of one process needs no rendezvous, so
/// MASTER_ADDR and MASTER_PORT are read only for WORLD_SIZE > 1. DistributedError naming the variable when one
/// is malformed, out of range or missing.
inline std::optional<Launch> launch_from_environment() {
  std::optional<Launch> launch;
  if (detail::env("RANK") || detail::env("WORLD_SIZE"))
    launch = detail::torchrun_launch();
  else if (detail::env("SLURM_PROCID") && detail::env("SLURM_STEP_NUM_TASKS"))
    launch = detail::slurm_launch();
  if (launch && launch->world_size > 1) detail::read_master(*launch);
  return launch;
}

}  // namespace torchfit::distributed

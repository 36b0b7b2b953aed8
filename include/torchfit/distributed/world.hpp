// SPDX-License-Identifier: MIT
// The job this process belongs to: formed when the first Trainer is built (HF's _setup_devices) and kept until
// the process ends, as torch.distributed's default process group is.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/distributed/backend.hpp"
#include "torchfit/distributed/launch.hpp"
#include "torchfit/error.hpp"
#include "torchfit/log.hpp"
#include "torchfit/trainer_state.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit::distributed {

/// This process's place in its job (HF's process_index, local_process_index and world_size).
struct World {
  int64_t rank = 0;
  int64_t size = 1;
  int64_t local_rank = 0;  ///< among the processes of this machine
  int64_t local_size = 1;
  bool is_world_zero() const { return rank == 0; }
  bool is_local_zero() const { return local_rank == 0; }
};

namespace detail {

struct Job {
  std::optional<Launch> launch;
  World world;
  std::unique_ptr<Backend> backend;  // formed by join() when world.size > 1
  std::string backend_name;
};

// The launch is read from the environment once, on first use.
inline Job& job() {
  static Job job = [] {
    Job j;
    j.launch = launch_from_environment();
    if (j.launch)
      j.world = {j.launch->rank, j.launch->world_size, j.launch->local_rank, j.launch->local_world_size};
    return j;
  }();
  return job;
}

inline void check_arguments(const TrainingArguments& args, const std::string& backend,
                            const torch::Device& device) {
  if (backend != "gloo" && backend != "nccl")
    throw ArgumentError(fmt::format(
        "--ddp_backend {:?}: torchfit runs on \"gloo\" (CPUs or GPUs) or \"nccl\" (GPUs)", backend));
  if (backend == "nccl" && !device.is_cuda())
    throw ArgumentError("--ddp_backend nccl needs CUDA GPUs, and this process trains on the CPU: use gloo");
  if (args.ddp_timeout <= 0)
    throw ArgumentError(fmt::format("--ddp_timeout must be > 0 seconds (got {})", args.ddp_timeout));
  if (args.ddp_bucket_cap_mb && *args.ddp_bucket_cap_mb <= 0)
    throw ArgumentError(fmt::format("--ddp_bucket_cap_mb must be > 0 (got {})", *args.ddp_bucket_cap_mb));
}

// GPU LOCAL_RANK of this machine for a launched process, made the current device (as DDP's device_ids).
inline torch::Device cuda_device(const Job& job) {
  if (!job.launch) return torch::Device(torch::kCUDA);
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (job.world.local_rank >= count)
    throw DistributedError(
        fmt::format("rank {} has local rank {} but this machine has {} GPU(s): start at most {} "
                    "process(es) per machine (torchrun --nproc_per_node), or pass --use_cpu",
                    job.world.rank, job.world.local_rank, count, count));
  const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(job.world.local_rank));
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
  return device;
}

}  // namespace detail

/// This process's place in its job, as launched (one process of one: not launched by torchrun or srun).
inline const World& world() { return detail::job().world; }

/// The job's collectives: null for a process alone, or before the first Trainer formed the job.
inline Backend* backend() { return detail::job().backend.get(); }

/// Sets HF's process flags in `state` (is_world_process_zero, is_local_process_zero) from world().
inline void mark_process(TrainerState& state) {
  state.is_world_process_zero = world().is_world_zero();
  state.is_local_process_zero = world().is_local_zero();
}

/// Joins the job this process was launched into and returns the device it trains on: with CUDA (and without
/// --use_cpu) GPU LOCAL_RANK, made the current device; else the CPU. The first call of a launched process with
/// WORLD_SIZE > 1 forms the job as --ddp_backend and --ddp_timeout say (rendezvous at MASTER_ADDR:MASTER_PORT,
/// process group); later calls reuse it. Processes other than rank 0 print warnings and errors only (HF's
/// log_level_replica). ArgumentError for a bad --ddp_* value; DistributedError when the job cannot be formed.
inline torch::Device join(const TrainingArguments& args) {
  detail::Job& job = detail::job();
  const torch::Device device =
      !args.use_cpu && torch::cuda::is_available() ? detail::cuda_device(job) : torch::Device(torch::kCPU);
  const std::string name = args.ddp_backend.value_or(device.is_cuda() ? "nccl" : "gloo");
  detail::check_arguments(args, name, device);
  if (job.world.size == 1) return device;
  if (job.backend) {
    if (name != job.backend_name)
      throw ArgumentError(
          fmt::format("--ddp_backend {}: this process already runs its job on {}", name, job.backend_name));
    return device;
  }
  if (!detail::backend_factory())
    throw DistributedError(
        fmt::format("{} started this program as rank {} of {}, but the program was built without torchfit's "
                    "multi-process "
                    "support: #include <torchfit/distributed.hpp> and link torchfit::distributed",
                    job.launch->launcher, job.world.rank, job.world.size));
  if (!job.world.is_world_zero() && log::level() < log::Level::warning) log::set_level(log::Level::warning);
  job.backend = detail::backend_factory()(
      *job.launch, BackendOptions{name, std::chrono::seconds(args.ddp_timeout), device});
  job.backend_name = name;
  return device;
}

}  // namespace torchfit::distributed

// SPDX-License-Identifier: MIT
// The default random generators' states in a checkpoint (rng_state.pt), so a resumed run draws the same numbers
// (dropout masks, random initialisations) as an uninterrupted one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/checkpoint/archive.hpp"
#include "torchfit/error.hpp"

namespace torchfit::checkpoint {

/// The states of the CPU generator and of each CUDA device's generator.
struct RngState {
  torch::Tensor cpu;
  std::vector<std::pair<c10::DeviceIndex, torch::Tensor>> cuda;
};

namespace detail {

inline c10::DeviceIndex cuda_device_count() {
  return torch::cuda::is_available() ? static_cast<c10::DeviceIndex>(torch::cuda::device_count()) : 0;
}

inline at::Generator default_generator(c10::DeviceIndex cuda_device) {
  return cuda_device < 0 ? at::detail::getDefaultCPUGenerator()
                         : at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, cuda_device));
}

inline std::string cuda_key(c10::DeviceIndex device) { return "cuda_" + std::to_string(device); }

// Refuses a state the generator would not take, by giving it to a copy of the generator.
inline void check_generator_state(c10::DeviceIndex cuda_device, const torch::Tensor& state,
                                  const std::filesystem::path& file, const std::string& key) {
  at::Generator generator = default_generator(cuda_device);
  at::Generator probe;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    probe = generator.clone();
  }
  try {
    probe.set_state(state);
  } catch (const c10::Error& e) {
    throw CheckpointError(fmt::format("{}: entry \"{}\" is not a state of this generator: {}", file.string(),
                                      key, e.what_without_backtrace()));
  }
}

}  // namespace detail

/// The generators' current states.
inline RngState capture_rng_state() {
  const auto state_of = [](c10::DeviceIndex device) {
    at::Generator generator = detail::default_generator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    return generator.get_state();
  };
  RngState out{state_of(-1), {}};
  for (c10::DeviceIndex i = 0; i < detail::cuda_device_count(); ++i) out.cuda.emplace_back(i, state_of(i));
  return out;
}

/// The states as the bytes of a libtorch archive with entries "cpu" and "cuda_<device>" (what save_rng_state
/// writes; a job's rank 0 writes every rank's).
inline std::string rng_state_bytes(const RngState& state) {
  torch::serialize::OutputArchive archive;
  archive.write("cpu", state.cpu);
  for (const auto& [device, tensor] : state.cuda) archive.write(detail::cuda_key(device), tensor);
  return archive_bytes(archive);
}

/// Writes rng_state_bytes(state) to `file`, flushed to disk.
inline void save_rng_state(const RngState& state, const std::filesystem::path& file) {
  torchfit::detail::write_file_durably(file, rng_state_bytes(state));
}

/// Reads save_rng_state's file and checks each state against its generator without changing any. States of CUDA
/// devices this machine lacks are ignored; devices the file lacks keep their state.
inline RngState read_rng_state(const std::filesystem::path& file) {
  auto archive = read_archive(file);
  RngState out;
  if (!archive.try_read("cpu", out.cpu))
    throw CheckpointError(fmt::format("{} has no \"cpu\" entry (the CPU generator's state)", file.string()));
  detail::check_generator_state(-1, out.cpu, file, "cpu");
  for (c10::DeviceIndex i = 0; i < detail::cuda_device_count(); ++i) {
    torch::Tensor state;
    if (!archive.try_read(detail::cuda_key(i), state)) continue;
    detail::check_generator_state(i, state, file, detail::cuda_key(i));
    out.cuda.emplace_back(i, std::move(state));
  }
  return out;
}

/// Gives each generator its state from read_rng_state or capture_rng_state.
inline void apply_rng_state(const RngState& state) {
  const auto restore = [](c10::DeviceIndex device, const torch::Tensor& tensor) {
    at::Generator generator = detail::default_generator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(tensor);
  };
  restore(-1, state.cpu);
  for (const auto& [device, tensor] : state.cuda) restore(device, tensor);
}

}  // namespace torchfit::checkpoint

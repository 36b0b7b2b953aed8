// SPDX-License-Identifier: MIT
// Model weights in a checkpoint (model.safetensors): saved, and loaded all or nothing.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/detail/safetensors.hpp"
#include "torchfit/error.hpp"

namespace torchfit::checkpoint {

/// Parameters and buffers of a module by their dotted names (the state dict).
inline std::vector<std::pair<std::string, torch::Tensor>> model_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value().detach());
  return out;
}

/// Pairs of (model tensor, checkpoint tensor) ready to copy; see read_model_state.
using ModelStateCopies = std::vector<std::pair<torch::Tensor, torch::Tensor>>;

/// Reads model weights from a safetensors file and checks every name, shape and dtype against the model without
/// changing it: a file that does not fit is refused whole, naming the first offending tensor.
inline ModelStateCopies read_model_state(const torch::nn::Module& model, const std::filesystem::path& file) {
  auto tensors = torchfit::detail::load_safetensors(file);
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  ModelStateCopies copies;
  for (const auto& [name, target] : model_state(model)) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw CheckpointError(
          fmt::format("{} has no tensor \"{}\" that the model expects", file.string(), name));
    if (it->second.sizes() != target.sizes())
      throw CheckpointError(fmt::format("{}: tensor \"{}\" has shape {} but the model expects {}",
                                        file.string(), name, c10::str(it->second.sizes()),
                                        c10::str(target.sizes())));
    if (it->second.scalar_type() != target.scalar_type())
      throw CheckpointError(fmt::format("{}: tensor \"{}\" has dtype {} but the model expects {}",
                                        file.string(), name, c10::toString(it->second.scalar_type()),
                                        c10::toString(target.scalar_type())));
    copies.emplace_back(target, it->second);
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw CheckpointError(
        fmt::format("{} has tensor \"{}\" that the model does not have (a checkpoint of another model?)",
                    file.string(), by_name.begin()->first));
  return copies;
}

/// Copies what read_model_state validated into the model.
inline void apply_model_state(const ModelStateCopies& copies) {
  torch::NoGradGuard no_grad;
  for (const auto& [target, source] : copies) target.copy_(source);
}

/// Loads weights saved by save_model_state (or by Python's safetensors) into the model, all or nothing.
inline void load_model_state(torch::nn::Module& model, const std::filesystem::path& file) {
  apply_model_state(read_model_state(model, file));
}

/// Saves the weights as safetensors, flushed to disk.
inline void save_model_state(const torch::nn::Module& model, const std::filesystem::path& file) {
  torchfit::detail::save_safetensors(file, model_state(model), {{"format", "pt"}});
}

}  // namespace torchfit::checkpoint

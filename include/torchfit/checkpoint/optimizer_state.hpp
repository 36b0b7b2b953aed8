// SPDX-License-Identifier: MIT
// Optimizer state in a checkpoint (optimizer.pt, torch::save's format), loaded all or nothing.
#pragma once

#include <cstddef>
#include <filesystem>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/checkpoint/archive.hpp"
#include "torchfit/error.hpp"

namespace torchfit::checkpoint {

/// Writes the optimizer's state, flushed to disk.
inline void save_optimizer_state(const torch::optim::Optimizer& optimizer,
                                 const std::filesystem::path& file) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  save_archive(archive, file);
}

namespace detail {

// The key Optimizer::state() files a parameter under: its TensorImpl's address, in libtorch 1.x as text streamed
// as c10::guts::to_string streamed it (libtorch 2.6 no longer has that function).
template <typename StateMap>
typename StateMap::key_type state_key(const torch::Tensor& parameter) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << parameter.unsafeGetTensorImpl();
    return text.str();
  } else {
    return static_cast<Key>(parameter.unsafeGetTensorImpl());
  }
}

// The tensors of libtorch's optimizers' per-parameter states, each shaped like its parameter (none for others).
inline std::vector<torch::Tensor> parameter_shaped(const torch::optim::OptimizerParamState& s) {
  namespace optim = torch::optim;
  if (const auto* a = dynamic_cast<const optim::AdamParamState*>(&s))
    return {a->exp_avg(), a->exp_avg_sq(), a->max_exp_avg_sq()};
  if (const auto* w = dynamic_cast<const optim::AdamWParamState*>(&s))
    return {w->exp_avg(), w->exp_avg_sq(), w->max_exp_avg_sq()};
  if (const auto* g = dynamic_cast<const optim::SGDParamState*>(&s)) return {g->momentum_buffer()};
  if (const auto* d = dynamic_cast<const optim::AdagradParamState*>(&s)) return {d->sum()};
  if (const auto* r = dynamic_cast<const optim::RMSpropParamState*>(&s))
    return {r->square_avg(), r->momentum_buffer(), r->grad_avg()};
  return {};
}

// libtorch's load() checks only the number of groups and parameters; a state shaped for other parameters would
// fail at the first step instead.
inline void check_state_shapes(const torch::optim::Optimizer& optimizer, const std::filesystem::path& file) {
  const auto& states = optimizer.state();
  using StateMap = std::decay_t<decltype(states)>;
  const auto& groups = optimizer.param_groups();
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (std::size_t i = 0; i < groups[g].params().size(); ++i) {
      const torch::Tensor& parameter = groups[g].params()[i];
      const auto found = states.find(state_key<StateMap>(parameter));
      if (found == states.end()) continue;
      for (const torch::Tensor& t : parameter_shaped(*found->second))
        if (t.defined() && t.sizes() != parameter.sizes())
          throw CheckpointError(
              fmt::format("{}: the state of parameter {} of group {} has shape {} but the parameter "
                          "has {} (a checkpoint of another model?)",
                          file.string(), i, g, c10::str(t.sizes()), c10::str(parameter.sizes())));
    }
}

}  // namespace detail

/// An optimizer's state kept in memory, to put it back exactly as it was.
class OptimizerSnapshot {
 public:
  explicit OptimizerSnapshot(const torch::optim::Optimizer& optimizer) {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    bytes_ = archive_bytes(archive);
  }

  void restore(torch::optim::Optimizer& optimizer) const {
    optimizer.state().clear();  // load() adds and replaces states but never removes one
    auto archive = parse_archive(bytes_, "the optimizer's state kept in memory");
    optimizer.load(archive);
  }

 private:
  std::string bytes_;
};

/// Loads `archive`, read from `file`, into the optimizer, all or nothing: one that does not fit (other parameter
/// groups, group sizes or state shapes) throws CheckpointError naming the file, with the optimizer as it was.
inline void load_optimizer_state(torch::optim::Optimizer& optimizer, torch::serialize::InputArchive& archive,
                                 const std::filesystem::path& file) {
  const OptimizerSnapshot before(optimizer);
  try {
    optimizer.load(archive);
    detail::check_state_shapes(optimizer, file);
  } catch (const c10::Error& e) {  // libtorch refuses midway, after loading the groups before the bad one
    before.restore(optimizer);
    throw CheckpointError(
        fmt::format("{} does not fit this optimizer: {}", file.string(), e.what_without_backtrace()));
  } catch (...) {
    before.restore(optimizer);
    throw;
  }
}

}  // namespace torchfit::checkpoint

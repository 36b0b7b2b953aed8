// SPDX-License-Identifier: MIT
// What the Trainer needs to know about a model type: how to reach its module, and whether it counts FLOPs.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include <torch/torch.h>

namespace torchfit::detail {

template <typename T, typename = void>
struct is_module_holder : std::false_type {};
template <typename T>
struct is_module_holder<T, std::void_t<decltype(std::declval<T&>().ptr())>> : std::true_type {};

/// Whether the model defines `floating_point_ops(batch)`, HF's hook for counting `total_flos` (HF's
/// PreTrainedModel counts 6 x tokens x non-embedding parameters; other models count nothing).
template <typename Model, typename Batch, typename = void>
struct has_floating_point_ops : std::false_type {};
template <typename Model, typename Batch>
struct has_floating_point_ops<
    Model, Batch,
    std::void_t<decltype(std::declval<Model&>()->floating_point_ops(std::declval<const Batch&>()))>>
    : std::true_type {};

/// The model as a plain module pointer, for a torch::nn::ModuleHolder (`Net`) or a shared_ptr to a module.
template <typename Model>
std::shared_ptr<torch::nn::Module> module_of(Model& model) {
  if constexpr (is_module_holder<Model>::value)
    return model.ptr();
  else
    return std::static_pointer_cast<torch::nn::Module>(model);
}

}  // namespace torchfit::detail

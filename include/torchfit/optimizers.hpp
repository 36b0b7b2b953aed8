// SPDX-License-Identifier: MIT
// The default optimizer (HF's parameter groups) and gradient clipping without a host-device sync.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "torchfit/error.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// True for the weights of normalisation layers, which (like biases) get no weight decay (HF's
/// get_decay_parameter_names excludes LayerNorm weights and every bias).
inline bool is_normalization_module(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::LayerNormImpl*>(&m) || dynamic_cast<const torch::nn::GroupNormImpl*>(&m) ||
         dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&m) || dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&m) ||
         dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&m) ||
         dynamic_cast<const torch::nn::InstanceNorm1dImpl*>(&m) ||
         dynamic_cast<const torch::nn::InstanceNorm2dImpl*>(&m) ||
         dynamic_cast<const torch::nn::InstanceNorm3dImpl*>(&m);
}

/// Splits trainable parameters into (decay, no_decay) as HF does.
inline std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> decay_parameter_groups(
    const torch::nn::Module& model) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    const bool norm = is_normalization_module(*item.value());
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      if (!p.value().requires_grad()) continue;
      const bool is_bias = p.key().find("bias") != std::string::npos;
      (norm || is_bias ? no_decay : decay).push_back(p.value());
    }
  }
  return {std::move(decay), std::move(no_decay)};
}

namespace detail {

template <typename Options, typename Optimizer>
std::unique_ptr<torch::optim::Optimizer> grouped(const torch::nn::Module& model, Options options, double decay) {
  auto [with_decay, without_decay] = decay_parameter_groups(model);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!with_decay.empty())
    groups.emplace_back(std::move(with_decay), std::make_unique<Options>(Options(options).weight_decay(decay)));
  if (!without_decay.empty())
    groups.emplace_back(std::move(without_decay), std::make_unique<Options>(Options(options).weight_decay(0.0)));
  if (groups.empty()) throw Error("create_optimizer: the model has no trainable parameters");
  return std::make_unique<Optimizer>(std::move(groups), options);
}

}  // namespace detail

/// The optimizer `args.optim` names, with weight decay on every trainable parameter except biases and
/// normalisation weights (HF's two parameter groups).
inline std::unique_ptr<torch::optim::Optimizer> create_optimizer(const TrainingArguments& args,
                                                                 const torch::nn::Module& model) {
  namespace optim = torch::optim;
  const double lr = args.learning_rate;
  if (args.optim == "adamw_torch" || args.optim == "adamw_torch_fused")
    return detail::grouped<optim::AdamWOptions, optim::AdamW>(
        model, optim::AdamWOptions(lr).betas({args.adam_beta1, args.adam_beta2}).eps(args.adam_epsilon),
        args.weight_decay);
  if (args.optim == "adam")
    return detail::grouped<optim::AdamOptions, optim::Adam>(
        model, optim::AdamOptions(lr).betas({args.adam_beta1, args.adam_beta2}).eps(args.adam_epsilon),
        args.weight_decay);
  if (args.optim == "sgd")
    return detail::grouped<optim::SGDOptions, optim::SGD>(model, optim::SGDOptions(lr), args.weight_decay);
  if (args.optim == "adagrad")
    return detail::grouped<optim::AdagradOptions, optim::Adagrad>(model, optim::AdagradOptions(lr),
                                                                  args.weight_decay);
  if (args.optim == "rmsprop")
    return detail::grouped<optim::RMSpropOptions, optim::RMSprop>(model, optim::RMSpropOptions(lr),
                                                                  args.weight_decay);
  throw ArgumentError("--optim: \"" + args.optim +
                      "\" is not supported; use adamw_torch, adamw_torch_fused, adam, sgd, adagrad or rmsprop");
}

/// Scales gradients so their global L2 norm is at most `max_norm` and returns the norm before clipping as a
/// 0-d tensor on the gradients' device. Same arithmetic as torch.nn.utils.clip_grad_norm_, but nothing is read
/// back from an accelerator (libtorch's C++ version returns a double, which forces a sync every step).
inline torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  std::vector<torch::Tensor> norms;
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters)
    if (p.grad().defined()) {
      grads.push_back(p.grad());
      norms.push_back(p.grad().detach().norm(2));
    }
  if (norms.empty()) return torch::zeros({});
  torch::Tensor total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
  torch::Tensor coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
  // On the CPU the value is at hand (no device to wait for): skip the multiply by exactly 1, a pass over every
  // gradient, when nothing needs clipping, as libtorch's clip_grad_norm_ does.
  if (coef.is_cpu() && coef.item<double>() >= 1.0) return total;
  for (auto& g : grads) g.detach().mul_(coef.to(g.device()));
  return total;
}

}  // namespace torchfit

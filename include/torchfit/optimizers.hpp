// SPDX-License-Identifier: MIT
// The optimizers --optim names (HF's parameter groups), fused AdamW, and gradient clipping without a host-device
// sync.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "torchfit/error.hpp"
#include "torchfit/training_args.hpp"

namespace torchfit {

/// True for the weights of normalisation layers, which (like biases) get no weight decay (HF's
/// get_decay_parameter_names excludes LayerNorm weights and every bias).
inline bool is_normalization_module(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::LayerNormImpl*>(&m) ||
         dynamic_cast<const torch::nn::GroupNormImpl*>(&m) ||
         dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&m) ||
         dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&m) ||
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

// at::_fused_adamw_ exists from libtorch 2.0 (CUDA), its CPU kernel from 2.4 (pytorch#123074).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define TORCHFIT_HAS_FUSED_ADAMW 1

/// AdamW whose update runs as one fused kernel per parameter group (at::_fused_adamw_, PyTorch's
/// `AdamW(fused=True)`, HF's adamw_torch_fused): a single pass over parameters, gradients and moments where
/// libtorch's AdamW makes eight and allocates two temporaries per parameter. Same arithmetic up to rounding; its
/// options and state are AdamW's, so a checkpoint of either loads into the other. A group's parameters must share
/// a device and a dtype, as the kernel requires.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using AdamW::AdamW;

  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups()) {
      const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
      std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
      int64_t step = 0;
      for (const auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto& state = state_of(p, options.amsgrad());
        state.step(state.step() + 1);
        params.push_back(p);
        grads.push_back(p.grad());
        exp_avgs.push_back(state.exp_avg());
        exp_avg_sqs.push_back(state.exp_avg_sq());
        if (options.amsgrad()) max_exp_avg_sqs.push_back(state.max_exp_avg_sq());
        // The kernel reads each parameter's step from a float tensor on its device (PyTorch's state["step"]);
        // parameters stepped together share one.
        if (steps.empty() || step != state.step()) {
          step = state.step();
          steps.push_back(torch::full({}, static_cast<double>(step),
                                      torch::TensorOptions(torch::kFloat).device(p.device())));
        } else {
          steps.push_back(steps.back());
        }
      }
      if (params.empty()) continue;
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, options.lr(),
                        std::get<0>(options.betas()), std::get<1>(options.betas()), options.weight_decay(),
                        options.eps(), options.amsgrad(), /*maximize=*/false);
    }
    return loss;
  }

 private:
  // The parameter's AdamW state, created as libtorch's AdamW creates it on a first step.
  torch::optim::AdamWParamState& state_of(const torch::Tensor& p, bool amsgrad) {
    auto& slot = state_[p.unsafeGetTensorImpl()];
    if (!slot) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      if (amsgrad) fresh->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      slot = std::move(fresh);
    }
    return static_cast<torch::optim::AdamWParamState&>(*slot);
  }
};
#endif

namespace detail {

template <typename Options, typename Optimizer>
std::unique_ptr<torch::optim::Optimizer> grouped(const torch::nn::Module& model, Options options,
                                                 double decay) {
  auto [with_decay, without_decay] = decay_parameter_groups(model);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!with_decay.empty())
    groups.emplace_back(std::move(with_decay),
                        std::make_unique<Options>(Options(options).weight_decay(decay)));
  if (!without_decay.empty())
    groups.emplace_back(std::move(without_decay),
                        std::make_unique<Options>(Options(options).weight_decay(0.0)));
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
  const auto adamw_options =
      optim::AdamWOptions(lr).betas({args.adam_beta1, args.adam_beta2}).eps(args.adam_epsilon);
  if (args.optim == "adamw_torch")
    return detail::grouped<optim::AdamWOptions, optim::AdamW>(model, adamw_options, args.weight_decay);
  if (args.optim == "adamw_torch_fused") {
#ifdef TORCHFIT_HAS_FUSED_ADAMW
    return detail::grouped<optim::AdamWOptions, FusedAdamW>(model, adamw_options, args.weight_decay);
#else
    throw ArgumentError(
        fmt::format("--optim adamw_torch_fused needs libtorch 2.4 or later (at::_fused_adamw_ with "
                    "its CPU kernel); this build uses libtorch {}: use --optim adamw_torch",
                    TORCH_VERSION));
#endif
  }
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
  throw ArgumentError(fmt::format(
      "--optim: \"{}\" is not supported; use adamw_torch, adamw_torch_fused, adam, sgd, adagrad or rmsprop",
      args.optim));
}

/// Scales gradients so their global L2 norm is at most `max_norm` and returns the norm before clipping as a
/// 0-d tensor on the gradients' device. Same arithmetic as torch.nn.utils.clip_grad_norm_ (its foreach path: one
/// multi-tensor kernel for the norms and, from libtorch 2.1, one for the scaling), but nothing is read back from
/// an accelerator (libtorch's C++ version returns a double, which forces a sync every step).
inline torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters)
    if (p.grad().defined()) grads.push_back(p.grad().detach());
  if (grads.empty()) return torch::zeros({});
  const std::vector<torch::Tensor> norms = at::_foreach_norm(grads, 2);
  torch::Tensor total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
  torch::Tensor coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
  // On the CPU the value is at hand (no device to wait for): skip the multiply by exactly 1, a pass over every
  // gradient, when nothing needs clipping, as libtorch's clip_grad_norm_ does.
  if (coef.is_cpu() && coef.item<double>() >= 1.0) return total;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(grads, coef);
#else  // no _foreach_mul_ by a tensor before 2.1
  for (auto& g : grads) g.mul_(coef.to(g.device()));
#endif
  return total;
}

}  // namespace torchfit

// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/data.hpp"
#include "torchfit/detail/amp.hpp"
#include "torchfit/detail/eval_gather.hpp"
#include "torchfit/detail/host_reads.hpp"
#include "torchfit/detail/model_traits.hpp"
#include "torchfit/detail/speed_metrics.hpp"
#include "torchfit/distributed/collectives.hpp"
#include "torchfit/distributed/gather.hpp"
#include "torchfit/error.hpp"
#include "torchfit/loop/loop_context.hpp"
#include "torchfit/outputs.hpp"

namespace torchfit {

/// The loop evaluate() and predict() share (HF's evaluation_loop): the model in eval mode without gradients over
/// every batch, on_prediction_step after each, predictions and labels gathered when asked, then the loss, the
/// user's metrics and HF's speed metrics under `<prefix>_`. The loss is the exact mean over samples (HF weighs a
/// short last batch as a full one).
template <typename Model, typename Data>
class EvaluationLoop {
 public:
  using Batch = typename detail::DataTraits<Data>::Batch;
  using LossFn = std::function<LossOutput(Model&, const Batch&)>;
  using MetricsFn = std::function<Logs(const EvalPrediction&)>;
  struct Result {
    torch::Tensor predictions;
    torch::Tensor labels;
    Logs metrics;
  };

  EvaluationLoop(LoopContext loop, Model& model, const LossFn& loss_fn, const MetricsFn& compute_metrics)
      : loop_(loop), model_(model), loss_fn_(loss_fn), compute_metrics_(compute_metrics) {}

  Result run(const Data& dataset, const std::string& prefix, bool gather) {
    const auto start = std::chrono::steady_clock::now();
    const TrainingArguments& args = loop_.args;
    // Each rank evaluates its share; counts, loss and outputs are then summed or gathered over the ranks.
    const distributed::World& world = distributed::world();
    detail::BatchPlan<Data> plan(dataset, args.per_device_eval_batch_size, false, std::nullopt,
                                 distributed::Shard{world.rank, world.size, /*even=*/false});
    const auto num_samples = static_cast<int64_t>(
        distributed::sum_over_ranks({static_cast<double>(plan.num_samples())}, "counting eval samples")
            .front());
    if (num_samples == 0)
      throw Error(fmt::format("{} dataset is empty: there is nothing to evaluate", prefix));
    loader_info_ = LoaderInfo{plan.num_batches(), num_samples, args.per_device_eval_batch_size};
    loop_.handler.context().eval_dataloader = &loader_info_;

    const auto module = detail::module_of(model_);
    const bool was_training = module->is_training();
    module->eval();
    Result result;
    const double loss_sum = run_batches(plan, gather, result);
    if (was_training) module->train();

    result.metrics = Logs::object();
    result.metrics[prefix + "_loss"] =
        distributed::sum_over_ranks({loss_sum}, "summing eval losses").front() /
        static_cast<double>(num_samples);
    if (compute_metrics_) {
      const Logs user = compute_metrics_(EvalPrediction{result.predictions, result.labels});
      for (const auto& item : user.items())
        result.metrics[item.key().rfind(prefix + "_", 0) == 0 ? item.key() : prefix + "_" + item.key()] =
            item.value();
    }
    detail::add_speed_metrics(result.metrics, prefix, detail::seconds_since(start), num_samples,
                              plan.num_batches());
    return result;
  }

 private:
  // The forward passes; returns the sample-weighted loss sum. Each batch's loss stays on the device until one
  // read after the last batch, which sums them on the host in order: the bits a running sum in double gives,
  // without three tensor operations per batch.
  double run_batches(const detail::BatchPlan<Data>& plan, bool gather, Result& result) {
    const TrainingArguments& args = loop_.args;
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> losses;
    std::vector<double> sizes;
    losses.reserve(static_cast<std::size_t>(plan.num_batches()));
    sizes.reserve(static_cast<std::size_t>(plan.num_batches()));
    const bool pin = loop_.device.is_cuda() && args.dataloader_pin_memory;
    detail::EvalGatherer predictions(args.eval_accumulation_steps), labels(args.eval_accumulation_steps);
    const bool autocast = loop_.device.is_cuda() && (args.fp16 || args.bf16);
    // HF: an empty label_names means the batches carry no labels.
    const bool has_label_names = !args.label_names || !args.label_names->empty();
    const std::vector<std::string> label_names = args.label_names.value_or(std::vector<std::string>{});
    for (int64_t k = 0; k < plan.num_batches(); ++k) {
      const Batch batch =
          detail::to_device(pin ? detail::pinned(plan.batch(k)) : plan.batch(k), loop_.device);
      LossOutput out;
      {
        detail::AutocastScope scope(autocast, args.bf16 ? torch::kBFloat16 : torch::kHalf);
        out = loss_fn_(model_, batch);
      }
      if (!out.loss.defined() || out.loss.numel() != 1)
        throw Error(fmt::format("loss_fn must return a scalar tensor during evaluation (batch {})", k));
      // Under NoGradGuard a loss needs no detach, unless the loss function turned gradients back on.
      const torch::Tensor loss = out.loss.requires_grad() ? out.loss.detach() : out.loss;
      losses.push_back(loss.dim() == 0 ? loss : loss.reshape({}));
      sizes.push_back(static_cast<double>(detail::batch_size_of(batch)));
      if (gather) {
        if (out.predictions.defined()) predictions.add(out.predictions);
        const torch::Tensor l =
            out.labels.defined() || !has_label_names ? out.labels : detail::labels_of(batch, label_names);
        if (l.defined()) labels.add(l);
        predictions.step(k + 1);
        labels.step(k + 1);
      }
      loop_.handler.on_prediction_step(args, loop_.state, loop_.control);
    }
    result.predictions =
        distributed::gather_for_metrics(predictions.result(), plan, "gathering eval predictions");
    result.labels = distributed::gather_for_metrics(labels.result(), plan, "gathering eval labels");
    if (losses.empty()) return 0;
    ++detail::host_reads();
    const torch::Tensor weighted =
        torch::stack(losses).to(torch::kCPU, torch::kDouble) *
        torch::from_blob(sizes.data(), {static_cast<int64_t>(sizes.size())}, torch::kDouble);
    const double* term = weighted.data_ptr<double>();
    double sum = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) sum += term[i];
    return sum;
  }

  LoopContext loop_;
  Model& model_;
  const LossFn& loss_fn_;
  const MetricsFn& compute_metrics_;
  LoaderInfo loader_info_;  // what context().eval_dataloader shows (HF keeps the last loader used)
};

}  // namespace torchfit

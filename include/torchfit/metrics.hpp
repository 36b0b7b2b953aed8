// SPDX-License-Identifier: MIT
// Evaluation metrics with scikit-learn's definitions, composed into the Trainer's compute_metrics in one
// line:
//
//   torchfit::Trainer trainer(model, args, train, eval, loss_fn,
//                             torchfit::metrics::compute({torchfit::metrics::accuracy(),
//                                                         torchfit::metrics::f1("macro")}));
//
// logs eval_accuracy and eval_f1_macro. Classification metrics take logits [..., classes] (their argmax is
// the predicted class; a single logit [..., 1] is positive above 0) or class ids shaped as the labels, and
// leave out labels equal to -100 (HF's ignore index, also what padding writes). Regression metrics compare
// values of any shape, one row per sample.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "torchfit/error.hpp"
#include "torchfit/json.hpp"
#include "torchfit/outputs.hpp"

namespace torchfit::metrics {

/// One metric of an evaluation set: its name in the metrics (without the `eval_` prefix the Trainer adds),
/// and its value from the whole set's predictions and labels. Write your own as `Metric{"name", function}`.
struct Metric {
  std::string name;
  std::function<double(const EvalPrediction&)> fn;
};

/// The Trainer's `compute_metrics` from a list of metrics, each logged under its name. Throws ArgumentError
/// for two metrics of one name or one without a function.
inline std::function<Logs(const EvalPrediction&)> compute(std::vector<Metric> metrics) {
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    if (!metrics[i].fn)
      throw ArgumentError("metrics::compute: metric \"" + metrics[i].name + "\" has no function");
    for (std::size_t j = 0; j < i; ++j)
      if (metrics[j].name == metrics[i].name)
        throw ArgumentError("metrics::compute: two metrics are named \"" + metrics[i].name +
                            "\"; rename one, e.g. Metric{\"other_name\", metric.fn}");
  }
  return [metrics = std::move(metrics)](const EvalPrediction& p) {
    Logs logs = Logs::object();
    for (const Metric& m : metrics) logs[m.name] = m.fn(p);
    return logs;
  };
}

/// scikit-learn's `confusion_matrix(y_true, y_pred)`: entry [i][j] counts samples of class i predicted as j,
/// as an int64 tensor [classes, classes]. Unlike scikit-learn, rows and columns are the class ids
/// 0..classes-1 (classes: `num_classes`, or the largest id seen + 1), also for classes that never occur. Ids
/// must be >= 0.
inline torch::Tensor confusion_matrix(const torch::Tensor& y_true, const torch::Tensor& y_pred,
                                      std::optional<int64_t> num_classes = std::nullopt) {
  const torch::Tensor t = y_true.reshape({-1}).to(torch::kLong).cpu(),
                      p = y_pred.reshape({-1}).to(torch::kLong).cpu();
  if (t.numel() != p.numel())
    throw Error(fmt::format("confusion_matrix: {} labels but {} predictions", t.numel(), p.numel()));
  if (t.numel() > 0 && std::min(t.min().item<int64_t>(), p.min().item<int64_t>()) < 0)
    throw Error("confusion_matrix: class ids must be >= 0 (leave out ignored labels such as -100 first)");
  const int64_t seen = t.numel() > 0 ? std::max(t.max().item<int64_t>(), p.max().item<int64_t>()) + 1 : 0;
  const int64_t classes = num_classes.value_or(seen);
  if (seen > classes)
    throw Error(fmt::format("confusion_matrix: class id {} with num_classes {}", seen - 1, classes));
  return torch::bincount(t * classes + p, /*weights=*/{}, classes * classes).reshape({classes, classes});
}

namespace detail {

inline void require_outputs(std::string_view metric, const EvalPrediction& p) {
  if (!p.predictions.defined())
    throw Error(
        fmt::format("metrics::{} needs predictions: return torchfit::LossOutput{{loss, predictions, labels}} "
                    "from loss_fn",
                    metric));
  if (!p.label_ids.defined())
    throw Error(fmt::format(
        "metrics::{} needs labels: return them in LossOutput::labels or as the batch's target", metric));
}

/// True and predicted classes as 1-D int64 tensors, without the samples labelled -100.
struct Classes {
  torch::Tensor y_true, y_pred;
};

inline Classes classes(std::string_view metric, const EvalPrediction& p) {
  require_outputs(metric, p);
  const torch::Tensor& scores = p.predictions;
  const torch::Tensor labels = p.label_ids.cpu();
  torch::Tensor predicted;
  if (scores.dim() == labels.dim() + 1 && scores.sizes().slice(0, labels.dim()) == labels.sizes()) {
    predicted = scores.size(-1) == 1 ? scores.squeeze(-1).gt(0) : scores.argmax(-1);
  } else if (scores.sizes() == labels.sizes()) {
    if (scores.is_floating_point() && !torch::equal(scores, scores.round()))
      throw Error(
          fmt::format("metrics::{}: predictions shaped as the labels must be class ids, but some are not "
                      "whole numbers; pass logits [..., classes] instead",
                      metric));
    predicted = scores;
  } else {
    throw Error(
        fmt::format("metrics::{}: predictions of shape {} do not fit labels of shape {}: pass logits "
                    "[..., classes] or class ids shaped as the labels",
                    metric, c10::str(scores.sizes()), c10::str(labels.sizes())));
  }
  const torch::Tensor keep = labels.ne(-100).reshape({-1});
  Classes out{labels.reshape({-1}).index({keep}).to(torch::kLong),
              predicted.cpu().reshape({-1}).index({keep}).to(torch::kLong)};
  if (out.y_true.numel() == 0)
    throw Error(fmt::format("metrics::{}: no labels to score (all are -100)", metric));
  return out;
}

/// Predictions and labels as double tensors [samples, outputs].
inline std::pair<torch::Tensor, torch::Tensor> values(std::string_view metric, const EvalPrediction& p) {
  require_outputs(metric, p);
  const torch::Tensor y_true = p.label_ids.cpu().to(torch::kDouble),
                      y_pred = p.predictions.cpu().to(torch::kDouble);
  if (y_true.dim() == 0 || y_true.size(0) == 0 || y_true.numel() != y_pred.numel() ||
      y_pred.size(0) != y_true.size(0))
    throw Error(
        fmt::format("metrics::{}: predictions of shape {} do not match labels of shape {} (one value per "
                    "label expected)",
                    metric, c10::str(y_pred.sizes()), c10::str(y_true.sizes())));
  const int64_t samples = y_true.size(0);
  return {y_true.reshape({samples, -1}), y_pred.reshape({samples, -1})};
}

/// a / b for counts b, 0 where b is 0 (scikit-learn's default zero_division, without its warning).
inline torch::Tensor safe_divide(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::where(b > 0, a / b.clamp_min(1), torch::zeros_like(a));
}

enum class Score { precision, recall, f1 };

/// scikit-learn's precision_score / recall_score / f1_score with `average` and pos_label 1.
inline double classification_score(std::string_view metric, Score score, std::string_view average,
                                   const EvalPrediction& p) {
  const Classes c = classes(metric, p);
  if (average == "binary" && std::max(c.y_true.max().item<int64_t>(), c.y_pred.max().item<int64_t>()) > 1)
    throw Error(
        fmt::format("metrics::{}: average \"binary\" needs labels 0 and 1, but there are more classes; use "
                    "\"macro\", \"micro\" or \"weighted\"",
                    metric));
  const torch::Tensor cm = confusion_matrix(c.y_true, c.y_pred).to(torch::kDouble);
  const torch::Tensor tp = cm.diagonal(), predicted = cm.sum(0), actual = cm.sum(1);
  const torch::Tensor fp = predicted - tp, fn = actual - tp;
  const auto of = [&](const torch::Tensor& t, const torch::Tensor& f_p, const torch::Tensor& f_n) {
    switch (score) {
      case Score::precision:
        return safe_divide(t, t + f_p);
      case Score::recall:
        return safe_divide(t, t + f_n);
      case Score::f1:
        return safe_divide(2 * t, 2 * t + f_p + f_n);
    }
    return torch::Tensor();
  };
  if (average == "binary") {
    const auto positive = [](const torch::Tensor& x) {
      return x.size(0) > 1 ? x[1] : torch::zeros({}, x.options());
    };
    return of(positive(tp), positive(fp), positive(fn)).item<double>();
  }
  if (average == "micro") return of(tp.sum(), fp.sum(), fn.sum()).item<double>();
  const torch::Tensor present = (actual + predicted) > 0;  // scikit-learn's labels: those in y_true or y_pred
  const torch::Tensor per_class = of(tp, fp, fn).index({present});
  if (average == "macro") return per_class.mean().item<double>();
  const torch::Tensor support = actual.index({present});  // "weighted"
  return safe_divide((per_class * support).sum(), support.sum()).item<double>();
}

inline Metric classification_metric(const char* base, Score score, std::string_view average) {
  if (average != "binary" && average != "macro" && average != "micro" && average != "weighted")
    throw ArgumentError(
        fmt::format("metrics::{}: average must be \"binary\", \"macro\", \"micro\" or \"weighted\" "
                    "(got \"{}\")",
                    base, average));
  std::string name = average == "binary" ? base : fmt::format("{}_{}", base, average);
  return {name, [name, score, average = std::string(average)](const EvalPrediction& p) {
            return classification_score(name, score, average, p);
          }};
}

}  // namespace detail

/// Fraction of samples whose predicted class is the label (scikit-learn's accuracy_score), as "accuracy".
inline Metric accuracy() {
  return {"accuracy", [](const EvalPrediction& p) {
            const detail::Classes c = detail::classes("accuracy", p);
            return c.y_true.eq(c.y_pred).to(torch::kDouble).mean().item<double>();
          }};
}

/// Fraction of samples whose label is among the `k` highest scores (scikit-learn's top_k_accuracy_score), as
/// "top_<k>_accuracy"; predictions must be scores [..., classes]. Equal scores rank the higher class id
/// first, as scikit-learn ranks them.
inline Metric top_k_accuracy(int64_t k) {
  if (k < 1) throw ArgumentError(fmt::format("metrics::top_k_accuracy: k must be >= 1 (got {})", k));
  std::string name = fmt::format("top_{}_accuracy", k);
  return {name, [name, k](const EvalPrediction& p) {
            detail::require_outputs(name, p);
            const torch::Tensor labels = p.label_ids.cpu();
            if (p.predictions.dim() != labels.dim() + 1 || p.predictions.size(-1) < 2)
              throw Error(
                  fmt::format("metrics::{}: predictions must be scores [..., classes] for labels of shape {} "
                              "(got {})",
                              name, c10::str(labels.sizes()), c10::str(p.predictions.sizes())));
            const int64_t classes = p.predictions.size(-1);
            const torch::Tensor keep = labels.ne(-100).reshape({-1});
            const torch::Tensor scores =
                p.predictions.cpu().to(torch::kDouble).reshape({-1, classes}).index({keep});
            const torch::Tensor y_true = labels.reshape({-1}).index({keep}).to(torch::kLong);
            if (y_true.numel() == 0)
              throw Error(fmt::format("metrics::{}: no labels to score (all are -100)", name));
            // scikit-learn's ranking: a stable ascending sort, reversed.
            const torch::Tensor order =
                std::get<1>(scores.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false)).flip(1);
            const torch::Tensor top = order.slice(1, 0, std::min(k, classes));
            return top.eq(y_true.unsqueeze(1)).any(1).to(torch::kDouble).mean().item<double>();
          }};
}

/// scikit-learn's precision_score: "binary" (class 1 is positive; as "precision"), or over all classes
/// present in labels or predictions: "macro" (unweighted mean of per-class scores), "micro" (from summed
/// counts), "weighted" (mean weighted by each class's number of labels), as "precision_<average>". A 0/0
/// scores 0, as scikit-learn's default zero_division (which also warns).
inline Metric precision(std::string_view average = "binary") {
  return detail::classification_metric("precision", detail::Score::precision, average);
}
/// scikit-learn's recall_score; averages and names as precision().
inline Metric recall(std::string_view average = "binary") {
  return detail::classification_metric("recall", detail::Score::recall, average);
}
/// scikit-learn's f1_score (2·tp / (2·tp + fp + fn) per class); averages and names as precision().
inline Metric f1(std::string_view average = "binary") {
  return detail::classification_metric("f1", detail::Score::f1, average);
}

/// Mean squared error (scikit-learn's mean_squared_error), as "mse".
inline Metric mse() {
  return {"mse", [](const EvalPrediction& p) {
            const auto [y_true, y_pred] = detail::values("mse", p);
            return (y_pred - y_true).square().mean().item<double>();
          }};
}

/// Mean absolute error (scikit-learn's mean_absolute_error), as "mae".
inline Metric mae() {
  return {"mae", [](const EvalPrediction& p) {
            const auto [y_true, y_pred] = detail::values("mae", p);
            return (y_pred - y_true).abs().mean().item<double>();
          }};
}

/// Root mean squared error (scikit-learn's root_mean_squared_error: per output, then averaged), as "rmse".
inline Metric rmse() {
  return {"rmse", [](const EvalPrediction& p) {
            const auto [y_true, y_pred] = detail::values("rmse", p);
            return (y_pred - y_true).square().mean(0).sqrt().mean().item<double>();
          }};
}

/// Coefficient of determination (scikit-learn's r2_score: per output, then averaged), as "r2". A constant
/// target scores 1 when predicted exactly, else 0 (scikit-learn's force_finite); fewer than two samples give
/// NaN.
inline Metric r2() {
  return {"r2", [](const EvalPrediction& p) {
            const auto [y_true, y_pred] = detail::values("r2", p);
            if (y_true.size(0) < 2) return std::nan("");
            const torch::Tensor residual = (y_true - y_pred).square().sum(0);
            const torch::Tensor total = (y_true - y_true.mean(0)).square().sum(0);
            const torch::Tensor score = torch::where(total > 0, 1 - residual / total.clamp_min(1e-300),
                                                     (residual == 0).to(torch::kDouble));
            return score.mean().item<double>();
          }};
}

/// exp of the mean cross-entropy of logits [..., vocabulary] against labels [...] over the labels that are
/// not -100, as "perplexity". Labels must already be aligned with the logits (a causal LM's loss_fn returns
/// them shifted in its LossOutput).
inline Metric perplexity() {
  return {"perplexity", [](const EvalPrediction& p) {
            detail::require_outputs("perplexity", p);
            const torch::Tensor labels = p.label_ids.cpu().to(torch::kLong);
            if (p.predictions.dim() != labels.dim() + 1)
              throw Error(
                  fmt::format("metrics::perplexity: predictions must be logits [..., vocabulary] for labels "
                              "of shape {} (got {})",
                              c10::str(labels.sizes()), c10::str(p.predictions.sizes())));
            const int64_t vocabulary = p.predictions.size(-1);
            if (labels.ne(-100).sum().item<int64_t>() == 0)
              throw Error("metrics::perplexity: no labels to score (all are -100)");
            const torch::Tensor nll = torch::nn::functional::cross_entropy(
                p.predictions.cpu().to(torch::kDouble).reshape({-1, vocabulary}), labels.reshape({-1}),
                torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
            return std::exp(nll.item<double>());
          }};
}

}  // namespace torchfit::metrics

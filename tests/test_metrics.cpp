// SPDX-License-Identifier: MIT
// torchfit::metrics against values computed by hand with scikit-learn's definitions (the comments show the
// sums).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "torchfit/metrics.hpp"

using namespace torchfit;

namespace {

torch::Tensor ids(const std::vector<int64_t>& values) { return torch::tensor(values, torch::kLong); }

// Logits whose argmax is `classes` (the class scores 2, the others 0).
torch::Tensor logits_for(const std::vector<int64_t>& classes, int64_t num_classes) {
  return torch::one_hot(ids(classes), num_classes).to(torch::kFloat) * 2;
}

double score(const metrics::Metric& metric, const torch::Tensor& predictions, const torch::Tensor& labels) {
  return metric.fn(EvalPrediction{predictions, labels});
}

// Four classes, class 3 only predicted. Per class (rows true, columns predicted):
//   confusion [[2,1,0,0], [0,2,1,0], [1,0,2,1], [0,0,0,0]]; tp [2,2,2,0]; fp [1,1,1,1]; fn [1,1,2,0];
//   support [3,3,4,0]; precision [2/3,2/3,2/3,0]; recall [2/3,2/3,1/2,0/0=0]; f1 [2/3,2/3,4/7,0].
const std::vector<int64_t> y_true = {0, 0, 0, 1, 1, 2, 2, 2, 2, 1};
const std::vector<int64_t> y_pred = {0, 1, 0, 1, 2, 2, 0, 2, 3, 1};

}  // namespace

TEST_CASE("accuracy takes the argmax of logits or class ids and leaves out labels of -100", "[metrics]") {
  const auto labels = ids(y_true);
  CHECK(score(metrics::accuracy(), logits_for(y_pred, 4), labels) == Approx(0.6));
  CHECK(score(metrics::accuracy(), ids(y_pred), labels) == Approx(0.6));
  CHECK(score(metrics::accuracy(), ids(y_pred).to(torch::kFloat), labels) == Approx(0.6));  // whole numbers
  // Token classification: [samples, tokens, classes] against [samples, tokens], padding labelled -100.
  const auto token_logits = logits_for({1, 0, 2, 2, 1, 0}, 3).reshape({2, 3, 3});
  const auto token_labels = ids({1, 0, -100, 2, 0, -100}).reshape({2, 3});
  CHECK(score(metrics::accuracy(), token_logits, token_labels) == Approx(0.75));  // 3 of the 4 scored tokens
  // A single logit: positive above 0.
  CHECK(score(metrics::accuracy(), torch::tensor({{-1.0}, {2.0}, {0.5}}), ids({0, 1, 0})) == Approx(2.0 / 3));
}

TEST_CASE("precision, recall and F1 follow scikit-learn for each average", "[metrics]") {
  const auto logits = logits_for(y_pred, 4);
  const auto labels = ids(y_true);
  // macro: unweighted means over the labels present in y_true or y_pred (all four).
  CHECK(score(metrics::precision("macro"), logits, labels) == Approx(0.5));     // (3 * 2/3 + 0) / 4
  CHECK(score(metrics::recall("macro"), logits, labels) == Approx(11.0 / 24));  // (2/3 + 2/3 + 1/2 + 0) / 4
  CHECK(score(metrics::f1("macro"), logits, labels) == Approx(10.0 / 21));      // (2/3 + 2/3 + 4/7 + 0) / 4
  // micro: from the summed counts, tp 6, fp 4, fn 4.
  CHECK(score(metrics::precision("micro"), logits, labels) == Approx(0.6));
  CHECK(score(metrics::recall("micro"), logits, labels) == Approx(0.6));
  CHECK(score(metrics::f1("micro"), logits, labels) == Approx(0.6));
  // weighted by support [3, 3, 4, 0].
  CHECK(score(metrics::precision("weighted"), logits, labels) == Approx(2.0 / 3));  // (2 + 2 + 8/3) / 10
  CHECK(score(metrics::recall("weighted"), logits, labels) == Approx(0.6));         // (2 + 2 + 2) / 10
  CHECK(score(metrics::f1("weighted"), logits, labels) == Approx(22.0 / 35));       // (2 + 2 + 16/7) / 10
}

TEST_CASE("binary scores count class 1 as positive, a 0/0 scores 0", "[metrics]") {
  // tp 3 (samples 1, 4, 5), fp 2 (0, 6), fn 1 (2): precision 3/5, recall 3/4, f1 6/9.
  const auto labels = ids({0, 1, 1, 0, 1, 1, 0, 0});
  const std::vector<int64_t> predicted = {1, 1, 0, 0, 1, 1, 1, 0};
  for (const auto& predictions : {logits_for(predicted, 2), ids(predicted)}) {
    CHECK(score(metrics::precision(), predictions, labels) == Approx(0.6));
    CHECK(score(metrics::recall(), predictions, labels) == Approx(0.75));
    CHECK(score(metrics::f1(), predictions, labels) == Approx(2.0 / 3));
  }
  // Nothing predicted positive: precision 0/0 -> 0 (scikit-learn's zero_division default), recall 0/4, f1 0.
  const auto none = ids({0, 0, 0, 0, 0, 0, 0, 0});
  CHECK(score(metrics::precision(), none, labels) == 0.0);
  CHECK(score(metrics::recall(), none, labels) == 0.0);
  CHECK(score(metrics::f1(), none, labels) == 0.0);
  CHECK(score(metrics::f1(), none, none) == 0.0);  // no positive class at all

  CHECK_THROWS_WITH(
      score(metrics::f1(), logits_for(y_pred, 4), ids(y_true)),
      "metrics::f1: average \"binary\" needs labels 0 and 1, but there are more classes; use \"macro\", "
      "\"micro\" or \"weighted\"");
  CHECK_THROWS_WITH(
      metrics::recall("samples"),
      "metrics::recall: average must be \"binary\", \"macro\", \"micro\" or \"weighted\" (got \"samples\")");
}

TEST_CASE("top-k accuracy ranks equal scores as scikit-learn does", "[metrics]") {
  const auto scores = torch::tensor({{0.1, 0.5, 0.4},    // label 2: second
                                     {0.7, 0.2, 0.1},    // label 0: first
                                     {0.2, 0.3, 0.5},    // label 0: third
                                     {0.3, 0.3, 0.4},    // label 0: tied with class 1, ranked after it
                                     {0.9, 0.0, 0.1}});  // ignored
  const auto labels = ids({2, 0, 0, 0, -100});
  CHECK(score(metrics::top_k_accuracy(1), scores, labels) == Approx(0.25));
  CHECK(score(metrics::top_k_accuracy(2), scores, labels) == Approx(0.5));
  CHECK(score(metrics::top_k_accuracy(3), scores, labels) == Approx(1.0));
  CHECK(score(metrics::top_k_accuracy(5), scores, labels) == Approx(1.0));
  CHECK(metrics::top_k_accuracy(5).name == "top_5_accuracy");
  CHECK_THROWS_WITH(metrics::top_k_accuracy(0), "metrics::top_k_accuracy: k must be >= 1 (got 0)");
}

TEST_CASE("confusion_matrix has true classes as rows, predicted as columns, every class id", "[metrics]") {
  const auto cm = metrics::confusion_matrix(ids(y_true), ids(y_pred));
  CHECK(cm.dtype() == torch::kLong);
  CHECK(torch::equal(
      cm, torch::tensor({2, 1, 0, 0, 0, 2, 1, 0, 1, 0, 2, 1, 0, 0, 0, 0}, torch::kLong).reshape({4, 4})));
  CHECK(metrics::confusion_matrix(ids({0, 1}), ids({1, 1}), 3).sizes() == torch::IntArrayRef({3, 3}));
  CHECK_THROWS_WITH(metrics::confusion_matrix(ids({0, 5}), ids({0, 1}), 3),
                    "confusion_matrix: class id 5 with num_classes 3");
  CHECK_THROWS_WITH(metrics::confusion_matrix(ids({0, -100}), ids({0, 1})),
                    Catch::StartsWith("confusion_matrix: class ids must be >= 0"));
}

TEST_CASE("regression metrics: scikit-learn's documented examples, per output then averaged", "[metrics]") {
  // scikit-learn's examples: y_true [3, -0.5, 2, 7], y_pred [2.5, 0.0, 2, 8].
  const auto truth = torch::tensor({3.0, -0.5, 2.0, 7.0});
  const auto predicted = torch::tensor({2.5, 0.0, 2.0, 8.0}).unsqueeze(1);  // a model's [samples, 1] output
  CHECK(score(metrics::mse(), predicted, truth) == Approx(0.375));
  CHECK(score(metrics::mae(), predicted, truth) == Approx(0.5));
  CHECK(score(metrics::rmse(), predicted, truth) == Approx(0.6123724356957945));
  CHECK(score(metrics::r2(), predicted, truth) == Approx(0.9486081370449679));

  // Two outputs: y_true [[0.5, 1], [-1, 1], [7, -6]], y_pred [[0, 2], [-1, 2], [8, -5]]. RMSE and R² are
  // taken per output and averaged: rmse (sqrt(1.25/3) + 1) / 2; r2 (1 - 1.25/36.1667 + 1 - 3/32.6667) / 2.
  const auto truth2 = torch::tensor({0.5, 1.0, -1.0, 1.0, 7.0, -6.0}).reshape({3, 2});
  const auto predicted2 = torch::tensor({0.0, 2.0, -1.0, 2.0, 8.0, -5.0}).reshape({3, 2});
  CHECK(score(metrics::mse(), predicted2, truth2) == Approx(0.7083333333333334));
  CHECK(score(metrics::mae(), predicted2, truth2) == Approx(0.75));
  CHECK(score(metrics::rmse(), predicted2, truth2) == Approx(0.8227486121839513));
  CHECK(score(metrics::r2(), predicted2, truth2) == Approx(0.9368005266622779));

  // A constant target: 1 when predicted exactly, else 0 (scikit-learn's force_finite); one sample: NaN.
  const auto constant = torch::tensor({2.0, 2.0, 2.0});
  CHECK(score(metrics::r2(), constant, constant) == 1.0);
  CHECK(score(metrics::r2(), torch::tensor({2.0, 2.0, 3.0}), constant) == 0.0);
  CHECK(std::isnan(score(metrics::r2(), torch::tensor({1.0}), torch::tensor({2.0}))));

  CHECK_THROWS_WITH(
      score(metrics::mse(), torch::zeros({4, 2}), truth),
      "metrics::mse: predictions of shape [4, 2] do not match labels of shape [4] (one value per label "
      "expected)");
}

TEST_CASE("perplexity is exp of the mean cross-entropy over the labels that are not -100", "[metrics]") {
  // Uniform over 4 tokens: every token costs ln 4, perplexity 4.
  CHECK(score(metrics::perplexity(), torch::zeros({2, 3, 4}),
              ids({0, 1, 2, 3, -100, -100}).reshape({2, 3})) == Approx(4.0));
  // Probabilities [1/2, 1/4, 1/4]: labels 0 and 1 cost ln 2 and ln 4, perplexity exp(1.5 ln 2) = 2^1.5.
  const auto logits = torch::log(torch::tensor({{0.5, 0.25, 0.25}, {0.5, 0.25, 0.25}}));
  CHECK(score(metrics::perplexity(), logits, ids({0, 1})) == Approx(std::pow(2.0, 1.5)));
}

TEST_CASE("compute() composes metrics into compute_metrics under their names", "[metrics]") {
  const auto compute_metrics = metrics::compute(
      {metrics::accuracy(), metrics::f1("macro"), metrics::precision("weighted"), metrics::recall("micro"),
       metrics::Metric{"error_rate", [](const EvalPrediction& p) { return 1 - metrics::accuracy().fn(p); }}});
  const Logs logs = compute_metrics(EvalPrediction{logits_for(y_pred, 4), ids(y_true)});
  CHECK(logs.size() == 5);
  CHECK(logs.at("accuracy").get<double>() == Approx(0.6));
  CHECK(logs.at("f1_macro").get<double>() == Approx(10.0 / 21));
  CHECK(logs.at("precision_weighted").get<double>() == Approx(2.0 / 3));
  CHECK(logs.at("recall_micro").get<double>() == Approx(0.6));
  CHECK(logs.at("error_rate").get<double>() == Approx(0.4));
  CHECK(logs.begin().key() == "accuracy");  // in the order given

  CHECK(metrics::compute({metrics::mse(), metrics::mae(), metrics::rmse(), metrics::r2()})(
            EvalPrediction{torch::tensor({2.5, 0.0, 2.0, 8.0}), torch::tensor({3.0, -0.5, 2.0, 7.0})})
            .dump() == R"({"mse":0.375,"mae":0.5,"rmse":0.6123724356957945,"r2":0.9486081370449679})");

  CHECK_THROWS_WITH(
      metrics::compute({metrics::f1("macro"), metrics::f1("macro")}),
      "metrics::compute: two metrics are named \"f1_macro\"; rename one, e.g. Metric{\"other_name\", "
      "metric.fn}");
}

TEST_CASE("metrics say what is missing or does not fit", "[metrics]") {
  CHECK_THROWS_WITH(
      score(metrics::accuracy(), torch::Tensor(), ids({0})),
      "metrics::accuracy needs predictions: return torchfit::LossOutput{loss, predictions, labels} from "
      "loss_fn");
  CHECK_THROWS_WITH(
      score(metrics::accuracy(), torch::zeros({3, 4}), ids({0, 1})),
      "metrics::accuracy: predictions of shape [3, 4] do not fit labels of shape [2]: pass logits [..., "
      "classes] or class ids shaped as the labels");
  CHECK_THROWS_WITH(
      score(metrics::accuracy(), torch::tensor({0.2, 0.9}), ids({0, 1})),
      Catch::StartsWith("metrics::accuracy: predictions shaped as the labels must be class ids"));
  CHECK_THROWS_WITH(score(metrics::accuracy(), ids({0, 1}), ids({-100, -100})),
                    "metrics::accuracy: no labels to score (all are -100)");
  CHECK_THROWS_WITH(
      score(metrics::top_k_accuracy(2), ids({0, 1}), ids({0, 1})),
      "metrics::top_2_accuracy: predictions must be scores [..., classes] for labels of shape [2] (got "
      "[2])");
}

// SPDX-License-Identifier: MIT
// Wine recognition from a CSV file: 13 chemical measurements of 178 wines, 3 cultivars. load_csv reads the file
// into a TensorDictDataset ("inputs", "labels"); an MLP learns from TensorDict batches.
//
//   ./tabular                                     # defaults below (a second or two)
//   ./tabular --csv_file my.csv --label_column y  # any numeric CSV with an integer class column
#include <iostream>
#include <string>
#include <vector>

#include <torchfit/data/csv_dataset.hpp>
#include <torchfit/torchfit.hpp>

namespace {

struct TabularNetImpl : torch::nn::Module {
  TabularNetImpl(int64_t features, int64_t classes)
      : fc1(register_module("fc1", torch::nn::Linear(features, 32))),
        dropout(register_module("dropout", torch::nn::Dropout(0.1))),
        fc2(register_module("fc2", torch::nn::Linear(32, classes))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(dropout(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(TabularNet);

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();
  std::vector<std::string> tokens = {argv[0],
                                     "--output_dir",
                                     "tabular_output",
                                     "--num_train_epochs",
                                     "60",
                                     "--learning_rate",
                                     "1e-2",
                                     "--per_device_train_batch_size",
                                     "16",
                                     "--per_device_eval_batch_size",
                                     "64",
                                     "--eval_strategy",
                                     "epoch",
                                     "--logging_strategy",
                                     "epoch",
                                     "--save_strategy",
                                     "no"};
  tokens.insert(tokens.end(), argv + 1, argv + argc);
  std::vector<const char*> token_ptrs;
  for (const auto& t : tokens) token_ptrs.push_back(t.c_str());
  std::vector<std::string> rest;
  auto args = torchfit::TrainingArguments::parse_known_args(static_cast<int>(token_ptrs.size()),
                                                            token_ptrs.data(), rest);

  std::string csv_file = TORCHFIT_EXAMPLES_DATA_DIR "/wine.csv";
  std::string label_column = "class";
  double expect_accuracy = 0;  // > 0: exit with status 1 below this final accuracy (used by the tests)
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const bool has_value = i + 1 < rest.size();
    if (rest[i] == "--csv_file" && has_value)
      csv_file = rest[++i];
    else if (rest[i] == "--label_column" && has_value)
      label_column = rest[++i];
    else if (rest[i] == "--expect_accuracy" && has_value)
      expect_accuracy = std::stod(rest[++i]);
    else
      throw torchfit::ArgumentError(
          "unknown argument " + rest[i] +
          " (tabular adds --csv_file PATH, --label_column NAME, --expect_accuracy X)");
  }

  const torchfit::TensorDictDataset table = torchfit::load_csv(csv_file, {{label_column}});
  // A fixed 80/20 split, independent of the training seed; features standardized with the training rows'
  // statistics (the columns' scales differ by a factor of 1000).
  const auto order = torch::randperm(table.size(), at::detail::createCPUGenerator(0), torch::kLong);
  const int64_t n_train = table.size() * 8 / 10;
  torchfit::TensorDict train_rows = table.rows(order.slice(0, 0, n_train));
  torchfit::TensorDict eval_rows = table.rows(order.slice(0, n_train));
  const auto mean = train_rows.at("inputs").mean(0), scale = train_rows.at("inputs").std(0);
  for (auto* rows : {&train_rows, &eval_rows}) rows->at("inputs") = (rows->at("inputs") - mean) / scale;
  const torchfit::TensorDictDataset train(train_rows), eval(eval_rows);

  torch::manual_seed(static_cast<uint64_t>(args.seed));
  const int64_t classes = table.columns().at("labels").max().item<int64_t>() + 1;
  TabularNet model(table.columns().at("inputs").size(1), classes);
  auto loss_fn = [](TabularNet& net, const torchfit::TensorDict& batch) {
    auto logits = net->forward(batch.at("inputs"));
    return torchfit::LossOutput{torch::cross_entropy_loss(logits, batch.at("labels")), logits, {}};
  };
  auto accuracy = [](const torchfit::EvalPrediction& p) {
    return torchfit::Logs{
        {"accuracy", p.predictions.argmax(1).eq(p.label_ids).to(torch::kDouble).mean().item<double>()}};
  };

  torchfit::Trainer trainer(model, args, train, eval, loss_fn, accuracy);
  const auto result = trainer.train();
  const auto metrics = trainer.evaluate();
  const double acc = metrics.at("eval_accuracy").get<double>();
  std::cout << "\ntrained " << result.global_step << " steps; train_loss " << result.training_loss
            << "\neval accuracy " << acc << " (" << eval.size() << " held-out rows of " << csv_file << ")\n";
  return expect_accuracy > 0 && acc < expect_accuracy ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "tabular: " << e.what() << "\n";
  return 2;
}

// SPDX-License-Identifier: MIT
// Wine recognition from a CSV file: 13 chemical measurements of 178 wines, 3 cultivars. load_csv reads the file
// into a TensorDictDataset ("inputs", "labels"); an MLP learns from TensorDict batches.
//
//   ./tabular                                     # defaults below (a second or two)
//   ./tabular --csv_file my.csv --label_column y  # any numeric CSV with an integer class column
#include <iostream>
#include <string>

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

/// This example's own options, parsed together with the training arguments.
struct TabularArguments {
  std::string csv_file = TORCHFIT_EXAMPLES_DATA_DIR "/wine.csv";
  std::string label_column = "class";
  double expect_accuracy = 0;

  static torchfit::ArgumentFields<TabularArguments> fields() {
    return torchfit::ArgumentFields<TabularArguments>("Tabular example")
        .add("csv_file", &TabularArguments::csv_file, "a numeric CSV file with a header")
        .add("label_column", &TabularArguments::label_column, "the column holding the integer class")
        .add("expect_accuracy", &TabularArguments::expect_accuracy,
             "exit with status 1 below this final accuracy (0: never; for the tests)");
  }
};

/// The example's training defaults; the command line overrides them.
torchfit::TrainingArguments tabular_defaults() {
  torchfit::TrainingArguments args;
  args.output_dir = "tabular_output";
  args.num_train_epochs = 60;
  args.learning_rate = 1e-2;
  args.per_device_train_batch_size = 16;
  args.per_device_eval_batch_size = 64;
  args.eval_strategy = torchfit::IntervalStrategy::epoch;
  args.logging_strategy = torchfit::IntervalStrategy::epoch;
  args.save_strategy = torchfit::SaveStrategy::no;
  return args;
}

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();
  const auto [options, args] =
      torchfit::ArgumentParser<TabularArguments, torchfit::TrainingArguments>({}, tabular_defaults())
          .parse(argc, argv);

  const torchfit::TensorDictDataset table = torchfit::load_csv(options.csv_file, {{options.label_column}});
  // A fixed 80/20 split, independent of the training seed; features standardized with the training rows'
  // statistics (the columns' scales differ by a factor of 1000).
  const auto order = torch::randperm(table.size(), at::detail::createCPUGenerator(0), torch::kLong);
  const int64_t n_train = table.size() * 8 / 10;
  torchfit::TensorDict train_rows = table.rows(order.slice(0, 0, n_train));
  torchfit::TensorDict eval_rows = table.rows(order.slice(0, n_train));
  const auto mean = train_rows.at("inputs").mean(0), scale = train_rows.at("inputs").std(0);
  for (auto* rows : {&train_rows, &eval_rows}) rows->at("inputs") = (rows->at("inputs") - mean) / scale;
  const torchfit::TensorDictDataset train(train_rows), eval(eval_rows);

  torchfit::set_seed(args.seed);  // before the model: the same initial weights on every run
  const int64_t classes = table.columns().at("labels").max().item<int64_t>() + 1;
  TabularNet model(table.columns().at("inputs").size(1), classes);
  auto loss_fn = [](TabularNet& net, const torchfit::TensorDict& batch) {
    auto logits = net->forward(batch.at("inputs"));
    return torchfit::LossOutput{torch::cross_entropy_loss(logits, batch.at("labels")), logits, {}};
  };

  torchfit::Trainer trainer(model, args, train, eval, loss_fn,
                            torchfit::metrics::compute({torchfit::metrics::accuracy()}));
  const auto result = trainer.train();
  const auto metrics = trainer.evaluate();
  const double acc = metrics.at("eval_accuracy").get<double>();
  std::cout << "\ntrained " << result.global_step << " steps; train_loss " << result.training_loss
            << "\neval accuracy " << acc << " (" << eval.size() << " held-out rows of " << options.csv_file
            << ")\n";
  return options.expect_accuracy > 0 && acc < options.expect_accuracy ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "tabular: " << e.what() << "\n";
  return 2;
}

// SPDX-License-Identifier: MIT
// Handwritten digits (8x8 images, 10 classes): an MLP trained with torchfit::Trainer, evaluated every epoch,
// with accuracy as the metric, early stopping and the best model loaded at the end.
//
//   ./digits                                  # defaults below
//   ./digits --learning_rate 1e-3 --num_train_epochs 50 --report_to tensorboard
//   ./digits --resume_from_checkpoint last    # continue an interrupted run
//   ./digits --help                           # every training argument
#include <zlib.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <torchfit/torchfit.hpp>
// Trackers available to --report_to (each header registers one).
#include <torchfit/integrations/clearml.hpp>
#include <torchfit/integrations/codecarbon.hpp>
#include <torchfit/integrations/comet.hpp>
#include <torchfit/integrations/csv.hpp>
#include <torchfit/integrations/dvclive.hpp>
#include <torchfit/integrations/jsonl.hpp>
#include <torchfit/integrations/mlflow.hpp>
#include <torchfit/integrations/tensorboard.hpp>
#include <torchfit/integrations/trackio.hpp>
#include <torchfit/integrations/wandb.hpp>

namespace {

struct DigitsNetImpl : torch::nn::Module {
  DigitsNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(64, 128))),
        dropout(register_module("dropout", torch::nn::Dropout(0.2))),
        fc2(register_module("fc2", torch::nn::Linear(128, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(dropout(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(DigitsNet);

// Reads scikit-learn's digits.csv.gz: per line 64 pixel values (0..16), then the label.
std::pair<torch::Tensor, torch::Tensor> load_digits(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) throw std::runtime_error("cannot open " + path + " (pass --data_file PATH)");
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  char line[4096];
  while (gzgets(file, line, sizeof line) != nullptr) {
    char* p = line;
    std::vector<float> row;
    while (*p != '\0' && *p != '\n') {
      row.push_back(std::strtof(p, &p));
      if (*p == ',') ++p;
    }
    if (row.empty()) continue;
    if (row.size() != 65) {
      gzclose(file);
      throw std::runtime_error(path + ": expected 65 values per line, got " + std::to_string(row.size()));
    }
    pixels.insert(pixels.end(), row.begin(), row.end() - 1);
    labels.push_back(static_cast<int64_t>(row.back()));
  }
  gzclose(file);
  const auto n = static_cast<int64_t>(labels.size());
  auto x = torch::from_blob(pixels.data(), {n, 64}, torch::kFloat).clone() / 16.0;
  auto y = torch::from_blob(labels.data(), {n}, torch::kLong).clone();
  return {x, y};
}

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();  // CPU training: reuse freed tensor buffers instead of re-faulting them
  // Example defaults first; anything on the command line overrides them.
  std::vector<std::string> tokens = {argv[0],
                                     "--output_dir", "digits_output",
                                     "--num_train_epochs", "40",
                                     "--learning_rate", "2e-3",
                                     "--weight_decay", "0.01",
                                     "--per_device_train_batch_size", "32",
                                     "--per_device_eval_batch_size", "128",
                                     "--eval_strategy", "epoch",
                                     "--save_strategy", "epoch",
                                     "--logging_strategy", "epoch",
                                     "--save_total_limit", "2",
                                     "--metric_for_best_model", "accuracy",
                                     "--load_best_model_at_end"};
  tokens.insert(tokens.end(), argv + 1, argv + argc);
  std::vector<const char*> token_ptrs;
  for (const auto& t : tokens) token_ptrs.push_back(t.c_str());
  std::vector<std::string> rest;
  auto args = torchfit::TrainingArguments::parse_known_args(static_cast<int>(token_ptrs.size()), token_ptrs.data(), rest);

  std::string data_file = TORCHFIT_EXAMPLES_DATA_DIR "/digits.csv.gz";
  double expect_accuracy = 0;  // > 0: exit with status 1 below this final accuracy (used by the tests)
  int patience = 10;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const bool has_value = i + 1 < rest.size();
    if (rest[i] == "--data_file" && has_value) data_file = rest[++i];
    else if (rest[i] == "--expect_accuracy" && has_value) expect_accuracy = std::stod(rest[++i]);
    else if (rest[i] == "--patience" && has_value) patience = std::stoi(rest[++i]);
    else throw torchfit::ArgumentError("unknown argument " + rest[i] +
                                       " (digits adds --data_file PATH, --patience N, --expect_accuracy X)");
  }

  auto [x, y] = load_digits(data_file);
  // A fixed 80/20 split, independent of the training seed.
  auto order = torch::randperm(x.size(0), at::detail::createCPUGenerator(0), torch::kLong);
  const int64_t n_train = x.size(0) * 8 / 10;
  auto train_idx = order.slice(0, 0, n_train), eval_idx = order.slice(0, n_train);
  torchfit::TensorPairDataset train{x.index_select(0, train_idx), y.index_select(0, train_idx)};
  torchfit::TensorPairDataset eval{x.index_select(0, eval_idx), y.index_select(0, eval_idx)};

  torch::manual_seed(static_cast<uint64_t>(args.seed));  // reproducible initial weights
  DigitsNet model;
  auto loss_fn = [](DigitsNet& net, const torch::data::Example<>& batch) {
    auto logits = net->forward(batch.data);
    return torchfit::LossOutput{torch::cross_entropy_loss(logits, batch.target), logits, batch.target};
  };
  auto accuracy = [](const torchfit::EvalPrediction& p) {
    return torchfit::Logs{{"accuracy", p.predictions.argmax(1).eq(p.label_ids).to(torch::kDouble).mean().item<double>()}};
  };

  torchfit::Trainer trainer(model, args, train, eval, loss_fn, accuracy);
  trainer.add_callback<torchfit::EarlyStoppingCallback>(patience);
  const auto result = trainer.train();
  const auto metrics = trainer.evaluate();
  trainer.save_state();
  trainer.save_model();

  const double acc = metrics.at("eval_accuracy").get<double>();
  std::cout << "\ntrained " << result.global_step << " steps; train_loss " << result.training_loss
            << "\neval accuracy " << acc << " (" << eval.inputs.size(0) << " held-out digits)"
            << "\nbest checkpoint: " << trainer.state().best_model_checkpoint.value_or("none")
            << "\noutput written to " << args.output_dir << "/\n";
  return expect_accuracy > 0 && acc < expect_accuracy ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "digits: " << e.what() << "\n";
  return 2;
}

// SPDX-License-Identifier: MIT
// Uses a model trained by ./digits in another program: loads its weights (model.safetensors, written by
// trainer.save_model() and in every checkpoint) into a DigitsNet and predicts digits from pixels alone.
//
//   ./digits_predict                                                  # digits_output/model.safetensors
//   ./digits_predict --model digits_output/checkpoint-1800/model.safetensors --show 20
#include <algorithm>
#include <iostream>
#include <string>

#include <torchfit/torchfit.hpp>

#include "digits.hpp"

namespace {

struct PredictArguments {
  std::string model = "digits_output/model.safetensors";
  std::string data_file = TORCHFIT_EXAMPLES_DATA_DIR "/digits.csv.gz";
  int show = 10;
  double expect_accuracy = 0;

  static torchfit::ArgumentFields<PredictArguments> fields() {
    return torchfit::ArgumentFields<PredictArguments>("Prediction")
        .add("model", &PredictArguments::model, "weights saved by ./digits (model.safetensors)")
        .add("data_file", &PredictArguments::data_file,
             "scikit-learn's digits; the held-out rows are predicted")
        .add("show", &PredictArguments::show, "predictions to print")
        .add("expect_accuracy", &PredictArguments::expect_accuracy,
             "exit with status 1 below this accuracy against the file's labels (0: never; for the tests)");
  }
};

}  // namespace

int main(int argc, char** argv) try {
  const auto [options] = torchfit::ArgumentParser<PredictArguments>().parse(argc, argv);

  DigitsNet model;  // the architecture that was trained; its weights come from the file
  torchfit::checkpoint::load_model_state(*model, options.model);
  model->eval();  // dropout off
  torch::NoGradGuard no_grad;

  const auto [x, y] = load_digits(options.data_file);
  const auto held_out = digits_split(x.size(0)).second;
  const torch::Tensor pixels = x.index_select(0, held_out);  // inputs only: the labels stay aside
  const torch::Tensor predicted = model->forward(pixels).argmax(1);

  for (int64_t i = 0; i < std::min<int64_t>(options.show, predicted.size(0)); ++i)
    std::cout << "digit " << i << ": predicted " << predicted[i].item<int64_t>() << "\n";
  const double accuracy = predicted.eq(y.index_select(0, held_out)).to(torch::kDouble).mean().item<double>();
  std::cout << "accuracy on " << predicted.size(0) << " held-out digits: " << accuracy << "\n";
  return options.expect_accuracy > 0 && accuracy < options.expect_accuracy ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "digits_predict: " << e.what() << "\n";
  return 2;
}

// SPDX-License-Identifier: MIT
// Handwritten digits (8x8 images, 10 classes): an MLP trained with torchfit::Trainer, evaluated every epoch,
// with accuracy and macro F1 as metrics, early stopping and the best model loaded at the end.
//
//   ./digits                                  # defaults below
//   ./digits --learning_rate 1e-3 --num_train_epochs 50 --report_to tensorboard
//   ./digits --resume_from_checkpoint last    # continue an interrupted run
//   torchrun --nproc_per_node 2 --no_python ./digits --per_device_train_batch_size 16   # on two processes
//   ./digits --help                           # this example's options and every training argument
//   ./digits_predict                          # then: the trained model on digits it has not seen
#include <iostream>
#include <string>

#include <torchfit/distributed.hpp>  // several processes when torchrun starts them
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

#include "digits.hpp"

namespace {

/// This example's own options, parsed together with the training arguments.
struct DigitsArguments {
  std::string data_file = TORCHFIT_EXAMPLES_DATA_DIR "/digits.csv.gz";
  int patience = 10;
  double expect_accuracy = 0;

  static torchfit::ArgumentFields<DigitsArguments> fields() {
    return torchfit::ArgumentFields<DigitsArguments>("Digits example")
        .add("data_file", &DigitsArguments::data_file,
             "scikit-learn's digits: 64 pixels and the label per line")
        .add("patience", &DigitsArguments::patience, "evaluations without improvement before early stopping")
        .add("expect_accuracy", &DigitsArguments::expect_accuracy,
             "exit with status 1 below this final accuracy (0: never; for the tests)");
  }
};

/// The example's training defaults; the command line overrides them.
torchfit::TrainingArguments digits_defaults() {
  torchfit::TrainingArguments args;
  args.output_dir = "digits_output";
  args.num_train_epochs = 40;
  args.learning_rate = 2e-3;
  args.weight_decay = 0.01;
  args.per_device_train_batch_size = 32;
  args.per_device_eval_batch_size = 128;
  args.eval_strategy = torchfit::IntervalStrategy::epoch;
  args.save_strategy = torchfit::SaveStrategy::epoch;
  args.logging_strategy = torchfit::IntervalStrategy::epoch;
  args.save_total_limit = 2;
  args.metric_for_best_model = "accuracy";
  args.load_best_model_at_end = true;
  return args;
}

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();  // CPU training: reuse freed tensor buffers instead of re-faulting them
  const auto [digits, args] =
      torchfit::ArgumentParser<DigitsArguments, torchfit::TrainingArguments>({}, digits_defaults())
          .parse(argc, argv);

  const auto [x, y] = load_digits(digits.data_file);
  const auto [train_rows, eval_rows] = digits_split(x.size(0));
  torchfit::TensorPairDataset train{x.index_select(0, train_rows), y.index_select(0, train_rows)};
  torchfit::TensorPairDataset eval{x.index_select(0, eval_rows), y.index_select(0, eval_rows)};

  torchfit::set_seed(args.seed);  // before the model: the same initial weights on every run
  DigitsNet model;
  auto loss_fn = [](DigitsNet& net, const torch::data::Example<>& batch) {
    auto logits = net->forward(batch.data);
    return torchfit::LossOutput{torch::cross_entropy_loss(logits, batch.target), logits, batch.target};
  };
  namespace metrics = torchfit::metrics;
  torchfit::Trainer trainer(model, args, train, eval, loss_fn,
                            metrics::compute({metrics::accuracy(), metrics::f1("macro")}));
  trainer.add_callback<torchfit::EarlyStoppingCallback>(digits.patience);
  const auto result = trainer.train();
  const auto final_metrics = trainer.evaluate();
  trainer.save_state();
  trainer.save_model();

  const double accuracy = final_metrics.at("eval_accuracy").get<double>();  // the same on every process
  if (trainer.state().is_world_process_zero)
    std::cout << "\ntrained " << result.global_step << " steps; train_loss " << result.training_loss
              << "\neval accuracy " << accuracy << ", macro F1 "
              << final_metrics.at("eval_f1_macro").get<double>() << " (" << eval.inputs.size(0)
              << " held-out digits)"
              << "\nbest checkpoint: " << trainer.state().best_model_checkpoint.value_or("none")
              << "\nmodel written to " << trainer.args().output_dir << "/model.safetensors\n";
  return digits.expect_accuracy > 0 && accuracy < digits.expect_accuracy ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "digits: " << e.what() << "\n";
  return 2;
}

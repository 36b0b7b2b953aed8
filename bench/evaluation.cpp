// SPDX-License-Identifier: MIT
// The time of Trainer::evaluate() against a bare no-grad forward pass over the same samples (the budget: within
// 1.03x). The Trainer runs with DefaultFlow, TensorBoard (writing to a temporary directory) and ProgressCallback
// in plain mode writing to a stream that formats everything and discards it, as in trainer_overhead; evaluate()
// includes its metrics, its log entry and on_evaluate. The bare pass is what one writes by hand: eval mode,
// NoGradGuard, slices of the eval tensors, the model's loss, summed on the host.
//
// Bare and Trainer alternate, evaluation by evaluation, in one process; the ratio is taken within each
// repetition.
//
//   ./evaluation [--quick] [--reps N] [--samples N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include <torchfit/integrations/tensorboard.hpp>
#include <torchfit/torchfit.hpp>

#include "bench_support.hpp"

namespace {

namespace fs = std::filesystem;
using bench::Clock;
using bench::median;
using bench::Mlp;
using bench::mlp_loss;
using bench::NullBuffer;
using bench::seconds_since;
using Batch = torch::data::Example<>;

/// The mean loss over `data` in batches of `batch_size`, written by hand.
double bare_evaluation(Mlp& model, const torchfit::TensorPairDataset& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t n = data.inputs.size(0);
  double loss_sum = 0;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t end = std::min(n, begin + batch_size);
    const Batch batch{data.inputs.slice(0, begin, end), data.targets.slice(0, begin, end)};
    loss_sum += mlp_loss(model, batch).item<double>() * static_cast<double>(end - begin);
  }
  model->train();
  return loss_sum / static_cast<double>(n);
}

struct Result {
  double bare_ms, trainer_ms, ratio_median, ratio_min, ratio_max, batch_us;
};

/// Microseconds the Trainer's evaluation spends building one batch (copies of its samples), the part of its
/// per-batch work that the hand-written loop, which slices, does not do.
double batch_building_us(const torchfit::TensorPairDataset& data, int64_t batch_size, int reps) {
  const torchfit::detail::BatchPlan<torchfit::TensorPairDataset> plan(data, batch_size, false, std::nullopt);
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    for (int64_t k = 0; k < plan.num_batches(); ++k) plan.batch(k);
    us.push_back(1e6 * seconds_since(start) / static_cast<double>(plan.num_batches()));
  }
  return median(us);
}

Result measure(int64_t samples, int64_t batch_size, int reps, int evaluations, const fs::path& dir) {
  torch::manual_seed(0);
  const torchfit::TensorPairDataset data{torch::randn({samples, 784}), torch::randint(0, 10, {samples})};
  torchfit::TrainingArguments args;
  args.output_dir = (dir / "output").string();
  args.logging_dir = (dir / "runs").string();
  args.report_to = {"tensorboard"};
  args.per_device_eval_batch_size = batch_size;
  args.save_strategy = torchfit::SaveStrategy::no;
  args.use_cpu = true;
  Mlp model;
  torchfit::Trainer trainer(model, args, data, data, mlp_loss);
  NullBuffer null_buffer;
  std::ostream null_out(&null_buffer);
  trainer.remove_callback<torchfit::ProgressCallback>();
  trainer.callback_handler().add_tail_callback(
      std::make_shared<torchfit::ProgressCallback>(null_out, torchfit::ProgressMode::plain));

  // Warm-up, and the check that both compute the same loss.
  const double bare_loss = bare_evaluation(model, data, batch_size);
  const double trainer_loss = trainer.evaluate().at("eval_loss").get<double>();
  if (std::abs(bare_loss - trainer_loss) > 1e-5 * std::abs(bare_loss))
    throw std::runtime_error(
        fmt::format("eval_loss {} differs from the bare loss {}", trainer_loss, bare_loss));

  // Within a repetition the two alternate evaluation by evaluation, so that both see the same machine.
  std::vector<double> bare, fitted, ratios;
  for (int r = 0; r < reps; ++r) {
    double bare_seconds = 0, trainer_seconds = 0;
    for (int e = 0; e < evaluations; ++e) {
      auto start = Clock::now();
      bare_evaluation(model, data, batch_size);
      bare_seconds += seconds_since(start);
      start = Clock::now();
      trainer.evaluate();
      trainer_seconds += seconds_since(start);
    }
    bare.push_back(bare_seconds / evaluations);
    fitted.push_back(trainer_seconds / evaluations);
    ratios.push_back(trainer_seconds / bare_seconds);
  }
  return {1e3 * median(bare),
          1e3 * median(fitted),
          median(ratios),
          *std::min_element(ratios.begin(), ratios.end()),
          *std::max_element(ratios.begin(), ratios.end()),
          batch_building_us(data, batch_size, reps)};
}

}  // namespace

int main(int argc, char** argv) try {
  bool quick = false;
  int reps = 21;
  int64_t samples = 1024;
  const std::string usage = "usage: evaluation [--quick] [--reps N] [--samples N]";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value; " + usage);
      return argv[++i];
    };
    if (arg == "--quick")
      quick = true;
    else if (arg == "--reps")
      reps = std::stoi(value());
    else if (arg == "--samples")
      samples = std::stoll(value());
    else
      throw std::invalid_argument("unknown argument \"" + arg + "\"; " + usage);
  }
  if (quick) reps = 1;
  torch::set_num_threads(1);
  torchfit::log::set_level(torchfit::log::Level::warning);
  const fs::path dir = fs::temp_directory_path() / fmt::format("torchfit_evaluation_{}", ::getpid());
  std::cout << fmt::format(
      "MLP 784-256-256-10 on the CPU, {} eval samples; {} repetitions alternating bare and "
      "Trainer, each timing {} evaluations\n",
      samples, reps, quick ? 1 : 10);
  std::cout << "| eval batch size | bare ms | evaluate() ms | ratio [min, max] | building a batch us |\n"
               "| --- | --- | --- | --- | --- |\n";
  for (const int64_t batch_size : {64, 8}) {
    const Result r = measure(samples, batch_size, reps, quick ? 1 : 10, dir);
    std::cout << fmt::format("| {} | {:.3f} | {:.3f} | {:.4f} [{:.4f}, {:.4f}] | {:.1f} |\n", batch_size,
                             r.bare_ms, r.trainer_ms, r.ratio_median, r.ratio_min, r.ratio_max, r.batch_us);
  }
  fs::remove_all(dir);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "evaluation: " << e.what() << '\n';
  return 2;
}

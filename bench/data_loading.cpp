// SPDX-License-Identifier: MIT
// Data-loading workers hide a slow dataset behind the training step.
//
// A map-style dataset of TensorDicts takes 1 ms to produce each sample (a sleep standing for decoding or disk
// reads); an MLP's training step takes about as long as a batch of such samples. The same training runs with
// --dataloader_num_workers 0, 1, 2 and 4, from the same initial weights; the table gives steps per second and
// checks that every run ends with bit-identical weights (the batches and their order do not depend on the
// workers).
//
//   ./data_loading [--quick] [--steps N] [--sample_ms X]
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <torch/torch.h>

#include <torchfit/torchfit.hpp>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t features = 1024, classes = 10, batch_size = 16;

/// Sample i: fixed random features and label, after `sample_ms` of pretend work.
struct SlowDataset : torch::data::datasets::Dataset<SlowDataset, torchfit::TensorDict> {
  explicit SlowDataset(double ms) : sample_ms(ms) {}
  torchfit::TensorDict get(std::size_t i) override {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(sample_ms));
    auto gen = at::detail::createCPUGenerator(i);
    return {{"inputs", torch::randn({features}, gen)},
            {"labels", torch::tensor(static_cast<int64_t>(i % classes))}};
  }
  c10::optional<std::size_t> size() const override { return 4096; }
  double sample_ms;
};

struct MlpImpl : torch::nn::Module {
  MlpImpl()
      : fc1(register_module("fc1", torch::nn::Linear(features, 1024))),
        fc2(register_module("fc2", torch::nn::Linear(1024, 1024))),
        fc3(register_module("fc3", torch::nn::Linear(1024, classes))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc3(torch::relu(fc2(torch::relu(fc1(x))))); }
  torch::nn::Linear fc1, fc2, fc3;
};
TORCH_MODULE(Mlp);

struct Run {
  double steps_per_second;
  torch::Tensor weights;
};

Run train(int64_t workers, int64_t steps, double sample_ms, const std::filesystem::path& dir) {
  torchfit::TrainingArguments args;
  args.output_dir = dir.string();
  args.max_steps = steps;
  args.per_device_train_batch_size = batch_size;
  args.dataloader_num_workers = workers;
  args.learning_rate = 1e-3;
  args.save_strategy = torchfit::SaveStrategy::no;
  args.logging_steps = 1000;
  args.disable_tqdm = true;
  torch::manual_seed(1234);
  Mlp model;
  auto loss = [](Mlp& m, const torchfit::TensorDict& batch) {
    return torch::cross_entropy_loss(m->forward(batch.at("inputs")), batch.at("labels"));
  };
  torchfit::Trainer trainer(model, args, SlowDataset(sample_ms), loss);
  trainer.remove_callback<torchfit::PrinterCallback>();
  const auto start = Clock::now();
  trainer.train();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {static_cast<double>(steps) / seconds, model->fc1->weight.detach().clone()};
}

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();
  int64_t steps = 100;
  double sample_ms = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick")
      steps = 6;
    else if (arg == "--steps" && i + 1 < argc)
      steps = std::stoll(argv[++i]);
    else if (arg == "--sample_ms" && i + 1 < argc)
      sample_ms = std::stod(argv[++i]);
    else
      throw std::runtime_error("unknown argument " + arg + " (--quick, --steps N, --sample_ms X)");
  }
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("torchfit-data-loading-{}", ::getpid());

  // The two costs the workers overlap: the step alone (no loading delay) and the loading alone.
  const double step_only = train(0, steps, 0.0, dir).steps_per_second;
  fmt::print("batch {} x {} features, MLP {}-1024-1024-{}, {} steps per run, {} ms per sample\n", batch_size,
             features, features, classes, steps, sample_ms);
  fmt::print("training step alone: {:.1f} steps/s ({:.1f} ms); loading a batch alone: {:.1f} ms\n\n",
             step_only, 1000 / step_only, sample_ms * batch_size);
  fmt::print(
      "| dataloader_num_workers | steps/s | ms/step | weights equal to 0 workers' |\n| --- | --- | --- | --- "
      "|\n");
  torch::Tensor reference;
  bool all_equal = true;
  for (const int64_t workers : {0, 1, 2, 4}) {
    const Run run = train(workers, steps, sample_ms, dir);
    if (!reference.defined()) reference = run.weights;
    const bool equal = torch::equal(run.weights, reference);
    all_equal = all_equal && equal;
    fmt::print("| {} | {:.1f} | {:.1f} | {} |\n", workers, run.steps_per_second, 1000 / run.steps_per_second,
               equal ? "yes" : "NO");
  }
  std::filesystem::remove_all(dir);
  return all_equal ? 0 : 1;
} catch (const std::exception& e) {
  std::cerr << "data_loading: " << e.what() << "\n";
  return 2;
}

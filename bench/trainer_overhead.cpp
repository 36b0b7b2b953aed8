// SPDX-License-Identifier: MIT
// What torchfit::Trainer costs per step over the same training written as a plain libtorch loop.
//
// Both paths train the same model from the same initial weights on the same data, in the same batch order, with
// AdamW (lr 1e-3, no weight decay), gradient clipping at 1.0, a constant learning rate and the same number of
// steps. The Trainer runs with DefaultFlow, a plain-mode ProgressCallback writing to a stream that discards
// everything, and TensorBoard, logging every 50 steps. Repetitions alternate (hand-written, Trainer, hand-written,
// ...) in one process after one discarded warm-up of each, which also checks that both computed the same thing.
//
// Both paths run under the same malloc settings: torchfit::tune_cpu_allocator() unless --default-malloc, since
// glibc's default re-faults freed tensor buffers depending on heap layout, a per-process swing of up to 60%
// in either path that has nothing to do with the loop.
//
//   ./trainer_overhead [--quick] [--workload mlp|gpt|all] [--reps N] [--default-malloc]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <torchfit/cpu_allocator.hpp>
#include <torchfit/integrations/tensorboard.hpp>
#include <torchfit/torchfit.hpp>

#include "gpt.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Batch = torch::data::Example<>;

constexpr int64_t train_seed = 42;   // the Trainer's seed: data order (seed + epoch) and dropout
constexpr int64_t init_seed = 1234;  // initial weights, drawn before either path starts
constexpr double learning_rate = 1e-3;
constexpr double max_grad_norm = 1.0;
constexpr int64_t logging_steps = 50;

/// Accepts and drops every character: the stream still does all its formatting, as it would for a terminal.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return traits_type::not_eof(c); }
  std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

/// The MLP 784-256-256-10 of the CPU workload.
struct MlpImpl : torch::nn::Module {
  MlpImpl()
      : fc1(register_module("fc1", torch::nn::Linear(784, 256))),
        fc2(register_module("fc2", torch::nn::Linear(256, 256))),
        fc3(register_module("fc3", torch::nn::Linear(256, 10))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc3(torch::relu(fc2(torch::relu(fc1(x))))); }
  torch::nn::Linear fc1, fc2, fc3;
};
TORCH_MODULE(Mlp);

torch::Tensor mlp_loss(Mlp& model, const Batch& batch) {
  return torch::cross_entropy_loss(model->forward(batch.data), batch.target);
}

/// One benchmarked training: model factory (same initial weights on every call), data, loss and length.
template <typename Model>
struct Workload {
  std::string name;
  torch::Device device;
  std::function<Model()> make_model;
  torchfit::TensorPairDataset data;
  int64_t batch_size;
  int64_t steps;
  torch::Tensor (*loss)(Model&, const Batch&);
};

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// (a) The loop as one writes it by hand: shuffled index batches, forward, loss, backward, clip, step,
/// zero_grad, and `loss.item()` every 50 steps. Returns the seconds it took, including the optimizer's creation.
template <typename Model>
double run_hand_written(const Workload<Model>& w, Model& model, std::vector<double>& logged_losses) {
  const auto start = Clock::now();
  torch::manual_seed(train_seed);  // the Trainer's constructor seeds too, so dropout draws the same numbers
  model->to(w.device);
  model->train();
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(learning_rate).weight_decay(0.0));
  const auto params = model->parameters();
  const int64_t n = w.data.inputs.size(0);
  const int64_t batches = (n + w.batch_size - 1) / w.batch_size;
  int64_t step = 0;
  for (int64_t epoch = 0; step < w.steps; ++epoch) {
    // The order torchfit::detail::BatchPlan draws for this epoch.
    const auto order =
        torch::randperm(n, at::detail::createCPUGenerator(static_cast<uint64_t>(train_seed + epoch)), torch::kLong);
    for (int64_t k = 0; k < batches && step < w.steps; ++k) {
      const auto indices = order.slice(0, k * w.batch_size, std::min(n, (k + 1) * w.batch_size));
      const Batch batch{w.data.inputs.index_select(0, indices).to(w.device, /*non_blocking=*/true),
                        w.data.targets.index_select(0, indices).to(w.device, /*non_blocking=*/true)};
      torch::Tensor loss = w.loss(model, batch);
      loss.backward();
      torch::nn::utils::clip_grad_norm_(params, max_grad_norm);
      optimizer.step();
      optimizer.zero_grad();
      if (++step % logging_steps == 0) logged_losses.push_back(loss.item<double>());
    }
  }
  synchronize(w.device);
  return seconds_since(start);
}

/// (b) The same training through torchfit::Trainer. Returns the seconds it took, including the Trainer's
/// construction (callbacks, seeding) and everything train() does before and after the steps.
template <typename Model>
double run_torchfit(const Workload<Model>& w, Model& model, const fs::path& dir, std::ostream& progress_out,
                    torchfit::TrainOutput& out) {
  torchfit::TrainingArguments args;
  args.output_dir = (dir / "output").string();
  args.logging_dir = (dir / "runs").string();
  args.report_to = {"tensorboard"};
  args.per_device_train_batch_size = w.batch_size;
  args.max_steps = w.steps;
  args.learning_rate = learning_rate;
  args.weight_decay = 0.0;
  args.max_grad_norm = max_grad_norm;
  args.lr_scheduler_type = "constant";
  args.logging_steps = logging_steps;
  args.save_strategy = torchfit::SaveStrategy::no;
  args.seed = train_seed;
  args.use_cpu = !w.device.is_cuda();

  const auto start = Clock::now();
  torchfit::Trainer trainer(model, args, w.data, w.loss);
  trainer.template remove_callback<torchfit::ProgressCallback>();
  trainer.callback_handler().add_tail_callback(
      std::make_shared<torchfit::ProgressCallback>(progress_out, torchfit::ProgressMode::plain));
  out = trainer.train();
  synchronize(w.device);
  return seconds_since(start);
}

/// Mean loss of `model` on the first `count` samples, in eval mode (no dropout).
template <typename Model>
double evaluation_loss(const Workload<Model>& w, Model& model, int64_t count) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t n = std::min(count, w.data.inputs.size(0));
  const Batch batch{w.data.inputs.slice(0, 0, n).to(w.device), w.data.targets.slice(0, 0, n).to(w.device)};
  const double loss = w.loss(model, batch).template item<double>();
  model->train();
  return loss;
}

double max_parameter_difference(const torch::nn::Module& a, const torch::nn::Module& b) {
  const auto pa = a.parameters();
  const auto pb = b.parameters();
  double diff = 0;
  for (std::size_t i = 0; i < pa.size(); ++i)
    diff = std::max(diff, (pa[i] - pb[i]).abs().max().template item<double>());
  return diff;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

struct Row {
  std::string workload;
  std::string device;
  int64_t steps = 0;
  int reps = 0;
  double hand_ms = 0;
  double torchfit_ms = 0;
  double ratio = 0;  // median of the per-repetition ratios torchfit / hand-written
  double ratio_min = 0;
  double ratio_max = 0;
};

/// Runs the warm-up pair (and the equivalence check on it), then `reps` interleaved pairs.
template <typename Model>
Row measure(const Workload<Model>& w, int reps, const fs::path& dir, std::ostream& progress_out, bool& same) {
  std::vector<double> hand_losses;
  torchfit::TrainOutput out;
  {
    Model hand = w.make_model();
    run_hand_written(w, hand, hand_losses);
    Model fitted = w.make_model();
    run_torchfit(w, fitted, dir, progress_out, out);
    // Same initial weights, data order, dropout draws and arithmetic: the weights should agree exactly on the
    // CPU; CUDA kernels (atomics in embedding backward) may round differently from run to run.
    const double tolerance = w.device.is_cuda() ? 1e-2 : 1e-6;
    const double hand_loss = evaluation_loss(w, hand, 256);
    const double torchfit_loss = evaluation_loss(w, fitted, 256);
    const double param_diff = max_parameter_difference(*hand, *fitted);
    const bool ok = out.global_step == w.steps &&
                    std::abs(hand_loss - torchfit_loss) <= tolerance * std::max(1.0, std::abs(hand_loss));
    same = same && ok;
    std::cout << fmt::format(
                     "check {} on {}: after {} steps, loss on 256 samples hand-written {:.6f}, torchfit {:.6f}; "
                     "max |weight difference| {:.3g}: {}",
                     w.name, w.device.str(), out.global_step, hand_loss, torchfit_loss, param_diff,
                     ok ? "same" : "MISMATCH")
              << std::endl;
  }

  std::vector<double> hand_ms, torchfit_ms, ratios;
  for (int r = 0; r < reps; ++r) {
    hand_losses.clear();
    Model hand = w.make_model();
    hand_ms.push_back(run_hand_written(w, hand, hand_losses) * 1e3 / static_cast<double>(w.steps));
    Model fitted = w.make_model();
    torchfit_ms.push_back(run_torchfit(w, fitted, dir, progress_out, out) * 1e3 / static_cast<double>(w.steps));
    ratios.push_back(torchfit_ms.back() / hand_ms.back());
  }
  return Row{w.name,
             w.device.str(),
             w.steps,
             reps,
             median(hand_ms),
             median(torchfit_ms),
             median(ratios),
             *std::min_element(ratios.begin(), ratios.end()),
             *std::max_element(ratios.begin(), ratios.end())};
}

Workload<Mlp> mlp_workload(int64_t steps) {
  // Synthetic MNIST-shaped data: 200 batches of 64, drawn once from a fixed generator.
  auto gen = at::detail::createCPUGenerator(7);
  torchfit::TensorPairDataset data{torch::randn({64 * 200, 784}, gen), torch::randint(0, 10, {64 * 200}, gen)};
  return Workload<Mlp>{"mlp 784-256-256-10, batch 64", torch::Device(torch::kCPU),
                       [] {
                         torch::manual_seed(init_seed);
                         return Mlp();
                       },
                       std::move(data), 64, steps, &mlp_loss};
}

Workload<CharGpt> gpt_workload(const torch::Device& device, int64_t steps) {
  const GptConfig config{/*vocab_size=*/256, /*context=*/128, /*d_model=*/256, /*heads=*/4, /*layers=*/4,
                         /*dropout=*/0.1};
  // Synthetic text: 64 windows of 128 random lowercase letters (2 batches of 32 per epoch).
  auto gen = at::detail::createCPUGenerator(7);
  const int64_t length = 64 * config.context + 1;
  const auto letters = torch::randint(97, 123, {length}, gen, torch::kLong);
  std::string text(static_cast<std::size_t>(length), ' ');
  for (int64_t i = 0; i < length; ++i) text[static_cast<std::size_t>(i)] = static_cast<char>(letters[i].item<int64_t>());
  auto [inputs, targets] = byte_windows(text, config.context);
  return Workload<CharGpt>{"gpt 4x256, 4 heads, context 128, batch 32", device,
                           [config] {
                             torch::manual_seed(init_seed);
                             return CharGpt(config);
                           },
                           torchfit::TensorPairDataset{inputs, targets}, 32, steps, &next_token_loss};
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown CPU";
}

struct Options {
  bool quick = false;
  bool default_malloc = false;
  std::string workload = "all";
  int reps = 7;
};

Options parse(int argc, char** argv) {
  Options o;
  bool reps_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--default-malloc") {
      o.default_malloc = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--workload" && i + 1 < argc) {
      o.workload = argv[++i];
      if (o.workload != "mlp" && o.workload != "gpt" && o.workload != "all")
        throw std::invalid_argument("--workload: \"" + o.workload + "\" is not one of mlp, gpt, all");
    } else if (a == "--reps" && i + 1 < argc) {
      o.reps = std::stoi(argv[++i]);
      if (o.reps < 1) throw std::invalid_argument("--reps: " + std::to_string(o.reps) + " must be at least 1");
      reps_given = true;
    } else {
      throw std::invalid_argument("unknown argument \"" + a +
                                  "\"; usage: trainer_overhead [--quick] [--workload mlp|gpt|all] [--reps N] "
                                  "[--default-malloc]");
    }
  }
  if (o.quick && !reps_given) o.reps = 1;
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options opt = parse(argc, argv);
  const fs::path dir = fs::temp_directory_path() / fmt::format("torchfit_bench_{}", ::getpid());
  NullBuffer null_buffer;
  std::ostream progress_out(&null_buffer);

  const bool tuned = !opt.default_malloc && torchfit::tune_cpu_allocator();
  std::cout << fmt::format("machine: {}, {} hardware threads, {} torch threads, libtorch {}, malloc {}\n",
                           cpu_model(), std::thread::hardware_concurrency(), torch::get_num_threads(),
                           TORCH_VERSION, tuned ? "tuned by torchfit::tune_cpu_allocator()" : "as configured")
            << std::flush;
  std::vector<Row> rows;
  bool same = true;
  if (opt.workload != "gpt") rows.push_back(measure(mlp_workload(opt.quick ? 60 : 400), opt.reps, dir, progress_out, same));
  if (opt.workload != "mlp") {
    // About 1.5 s a step on 2 cores: fewer steps and repetitions keep the CPU run within minutes.
    rows.push_back(measure(gpt_workload(torch::Device(torch::kCPU), opt.quick ? 2 : 8), opt.quick ? opt.reps : std::min(opt.reps, 5),
                           dir, progress_out, same));
    if (torch::cuda::is_available())
      rows.push_back(measure(gpt_workload(torch::Device(torch::kCUDA), opt.quick ? 20 : 300), opt.reps, dir,
                             progress_out, same));
  }
  fs::remove_all(dir);

  std::cout << fmt::format("\n{:<44} {:<6} {:>5} {:>4} {:>21} {:>17} {:>22}\n", "workload", "device", "steps",
                           "reps", "hand-written ms/step", "torchfit ms/step", "ratio [min, max]");
  for (const auto& r : rows)
    std::cout << fmt::format("{:<44} {:<6} {:>5} {:>4} {:>21.3f} {:>17.3f} {:>8.4f} [{:.4f}, {:.4f}]\n", r.workload,
                             r.device, r.steps, r.reps, r.hand_ms, r.torchfit_ms, r.ratio, r.ratio_min, r.ratio_max);
  std::cout << "ratio: median over repetitions of torchfit / hand-written time, each pair run back to back\n";
  if (!same) {
    std::cout << "the two paths did not compute the same thing (see MISMATCH above)\n";
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "trainer_overhead: " << e.what() << '\n';
  return 2;
}

// SPDX-License-Identifier: MIT
// The time of a full checkpoint (model.safetensors, optimizer.pt, scheduler.json, rng_state.pt,
// trainer_progress.json, trainer_state.json, training_args.json, written as the Trainer writes them and published
// by a rename) against writing the same number of bytes to files of the same sizes with plain write + fsync, for
// models of 1M to 200M parameters with AdamW's state. The budget: the whole save within 1.5x of its bytes' write.
//
// Repetitions alternate checkpoint and plain write in one process (each first in every other repetition); the
// ratio is taken within each repetition.
//
//   ./checkpoint_save [--quick] [--reps N] [--sizes 1,10,50,200] [--dir PATH]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include <torchfit/torchfit.hpp>

#include "bench_support.hpp"

namespace {

namespace fs = std::filesystem;
namespace checkpoint = torchfit::checkpoint;
using bench::Clock;
using bench::median;
using bench::seconds_since;

/// Square 1024-wide linear layers, as many as make about `millions` million parameters (at least one).
struct Net : torch::nn::Module {
  explicit Net(int64_t millions) {
    const int64_t width = 1024;
    const int64_t layers =
        std::max<int64_t>(1, (millions * 1000000 + width * (width + 1) / 2) / (width * (width + 1)));
    for (int64_t i = 0; i < layers; ++i)
      linears.push_back(register_module(fmt::format("layer{}", i), torch::nn::Linear(width, width)));
  }
  std::vector<torch::nn::Linear> linears;
};

/// A model with AdamW's moments filled (one step taken).
struct Training {
  explicit Training(int64_t millions)
      : net(std::make_shared<Net>(millions)),
        optimizer(net->parameters(), torch::optim::AdamWOptions(1e-3)),
        scheduler(torchfit::get_scheduler("linear", optimizer, 0, 1000)) {
    for (auto& p : net->parameters()) p.mutable_grad() = torch::ones_like(p);
    optimizer.step();
    state.global_step = 1;
  }
  int64_t parameters() const {
    int64_t n = 0;
    for (const auto& p : net->parameters()) n += p.numel();
    return n;
  }

  std::shared_ptr<Net> net;
  torch::optim::AdamW optimizer;
  std::unique_ptr<torchfit::LRScheduler> scheduler;
  torchfit::TrainerState state;
  torchfit::TrainingArguments args;
};

/// Seconds spent in each part of the last checkpoint.
using Parts = std::map<std::string, double>;

/// Saves checkpoint-<step> in `output_dir` as Trainer::save_checkpoint does; returns the seconds taken.
double save_checkpoint(Training& t, const fs::path& output_dir, int64_t step, Parts& parts) {
  const auto start = Clock::now();
  const auto timed = [&](const std::string& part, auto&& work) {
    const auto begin = Clock::now();
    work();
    parts[part] = seconds_since(begin);
  };
  const std::vector<std::string> rng_states{checkpoint::rng_state_bytes(checkpoint::capture_rng_state())};
  checkpoint::save(output_dir, step, [&](const fs::path& dir) {
    timed("model.safetensors", [&] { checkpoint::save_model_state(*t.net, dir / checkpoint::model_file); });
    timed("optimizer.pt",
          [&] { checkpoint::save_optimizer_state(t.optimizer, dir / checkpoint::optimizer_file); });
    timed("the other files", [&] {
      checkpoint::save_json(t.scheduler->state(), dir / checkpoint::scheduler_file);
      torchfit::detail::write_file_durably(dir / checkpoint::rng_file_of(0, 1), rng_states.front());
      checkpoint::save_json(checkpoint::Progress{}.to_json(), dir / checkpoint::progress_file);
      checkpoint::save_state_and_args(dir, t.state, t.args);
    });
  });
  return seconds_since(start);
}

/// Writes files of `sizes` bytes into a new directory with plain write() calls of 64 MiB and one fsync each,
/// then flushes the directory: the floor for writing a checkpoint's bytes.
double write_plain(const fs::path& dir, const std::vector<uint64_t>& sizes, const std::vector<char>& buffer) {
  const auto start = Clock::now();
  fs::create_directory(dir);
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    torchfit::detail::DurableFile file(dir / fmt::format("file{}", i));
    for (uint64_t left = sizes[i]; left > 0;) {
      const uint64_t n = std::min<uint64_t>(left, buffer.size());
      file.write(buffer.data(), n);
      left -= n;
    }
    file.finish();
  }
  torchfit::detail::sync_directory(dir);
  return seconds_since(start);
}

std::vector<uint64_t> file_sizes(const fs::path& dir) {
  std::vector<uint64_t> sizes;
  for (const auto& entry : fs::directory_iterator(dir)) sizes.push_back(fs::file_size(entry.path()));
  return sizes;
}

uint64_t total(const std::vector<uint64_t>& sizes) {
  uint64_t sum = 0;
  for (const uint64_t s : sizes) sum += s;
  return sum;
}

/// Where optimizer.pt's time goes: building the archive, serializing it to bytes, writing them.
void optimizer_breakdown(Training& t, const fs::path& dir, int reps) {
  std::vector<double> build, serialize, write;
  for (int r = 0; r < reps; ++r) {
    auto start = Clock::now();
    torch::serialize::OutputArchive archive;
    t.optimizer.save(archive);
    build.push_back(seconds_since(start));
    start = Clock::now();
    std::ostringstream out;
    archive.save_to(out);
    const std::string bytes = out.str();
    serialize.push_back(seconds_since(start));
    start = Clock::now();
    torchfit::detail::write_file_durably(dir / "optimizer.pt", bytes);
    write.push_back(seconds_since(start));
    fs::remove(dir / "optimizer.pt");
  }
  std::cout << fmt::format(
      "  optimizer.pt through an in-memory stream: build the archive {:.1f} ms, serialize to "
      "bytes {:.1f} ms, write and fsync {:.1f} ms\n",
      1e3 * median(build), 1e3 * median(serialize), 1e3 * median(write));
}

void run(int64_t millions, int reps, const fs::path& root, bool breakdown) {
  Training t(millions);
  const fs::path output_dir = root / fmt::format("m{}", millions);
  const std::vector<char> buffer(64u << 20, 'x');
  Parts parts;
  save_checkpoint(t, output_dir, 1, parts);  // warm-up, and the file sizes to write plainly
  const auto sizes = file_sizes(checkpoint::dir_for(output_dir, 1));
  fs::remove_all(output_dir);
  ::sync();

  std::vector<double> saves, plains, ratios;
  std::map<std::string, std::vector<double>> part_times;
  // Each removal is flushed before the next measurement, which would otherwise pay for it; the order alternates.
  const auto remove = [](const fs::path& dir) {
    fs::remove_all(dir);
    ::sync();
  };
  for (int r = 0; r < reps; ++r) {
    double save = 0, plain = 0;
    for (int turn = 0; turn < 2; ++turn)
      if ((turn + r) % 2 == 0) {
        save = save_checkpoint(t, output_dir, r + 2, parts);
        for (const auto& [part, s] : parts) part_times[part].push_back(s);
        remove(output_dir);
      } else {
        plain = write_plain(root / "plain", sizes, buffer);
        remove(root / "plain");
      }
    saves.push_back(save);
    plains.push_back(plain);
    ratios.push_back(save / plain);
    std::cout << fmt::format("rep {} {}M: checkpoint {:.1f} ms, plain write {:.1f} ms, ratio {:.3f}\n", r + 1,
                             millions, 1e3 * save, 1e3 * plain, save / plain);
  }
  const double mb = static_cast<double>(total(sizes)) / 1e6;
  std::cout << fmt::format("| {:.1f}M | {:.1f} | {} | {:.1f} | {:.1f} | {:.3f} [{:.3f}, {:.3f}] |\n",
                           static_cast<double>(t.parameters()) / 1e6, mb, sizes.size(), 1e3 * median(saves),
                           1e3 * median(plains), median(ratios),
                           *std::min_element(ratios.begin(), ratios.end()),
                           *std::max_element(ratios.begin(), ratios.end()));
  std::string line = "  parts (median ms):";
  for (const auto& [part, times] : part_times) line += fmt::format(" {} {:.1f};", part, 1e3 * median(times));
  std::cout << line << '\n';
  if (breakdown) {
    fs::create_directories(root / "breakdown");
    optimizer_breakdown(t, root / "breakdown", reps);
    fs::remove_all(root / "breakdown");
  }
}

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) sizes.push_back(std::stoll(item));
  return sizes;
}

}  // namespace

int main(int argc, char** argv) try {
  bool quick = false, breakdown = false;
  int reps = 5;
  std::vector<int64_t> sizes{1, 10, 50, 200};
  fs::path root = fs::temp_directory_path() / fmt::format("torchfit_checkpoint_save_{}", ::getpid());
  const std::string usage =
      "usage: checkpoint_save [--quick] [--reps N] [--sizes 1,10,50,200] [--dir PATH] [--breakdown]";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value; " + usage);
      return argv[++i];
    };
    if (arg == "--quick")
      quick = true;
    else if (arg == "--breakdown")
      breakdown = true;
    else if (arg == "--reps")
      reps = std::stoi(value());
    else if (arg == "--sizes")
      sizes = parse_sizes(value());
    else if (arg == "--dir")
      root = fs::path(value()) / fmt::format("torchfit_checkpoint_save_{}", ::getpid());
    else
      throw std::invalid_argument("unknown argument \"" + arg + "\"; " + usage);
  }
  if (quick) {
    reps = 1;
    sizes = {1};
  }
  torch::set_num_threads(1);
  fs::create_directories(root);
  std::cout << fmt::format("checkpoint directory {}; {} repetitions alternating checkpoint and plain write\n",
                           root.string(), reps);
  std::cout << "| parameters | MB | files | checkpoint ms | plain write ms | ratio [min, max] |\n";
  for (const int64_t millions : sizes) run(millions, reps, root, breakdown);
  fs::remove_all(root);
  return 0;
} catch (const std::exception& e) {
  std::cerr << "checkpoint_save: " << e.what() << '\n';
  return 2;
}

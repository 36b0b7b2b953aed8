// SPDX-License-Identifier: MIT
// One process of a data-parallel test job: test_distributed starts several with torchrun's variables (or one
// alone, the single-process reference). Trains (or only evaluates) the test MLP, then writes what the test
// compares to OUTPUT_DIR/rank<RANK>.json: the final global step, weights, log history, process flags and, with an
// eval set, the eval metrics and the predictions and labels compute_metrics saw.
//
// Usage: torchfit_distributed_child OUTPUT_DIR [child options] [training arguments]
//   --train_samples N --eval_samples N   data sizes (default 32, none)
//   --dropout P                          the MLP's dropout (default 0: ranks then draw no random numbers)
//   --eval_only                          evaluate the initial model instead of training
//   --resume                             resume from the newest checkpoint in OUTPUT_DIR
//   --die_at_step N   --die_rank R       SIGKILL rank R (-1: every rank) at the end of step N
//   --hang_at_step N  --hang_rank R      rank R sleeps forever at the end of step N
//   --stop_at_step N  --stop_rank R      a callback on rank R alone stops training at step N
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"
#include "torchfit/distributed.hpp"
#include "torchfit/integrations/jsonl.hpp"
#include "torchfit/torchfit.hpp"

namespace {

struct Options {
  int64_t train_samples = 32;
  int64_t eval_samples = 0;
  double dropout = 0;
  bool eval_only = false;
  bool resume = false;
  int64_t die_at = -1, die_rank = -1;
  int64_t hang_at = -1, hang_rank = 1;
  int64_t stop_at = -1, stop_rank = 1;
};

// Kills, hangs or stops this rank at the end of a given step, as the options say.
struct Misbehave : torchfit::TrainerCallback {
  explicit Misbehave(const Options& o) : options(o) {}
  void on_step_end(const Args&, torchfit::TrainerState& state, torchfit::TrainerControl& control,
                   const torchfit::CallbackContext&) override {
    const int64_t rank = torchfit::distributed::world().rank;
    if (state.global_step == options.die_at && (options.die_rank < 0 || options.die_rank == rank))
      std::raise(SIGKILL);
    if (state.global_step == options.hang_at && options.hang_rank == rank)
      std::this_thread::sleep_for(std::chrono::hours(1));
    if (state.global_step == options.stop_at && options.stop_rank == rank)
      control.should_training_stop = true;
  }
  Options options;
};

std::vector<double> values(const torch::Tensor& t) {
  const torch::Tensor flat = t.detach().to(torch::kDouble).flatten().contiguous();
  return {flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel()};
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::cerr << "usage: torchfit_distributed_child OUTPUT_DIR [options] [training arguments]\n";
    return 2;
  }
  std::vector<const char*> tokens{argv[0], "--output_dir", argv[1], "--disable_tqdm"};
  tokens.insert(tokens.end(), argv + 2, argv + argc);
  std::vector<std::string> rest;
  torchfit::TrainingArguments args =
      torchfit::TrainingArguments::parse_known_args(static_cast<int>(tokens.size()), tokens.data(), rest);
  Options o;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    const auto next = [&] { return std::stod(rest.at(++i)); };
    if (flag == "--train_samples")
      o.train_samples = static_cast<int64_t>(next());
    else if (flag == "--eval_samples")
      o.eval_samples = static_cast<int64_t>(next());
    else if (flag == "--dropout")
      o.dropout = next();
    else if (flag == "--eval_only")
      o.eval_only = true;
    else if (flag == "--resume")
      o.resume = true;
    else if (flag == "--die_at_step")
      o.die_at = static_cast<int64_t>(next());
    else if (flag == "--die_rank")
      o.die_rank = static_cast<int64_t>(next());
    else if (flag == "--hang_at_step")
      o.hang_at = static_cast<int64_t>(next());
    else if (flag == "--hang_rank")
      o.hang_rank = static_cast<int64_t>(next());
    else if (flag == "--stop_at_step")
      o.stop_at = static_cast<int64_t>(next());
    else if (flag == "--stop_rank")
      o.stop_rank = static_cast<int64_t>(next());
    else
      throw torchfit::ArgumentError("unknown option " + flag);
  }

  torch::manual_seed(1);
  torchfit::test::Mlp model(4, 16, 1, o.dropout);
  torchfit::json seen = torchfit::json::object();  // what compute_metrics saw
  const auto metrics = [&](const torchfit::EvalPrediction& p) {
    seen["predictions"] = values(p.predictions);
    seen["labels"] = values(p.label_ids);
    return torchfit::Logs{{"mse", torch::mse_loss(p.predictions, p.label_ids).item<double>()},
                          {"count", p.predictions.size(0)}};
  };
  const auto loss = [](torchfit::test::Mlp& m, const torch::data::Example<>& batch) {
    const torch::Tensor predictions = m->forward(batch.data);
    return torchfit::LossOutput{torch::mse_loss(predictions, batch.target), predictions, batch.target};
  };
  using Data = std::pair<torch::Tensor, torch::Tensor>;
  std::optional<Data> eval_data;
  if (o.eval_samples > 0) eval_data = torchfit::test::regression_data(o.eval_samples, 4, 5);
  torchfit::Trainer<torchfit::test::Mlp, Data> trainer(
      model, args, torchfit::test::regression_data(o.train_samples), eval_data, loss, metrics);
  trainer.add_callback<Misbehave>(o);

  torchfit::json out = torchfit::json::object();
  if (o.eval_only) {
    out["eval"] = trainer.evaluate();
  } else {
    trainer.train(o.resume ? std::optional<std::string>("last") : std::nullopt);
    if (eval_data) out["eval"] = trainer.evaluate();
    trainer.save_state();
    trainer.save_model();
  }
  std::vector<double> weights;
  for (const auto& p : model->parameters())
    for (double v : values(p)) weights.push_back(v);
  const torchfit::TrainerState& state = trainer.state();
  out["global_step"] = state.global_step;
  out["weights"] = weights;
  out["log_history"] = state.log_history;
  out["is_world_process_zero"] = state.is_world_process_zero;
  out["is_local_process_zero"] = state.is_local_process_zero;
  out["seen"] = seen;
  std::ofstream(std::filesystem::path(argv[1]) /
                ("rank" + std::to_string(torchfit::distributed::world().rank) + ".json"))
      << out.dump();
  return 0;
} catch (const std::exception& e) {
  std::cerr << "torchfit_distributed_child: " << e.what() << "\n";
  return 1;
}

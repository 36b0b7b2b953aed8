// SPDX-License-Identifier: MIT
// A tiny character-level transformer trained on a public-domain text, printing a generated sample at every
// evaluation from a custom callback. The data goes the way of a real language model's: the text becomes a token
// file (nanoGPT's train.bin) read as TensorDict windows {input_ids, labels}; the held-out verses are evaluated
// one per row, padded by a LanguageModelingCollator.
//
//   ./char_gpt                        # defaults below (a few minutes on 2 CPU cores)
//   ./char_gpt --max_steps 2000 --layers 4 --d_model 256
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <torchfit/torchfit.hpp>

#include "gpt.hpp"

namespace {

/// Prints a sample continuation of `prompt` after each evaluation.
class SampleCallback : public torchfit::TrainerCallback {
 public:
  SampleCallback(std::string prompt, int64_t length) : prompt_(std::move(prompt)), length_(length) {}

  void on_evaluate(const Args&, torchfit::TrainerState& state, torchfit::TrainerControl&,
                   const torchfit::CallbackContext& ctx) override {
    if (!state.is_world_process_zero) return;
    auto& model = ctx.model_as<CharGptImpl>();
    const auto prompt_ids = torch::tensor(byte_tokens(prompt_), torch::kLong);
    auto ids = model.generate(prompt_ids, length_, 0.8, at::detail::createCPUGenerator(state.global_step));
    std::string text;
    for (int64_t i = 0; i < ids.numel(); ++i) text += static_cast<char>(ids[i].item<int64_t>());
    std::cout << "\n--- sample at step " << state.global_step << " ---\n"
              << prompt_ << text << "\n---\n"
              << std::flush;
  }

 private:
  std::string prompt_;
  int64_t length_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path + " (pass --text_file PATH)");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.flush()) throw std::runtime_error("cannot write " + path.string());
}

/// This example's own options, parsed together with the training arguments.
struct CharGptArguments {
  std::string text_file = TORCHFIT_EXAMPLES_DATA_DIR "/" TORCHFIT_CHAR_GPT_TEXT;
  std::string prompt = "The ";
  int64_t context = 64;
  int64_t d_model = 128;
  int64_t layers = 2;

  static torchfit::ArgumentFields<CharGptArguments> fields() {
    return torchfit::ArgumentFields<CharGptArguments>("Char GPT example")
        .add("text_file", &CharGptArguments::text_file, "the text to learn; its last 10% is held out")
        .add("prompt", &CharGptArguments::prompt, "the start of the samples printed at each evaluation")
        .add("context", &CharGptArguments::context, "characters the model sees at once")
        .add("d_model", &CharGptArguments::d_model, "width of the transformer")
        .add("layers", &CharGptArguments::layers, "transformer blocks");
  }
};

/// The example's training defaults; the command line overrides them.
torchfit::TrainingArguments char_gpt_defaults() {
  torchfit::TrainingArguments args;
  args.output_dir = "char_gpt_output";
  args.max_steps = 600;
  args.learning_rate = 3e-3;
  args.warmup_steps = 50;
  args.lr_scheduler_type = "cosine";
  args.weight_decay = 0.1;
  args.per_device_train_batch_size = 32;
  args.per_device_eval_batch_size = 64;
  args.logging_steps = 50;
  args.eval_strategy = torchfit::IntervalStrategy::steps;
  args.eval_steps = 200;
  args.save_steps = 200;
  args.save_total_limit = 1;
  return args;
}

}  // namespace

int main(int argc, char** argv) try {
  torchfit::tune_cpu_allocator();  // CPU training: reuse freed tensor buffers instead of re-faulting them
  const auto [options, args] =
      torchfit::ArgumentParser<CharGptArguments, torchfit::TrainingArguments>({}, char_gpt_defaults())
          .parse(argc, argv);
  const GptConfig config{/*vocab_size=*/256, options.context, options.d_model,
                         /*heads=*/4,        options.layers,  /*dropout=*/0.1};

  // The first 90% of the text (cut at a line end) becomes the training token file, the rest the eval lines.
  const std::string text = read_text(options.text_file);
  const auto split = text.rfind('\n', text.size() * 9 / 10) + 1;
  const std::filesystem::path data_dir = std::filesystem::path(args.output_dir) / "data";
  std::filesystem::create_directories(data_dir);
  const auto train_ids = byte_tokens(std::string_view(text).substr(0, split));
  torchfit::write_token_file(data_dir / "train.bin", torch::tensor(train_ids, torch::kLong));
  write_text(data_dir / "eval.txt", text.substr(split));

  torchfit::TokenFileDataset train(data_dir / "train.bin", config.context);
  const int64_t context = config.context;  // the longest sequence the position embedding covers
  const auto truncated_bytes = [context](std::string_view line) {
    return byte_tokens(line.substr(0, context));
  };
  torchfit::Collated eval(torchfit::TextLineDataset(data_dir / "eval.txt", truncated_bytes),
                          torchfit::LanguageModelingCollator(/*pad_token=*/0, /*pad_to_multiple=*/8,
                                                             /*shift=*/true));
  torchfit::set_seed(args.seed);  // before the model: the same initial weights on every run
  CharGpt model(config);
  auto loss = [](CharGpt& m, const torchfit::TensorDict& batch) { return next_token_loss(m, batch); };
  torchfit::Trainer trainer(model, args, train, eval, loss);
  trainer.add_callback<SampleCallback>(options.prompt, 200);
  const auto result = trainer.train();
  double eval_loss = NAN;
  for (const auto& entry : trainer.state().log_history) eval_loss = entry.value("eval_loss", eval_loss);
  std::cout << "\ntrained " << result.global_step << " steps; train_loss " << result.training_loss
            << "; last eval_loss " << eval_loss << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "char_gpt: " << e.what() << "\n";
  return 2;
}

// SPDX-License-Identifier: MIT
// A small GPT-style character model: token + position embeddings, pre-norm transformer blocks with causal
// self-attention, and a tied-free output head. Shared by the char_gpt example and the benchmarks.
#pragma once

#include <string_view>
#include <vector>

#include <torch/torch.h>
#include <torchfit/data.hpp>

struct GptConfig {
  int64_t vocab_size = 256;
  int64_t context = 128;
  int64_t d_model = 256;
  int64_t heads = 4;
  int64_t layers = 4;
  double dropout = 0.1;
};

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const GptConfig& c)
      : ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        attn(register_module(
            "attn", torch::nn::MultiheadAttention(
                        torch::nn::MultiheadAttentionOptions(c.d_model, c.heads).dropout(c.dropout)))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        fc(register_module("fc", torch::nn::Linear(c.d_model, 4 * c.d_model))),
        proj(register_module("proj", torch::nn::Linear(4 * c.d_model, c.d_model))),
        drop(register_module("drop", torch::nn::Dropout(c.dropout))) {}

  // x: [time, batch, d_model] (MultiheadAttention's layout); mask: [time, time] additive causal mask;
  // padding: [batch, time], true at padded positions (or undefined).
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask, const torch::Tensor& padding) {
    auto h = ln1(x);
    x = x + std::get<0>(attn->forward(h, h, h, padding, /*need_weights=*/false, mask));
    return x + drop(proj(torch::gelu(fc(ln2(x)))));
  }

  torch::nn::LayerNorm ln1;
  torch::nn::MultiheadAttention attn;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc, proj;
  torch::nn::Dropout drop;
};
TORCH_MODULE(Block);

struct CharGptImpl : torch::nn::Module {
  explicit CharGptImpl(const GptConfig& c)
      : config(c),
        tokens(register_module("tokens", torch::nn::Embedding(c.vocab_size, c.d_model))),
        positions(register_module("positions", torch::nn::Embedding(c.context, c.d_model))),
        blocks(register_module("blocks", torch::nn::ModuleList())),
        ln_f(register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        head(register_module("head", torch::nn::Linear(c.d_model, c.vocab_size))) {
    for (int64_t i = 0; i < c.layers; ++i) blocks->push_back(Block(c));
  }

  /// idx: [batch, time] token ids -> logits [batch, time, vocab]. `attention_mask` (a padding collator's, 0 at
  /// padded positions) keeps real tokens from attending to padding; causal attention alone already keeps them
  /// from right padding, but not a padded position's own output.
  torch::Tensor forward(const torch::Tensor& idx, const torch::Tensor& attention_mask = {}) {
    const int64_t t = idx.size(1);
    auto pos = torch::arange(t, torch::TensorOptions().dtype(torch::kLong).device(idx.device()));
    auto x = (tokens(idx) + positions(pos)).transpose(0, 1);  // [time, batch, d]
    auto mask = torch::full({t, t}, -std::numeric_limits<float>::infinity(),
                            torch::TensorOptions().dtype(x.scalar_type()).device(idx.device()))
                    .triu(1);
    const torch::Tensor padding = attention_mask.defined() ? attention_mask == 0 : torch::Tensor();
    for (const auto& block : *blocks) x = block->as<BlockImpl>()->forward(x, mask, padding);
    return head(ln_f(x)).transpose(0, 1);
  }

  /// Samples `count` tokens after `prompt` (1-D ids) with the given temperature, drawing from `generator`
  /// so that sampling never disturbs the training RNG.
  torch::Tensor generate(torch::Tensor prompt, int64_t count, double temperature,
                         torch::Generator generator) {
    torch::NoGradGuard no_grad;
    const bool was_training = is_training();
    eval();
    auto device = tokens->weight.device();
    auto ids = prompt.to(device).unsqueeze(0);
    for (int64_t i = 0; i < count; ++i) {
      auto window = ids.slice(1, std::max<int64_t>(0, ids.size(1) - config.context));
      auto logits = forward(window).select(1, -1).squeeze(0) / temperature;
      auto probs = torch::softmax(logits, -1).to(torch::kCPU);
      auto next = torch::multinomial(probs, 1, false, generator).to(device);
      ids = torch::cat({ids, next.unsqueeze(0)}, 1);
    }
    if (was_training) train();
    return ids.squeeze(0).slice(0, prompt.size(0)).cpu();
  }

  GptConfig config;
  torch::nn::Embedding tokens, positions;
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln_f;
  torch::nn::Linear head;
};
TORCH_MODULE(CharGpt);

/// Cross-entropy of next-token prediction over every position.
inline torch::Tensor next_token_loss(CharGpt& model, const torch::data::Example<>& batch) {
  auto logits = model->forward(batch.data);
  return torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), batch.target.reshape({-1}));
}

/// The same from a TensorDict batch whose labels are already shifted (TokenFileDataset's windows, or a
/// LanguageModelingCollator with shift_labels): positions labelled -100 (padding, a line's last token) do not
/// count.
inline torch::Tensor next_token_loss(CharGpt& model, const torchfit::TensorDict& batch) {
  const torch::Tensor* mask = batch.find("attention_mask");
  auto logits = model->forward(batch.at("input_ids"), mask != nullptr ? *mask : torch::Tensor());
  return torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), batch.at("labels").reshape({-1}));
}

/// One token per byte: the model's vocabulary is the 256 byte values.
inline std::vector<int64_t> byte_tokens(std::string_view text) {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

/// Non-overlapping windows of `context` bytes: inputs text[i:i+context], targets shifted by one, in memory (the
/// benchmark's data; the example reads a token file).
inline std::pair<torch::Tensor, torch::Tensor> byte_windows(const std::string& text, int64_t context) {
  const int64_t n = (static_cast<int64_t>(text.size()) - 1) / context;
  auto bytes = torch::empty({static_cast<int64_t>(text.size())}, torch::kLong);
  auto* p = bytes.data_ptr<int64_t>();
  for (std::size_t i = 0; i < text.size(); ++i) p[i] = static_cast<unsigned char>(text[i]);
  auto inputs = bytes.slice(0, 0, n * context).view({n, context});
  auto targets = bytes.slice(0, 1, n * context + 1).view({n, context});
  return {inputs.clone(), targets.clone()};
}

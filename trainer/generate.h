// Autoregressive generation with any CausalLM (teacher or student): one batched prefill, then one token per
// step through the model's decoding state (KV cache for attention, recurrent state for Mamba-2 mixers).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "model/sampling.h"
#include "model/transformer.h"

namespace carve::trainer {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  int64_t stop_token = -1;  // end a row when it produces this id (-1: never)
  model::SamplingOptions sampling;
  uint64_t seed = 0;
  // Decode through a captured CUDA graph when the model can be (model/decode_graph.h); otherwise, or when false,
  // one forward per token.
  bool cuda_graphs = true;
  // Vision-language prompts: rows spliced in at the prompt's image tokens (trainer/vlm_inputs).
  int64_t image_token_id = -1;
  torch::Tensor image_rows;
};

// prompt [b, l] int64 -> generated ids [b, n] (n <= max_new_tokens; rows that stopped are padded with stop_token).
torch::Tensor generate(model::CausalLMImpl& model, const torch::Tensor& prompt, const GenerateOptions& options);
// The same for prompts of any lengths ([l_i] int64 each). Rows of one length are prefilled together; their states
// are then merged into one batch in which each row continues from its own position.
torch::Tensor generate(model::CausalLMImpl& model, const std::vector<torch::Tensor>& prompts,
                       const GenerateOptions& options);

struct Prefilled {
  model::DecodeState state;  // every row after its whole prompt
  torch::Tensor logits;      // [b, vocab]: each row's logits at its last prompt token
};
// The prefill of generate(): `prompts` consumed into a state with room for `reserve_positions` positions.
// options.image_token_id / image_rows splice image rows in as generate() does.
Prefilled prefill(model::CausalLMImpl& model, const std::vector<torch::Tensor>& prompts, int64_t reserve_positions,
                  const GenerateOptions& options);

}  // namespace carve::trainer

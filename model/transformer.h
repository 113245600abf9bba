// A decoder-only language model: embeddings, decoder layers (a mixer and an MLP each), final norm, LM head.
// Teachers hold attention in every layer; a student is the same model with some mixers replaced (model/student).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "model/config.h"
#include "model/layers.h"
#include "model/mixer.h"

namespace carve::model {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, std::shared_ptr<Mixer> mixer);
  // x [b, l, d] (the residual stream) -> [b, l, d].
  torch::Tensor forward(const torch::Tensor& x, const MixerContext& ctx);
  // Swaps the mixer (student construction); the new one is registered under the same name.
  void set_mixer(std::shared_ptr<Mixer> mixer);

  bool parallel_residual;
  Norm input_norm{nullptr};
  Norm post_norm{nullptr};  // absent with a parallel residual (Phi-2)
  std::shared_ptr<Mixer> mixer;
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// Per-sequence decoding state: one MixerState per layer and the number of tokens consumed.
struct DecodeState {
  std::vector<std::unique_ptr<MixerState>> layers;
  int64_t length = 0;  // tokens consumed by the longest row
  // Rows that consumed fewer tokens (prompts of different lengths): row r has consumed length + row_offsets[r]
  // ([b] int64, <= 0, on the model's device). Undefined when every row has consumed `length`.
  torch::Tensor row_offsets;

  // Every layer's state will hold `positions` tokens in all (see MixerState::reserve).
  void reserve(int64_t positions);
  // A replayed decode graph consumed `tokens` more tokens (see MixerState::advance).
  void advance(int64_t tokens);
  // Positions [batch, l] int64 on `device` of each row's next l tokens.
  torch::Tensor next_positions(int64_t batch, int64_t l, torch::Device device) const;
  // Makes this fresh state (CausalLMImpl::new_decode_state, maybe reserved) the union of `parts`, the states of
  // prefills of disjoint rows: parts[i]'s rows become rows `rows[i]` of `batch` rows. Every row is covered once.
  // `device` is the model's (where row_offsets is kept).
  void merge_rows(const std::vector<const DecodeState*>& parts, const std::vector<std::vector<int64_t>>& rows,
                  int64_t batch, torch::Device device);
};

struct ForwardOptions {
  bool want_logits = true;
  bool want_layer_inputs = false;   // residual stream entering each layer
  bool want_pre_outputs = false;    // each mixer's output before its output projection
  torch::Tensor seq_idx;            // [b, l] int32: packed samples (positions restart at each boundary)
  DecodeState* state = nullptr;     // continue (and update) a decoding state
  // [b, l] int64 on the model's device: the tokens' positions, in place of those derived from the state. A captured
  // decode step reads them from a buffer it refills; they must equal state->next_positions.
  torch::Tensor positions;
};

struct ForwardResult {
  torch::Tensor logits;                     // [b, l, vocab]
  torch::Tensor final_hidden;               // [b, l, d], after the final norm
  torch::Tensor residual_out;               // [b, l, d], the residual stream leaving the last layer (before it)
  std::vector<torch::Tensor> layer_inputs;  // per layer [b, l, d]
  std::vector<torch::Tensor> pre_outputs;   // per layer [b, l, h * p]
};

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const ModelConfig& config);

  torch::Tensor embed(const torch::Tensor& tokens /* [b, l] int64 */);
  ForwardResult forward(const torch::Tensor& tokens, const ForwardOptions& options = {});
  // The same from input embeddings [b, l, d] (image features spliced in by the caller).
  ForwardResult forward_embeds(const torch::Tensor& embeds, const ForwardOptions& options = {});
  torch::Tensor logits(const torch::Tensor& final_hidden);
  DecodeState new_decode_state() const;

  ModelConfig config;
  torch::Tensor embed_tokens;  // [vocab, d]
  std::vector<DecoderLayer> layers;
  Norm final_norm{nullptr};
  Linear lm_head{nullptr};  // absent when tie_word_embeddings
};
TORCH_MODULE(CausalLM);

// Positions for a batch: 0..l-1 shifted by `past`, or restarting at each packed-sample boundary of seq_idx.
torch::Tensor make_positions(int64_t batch, int64_t length, int64_t past, const torch::Tensor& seq_idx,
                             torch::Device device);

}  // namespace carve::model

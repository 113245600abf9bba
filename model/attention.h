// Causal grouped-query attention with RoPE: the teacher's mixer, and the one a hybrid student keeps.
#pragma once

#include <torch/torch.h>

#include "model/config.h"
#include "model/mixer.h"

namespace carve::model {

struct KvCache : MixerState {
  torch::Tensor k;  // [b, kv_heads, t, head_dim], after RoPE
  torch::Tensor v;  // [b, kv_heads, t, head_dim]
};

class AttentionImpl : public Mixer {
 public:
  explicit AttentionImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& u, const MixerContext& ctx) override;
  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<KvCache>(); }
  std::string kind() const override { return "attention"; }

  int64_t num_heads, num_kv_heads, head_dim, rotary_dim;
  double rope_theta;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};

// softmax(q k^T / sqrt(d) + mask) v with a causal mask offset by the cached length and, when seq_idx is given,
// no attention across packed samples. q [b, h, l, d]; k, v [b, h, t, d] with t >= l. Returns [b, h, l, d].
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& seq_idx /* [b, l] or undefined */);

}  // namespace carve::model
